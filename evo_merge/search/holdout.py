"""Held-out items: a part of each task that calibration, anchors and the search never see.

The search keeps the candidates that happen to do well on the items it scores them on, so their
scores there are biased upwards; a user who publishes a merge needs its score on items no
choice was made on. The split is stratified by scenario (each sub-skill keeps its share of
search items), drawn from the campaign's seed (a resumed run holds out the same items) and
recorded in the store, so reading a run needs neither the tasks nor the seed.

`auto` (the default) holds out `AUTO_FRACTION` of a task's items when the task has at least
`AUTO_MIN_ITEMS` items (so at least 100 held-out items, a standard error of at most 0.05 on an
accuracy), and nothing on smaller tasks, whose few items the search and IRT need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from evo_merge.errors import UserError
from evo_merge.search.store import CampaignStore, Record

if TYPE_CHECKING:  # (annotations only: `status` reads the split without loading torch)
    from evo_merge.tasks.base import FitnessTask

AUTO_MIN_ITEMS = 500
AUTO_FRACTION = 0.2
HOLDOUT_META = Record("holdout", dict[str, list[str]])  # store meta: task -> held-out item ids

Holdout = str | int | float | None  # "auto", N items per task, a fraction in (0, 1), or None (off)


def holdout_size(task: str, n_items: int, holdout: Holdout) -> int:
    """How many of a task's `n_items` items to hold out."""
    if holdout is None:
        return 0
    if holdout == "auto":
        return round(AUTO_FRACTION * n_items) if n_items >= AUTO_MIN_ITEMS else 0
    size = round(holdout * n_items) if isinstance(holdout, float) else int(holdout)
    if size >= n_items:
        raise UserError(f"final.holdout: {holdout} leaves no search items in task {task!r} ({n_items} items)")
    return size


def _quotas(sizes: Sequence[int], total: int) -> list[int]:
    """`total` spread over groups in proportion to their sizes (largest remainder), each group
    keeping at least one item for the search."""
    exact = np.asarray(sizes, dtype=float) * total / max(sum(sizes), 1)
    quotas = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - quotas), kind="stable")[: total - int(quotas.sum())]:
        quotas[index] += 1
    return [int(min(q, size - 1)) for q, size in zip(quotas, sizes)]


def scenario_groups(item_ids: Iterable[str], scenarios: Mapping[str, str] | None) -> dict[str, list[str]]:
    """Item ids by scenario, scenarios in the order first met and items in the order given; items
    no scenario names (every item of a task without scenarios) go under "": what holding items out,
    racing finalists and sizing anchors stratify by."""
    groups: dict[str, list[str]] = {}
    for item in item_ids:
        groups.setdefault((scenarios or {}).get(item, ""), []).append(item)
    return groups


def split_items(item_ids: Sequence[str], scenarios: Mapping[str, str] | None, n_holdout: int,
                seed: int) -> list[str]:
    """The held-out ids (in task order): `n_holdout` items drawn per scenario in proportion."""
    if n_holdout <= 0:
        return []
    groups = scenario_groups(item_ids, scenarios)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for items, quota in zip(groups.values(), _quotas([len(g) for g in groups.values()], n_holdout)):
        held.update(items[i] for i in rng.choice(len(items), size=quota, replace=False))
    return [item for item in item_ids if item in held]


def shortfalls(tasks: Mapping[str, FitnessTask], holdout: Holdout,
               held: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """Task -> (items asked for, items held out) where the split holds out fewer than asked:
    each scenario keeps an item for the search, and a scenario's share past that is not moved to
    another (the split of a run that began is drawn again, and must come out as it did)."""
    asked = {name: holdout_size(name, len(task.item_ids), holdout) for name, task in tasks.items()}
    return {name: (n, len(held.get(name, ()))) for name, n in asked.items() if len(held.get(name, ())) < n}


def held_out_scores(store: CampaignStore, key: str, holdout: Mapping[str, Sequence[str]]) -> dict[str, float] | None:
    """Mean score on the held-out items of each task that has some; None unless the evaluation
    was scored on every one of them (or nothing is held out)."""
    held = {task: items for task, items in holdout.items() if items}
    stored = store.item_scores(key) if held else {}
    values = {task: [stored.get(task, {}).get(item) for item in items] for task, items in held.items()}
    if not held or any(v is None for scores in values.values() for v in scores):
        return None
    return {task: float(np.mean(scores)) for task, scores in values.items()}


def check_picks_held_out(store: CampaignStore) -> None:
    """Each pick a run exported was measured on every held-out item first, and its card publishes
    those scores: a pick the store can no longer give them for (its item scores deleted, the
    held-out record edited to other items) was shown by `status` and `report` without them and
    without a word (audit 127). Damaged, naming the pick, for every command that opens the run."""
    holdout = store.get_meta(HOLDOUT_META, {})
    if not any(holdout.values()):
        return
    by_id = {e.id: e for e in store.evaluations()}
    for name, (eid, _) in sorted(store.exported().items()):
        evaluation = by_id.get(eid)
        if evaluation is not None and held_out_scores(store, evaluation.key, holdout) is None:
            raise store.damaged(f"the record of pick {name}'s held-out scores (evaluation {eid}: its item_scores, "
                                "or the held-out items)")


def search_item_count(facts: Mapping, store: CampaignStore) -> int:
    """Items a full-evaluation search scores each candidate on: every item of every task but the
    held-out ones (what the search's saving is measured against)."""
    held = store.get_meta(HOLDOUT_META, {})
    return sum(t["items"] - len(held.get(t["name"], ())) for t in facts["tasks"])


def holdout_items(tasks: Mapping[str, FitnessTask], holdout: Holdout, seed: int) -> dict[str, list[str]]:
    """The held-out item ids of every task (empty where nothing is held out)."""
    return {name: split_items(task.item_ids, task.scenarios, holdout_size(name, len(task.item_ids), holdout), seed)
            for name, task in tasks.items()}
