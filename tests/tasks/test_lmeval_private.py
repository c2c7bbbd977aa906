"""Pins what the two functions using private lm-eval API rely on, and the public metric lookup.

If an lm-eval release changes its YAML reader or stops reading evaluation docs through
`test_docs` / `validation_docs`, these tests fail, not a campaign."""

import shutil

from evo_merge.tasks.lmeval import LMEvalTask, _metric_key, _pin_eval_docs, _read_task_yaml, load_lm_eval_tasks
from evo_merge.tasks.registry import BENCHMARKS_DIR


def arith_task():
    name, tasks = load_lm_eval_tasks(BENCHMARKS_DIR / "arith")
    return tasks[name]


def _yaml_with_include_and_function(folder):
    (folder / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (folder / "common.yaml").write_text("output_type: multiple_choice\ntest_split: test\nshared: 1\n")
    (folder / "task.yaml").write_text(
        "include: common.yaml\ntask: pinned\nshared: 2\nprocess: !function helpers.double\n"
    )
    return folder / "task.yaml"


def test_the_yaml_reader_merges_includes_and_imports_functions(tmp_path):
    cfg = _read_task_yaml(_yaml_with_include_and_function(tmp_path))
    assert cfg["task"] == "pinned" and cfg["output_type"] == "multiple_choice"
    assert cfg["shared"] == 2  # the including file wins
    assert "include" not in cfg and cfg["process"](21) == 42


def test_lm_eval_reads_evaluation_docs_through_the_pinned_list():
    task = arith_task()
    docs = _pin_eval_docs(task, limit=6)
    assert len(docs) == 6
    served = [doc for _, doc in task.doc_iterator(samples=[1, 4])]
    assert served[0] is docs[1] and served[1] is docs[4]  # the very objects: no re-read of the dataset


def test_metrics_and_filters_come_from_the_public_task_api(tmp_path):
    arith = arith_task()
    assert _metric_key(arith, None) == ("acc", "none")
    folder = tmp_path / "default_metrics"
    shutil.copytree(BENCHMARKS_DIR / "arith", folder)
    yaml = folder / "evo_arith.yaml"
    text = yaml.read_text()
    yaml.write_text(text[: text.index("metric_list:")])  # multiple choice with lm-eval's default metrics
    task = LMEvalTask(yaml)
    assert (task.metric, task.filter) == ("acc", "none")
    assert set(task.tasks[task.name].higher_is_better()) >= {"acc", "acc_norm"}
    assert _metric_key(task.tasks[task.name], "acc_norm") == ("acc_norm", "none")
