"""The plugin task benchmarks/README.md shows is code users copy: it runs as written, through
`evo-merge eval`, on a causal LM as evo-merge loads one (it called `model(int)` before, which no
loaded model takes)."""

import ast
import re
from pathlib import Path

from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.weights.folder import save_model_folder
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer

README = Path(__file__).parents[2] / "benchmarks" / "README.md"


def test_the_readme_s_plugin_task_scores_a_model(tmp_path, monkeypatch):
    code = re.search(r"```python\n(# my_tasks\.py.*?)```", README.read_text(), re.S)[1]
    (tmp_path / "my_tasks.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    tokenizer = build_char_tokenizer()
    model = save_model_folder(tmp_path / "m", make_tiny_causal_lm("llama", vocab_size=len(tokenizer), seed=0))
    tokenizer.save_pretrained(model)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--task", "my_tasks:make_parity",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity: 100 items" in result.output and len(out.read_text().splitlines()) == 101
    # the words it compares begin with different tokens on a character tokenizer: " even" and " odd" were
    # both the space, so no model could score other than 0.500 on the demo zoo (audit 129)
    said = re.search(r'for w in \((".*?"), (".*?")\)', code)
    first = [tokenizer(ast.literal_eval(word), add_special_tokens=False).input_ids[0] for word in said.groups()]
    assert first[0] != first[1], said.groups()
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--task", "my_tasks:make_parity", "--option",
                                      "n_items=20", "--out", str(tmp_path / "twenty.csv")])
    assert result.exit_code == 0 and "parity: 20 items" in result.output, result.output
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--task", "my_tasks:make_parity", "--option",
                                      "n_itms=20", "--out", str(tmp_path / "typo.csv")])
    assert result.exit_code == 2 and "n_itms" in result.output, result.output


def test_eval_of_a_plugin_task_whose_scoring_raises_is_one_line_naming_it(tmp_path, monkeypatch):
    """A plugin's `evaluate` raising was a traceback, exit 1, where a campaign stores the candidate
    failed with the error (audit 135)."""
    (tmp_path / "evo_raising_scorer.py").write_text(
        "import pandas as pd\n\n"
        "class Raising:\n"
        "    name, scenarios, item_ids, higher_is_better = 'raising', None, ['a', 'b'], True\n\n"
        "    def evaluate(self, model, tokenizer=None, item_ids=None):\n"
        "        raise ValueError('my scorer broke')\n\n"
        "TASK = Raising()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tokenizer = build_char_tokenizer()
    model = save_model_folder(tmp_path / "m", make_tiny_causal_lm("llama", vocab_size=len(tokenizer), seed=0))
    tokenizer.save_pretrained(model)
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--task", "evo_raising_scorer:TASK",
                                      "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and not (tmp_path / "s.csv").exists(), result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: task raising: scoring raised ValueError: my scorer broke (--debug shows where)")
