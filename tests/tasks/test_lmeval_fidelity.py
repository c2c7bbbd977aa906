"""evo-merge's per-item scores against lm-eval's own run of the same task on the same model."""

import copy

import lm_eval
import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from evo_merge.errors import UserError
from evo_merge.tasks.lmeval import LMEvalTask
from evo_merge.tasks.meta import task_meta
from evo_merge.tasks.registry import BENCHMARKS_DIR

MULTIPLE_CHOICE = "doc_to_text: question\noutput_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: answer\n"


@pytest.fixture(scope="module")
def sharp_lm(char_lm):
    """The small random LM with its weights scaled up: its choices then depend on the prompt
    (at the usual init scale its predictions are nearly uniform, whatever precedes them)."""
    model, tok = char_lm
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for weight in sharp.parameters():
            weight.mul_(20)
    return sharp, tok


def local_task(folder, name, body, splits):
    """A task YAML over slices of the shipped arith items: `splits` maps split -> (start, stop)."""
    rows = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    for split, (start, stop) in splits.items():
        (folder / f"{split}.jsonl").write_text("\n".join(rows[start:stop]) + "\n")
    files = "".join(f"    {split}: {folder / split}.jsonl\n" for split in splits)
    path = folder / f"{name}.yaml"
    head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n{files}test_split: test\n"
    path.write_text(head + body)
    return path


def lm_eval_run(path, name, model, tok, batch_size):
    """lm-eval's own scores: its aggregate results and its logged per-doc samples."""
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, log_samples=True, bootstrap_iters=0)
    return out["results"][name], out["samples"][name]


@pytest.mark.parametrize("fewshot", ["fewshot_split: train\n", ""])  # from its own split; from the test docs
def test_few_shot_scores_match_lm_eval_whichever_items_are_asked(tmp_path, sharp_lm, fewshot):
    model, tok = sharp_lm
    body = MULTIPLE_CHOICE + fewshot + "num_fewshot: 3\n"
    path = local_task(tmp_path, "fewshot", body, {"test": (0, 24), "train": (600, 630)})
    results, samples = lm_eval_run(path, "fewshot", model, tok, batch_size=8)
    task = LMEvalTask(path, batch_size=8)
    scores = task.evaluate(model, tok)
    assert scores.tolist() == [float(s["acc"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    assert scores.mean() == results["acc,none"]
    some = task.item_ids[5:9]
    assert task.evaluate(model, tok, some).tolist() == scores[some].tolist()
    assert task.evaluate(model, tok, some[::-1]).tolist() == scores[some[::-1]].tolist()


def test_a_few_shot_seed_draws_the_examples_lm_eval_s_run_with_that_seed_draws(tmp_path, sharp_lm):
    model, tok = sharp_lm
    path = local_task(tmp_path, "fewshot", MULTIPLE_CHOICE + "fewshot_split: train\nnum_fewshot: 3\n",
                      {"test": (0, 24), "train": (600, 630)})
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["fewshot"], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0, fewshot_random_seed=7)
    theirs = [float(s["acc"]) for s in sorted(out["samples"]["fewshot"], key=lambda s: s["doc_id"])]
    seeded, default = LMEvalTask(path, batch_size=8, fewshot_seed=7), LMEvalTask(path, batch_size=8)
    assert seeded.evaluate(model, tok).tolist() == theirs
    contexts = [(d, seeded.tasks["fewshot"].fewshot_context(d)) for d in seeded.tasks["fewshot"].eval_docs]
    assert [c for _, c in contexts] != [default.tasks["fewshot"].fewshot_context(d)
                                        for d in default.tasks["fewshot"].eval_docs]  # another draw than 1234's
    with pytest.raises(UserError, match="fewshot_seed must be a whole number"):
        LMEvalTask(path, fewshot_seed="7")


def group_of_tasks(root):
    """A group YAML over two tasks in subfolders, one of them itself a group of one task, each over
    its own slice of the arith items (data files named absolutely, for lm-eval's own run)."""
    rows = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    for name, (start, stop) in {"part_a": (0, 14), "part_b": (14, 24)}.items():
        (root / name).mkdir()
        (root / name / "test.jsonl").write_text("\n".join(rows[start:stop]) + "\n")
        data = root / name / "test.jsonl"
        head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        (root / name / "t.yaml").write_text(head + MULTIPLE_CHOICE)
    (root / "part_b" / "inner.yaml").write_text("group: inner\ntask: [part_b]\n")
    (root / "both.yaml").write_text("group: both\ntask: [part_a, inner]\n")
    return root / "both.yaml"


def test_a_group_s_tasks_are_its_scenarios_scored_as_lm_eval_scores_each(tmp_path, sharp_lm):
    """Groups (MMLU's subjects, a leaderboard's suite) were refused; each task is now a scenario."""
    model, tok = sharp_lm
    path = group_of_tasks(tmp_path)
    task = LMEvalTask(path, batch_size=8)
    assert task.name == "both" and len(task.item_ids) == 24
    assert task.item_ids[0] == "part_a/arith-test-00000" and set(task.scenarios.values()) == {"part_a", "part_b"}
    scores = task.evaluate(model, tok)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["part_a", "part_b"], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0)
    for name in ("part_a", "part_b"):
        theirs = [float(s["acc"]) for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])]
        ours = scores[[i for i in task.item_ids if task.scenarios[i] == name]]
        assert ours.tolist() == theirs and ours.mean() == out["results"][name]["acc,none"]
    some = [task.item_ids[20], task.item_ids[3], task.item_ids[15]]  # both tasks, out of order
    assert task.evaluate(model, tok, some).tolist() == scores[some].tolist()
    assert LMEvalTask(tmp_path, batch_size=8).item_ids == task.item_ids  # the folder names the same group
    meta = task_meta("suite", task)  # what its cards and results file say
    assert (meta.dataset, meta.metric, meta.num_fewshot, meta.n_items) == ("both", "acc", 0, 24)
    assert meta.config["tasks"] == ["part_a", "part_b"]


def test_a_few_shot_task_shipped_to_another_process_scores_as_the_original(tmp_path, sharp_lm):
    """`__getstate__` keeps a task shippable: its fixed few-shot prompts were keyed by the ids of
    the original docs, so a copy failed with a KeyError on its first item."""
    cloudpickle = pytest.importorskip("cloudpickle")  # what dask ships objects with
    model, tok = sharp_lm
    path = local_task(tmp_path, "fewshot", MULTIPLE_CHOICE + "fewshot_split: train\nnum_fewshot: 3\n",
                      {"test": (0, 8), "train": (600, 630)})
    task = LMEvalTask(path, batch_size=8)
    shipped = cloudpickle.loads(cloudpickle.dumps(task))
    assert shipped.evaluate(model, tok).tolist() == task.evaluate(model, tok).tolist()
