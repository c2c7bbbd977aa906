"""The `FitnessTask` protocol: what the search needs from anything that scores a model.

A task has stable item ids (strings), optionally a scenario (sub-skill) per item, and scores a
model on any subset of its items, one score in [0, 1] per item. IRT needs per-item scores, and
the search scores candidates on a few anchor items only, so both are part of the contract.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from evo_merge.errors import UserError

# a task is asked for at most this many items at a time, so a long evaluation reports as it goes;
# a task's scores do not depend on which items are asked with them (lm-eval's included: tested)
ITEMS_PER_CALL = 512


@runtime_checkable
class FitnessTask(Protocol):
    """Scores a model item by item. `evaluate` returns a float Series indexed by item id.

    Optional: a `higher_is_better` attribute; False makes a campaign refuse to maximise the task
    (its `direction` must be `minimize`), as the lm-eval adapter reads it from lm-eval."""

    name: str

    @property
    def item_ids(self) -> list[str]:
        """All item ids, in a fixed order."""
        ...

    @property
    def scenarios(self) -> dict[str, str] | None:
        """Item id -> scenario (sub-skill), or None when the task has no scenarios."""
        ...

    def evaluate(self, model: Any, tokenizer: Any = None, item_ids: Sequence[str] | None = None) -> pd.Series:
        """Scores in [0, 1] for `item_ids` (all items when None), as a Series indexed by item id (in
        any order: callers read it by id)."""
        ...


class ItemTable:
    """The protocol's item side for a task whose items sit at fixed positions (a dataset's rows,
    a tensor's): ids and scenarios as the protocol reads them, and the positions of requested
    ids, an unknown one a user error naming it. Subclasses call `_set_items` once."""

    name: str

    def _set_items(self, ids: Sequence[str], scenarios: Sequence[str] | None) -> None:
        self._ids = list(ids)
        self._index = {item: i for i, item in enumerate(self._ids)}
        if scenarios is not None and len(scenarios) != len(self._ids):
            raise UserError(f"task {self.name!r}: {len(scenarios)} scenarios for {len(self._ids)} items (one per item)")
        self._scenarios = dict(zip(self._ids, scenarios)) if scenarios is not None else None

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def scenarios(self) -> dict[str, str] | None:
        return dict(self._scenarios) if self._scenarios is not None else None

    def _positions(self, item_ids: Sequence[str] | None) -> list[int]:
        """Positions of `item_ids` (every item when None), in that order."""
        return item_positions(self.name, self._index, item_ids)


def item_positions(task_name: str, index: dict[str, int], item_ids: Sequence[str] | None) -> list[int]:
    """Positions of the requested items; an unknown id is a user error naming it."""
    if item_ids is None:
        return list(index.values())
    missing = [i for i in item_ids if i not in index]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"item {missing[0]!r} is not in task {task_name!r}{more}")
    return [index[i] for i in item_ids]


def score_series(task_name: str, item_ids: Sequence[str], scores: Sequence[float]) -> pd.Series:
    """Per-item scores as a Series, checked to be numbers in [0, 1] (IRT needs bounded scores)."""
    values = []
    for item, score in zip(item_ids, scores):
        try:
            values.append(float(score))
        except (TypeError, ValueError):
            raise UserError(f"task {task_name!r} scored item {item!r} as {score!r}: scores must be numbers in "
                            "[0, 1]") from None
    series = pd.Series(values, index=pd.Index(list(item_ids), name="item"), name=task_name)
    bad = series[(series < 0) | (series > 1) | series.isna()]
    if len(bad):
        raise UserError(f"task {task_name!r} scored item {bad.index[0]!r} as {bad.iloc[0]}: scores must lie in [0, 1]")
    return series


def checked_scores(task: FitnessTask, model: Any, tokenizer: Any, item_ids: Sequence[str] | None) -> pd.Series:
    """`task.evaluate`, its answer held to what the built-in tasks guarantee, since a plugin's may
    not be: a score for exactly the items asked for (every item when None), each once, in [0, 1].
    A wrong answer stops the run naming the task and the item, before it reaches the store. Scored
    without autograd: a plugin's forward passes kept a graph of activations for a backward pass
    that never comes, memory the memory plan does not count."""
    import torch

    with torch.no_grad():
        series = task.evaluate(model, tokenizer, item_ids)
    if not isinstance(series, pd.Series):
        raise UserError(f"task {task.name!r} returned a {type(series).__name__}, not a pandas Series of scores "
                        "indexed by item id")
    wanted = list(task.item_ids) if item_ids is None else list(item_ids)
    got = [str(i) for i in series.index]
    asked, answered = set(wanted), set(got)  # once: this runs on every evaluation, thousands of items each
    if len(answered) < len(got):
        twice = next(i for i, n in Counter(got).items() if n > 1)
        raise UserError(f"task {task.name!r} returned item {twice!r} twice")
    if extra := next((i for i in got if i not in asked), None):
        raise UserError(f"task {task.name!r} returned a score for item {extra!r}, which was not asked for")
    if missing := [i for i in wanted if i not in answered]:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"task {task.name!r} returned no score for item {missing[0]!r}{more}")
    return score_series(task.name, got, series.to_numpy())


def scores_in_parts(task: FitnessTask, model: Any, tokenizer: Any, item_ids: Sequence[str] | None,
                    scored: Callable[[int, int], None] | None = None) -> pd.Series:
    """`checked_scores` of the items (every item when None), asked at most `ITEMS_PER_CALL` at a
    time, `scored(done, total)` told after each call: at 7B one task's items take minutes."""
    ids = list(task.item_ids if item_ids is None else item_ids)
    parts = []
    for start in range(0, len(ids), ITEMS_PER_CALL):
        parts.append(checked_scores(task, model, tokenizer, ids[start:start + ITEMS_PER_CALL]))
        if scored is not None:
            scored(min(start + ITEMS_PER_CALL, len(ids)), len(ids))
    return pd.concat(parts) if parts else checked_scores(task, model, tokenizer, [])
