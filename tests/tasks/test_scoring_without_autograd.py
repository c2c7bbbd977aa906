"""A task is scored without autograd, whoever wrote it: a plugin's forward pass under grad mode
kept a graph of its activations (the resident model's parameters require grad), memory the
memory plan does not count (audit 101)."""

import pandas as pd
import torch

from evo_merge.tasks.base import scores_in_parts


class Probe:
    """A plugin task as the README's example is written: no `torch.no_grad` of its own."""

    name = "probe"
    item_ids = [str(i) for i in range(5)]
    scenarios = None

    def __init__(self):
        self.seen = []

    def evaluate(self, model, tokenizer=None, item_ids=None) -> pd.Series:
        ids = self.item_ids if item_ids is None else list(item_ids)
        out = model(torch.ones(len(ids), 3))
        self.seen.append((torch.is_grad_enabled(), out.grad_fn))
        return pd.Series((out[:, 0] > -1e9).float().tolist(), index=ids, name=self.name)


def test_a_plugin_task_is_scored_with_grad_mode_off():
    model = torch.nn.Linear(3, 2)
    assert all(p.requires_grad for p in model.parameters())
    task = Probe()
    scores = scores_in_parts(task, model, None, None)
    assert scores.tolist() == [1.0] * 5
    assert task.seen == [(False, None)]
    assert torch.is_grad_enabled()  # the caller's mode is back after scoring
