"""The lm-eval adapter on shipped benchmarks with a small random LM (exact, if near chance)."""

import json
import logging
import re
import shutil
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.tasks import registry
from evo_merge.tasks.lmeval import LMEvalTask
from evo_merge.tasks.registry import BENCHMARKS_DIR, resolve_task


def test_scores_do_not_depend_on_subset_or_order(char_lm):
    model, tok = char_lm
    task = resolve_task("arith", batch_size=8)
    ids = task.item_ids[:12]
    forward = task.evaluate(model, tok, ids)
    backward = task.evaluate(model, tok, ids[::-1])
    assert backward.index.tolist() == ids[::-1]
    assert backward[ids].tolist() == forward.tolist()
    assert task.evaluate(model, tok, [ids[5]]).iloc[0] == forward.iloc[5]
    assert set(forward.unique()) <= {0.0, 1.0}
    assert task.scenarios[ids[0]] == "inc" and len(task.item_ids) == 1200


def test_limit_keeps_the_first_items_of_every_scenario_with_the_same_scores(char_lm):
    model, tok = char_lm
    whole = resolve_task("arith", batch_size=8)
    part = resolve_task("arith", batch_size=8, limit=12)
    assert part.item_ids == whole.item_ids[:12]
    assert sorted(set(part.scenarios.values())) == ["add_10", "add_1d", "dec", "inc"]
    assert part.evaluate(model, tok).tolist() == whole.evaluate(model, tok, whole.item_ids[:12]).tolist()
    with pytest.raises(UserError, match=rf"{whole.item_ids[12]!r} is not in task"):
        part.evaluate(model, tok, [whole.item_ids[12]])
    with pytest.raises(UserError, match="limit must be a positive whole number"):
        LMEvalTask(BENCHMARKS_DIR / "arith", limit=0)
    for size in (0, -5, 2.5, True, "big", "auto:0"):  # a task's own batch_size option: 0 and -5 ran (audit 96)
        with pytest.raises(UserError, match=f"batch_size must be a positive whole number, or auto .auto:N. as "
                                            f"lm-eval takes it, not {re.escape(repr(size))}"):
            LMEvalTask(BENCHMARKS_DIR / "arith", batch_size=size)
    for size in ("auto", "auto:4", 1):  # lm-eval's own forms (audit 98: auto was refused)
        assert LMEvalTask(BENCHMARKS_DIR / "arith", batch_size=size, limit=4).batch_size == size


def test_generation_task_uses_its_filtered_metric(char_lm):
    model, tok = char_lm
    task = resolve_task("evo_seq")
    assert (task.metric, task.filter) == ("exact_match", "strip")
    assert task.evaluate(model, tok, task.item_ids[:4]).tolist() == [0.0] * 4  # random LM
    with pytest.raises(UserError, match=r"no metric 'acc'.*exact_match,strip"):
        LMEvalTask(BENCHMARKS_DIR / "seq", metric="acc")


def test_a_task_of_two_filters_is_scored_by_the_filter_its_metric_names(char_lm, tmp_path):
    """lm-eval logs a sample per filter: the scores were taken from whichever came last. A second
    filter answering every item right (`oracle`) must not leak into the `strip` scores."""
    model, tok = char_lm
    yaml_text = (BENCHMARKS_DIR / "seq" / "evo_seq.yaml").read_text()
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "t", ignore=shutil.ignore_patterns("*.yaml"))
    (tmp_path / "t" / "utils.py").write_text(
        "def oracle(resps, docs):\n    return [[doc['answer'] for r in rs] for rs, doc in zip(resps, docs)]\n")
    (tmp_path / "t" / "task.yaml").write_text(yaml_text.replace("task: evo_seq", "task: two_filters").replace(
        "metric_list:", "  - name: oracle\n    filter:\n      - function: custom\n"
        "        filter_fn: !function utils.oracle\n      - function: take_first\nmetric_list:"))
    scores = {metric: LMEvalTask(tmp_path / "t", metric=metric, limit=4).evaluate(model, tok).tolist()
              for metric in ("exact_match,strip", "exact_match,oracle")}
    assert scores == {"exact_match,strip": [0.0] * 4, "exact_match,oracle": [1.0] * 4}  # a random LM; the answers


def test_local_data_files_resolve_against_the_yaml_not_the_cwd(tmp_path, monkeypatch):
    shutil.copytree(BENCHMARKS_DIR / "lang", tmp_path / "deep" / "lang")
    monkeypatch.chdir(tmp_path)
    by_file = LMEvalTask(tmp_path / "deep" / "lang" / "evo_lang.yaml")
    by_folder = LMEvalTask("deep/lang")
    assert by_file.item_ids == by_folder.item_ids and len(by_file.item_ids) == 1200


