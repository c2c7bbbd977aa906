import pytest
import torch

from evo_merge.errors import UserError
from evo_merge.tasks import FitnessTask, TorchClassificationTask, resolve_task


def _task():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 3, 2])  # an identity classifier gets the first two right
    return TorchClassificationTask("toy", x, y, item_ids=list("abcd"), scenarios=["s", "s", "t", "t"], batch_size=3)


def test_scores_are_per_item_correctness_in_requested_order():
    task = _task()
    model = torch.nn.Identity()
    assert isinstance(task, FitnessTask) and resolve_task(task) is task
    assert task.evaluate(model).tolist() == [1.0, 1.0, 0.0, 0.0]
    scores = task.evaluate(model, item_ids=["d", "a"])
    assert scores.index.tolist() == ["d", "a"] and scores.tolist() == [0.0, 1.0]
    assert task.scenarios == {"a": "s", "b": "s", "c": "t", "d": "t"}


def test_unknown_item_is_a_user_error():
    with pytest.raises(UserError, match="'z' is not in task 'toy'"):
        _task().evaluate(torch.nn.Identity(), item_ids=["a", "z"])


def test_mismatched_lengths_are_a_user_error():
    with pytest.raises(UserError, match="4 inputs but 3 labels"):
        TorchClassificationTask("bad", torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(UserError, match="task 'bad': 3 scenarios for 4 items"):
        TorchClassificationTask("bad", torch.eye(4), torch.zeros(4), scenarios=["s", "s", "t"])


def test_a_model_that_fails_is_handed_back_in_training_mode():
    class Failing(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("out of memory")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="out of memory"):
        _task().evaluate(model)
    assert model.training
