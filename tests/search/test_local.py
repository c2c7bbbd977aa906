"""The local evaluator's check for non-finite merged weights."""

import pickle
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from evo_merge.search import local
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import CandidateFailed
from evo_merge.search.local import first_non_finite


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).to(dtype)


def test_finite_weights_pass():
    assert first_non_finite(_model(torch.bfloat16)) is None


def test_the_first_parameter_with_a_nan_or_an_infinity_is_named():
    model = _model(torch.bfloat16)
    with torch.no_grad():
        model[1].weight[2, 3] = float("nan")
        model[1].bias[0] = float("inf")
    assert first_non_finite(model) == "1.weight"
    with torch.no_grad():
        model[1].weight[2, 3] = 0.0
    assert first_non_finite(model) == "1.bias"


def test_a_finite_tensor_whose_sum_overflows_is_not_flagged():
    model = _model(torch.float16)
    with torch.no_grad():
        model[0].weight.fill_(60000.0)  # float16 max is 65504: the sum overflows, no entry does
    assert not torch.isfinite(model[0].weight.sum()) and first_non_finite(model) is None


def _runs_out_of_memory(held: list) -> None:
    work = torch.ones(1000)  # what a merge or a forward pass holds on the GPU when it runs out
    held.append(weakref.ref(work))
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("where", ["merging", "evaluating"])
def test_a_candidate_out_of_memory_keeps_nothing_of_its_attempt(monkeypatch, where):
    """The failure yielded for a candidate that ran out of memory holds no frame of the attempt:
    its traceback kept the merge's or the forward pass's tensors alive while the next candidate
    was built and scored (every later candidate on that GPU then ran short too)."""
    held: list = []
    model = nn.Linear(2, 2)

    def build(bench, candidate):
        return _runs_out_of_memory(held) if where == "merging" else model

    monkeypatch.setattr(local, "candidate_kind", lambda method: SimpleNamespace(build=build))
    task = SimpleNamespace(item_ids=["i0"], evaluate=lambda model, tokenizer, items: _runs_out_of_memory(held))
    bench = SimpleNamespace(device=torch.device("cpu"), tokenizer=None, merger=SimpleNamespace(on_tensor=None))
    evaluator = local.LocalEvaluator(bench, {"t": task})
    _, outcome, _ = next(evaluator.evaluate_many([(Candidate("linear", (1.0,)), {"t": None})]))
    assert isinstance(outcome, CandidateFailed) and f"out of memory while {where}" in str(outcome)
    assert held[0]() is None


def test_a_candidate_failing_on_a_later_task_says_how_many_items_its_earlier_tasks_scored(monkeypatch):
    """The items scored before a task failed are counted in the run's totals (they were paid for),
    also from a dask worker, whose failure comes back pickled."""
    model = nn.Linear(2, 2)
    monkeypatch.setattr(local, "candidate_kind", lambda method: SimpleNamespace(build=lambda bench, candidate: model))
    good = SimpleNamespace(name="good", item_ids=["a", "b", "c"], evaluate=lambda model, tokenizer, items: pd.Series(
        1.0, index=list(items)))
    bad = SimpleNamespace(name="bad", item_ids=["x"], evaluate=lambda model, tokenizer, items: {}["broken"])
    bench = SimpleNamespace(device=torch.device("cpu"), tokenizer=None, merger=SimpleNamespace(on_tensor=None))
    evaluator = local.LocalEvaluator(bench, {"good": good, "bad": bad})
    _, outcome, _ = next(evaluator.evaluate_many([(Candidate("linear", (1.0,)), {"good": None, "bad": None})]))
    assert isinstance(outcome, CandidateFailed) and "task 'bad'" in str(outcome) and outcome.items_spent == 3
    back = pickle.loads(pickle.dumps(outcome))
    assert (str(back), back.items_spent) == (str(outcome), 3)
