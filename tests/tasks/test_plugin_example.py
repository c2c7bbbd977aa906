"""The plugin task benchmarks/README.md shows is code users copy: it runs as written, through
`evo-merge eval`, on a causal LM as evo-merge loads one (it called `model(int)` before, which no
loaded model takes)."""

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