def test_the_items_digest_is_of_what_the_scored_items_say_and_the_same_in_every_process(tmp_path):
    """A run compares it across processes (`check_task_data`): fields JSON has no form for are
    written by type, not by a text naming a memory address; the docs are those scored (`limit`)."""
    import json
    import subprocess
    import sys

    import numpy as np

    from evo_merge.tasks.lmeval import _as_json

    doc = {"a": np.int64(3), "b": b"\x01", "c": np.array([1, 2]), "image": object()}
    assert json.dumps(doc, sort_keys=True, default=_as_json) == '{"a": 3, "b": "01", "c": [1, 2], "image": "object"}'
    here = LMEvalTask(BENCHMARKS_DIR / "arith").items_digest
    code = ("from evo_merge.tasks.lmeval import LMEvalTask; "
            f"print(LMEvalTask({str(BENCHMARKS_DIR / 'arith')!r}).items_digest)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == here
    assert LMEvalTask(BENCHMARKS_DIR / "arith", limit=5).items_digest != here  # the items it scores


def test_the_items_digest_sees_the_scoring_change_and_not_where_the_data_lives(tmp_path):
    """The answer template or the prompt function a YAML names, edited under the same docs, changed
    a run's answer key unseen (audit 127): the digest's second part is of the task's definition,
    with each function's source; the data's folder (a shipped benchmark's install place) is not."""
    def task_folder(where: Path, target: str = "answer", prompt: str = "return doc['question']") -> Path:
        shutil.copytree(BENCHMARKS_DIR / "arith", where, dirs_exist_ok=True)
        text = (where / "evo_arith.yaml").read_text().replace("task: evo_arith", "task: mine")
        text = text.replace("doc_to_text: question", "doc_to_text: !function utils.prompt")
        (where / "evo_arith.yaml").write_text(text.replace("doc_to_target: answer", f"doc_to_target: {target}"))
        (where / "utils.py").write_text(f"def prompt(doc):\n    {prompt}\n")
        return where

    digest = LMEvalTask(task_folder(tmp_path / "a"), limit=6).items_digest
    docs, definition = digest.split(":")
    moved = LMEvalTask(task_folder(tmp_path / "elsewhere" / "b"), limit=6).items_digest
    assert moved == digest  # the same task in another folder
    answer = LMEvalTask(task_folder(tmp_path / "c", target='"{{ (answer + 1) % 4 }}"'), limit=6).items_digest
    assert answer.split(":")[0] == docs and answer.split(":")[1] != definition
    prompt = LMEvalTask(task_folder(tmp_path / "d", prompt="return 'Q: ' + doc['question']"), limit=6).items_digest
    assert prompt.split(":")[0] == docs and prompt.split(":")[1] != definition


def test_a_task_file_whose_code_does_not_import_is_one_line_naming_the_file(tmp_path):
    """A `utils.py` with a SyntaxError (or one raising as it is imported) that a `!function` names was
    a traceback, exit 1, where its other faults are one line (audit 135)."""
    shutil.copytree(BENCHMARKS_DIR / "arith", tmp_path / "t")
    yaml_file = tmp_path / "t" / "evo_arith.yaml"
    text = yaml_file.read_text().replace("task: evo_arith", "task: mine")
    yaml_file.write_text(text.replace("doc_to_text: question", "doc_to_text: !function utils.prompt"))
    for code, kind in [("def prompt(doc:\n    pass\n", "SyntaxError"), ("raise RuntimeError('no')\n", "RuntimeError")]:
        (tmp_path / "t" / "utils.py").write_text(code)
        with pytest.raises(UserError) as raised:
            LMEvalTask(yaml_file)
        assert str(raised.value).startswith(f"cannot read task file {yaml_file}: importing its code raised {kind}")


def test_the_items_digest_reads_nested_functions_their_helpers_and_not_lm_eval_s_new_defaults(tmp_path,
                                                                                                 monkeypatch):
    """A filter's `filter_fn`, and a helper in the same `utils.py` the prompt calls, were outside the
    digest; a setting a later lm-eval adds at its default would have changed every run's (audit 128)."""
    import lm_eval.config.task as lm_task

    yaml_text = (BENCHMARKS_DIR / "seq" / "evo_seq.yaml").read_text()
    seq_lines = [line for line in yaml_text.splitlines() if line.startswith(("dataset_path", "test_split"))]
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "t", ignore=shutil.ignore_patterns("*.yaml"))
    (tmp_path / "t" / "task.yaml").write_text("\n".join([
        "task: my_seq", *seq_lines, "dataset_kwargs:", "  data_files:", "    test: test.jsonl",
        "doc_to_text: !function utils.prompt", "doc_to_target: answer", "output_type: generate_until",
        "generation_kwargs: {until: ['\\n'], max_gen_toks: 8, do_sample: false}",
        "filter_list:", "  - name: strip", "    filter:", "      - function: custom",
        "        filter_fn: !function utils.myfilter", "      - function: take_first",
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]", ""]))

    def digest(helper: str = "'Q: '", kept: str = "r") -> str:
        (tmp_path / "t" / "utils.py").write_text(
            f"def _fmt(doc):\n    return {helper} + doc['question']\n\n\ndef prompt(doc):\n    return _fmt(doc)\n\n\n"
            f"def myfilter(resps, docs):\n    return [[{kept} for r in rs] for rs in resps]\n")
        registry._CACHE.clear()
        return LMEvalTask(tmp_path / "t", limit=4).items_digest

    first = digest()
    assert digest(helper="'Question: '") != first  # a helper the prompt calls
    assert digest(kept="'0'") != first  # the filter's function: another answer key
    assert digest() == first
    real = lm_task.TaskConfig.to_dict
    monkeypatch.setattr(lm_task.TaskConfig, "to_dict", lambda self, **kw: {**real(self, **kw), "new_setting": 1})
    assert digest() == first  # a setting lm-eval adds, at its default


def test_a_task_folder_of_several_yamls_says_which_it_read(tmp_path, caplog):
    """`--task tasks/two` ran the YAML that sorts first without a word (audit 125)."""
    shutil.copytree(BENCHMARKS_DIR / "arith", tmp_path / "two")
    text = (tmp_path / "two" / "evo_arith.yaml").read_text()
    (tmp_path / "two" / "b.yaml").write_text(text.replace("task: evo_arith", "task: arith_b"))
    with caplog.at_level("WARNING", logger="evo_merge"):
        task = LMEvalTask(tmp_path / "two", limit=4)
    assert task.name == "arith_b"
    assert (f"task folder {tmp_path / 'two'} holds 2 YAML files (b.yaml, evo_arith.yaml): read as b.yaml, the first; "
            "name a file to take another") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge"):
        LMEvalTask(BENCHMARKS_DIR / "arith", limit=4)  # one YAML: nothing to say
    assert "YAML files" not in caplog.text


def test_a_local_task_makes_no_network_request_even_online(tmp_path, monkeypatch):
    """datasets sent a HEAD request to count each load of its json loader, even for the shipped
    local files, online (an audit saw it under `export --dry-run`)."""
    import datasets.config
    import datasets.load

    requests = []

    class Session:
        def head(self, *args, **kwargs):
            requests.append(args)

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the suite runs offline
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)  # as a user's machine has it
    monkeypatch.setattr(datasets.load, "get_session", lambda: Session())
    shutil.copytree(BENCHMARKS_DIR / "lang", tmp_path / "lang")  # not read before in this process
    assert len(LMEvalTask(tmp_path / "lang").item_ids) == 1200
    assert requests == []


def test_missing_data_file_and_unknown_names_are_user_errors(tmp_path):
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text().replace("test.jsonl", "gone.jsonl")
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(UserError, match="data file 'gone.jsonl' named in .*t.yaml not found"):
        LMEvalTask(tmp_path / "t.yaml")
    with pytest.raises(UserError, match="task file .*nothere.yaml not found$"):
        resolve_task(str(tmp_path / "nothere.yaml"))
    # benchmarks/README.md's `--task benchmarks/seq`, outside a checkout: the shipped name said (audit 129)
    for missing in ("benchmarks/evo_seq", "benchmarks/seq/evo_seq.yaml"):
        with pytest.raises(UserError, match=r"not found \(the shipped benchmark is named seq\)$"):
            resolve_task(str(tmp_path / missing))
    with pytest.raises(UserError, match=r"task file .*nowhere/\.\. not found$"):  # no shipped name: no hint
        resolve_task(f"{tmp_path}/nowhere/..")
    with pytest.raises(UserError, match="unknown task 'no_such_task_zz9'"):
        resolve_task("no_such_task_zz9")


def _arith_variant(folder, **edits):
    """The shipped arith task YAML and its data copied to `folder`, with text replacements."""
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text()
    data = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text()
    for old, new in edits.get("yaml", []):
        text = text.replace(old, new)
    (folder / "t.yaml").write_text(text)
    (folder / "test.jsonl").write_text(edits.get("data", data))
    return folder / "t.yaml"


@pytest.mark.parametrize("case, edits, message", [
    ("split the data lacks", {"yaml": [("test_split: test", "test_split: validation")]},
     "(KeyError: 'validation': a split or a field its data does not have?)"),
    ("corrupt data file", {"data": '{"question": "1+1", "choices": ["2", \n'}, "lm-eval cannot build it"),
    ("unknown metric", {"yaml": [("metric: acc", "metric: nosuchmetric")]},
     "metric_list: metric 'nosuchmetric' is neither lm-eval's"),
    ("unknown aggregation of another metric", {"yaml": [("metadata:", "  - metric: acc_norm\n    aggregation: meen\n"
                                                                       "    higher_is_better: true\nmetadata:")]},
     "metric_list: metric 'acc_norm' has an aggregation lm-eval does not know"),
])
def test_task_yamls_lm_eval_cannot_use_are_one_line_errors_at_load(tmp_path, monkeypatch, case, edits, message):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _arith_variant(tmp_path, **edits)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        LMEvalTask(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_empty_data_file_is_named_as_such(tmp_path):
    """It was 'lm-eval cannot build it (StopIteration)'."""
    path = _arith_variant(tmp_path, data="")
    with pytest.raises(UserError, match="data file 'test.jsonl' named in .* is empty: the task has no items"):
        LMEvalTask(path)


def test_a_local_group_reads_its_members_data_files_beside_them_and_names_a_missing_member(tmp_path):
    """(A group YAML was refused; its scores against lm-eval's: test_lmeval_fidelity.py.)"""
    (tmp_path / "part_a").mkdir()
    _arith_variant(tmp_path / "part_a", yaml=[("task: evo_arith", "task: part_a")])  # data file: test.jsonl
    (tmp_path / "both.yaml").write_text("group: both\ntask: [part_a, part_z]\n")
    with pytest.raises(UserError, match=re.escape("task 'part_z' is in no task YAML under")):
        LMEvalTask(tmp_path / "both.yaml")
    (tmp_path / "both.yaml").write_text("group: both\ntask: [inner]\n")
    (tmp_path / "inner.yaml").write_text("group: inner\ntask: [part_a, other]\n")  # inner and other contain each other
    (tmp_path / "other.yaml").write_text("group: other\ntask: [inner]\n")
    with pytest.raises(UserError, match="member 'inner' is the group .*inner.yaml itself, or contains it"):
        LMEvalTask(tmp_path / "both.yaml")  # was a RecursionError traceback
    (tmp_path / "inner.yaml").unlink()
    (tmp_path / "other.yaml").unlink()
    (tmp_path / "both.yaml").write_text("group: both\ntask: [part_a]\n")
    task = LMEvalTask(tmp_path / "both.yaml", limit=5)
    assert task.name == "part_a" and task.item_ids[0] == "arith-test-00000"  # one task: its own ids and scenarios


LOGLIKELIHOOD = [("output_type: multiple_choice", "output_type: loglikelihood"), ("doc_to_choice: choices\n", ""),
                 ("doc_to_target: answer", 'doc_to_target: "{{choices[answer]}}"')]
DEFAULT_AGGREGATION = ("    aggregation: mean\n    higher_is_better: true\n", "")


@pytest.mark.parametrize("edits, message", [
    ([*LOGLIKELIHOOD, DEFAULT_AGGREGATION, ("metric: acc", "metric: perplexity")],
     "metric 'perplexity' is aggregated by perplexity, not averaged over items"),
    ([DEFAULT_AGGREGATION, ("metric: acc", "metric: mcc")], "metric 'mcc' is aggregated by matthews_corrcoef"),
    ([DEFAULT_AGGREGATION, ("metric: acc", "metric: brier_score")], "metric 'brier_score' is aggregated by brier"),
])
def test_metrics_that_are_not_per_item_scores_are_refused_at_load(tmp_path, edits, message):
    """They failed (a traceback, or a score outside [0, 1]) after the calibration models were scored."""
    path = _arith_variant(tmp_path, yaml=edits)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        LMEvalTask(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_first_read_of_a_task_s_data_draws_no_dataset_bars(tmp_path):
    """On a fresh datasets cache, `datasets` draws 'Generating test split' bars; the commands draw
    their own, and a one-line error must stay one line."""
    import os
    import subprocess
    import sys

    code = f"from evo_merge.tasks.lmeval import LMEvalTask; LMEvalTask({str(BENCHMARKS_DIR / 'arith')!r})"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "fresh"), "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "fresh").is_dir()  # the data was read into the fresh cache
    assert "Generating" not in done.stderr + done.stdout, done.stderr


PLUGIN = """
import torch
from evo_merge.tasks import TorchClassificationTask

def make_task(batch_size=1024, **settings):
    return TorchClassificationTask("plug", torch.eye(3), torch.tensor([0, 2, 1]), batch_size=batch_size)

TASK = make_task()
NOT_A_TASK = 42


class Numbered:
    name, scenarios = "numbered", None

    def __init__(self, ids):
        self.item_ids = ids

    def evaluate(self, model, tokenizer=None, item_ids=None):
        raise AssertionError("not evaluated")


NUMBERED = Numbered([0, 1, 2])
REPEATED = Numbered(["a", "b", "a"])
EMPTY = Numbered([])


class Partly(Numbered):
    scenarios = {"a": "s1"}


PARTLY = Partly(["a", "b", "c"])


class Listed(Numbered):
    scenarios = ["s1", "s1", "s2"]


LISTED = Listed(["a", "b", "c"])


class Declared:  # its attributes declared on the class: the protocol's check passed the class itself
    name, scenarios = "declared", None

    def __init__(self, n=3):
        self.n = n

    @property
    def item_ids(self):
        return [str(i) for i in range(self.n)]

    def evaluate(self, model, tokenizer=None, item_ids=None):
        raise AssertionError("not evaluated")


def positional(n, /):
    return Declared(n)
"""


def test_plugins_by_module_attribute_and_entry_point(tmp_path, monkeypatch, caplog):
    import torch

    (tmp_path / "evo_plugin_demo.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    made = resolve_task("evo_plugin_demo:make_task", batch_size=2)
    assert made.batch_size == 2 and made.evaluate(torch.nn.Identity()).tolist() == [1.0, 0.0, 0.0]
    ep = EntryPoint(name="toy-plugin", value="evo_plugin_demo:TASK", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert resolve_task("toy-plugin").name == "plug"
    # a ready-made task object: what every task is given (a campaign's batch size) is not its to take, and
    # an option was dropped without a word (`options: {n_items: 50}` left it at its own 200; audit 101): said,
    # not refused, as a run folder's campaign may hold one (audit 103)
    caplog.clear()
    assert resolve_task("evo_plugin_demo:TASK", batch_size=8).name == "plug"
    assert not caplog.records
    with caplog.at_level("WARNING", logger="evo_merge"):
        assert resolve_task("evo_plugin_demo:TASK", batch_size=8, n_items=50, device="cuda").name == "plug"
    assert [r.getMessage() for r in caplog.records] == [
        "task 'evo_plugin_demo:TASK' is a ready-made task object, which takes no options: device, n_items not used; "
        "name a function or class that makes the task to pass it options"]
    # a package renamed since it was installed: a bare ModuleNotFoundError from importlib
    gone = EntryPoint(name="gone-plugin", value="evo_plugin_renamed_away:TASK", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [gone] if group == registry.ENTRY_POINT_GROUP else [])
    with pytest.raises(UserError, match=re.escape("task 'gone-plugin': its entry point (evo_plugin_renamed_away:TASK) "
                                                  "cannot be loaded (No module named 'evo_plugin_renamed_away'); "
                                                  "reinstall or remove that package")):
        resolve_task("gone-plugin")
    with pytest.raises(UserError, match="not a FitnessTask"):
        resolve_task("evo_plugin_demo:NOT_A_TASK")
    # a callable needing what no option gives (`--task json:dumps`) was called: its TypeError's traceback
    with pytest.raises(UserError, match=re.escape("task 'evo_plugin_demo:Numbered': needs option 'ids', which its "
                                                  "options do not give (it takes: ids)")):
        resolve_task("evo_plugin_demo:Numbered")
    # a list given from Python (the task cache's key was a TypeError: unhashable), each list its own task
    assert resolve_task("evo_plugin_demo:Numbered", ids=["a", "b"]).item_ids == ["a", "b"]
    assert resolve_task("evo_plugin_demo:Numbered", ids=["c"]).item_ids == ["c"]
    # objects no campaign file holds (arrays, tensors) are never keyed by a repr that elides their middle
    import numpy as np

    ids = np.array([str(i) for i in range(2000)])
    other = ids.copy()
    other[1000] = "x"
    assert resolve_task("evo_plugin_demo:Numbered", ids=other).item_ids[1000] == "x"
    assert resolve_task("evo_plugin_demo:Numbered", ids=ids).item_ids[1000] == "1000"
    with pytest.raises(UserError, match=re.escape("task 'evo_plugin_demo:positional': needs 'n', which options "
                                                  "cannot give (a positional-only argument)")):
        resolve_task("evo_plugin_demo:positional")
    # was a TypeError ('property' object is not iterable): the class was taken for a task
    assert resolve_task("evo_plugin_demo:Declared", n=4).item_ids == ["0", "1", "2", "3"]
    # ids are stored as text and matched as given: an int id would be found under no name
    with pytest.raises(UserError, match=r"NUMBERED': item ids must be strings, not int \(0\)"):
        resolve_task("evo_plugin_demo:NUMBERED")
    with pytest.raises(UserError, match=r"REPEATED': item ids must be unique \(1 repeated\)"):
        resolve_task("evo_plugin_demo:REPEATED")
    # scored, it gave the base a NaN score, and the run folder was then called damaged
    with pytest.raises(UserError, match=r"EMPTY': no items \(its item_ids are empty\)"):
        resolve_task("evo_plugin_demo:EMPTY")
    # items no scenario names became a scenario named after the task, silently
    with caplog.at_level("WARNING", logger="evo_merge.tasks.registry"):
        resolve_task("evo_plugin_demo:PARTLY")
    assert "its scenarios name 1 of its 3 items; the other 2 ('b' first) form a scenario named after" in caplog.text
    # scenarios as a list: a traceback in `eval` and in a campaign's first split (audit 135)
    with pytest.raises(UserError, match=r"LISTED': scenarios must map item ids to scenario names \(or be None\), "
                                        "not a list"):
        resolve_task("evo_plugin_demo:LISTED")
    with pytest.raises(UserError, match="no attribute 'missing'"):
        resolve_task("evo_plugin_demo:missing")
    with pytest.raises(UserError, match="cannot import module 'no_such_module_zz'.*add its folder to PYTHONPATH"):
        resolve_task("no_such_module_zz:task")


def test_a_plugin_beside_the_campaign_is_named_with_the_path_that_imports_it(tmp_path, monkeypatch):
    """The `evo-merge` command does not import from the working directory: a user's
    `my_tasks.py` there is named, with the PYTHONPATH that finds it; a module that is found but
    imports something missing is not sent to PYTHONPATH."""
    (tmp_path / "evo_unlisted_tasks.py").write_text(PLUGIN)
    (tmp_path / "evo_broken_tasks.py").write_text("import zz_not_installed_dep\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as unlisted:
        resolve_task("evo_unlisted_tasks:make_task")
    assert str(unlisted.value).endswith(f"{tmp_path / 'evo_unlisted_tasks.py'} is not on the import path: if you "
                                        "trust it (it runs as code: a run folder someone sent may hold one), run "
                                        f"with PYTHONPATH={tmp_path}, or install its package")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as broken:
        resolve_task("evo_broken_tasks:task")
    assert str(broken.value) == ("task plugin 'evo_broken_tasks:task': cannot import module 'evo_broken_tasks' "
                                 "(No module named 'zz_not_installed_dep')")


def test_a_plugin_whose_factory_raises_is_one_line_naming_it(tmp_path, monkeypatch):
    """The plugin's own code failing as it makes the task (its data file missing) was a traceback
    and exit 1; the error keeps it as its cause, for `--debug`."""
    (tmp_path / "evo_raising_tasks.py").write_text(
        "def make_task():\n    open('/nonexistent/evo-merge-items.jsonl')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as raised:
        resolve_task("evo_raising_tasks:make_task")
    assert str(raised.value) == ("task plugin 'evo_raising_tasks:make_task': making the task raised "
                                 "FileNotFoundError: [Errno 2] No such file or directory: "
                                 "'/nonexistent/evo-merge-items.jsonl' (--debug shows where)")
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    # the module itself failing as it is imported (a typo) was a traceback and exit 1 too
    (tmp_path / "evo_typo_tasks.py").write_text("def make_task(:\n    pass\n")
    with pytest.raises(UserError) as raised:
        resolve_task("evo_typo_tasks:make_task")
    assert str(raised.value).startswith("task plugin 'evo_typo_tasks:make_task': importing module 'evo_typo_tasks' "
                                        "raised SyntaxError: ")
    assert str(raised.value).endswith("(--debug shows where)") and isinstance(raised.value.__cause__, SyntaxError)
    # through an entry point, any error but an ImportError was a traceback (audit 135)
    (tmp_path / "evo_raising_at_import.py").write_text("raise RuntimeError('broken plugin import')\n")
    ep = EntryPoint(name="raising-plugin", value="evo_raising_at_import:TASK", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    with pytest.raises(UserError) as raised:
        resolve_task("raising-plugin")
    assert str(raised.value) == ("task 'raising-plugin': importing its entry point (evo_raising_at_import:TASK) "
                                 "raised RuntimeError: broken plugin import (--debug shows where)")
    (tmp_path / "evo_raising_module.py").write_text("raise RuntimeError('no GPU configured')\n")  # its own code
    with pytest.raises(UserError) as raised:
        resolve_task("evo_raising_module:make_task")
    assert str(raised.value) == ("task plugin 'evo_raising_module:make_task': importing module 'evo_raising_module' "
                                 "raised RuntimeError: no GPU configured (--debug shows where)")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, char_lm):
    model, tok = char_lm
    root = tmp_path_factory.mktemp("models")
    model.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    model.save_pretrained(root / "no_tokenizer")
    return root


def test_cli_eval_writes_long_format_scores(model_dirs, tmp_path):
    (tmp_path / "items.txt").write_text("item\narith-test-00003\narith-test-00001\n")
    out = tmp_path / "scores.csv"
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", "arith", "--items", str(tmp_path / "items.txt")]
    result = CliRunner().invoke(cli, [*args, "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "subject,item,score,scenario"
    assert [line.split(",")[:2] for line in lines[1:]] == [["lm", "arith-test-00003"], ["lm", "arith-test-00001"]]
    assert all(line.split(",")[3] in {"inc", "dec", "add_10", "add_1d"} for line in lines[1:])


def test_cli_eval_keeps_a_file_that_appears_at_its_out_meanwhile(model_dirs, tmp_path, output_appearing):
    """Without --overwrite, a file put at OUT while `eval` scored is kept (audit 112; each command
    passes the user's word on, audit 115)."""
    arm, check = output_appearing
    out = tmp_path / "scores.csv"
    arm(out)
    check(CliRunner().invoke(cli, ["eval", "--model", str(model_dirs / "lm"), "--task", "arith", "--option", "limit=2",
                                   "--out", str(out)]), out)


def test_cli_eval_takes_the_task_options_a_campaign_gives(model_dirs, tmp_path):
    """A campaign's task with `options: {limit: 5}` could not be scored again alone: `eval` had no
    way to pass them (audit 101). `--option KEY=VALUE`, each value a YAML scalar."""
    out = tmp_path / "scores.csv"
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", "arith", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--option", "limit=5"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1 + 5
    for bad, said in ((["--option", "limit"], "--option limit: expected KEY=VALUE, e.g. limit=80"),
                      (["--option", "limit=[1, 2]"], "--option limit=[1, 2]: a task option is a number, true/false "
                                                     "or text, not a list"),
                      (["--option", "limit=5", "--option", "limit=6"], "--option limit: given twice"),
                      (["--option", "nonsense=1"], "nonsense")):
        result = CliRunner().invoke(cli, [*args, "--overwrite", *bad])
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_cli_eval_scores_the_anchors_irt_anchors_stored_that_are_items_of_the_task(model_dirs, tmp_path):
    """`irt anchors` stores a set for every scenario of its model, over several tasks when the
    model was fitted on them together; `eval --items SET.json` scores this task's, one task at a time."""
    import json

    from evo_merge.irt.anchors import Anchors

    arith = {"inc": ["arith-test-00000", "arith-test-00004"], "dec": ["arith-test-00001"]}
    items = {**{f"arith:{k}": v for k, v in arith.items()}, "seq:copy_3": ["seq-test-00000", "seq-test-00001"]}
    stored = Anchors("stratified", 2, 0, items=items,
                     weights={s: [1 / len(v)] * len(v) for s, v in items.items()}).save(tmp_path / "model")
    out = tmp_path / "scores.csv"
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", "arith", "--items", str(stored), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{stored}: 3 of its 5 anchors are items of task evo_arith; scoring those" in result.output
    assert [line.split(",")[1] for line in out.read_text().splitlines()[1:]] == [i for v in arith.values() for i in v]
    args[args.index("arith")] = "lang"
    args.append("--overwrite")  # what follows is refused before the existing scores are touched
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and f"--items {stored}: none of its 5 anchors is an item of task evo_lang" \
        in result.output, result.output
    args[args.index(str(stored))] = str(tmp_path / "nowhere.json")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere.json'}: cannot read the anchors file (No such file" \
        in result.output and "Traceback" not in result.output, result.output
    args[args.index(str(tmp_path / "nowhere.json"))] = str(stored)
    stored.write_text(json.dumps({"method": "stratified", "budget": 2, "seed": 0, "items": ["x"], "weights": {}}))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "corrupt anchors file" in result.output, result.output


@pytest.mark.parametrize(
    ("model", "task", "items", "message"),
    [
        # named as the user gave them: the items file and the task (its lm-eval task is evo_arith)
        ("lm", "arith", "arith-test-99999\n", "items.txt: item 'arith-test-99999' is not in task 'arith'"),
        ("no_tokenizer", "arith", None, "task 'evo_arith' needs a tokenizer"),
        ("lm", "nope/missing.yaml", None, "task file nope/missing.yaml not found"),
    ],
)
def test_cli_eval_bad_input_is_one_line_exit_2(model_dirs, tmp_path, model, task, items, message):
    args = ["eval", "--model", str(model_dirs / model), "--task", task, "--out", str(tmp_path / "s.csv")]
    if items:
        (tmp_path / "items.txt").write_text(items)
        args += ["--items", str(tmp_path / "items.txt")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_eval_names_the_task_as_given_and_the_metric_option(model_dirs, tmp_path):
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", "arith", "--metric", "nosuch", "--out",
            str(tmp_path / "s.csv")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.output.strip() == (
        "error: --task arith: task 'evo_arith' has no metric 'nosuch' (its `metric` option); choose one of acc,none")


def test_a_doc_without_a_scenario_or_an_id_twice_is_not_taken_at_its_word(caplog):
    """The data loader fills a missing `scenario` with None: one doc without it made a one-item
    scenario "None". A repeated id names every item by position: said, naming the id."""
    from evo_merge.tasks.lmeval import _doc_items

    docs = [{"id": "q0", "scenario": "a"}, {"id": "q1", "scenario": None}, {"id": "q2", "scenario": "b"}]
    assert _doc_items(docs) == (["q0", "q1", "q2"], None)
    assert "task items have no scenarios: 1 of 3 documents have none" in caplog.text  # was unsaid
    assert _doc_items([{**d, "scenario": "a"} for d in docs]) == (["q0", "q1", "q2"], ["a", "a", "a"])
    twice = [{"id": "q0"}, {"id": "q1"}, {"id": "q1"}]
    assert _doc_items(twice) == (["0", "1", "2"], None)
    assert "id 'q1' is given to more than one document" in caplog.text
    assert _doc_items([{"id": "q0"}, {"id": None}, {"id": "q2"}]) == (["0", "1", "2"], None)  # renamed, said
    assert "named by their position: 1 of 3 documents have no id" in caplog.text


@pytest.mark.parametrize(("answer", "shown"), [('"answer":7', "7"), ('"answer":"eighty"', "'eighty'")])
def test_a_multiple_choice_answer_that_is_none_of_its_choices_is_refused_at_load(tmp_path, answer, shown):
    """`answer: 7` with 4 choices scored 0 whatever the model said (lm-eval's warning is hidden)."""
    data = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    first = re.sub(r'"answer":\d+', answer, data[1])
    path = _arith_variant(tmp_path, data="\n".join([data[0], first, *data[2:20]]) + "\n")
    with pytest.raises(UserError, match=re.escape(f"item arith-test-00001's answer {shown} is none of its 4 choices")):
        LMEvalTask(path)


ROW = '{"id":"arith-test-00001","scenario":"dec","question":"812-1=","choices":["811","813","810","812"],"answer":0}'


@pytest.mark.parametrize(("row", "message"), [
    (ROW.replace('"812-1="', "null"), "item arith-test-00001: doc_to_text gives None, not text"),
    (ROW.replace('"812-1="', "5"), "item arith-test-00001: doc_to_text gives 5, not text"),
    (ROW.replace(',"choices":["811","813","810","812"]', ""), "item arith-test-00001: doc_to_choice gives None"),
    (ROW.replace('["811","813","810","812"]', '"abcd"'),
     "item arith-test-00001: doc_to_choice gives 'abcd', not a list"),
    (ROW.replace('["811","813","810","812"]', '["811","811","810","812"]').replace('"answer":0', '"answer":1'),
     "item arith-test-00001's answer 1 is a second copy of choice 0 ('811')"),
    (ROW.replace('"answer":0', '"answer":[0,1]'),  # lm-eval's TypeError when scored, or acc 0 silently
     "item arith-test-00001: doc_to_target gives [0, 1], where the first item's is one answer"),
])
def test_a_malformed_row_is_refused_at_load_naming_the_item(tmp_path, row, message):
    """A null question or missing choices failed with lm-eval's traceback when first scored: in a
    campaign, on a held-out row, only in the final phase, where the run then exported nothing. Choices
    given as one string were scored as one-letter choices, and an answer on a repeated choice
    scored 0 whatever the model said."""
    data = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    path = _arith_variant(tmp_path, data="\n".join([data[0], row, *data[2:20]]) + "\n")
    with pytest.raises(UserError, match=re.escape(f"task {path}: evo_arith: {message}")):
        LMEvalTask(path)


def test_lists_of_answers_are_every_item_s_or_none_and_hold_indices(tmp_path):
    """lm-eval reads every item's answers as it reads its first test item's: a list after single
    answers scored 0 whatever the model said, and a single answer after lists failed with a TypeError."""
    rows = [json.loads(r) for r in (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()[:6]]
    for row in rows:
        row["answer"] = [row["answer"]]
    rows[2]["answer"] = rows[2]["answer"][0]
    path = _arith_variant(tmp_path, data="".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=re.escape(f"item {rows[2]['id']}: doc_to_target gives {rows[2]['answer']}, "
                                                  "where the first item's is a list of answers")):
        LMEvalTask(path)
    texts = [{**r, "answer": [r["choices"][0]]} for r in rows]  # lm-eval compares list entries as indices
    path = _arith_variant(tmp_path, data="".join(json.dumps(r) + "\n" for r in texts))
    with pytest.raises(UserError, match=re.escape(f"item {rows[0]['id']}: doc_to_target gives ['83']: a list of "
                                                  "answers holds choice indices")):
        LMEvalTask(path)
    rows[2]["answer"] = [0, 1]
    path = _arith_variant(tmp_path, data="".join(json.dumps(r) + "\n" for r in rows))
    assert len(LMEvalTask(path).item_ids) == 6  # several right answers, as lm-eval scores them


def test_a_metric_lm_eval_does_not_score_for_the_output_type_is_one_line(tmp_path, char_lm):
    """`metric: perplexity` with `aggregation: mean` on a multiple-choice task passed every check at
    load, then failed with a KeyError after the first model was scored."""
    model, tokenizer = char_lm
    task = LMEvalTask(_arith_variant(tmp_path, yaml=[("metric: acc", "metric: perplexity")]))
    with pytest.raises(UserError, match=re.escape(
            "task evo_arith: lm-eval scores no 'perplexity' for a multiple_choice item: name a metric of that "
            "output type in metric_list (acc, for multiple_choice)")):
        task.evaluate(model, tokenizer, task.item_ids[:2])


def test_a_generation_longer_than_the_model_s_context_is_one_line(tmp_path, char_lm):
    """lm-eval asserts max_gen_toks < the model's context when it first generates: an AssertionError."""
    model, tokenizer = char_lm
    shutil.copy(BENCHMARKS_DIR / "seq" / "test.jsonl", tmp_path / "test.jsonl")
    text = (BENCHMARKS_DIR / "seq" / "evo_seq.yaml").read_text()
    (tmp_path / "t.yaml").write_text(text.replace("max_gen_toks: 8", "max_gen_toks: 256"))
    task = LMEvalTask(tmp_path / "t.yaml")
    with pytest.raises(UserError, match=re.escape(
            "task evo_seq generates up to 256 tokens (generation_kwargs.max_gen_toks, lm-eval's default 256), which "
            "leaves no room for a prompt in this model's 256-token context: set max_gen_toks below 256")):
        task.evaluate(model, tokenizer, task.item_ids[:2])
    (tmp_path / "t.yaml").write_text(text.replace("max_gen_toks: 8", "max_gen_toks: 255"))
    assert len(LMEvalTask(tmp_path / "t.yaml").evaluate(model, tokenizer, task.item_ids[:1])) == 1


@pytest.mark.parametrize(("family", "key", "typo"), [("arith", "doc_to_text", "questoin"),
                                                     ("seq", "doc_to_target", "answr")])
def test_a_misspelled_field_name_is_refused_not_given_to_every_item_as_text(tmp_path, family, key, typo):
    """lm-eval reads a name that is no field as a template: every item's prompt was "questoin"
    (scored 0.50), every generation's answer "answr" (scored 0, against 0.94 spelled right)."""
    text = (BENCHMARKS_DIR / family / f"evo_{family}.yaml").read_text()
    field = "question" if key == "doc_to_text" else "answer"
    (tmp_path / "t.yaml").write_text(text.replace(f"{key}: {field}", f"{key}: {typo}"))
    shutil.copy(BENCHMARKS_DIR / family / "test.jsonl", tmp_path)
    with pytest.raises(UserError, match=re.escape(f"evo_{family}: {key}: {typo!r} is neither a field of its rows (")
                       + r".*\(did you mean '" + field + r"'\?\)$"):
        LMEvalTask(tmp_path / "t.yaml")


def test_a_broken_template_names_its_file_and_key_and_a_folder_names_the_yaml_it_was_read_as(model_dirs, tmp_path):
    """lm-eval's `TemplateSyntaxError: unexpected end of template` named neither the file nor the key;
    a folder's errors did not say which of its YAMLs was read; the CLI said `--task X: task X:`."""
    path = _arith_variant(tmp_path, yaml=[("doc_to_text: ", 'doc_to_text: "{{question" #')])
    with pytest.raises(UserError, match=re.escape(f"task file {path}: doc_to_text: not a valid Jinja template")):
        LMEvalTask(path)
    folder = tmp_path / "folder"
    folder.mkdir()
    good = _arith_variant(folder)
    good.rename(folder / "b_good.yaml")
    _arith_variant(folder, yaml=[("output_type: multiple_choice", "output_type: bogus")]).rename(folder / "a.yaml")
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", str(folder), "--out", str(tmp_path / "s.csv")]
    result = CliRunner().invoke(cli, args)
    warned, error = result.output.splitlines()[:2]  # which YAML it read, said first (audit 125)
    assert warned == (f"warning: task folder {folder} holds 2 YAML files (a.yaml, b_good.yaml): read as a.yaml, "
                      "the first; name a file to take another"), result.output
    assert result.exit_code == 2 and error.startswith(
        f"error: --task {folder}: task {folder} (read as a.yaml, the folder's first YAML): lm-eval cannot build it"
    ), result.output
    args[4] = str(path)
    result = CliRunner().invoke(cli, args)
    assert result.output.strip() == (f"error: --task {path}: doc_to_text: not a valid Jinja template "
                                     "(TemplateSyntaxError: unexpected end of template, expected 'end of print "
                                     "statement'.)"), result.output


def test_an_unknown_metric_is_one_line_without_lm_eval_s_own_error_lines(model_dirs, tmp_path):
    """lm-eval logs 'X not found in the evaluate library!' at ERROR, twice, before our refusal."""
    import subprocess
    import sys

    path = _arith_variant(tmp_path, yaml=[("metric: acc", "metric: nosuchmetric")])
    args = ["eval", "--model", str(model_dirs / "lm"), "--task", str(path), "--out", str(tmp_path / "s.csv")]
    done = subprocess.run([sys.executable, "-m", "evo_merge", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and (done.stdout + done.stderr).strip() == (
        f"error: --task {path}: metric_list: metric 'nosuchmetric' is neither lm-eval's nor in the evaluate library"
    ), done.stdout + done.stderr


def test_a_group_whose_tasks_score_with_different_metrics_is_refused_with_advice_that_can_be_followed(tmp_path):
    """The advice was to name the metric, which cannot work when no metric is every member's."""
    (tmp_path / "part_a").mkdir()
    _arith_variant(tmp_path / "part_a", yaml=[("task: evo_arith", "task: part_a")])
    (tmp_path / "part_b").mkdir()
    _arith_variant(tmp_path / "part_b", yaml=[("task: evo_arith", "task: part_b"), ("metric: acc", "metric: acc_norm")])
    (tmp_path / "both.yaml").write_text("group: both\ntask: [part_a, part_b]\n")
    with pytest.raises(UserError, match=re.escape(
            "part_b scores with acc_norm,none, another of its tasks with acc,none; name a metric they all have "
            "(`metric:` in the task's options), or give them as tasks of their own")):
        LMEvalTask(tmp_path / "both.yaml")


def test_items_longer_than_the_model_s_context_are_said_to_be_cut_once(tmp_path, char_lm, caplog):
    """lm-eval cuts such a request from the left and says so per request; its chatter is hidden, so
    an item scored on its end alone went unsaid."""
    model, tokenizer = char_lm
    data = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    long = data[1].replace('"812-1="', '"' + "1+" * 200 + '812-1="')  # 400 more characters than 256 positions
    task = LMEvalTask(_arith_variant(tmp_path, data="\n".join([data[0], long, *data[2:6]]) + "\n"))
    with caplog.at_level(logging.WARNING, logger="evo_merge"):
        task.evaluate(model, tokenizer, ["arith-test-00000"])
        assert "longer than the model's context" not in caplog.text
        task.evaluate(model, tokenizer, ["arith-test-00001", "arith-test-00002"])
        task.evaluate(model, tokenizer, ["arith-test-00001"])
    lines = [r.getMessage() for r in caplog.records if "longer than the model's context" in r.getMessage()]
    assert lines == ["task evo_arith: some items are longer than the model's context and were cut from the left "
                     "(lm-eval's truncation): they are scored on their ends"]


MULTIPLE_INPUT = """task: mi
dataset_path: json
dataset_kwargs:
  data_files:
    test: test.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{answer}}"
doc_to_choice: "{{[option1, option2]}}"
doc_to_target: cont
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_a_multiple_input_task_is_checked_by_its_answer_index(tmp_path, char_lm):
    """Winogrande's shape: a context per choice, one continuation, doc_to_text the answer's index."""
    rows = [{"id": f"q{i}", "option1": "ab" * (i + 1), "option2": "ba" * (i + 1), "answer": i % 2, "cont": " c"}
            for i in range(6)]
    (tmp_path / "t.yaml").write_text(MULTIPLE_INPUT)
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = LMEvalTask(tmp_path / "t.yaml")
    scores = task.evaluate(*char_lm, task.item_ids)
    assert list(scores.index) == task.item_ids and set(scores) <= {0.0, 1.0}
    rows[3]["answer"] = 2
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=r"mi: item q3's answer 2 is none of its 2 choices"):
        LMEvalTask(tmp_path / "t.yaml")


def test_a_closed_evaluator_leaves_no_model_held_by_its_cached_tasks(char_lm):
    """Tasks are cached for the process and lm-eval's wrapper in them held the last model scored:
    a campaign's model stayed resident after its evaluator closed (a whole model more on a GPU)."""
    import gc
    import weakref

    from evo_merge.search.local import LocalEvaluator
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.zoo.tiny import make_tiny_causal_lm

    _, tokenizer = char_lm
    task = resolve_task("arith", limit=8)
    model = make_tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=16, layers=1, seed=1)
    task.evaluate(model, tokenizer, task.item_ids[:2])
    alive = weakref.ref(model)
    LocalEvaluator(None, {"arith": task}).close()
    del model
    gc.collect()
    assert alive() is None and resolve_task("arith", limit=8) is task


@pytest.mark.parametrize("bad_split", ["test", "train"])
def test_a_malformed_row_of_a_few_shot_task_is_one_line_not_lm_eval_s_traceback(tmp_path, bad_split):
    """The few-shot prompts were built, rendering every row, before the rows were checked: a null
    question ended in lm-eval's AssertionError traceback, in the asked rows or the examples' split."""
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text()
    text = text.replace("    test: test.jsonl\n", "    test: test.jsonl\n    train: train.jsonl\n")
    (tmp_path / "t.yaml").write_text(text.replace("test_split: test\n", "test_split: test\nfewshot_split: train\n"
                                                                         "num_fewshot: 2\n"))
    rows = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()[:12]
    broken = [*rows[:3], re.sub(r'"question":"[^"]*"', '"question":null', rows[3]), *rows[4:]]
    for split in ("test", "train"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(broken if split == bad_split else rows) + "\n")
    expected = ("item arith-test-00003: doc_to_text gives None" if bad_split == "test"
                else "its 2-shot prompts cannot be built from its few-shot examples (")
    with pytest.raises(UserError, match=re.escape(f"task {tmp_path / 't.yaml'}: evo_arith: {expected}")):
        LMEvalTask(tmp_path / "t.yaml")


def test_the_model_s_maximum_length_is_resolved_once_not_per_request(char_lm, monkeypatch):
    """lm-eval reads the model's maximum length from its config on every request (280k times in a
    small campaign, 2% of its scoring): the wrapper resolves it once, to lm-eval's own value."""
    import lm_eval.models.huggingface as huggingface

    model, tokenizer = char_lm
    task = resolve_task("evo_arith")
    task.release()
    resolved = []
    real = huggingface.resolve_max_length
    monkeypatch.setattr(huggingface, "resolve_max_length", lambda *a, **k: resolved.append(1) or real(*a, **k))
    expected = real(model.config, tokenizer, default=huggingface.HFLM._DEFAULT_MAX_LENGTH)
    scores = task.evaluate(model, tokenizer, task.item_ids[:20])
    assert task.evaluate(model, tokenizer, task.item_ids[:20]).equals(scores)
    assert len(resolved) == 1 and task._wrap(model, tokenizer).max_length == expected


def test_lm_eval_s_encodings_are_kept_across_candidates_and_equal(char_lm, monkeypatch):
    """lm-eval encodes every request again for each candidate (a fifth of a small model's scoring
    time); the tokens kept are lm-eval's own, returned as a new list each time."""
    import evo_merge.tasks.lmeval as lmeval

    model, tokenizer = char_lm
    task = resolve_task("evo_arith")
    task.release()
    lm = task._wrap(model, tokenizer)
    calls = []
    encode = lmeval._remembered_encodings(lambda s, **kw: calls.append((s, kw)) or tokenizer.encode(s))
    first = encode("12+3=", None, 4)
    again = encode("12+3=", None, 4)
    assert first == again == tokenizer.encode("12+3=") and first is not again and len(calls) == 1
    again.append(0)  # a caller's edit of its list changes nothing kept
    assert encode("12+3=", None, 4) == first and len(calls) == 1
    encode("12+3=", add_special_tokens=False)  # other arguments: encoded apart
    encode("12+3=", None, 4, something=1)  # an argument this wrapper does not know: passed through, not kept
    encode("12+3=", None, 4, something=1)
    assert len(calls) == 4
    encode("12+3=", None, 2)  # another truncation: its own tokens
    assert len(calls) == 5 and calls[-1] == ("12+3=", {"add_special_tokens": None, "left_truncate_len": 2})
    monkeypatch.setattr(lmeval, "ENCODINGS_KEPT", 0)  # past the cap: encoded each time, not kept
    full = lmeval._remembered_encodings(lambda s, **kw: calls.append(s) or [1])
    full("x"), full("x")
    assert calls[-2:] == ["x", "x"]
    scores = task.evaluate(model, tokenizer, task.item_ids[:40])
    assert lm is task._wrap(model, tokenizer) and task.evaluate(model, tokenizer, task.item_ids[:40]).equals(scores)


def test_resolving_and_scoring_a_task_leave_the_callers_logging_and_datasets_settings(char_lm, monkeypatch):
    """Resolving a task set the lm_eval and datasets loggers to ERROR, turned datasets' progress
    bars off and its download counts off for the rest of the process: a notebook that also used
    datasets lost its bars and warnings. They are set only while lm-eval works."""
    import datasets

    model, tok = char_lm
    names = ("lm_eval", "lm-eval", "datasets", "lm_eval.api.registry")
    levels = {name: logging.getLogger(name).level for name in names}
    bars = datasets.is_progress_bar_enabled()
    monkeypatch.setattr(registry, "_CACHE", {})  # built here, not found built by an earlier test
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    seen_inside = []
    real_evaluate = __import__("lm_eval.evaluator", fromlist=["evaluate"]).evaluate

    def evaluate(*args, **kwargs):  # what lm-eval sees: quiet
        seen_inside.append((logging.getLogger("lm_eval").level, datasets.is_progress_bar_enabled()))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr("lm_eval.evaluator.evaluate", evaluate)
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.INFO)
        datasets.enable_progress_bars()
        task = resolve_task("arith", batch_size=8)
        task.evaluate(model, tok, task.item_ids[:2])
        assert {name: logging.getLogger(name).level for name in names} == dict.fromkeys(names, logging.INFO)
        assert datasets.is_progress_bar_enabled() and datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is True
        assert seen_inside == [(logging.ERROR, False)]
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()


def test_loading_tasks_is_quiet_and_asks_nothing_of_the_network(monkeypatch):
    """lm-eval's registry and datasets' loading run quiet: no progress bars, no download-count
    request. A function added above `load_lm_eval_tasks` took its decorator (audit 99), and a direct
    call printed datasets' bars and asked S3 to count the download."""
    import datasets
    from lm_eval.tasks import TaskManager

    from evo_merge.tasks.lmeval import load_lm_eval_tasks

    seen, load = [], TaskManager.load

    def recording(self, *args, **kwargs):
        seen.append((datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, datasets.is_progress_bar_enabled()))
        return load(self, *args, **kwargs)

    monkeypatch.setattr(TaskManager, "load", recording)
    load_lm_eval_tasks(BENCHMARKS_DIR / "arith")
    assert seen == [(False, False)]


def test_a_task_of_the_users_files_edited_within_a_process_is_read_again(tmp_path, monkeypatch):
    """Tasks are built once per process: a notebook that fixed a task's answer key and ran its
    campaign again got the task as it was before, and the new run folder recorded that data as its
    own (audit 142). A task file or folder is built again at each resolve; the task built before is
    kept (and its warm caches) while its items say the same, replaced where they changed."""
    monkeypatch.setattr(registry, "_CACHE", {})
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "t")
    data = tmp_path / "t" / "test.jsonl"
    spec = str(tmp_path / "t")
    first = resolve_task(spec, limit=4)
    assert resolve_task(spec, limit=4) is first  # unchanged: the same task, not a copy
    docs = [json.loads(line) for line in data.read_text().splitlines()]
    docs[0]["answer"] = docs[0]["answer"] + "0"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    edited = resolve_task(spec, limit=4)
    assert edited is not first and edited.items_digest != first.items_digest
    assert resolve_task(spec, limit=4) is edited
    assert resolve_task("seq", limit=4) is resolve_task("seq", limit=4)  # a shipped name is built once


def test_building_a_task_leaves_the_callers_random_stream_as_it_was(monkeypatch):
    """lm-eval draws from Python's global `random` building a task: a seeded notebook got other draws
    after opening a campaign (audit 142)."""
    import random

    monkeypatch.setattr(registry, "_CACHE", {})
    random.seed(0)
    expected = random.random()
    random.seed(0)
    resolve_task("seq", limit=4)
    assert random.random() == expected
