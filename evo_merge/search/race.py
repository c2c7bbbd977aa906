"""The final phase as a race: a finalist leaves once another finalist is as good on every task.

Measuring the finalists on every search item is most of a campaign's item bill, and about half
of them turn out dominated by another finalist once measured: their full measurement buys
nothing. So first they are scored on growing stratified random samples of each task's search
items (the same items for all, so two finalists are compared item by item), and after each
stage a finalist leaves when another one is, with confidence (`RACE_Z` standard errors of the
paired difference), better on every task, or worse by at most the tolerance: then the leaver
could have added at most the tolerance to any task's best or to the front.

Each stage's sample is drawn per scenario (its share of the task, at least one item), from the
campaign seed, and nested in the next; a finalist's anchors count where they fall in the sample,
so they are not scored again. The sample is random, so a stage's score is unbiased for the
task's score on the search items whatever the anchors were, with one exception kept for the run
folders that exist (`SEED_OFFSET`). The paired difference's variance is
measured per scenario, with the finite-population correction, and floored at 1/n so that a
scenario where two finalists agree on every sampled item is not taken as certain. A leaver keeps
its partial scores and its estimate; `RACE_META` records at which stage and by whom it was
beaten, for `status`. Each stage builds every live finalist again: the race trades items for
merges.

By default (`final.measure_whole: picks`) the survivors are not all measured on every item: the
picks are chosen among them on the last stage's sample, which all of them share, so the choice
rests on paired item-by-item differences, and only the picks are then measured whole. On the
tiny-lm benchmark campaigns this kept the measured front's hypervolume of measuring every survivor
and cut the final phase's items by a further third to a half (README, "What IRT scoring saves").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from typing_extensions import NotRequired, TypedDict

from evo_merge.search.evaluator import Items, ItemScores
from evo_merge.search.holdout import scenario_groups
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import Record


class Leaver(TypedDict):
    stage: float  # the fraction of the items at which it left
    items: int
    beaten_by: str  # the key of the finalist it was worse than


class Compared(TypedDict):
    """With `measure_whole: picks`: on what the survivors were compared."""
    stage: float
    items: int
    scores: dict[str, dict[str, float]]  # key -> task -> score on the last stage's sample
    measured: NotRequired[list[str]]  # the survivors scored whole when first stored: warm-ups (warmups_scored_whole)


class RaceRecord(TypedDict):
    finalists: int
    tolerance: float
    left: dict[str, Leaver]  # key -> where it left the race
    failed: NotRequired[list[str]]  # finalists that could not be scored
    compared: NotRequired[Compared]


class PickRounds(TypedDict):
    """How the picks were chosen where some were chosen on the race's sample (`measure_picks`)."""
    measured_before: list[str]  # keys among those compared that were measured whole before the picks
    rounds: list[list[str]]  # each round's picks (keys), the last the picks exported


PICKS_META = Record("pick_rounds", PickRounds)  # store meta, written as `front.measure_picks` chooses the picks


RACE_Z = 2.5  # a leaver's paired difference must clear the tolerance by this many SEs on every task
RACE_META = Record("race", RaceRecord)  # store meta: the race as it was run
RACE_STAGE = "final: race"
# The sample's seed: the campaign seed + 2. Anchor set s (`estimator.anchor_sets`) is drawn from
# the seed + s, so anchor set 2 shares this seed, drawn by another procedure: on a 6 x 3 tiny-lm
# campaign 8 of its 20 arith anchors fell in the 25% stage (5 by chance), and a finalist chosen on
# those anchors starts the race with them. Either seed changed would change the samples or
# anchors of every run folder that exists, which a resume draws again from the seed.
SEED_OFFSET = 2
# Below this many items a task's best finalist is chosen on a sample that can miss it by up to about
# a point of accuracy (scripts/bench_pick_sample.py, 200-item tasks: 0.6-1.2 points on 50 items,
# 0.8-2.4 on 25, 0.2-0.4 on 100)
MIN_PICK_SAMPLE = 100


@dataclass(frozen=True)
class Stratum:
    """One scenario of a task: its share of the task's search items and its items in sample order."""

    weight: float
    order: tuple[str, ...]


class RaceSample:
    """Nested stratified samples of each task's search items, one per stage fraction."""

    def __init__(self, items: Mapping[str, Sequence[str]], scenarios: Mapping[str, Mapping[str, str] | None],
                 seed: int):
        rng = np.random.default_rng(seed)
        self.strata: dict[str, list[Stratum]] = {}
        for task, ids in items.items():
            groups = scenario_groups(ids, scenarios.get(task))
            self.strata[task] = [Stratum(len(g) / len(ids), tuple(g[i] for i in rng.permutation(len(g))))
                                 for g in groups.values()]

    @staticmethod
    def _size(stratum: Stratum, fraction: float) -> int:
        return min(len(stratum.order), max(1, round(fraction * len(stratum.order))))

    def items(self, fraction: float) -> dict[str, list[str]]:
        """Each task's sample at `fraction` of its search items."""
        return {task: [i for s in strata for i in s.order[: self._size(s, fraction)]]
                for task, strata in self.strata.items()}

    def score(self, scores: ItemScores, fraction: float) -> dict[str, float]:
        """Per task, the sample's estimate of the score on every search item."""
        return {task: sum(s.weight * float(np.mean([scores[task][i] for i in s.order[: self._size(s, fraction)]]))
                          for s in strata)
                for task, strata in self.strata.items()}

    def difference(self, a: ItemScores, b: ItemScores, fraction: float) -> dict[str, tuple[float, float]]:
        """Per task, b's score minus a's on the sample at `fraction` (stratum means weighted by
        their shares), with its standard error from the paired item differences."""
        out = {}
        for task, strata in self.strata.items():
            mean = variance = 0.0
            for s in strata:
                n, total = self._size(s, fraction), len(s.order)
                d = np.array([b[task][i] - a[task][i] for i in s.order[:n]])
                spread = float(np.var(d, ddof=1)) if n > 1 else 1.0
                mean += s.weight * float(d.mean())
                variance += s.weight**2 * max(spread, 1.0 / n) / n * (1.0 - n / total)
            out[task] = (mean, variance**0.5)
        return out


def beaten(scores: Mapping[str, ItemScores], sample: RaceSample, fraction: float, objectives: Objectives,
           z: float = RACE_Z, tolerance: float = 0.0) -> dict[str, str]:
    """Finalists that another one, staying, beats on every task by more than `z` SEs (less
    `tolerance`): loser key -> winner key. Finalists are taken best balanced sample score first,
    and each is judged against those kept before it, so two within the tolerance of each other do
    not both leave, and every winner stays in this stage."""
    signs = dict(zip(objectives.names, objectives.signs()))
    order = sorted(scores, key=lambda k: -objectives.balanced(sample.score(scores[k], fraction)))
    kept: list[str] = []
    out: dict[str, str] = {}
    for a in order:
        for b in kept:
            diff = sample.difference(scores[a], scores[b], fraction)
            if all(signs[t] * mean - z * se > -tolerance for t, (mean, se) in diff.items()):
                out[a] = b
                break
        else:
            kept.append(a)
    return out


Score = Callable[[Sequence[str], Items, str], Mapping[str, ItemScores]]


def run_race(finalists: Sequence[str], sample: RaceSample, stages: Sequence[float], objectives: Objectives,
             score: Score, tolerance: float = 0.0) -> tuple[list[str], dict[str, dict], float | None]:
    """Race `finalists` (keys) through `stages` (growing fractions). `score(keys, items, label)`
    returns the item scores of the keys that could be scored on `items` (a failed one is left
    out, and out of the race). Returns the survivors in order; per leaver its stage, the items
    per finalist at that stage and its winner; and the last stage the survivors were all scored
    at (None: no stage ran, fewer than two finalists)."""
    live, left, last = list(finalists), {}, None
    for fraction in stages:
        if len(live) < 2:
            break
        items = sample.items(fraction)
        scores = score(live, items, f"{RACE_STAGE} ({fraction * 100:g}% of the items)")
        for loser, winner in beaten(scores, sample, fraction, objectives, tolerance=tolerance).items():
            left[loser] = {"stage": fraction, "items": sum(map(len, items.values())), "beaten_by": winner}
        live, last = [k for k in live if k in scores and k not in left], fraction
    return live, left, last


def race_summary(record: Mapping | None) -> str | None:
    """One line on a stored race: how many finalists left it, at which stage, and, where only the
    picks were measured on every item, on what the survivors were compared (None: no race ran)."""
    if not record or record["finalists"] < 2:  # no stage runs for a single finalist
        return None
    stages = Counter(leaver["stage"] for leaver in record["left"].values())
    at = ", ".join(f"{n} at {stage * 100:g}% of the items" for stage, n in sorted(stages.items()))
    compared = record.get("compared")
    # warm-ups, measured on every item before, race but never leave: counted apart so the counts add up
    before = len(compared.get("measured", ())) if compared else 0
    line = (f"final-phase race: {len(record['left'])} of {record['finalists'] - before} finalists left it before "
            f"every item" + (f" ({at})" if at else ""))
    if before:
        line += (f"; {before} more {'was a warm-up' if before == 1 else 'were warm-ups'} measured on every item "
                 "before the final phase, which the race does not drop")
    if failed := record.get("failed"):
        line += f"; {len(failed)} could not be scored (see the failures)"
    if compared:
        n = record["finalists"] - len(record["left"])  # the survivors and every warm-up: what the picks are among
        line += (f"; the {n} that stayed {'was' if n == 1 else 'were'} compared on {compared['stage'] * 100:g}% "
                 "of the items, and only the picks among them measured on every item")
    return line


def rounds_summary(record: Mapping | None) -> str | None:
    """One line on picks chosen again after their measurement (`measure_picks`): how many of the
    first round's fell behind and how many more candidates were measured whole (None: none did)."""
    if not record or not record["rounds"]:
        return None
    first, final = set(record["rounds"][0]), set(record["rounds"][-1])
    added = {k for keys in record["rounds"][1:] for k in keys} - first - set(record["measured_before"])
    if not added and first == final:
        return None
    return (f"picks: {len(first - final)} of the {len(first)} chosen on the race's sample fell behind once measured "
            f"on every item and {len(final - first)} joined, chosen again on what was known whole; {len(added)} more "
            f"{'candidate' if len(added) == 1 else 'candidates'} measured on every item for it")


def small_pick_samples(search_items: Mapping[str, int], stages: Sequence[float], measure_whole: str) -> str | None:
    """A note for the start of a run whose picks will be chosen on a race sample of fewer than
    `MIN_PICK_SAMPLE` items of some task (tasks of a few hundred items, e.g. an lm-eval `limit`),
    while the user can still give the race a larger last stage. None when the samples are large
    enough, there is no race, or every survivor is measured whole (the picks are then chosen on
    every item)."""
    if not stages or measure_whole != "picks":
        return None
    fraction = stages[-1]
    small = {task: n for task, n in search_items.items() if round(fraction * n) < min(n, MIN_PICK_SAMPLE)}
    if not small:
        return None
    where = ", ".join(f"about {round(fraction * n)} of {task}'s {n}" for task, n in small.items())
    fewest = min(small.values())
    stage = math.ceil(MIN_PICK_SAMPLE / fewest * 100) / 100  # two decimals, rounded up: it samples MIN_PICK_SAMPLE
    # a last stage over half the task saves little over measuring every finalist: then only `race: []`
    larger = f"race: [{stage:g}] chooses on {MIN_PICK_SAMPLE}, " if fewest >= 2 * MIN_PICK_SAMPLE else ""
    return (f"final.race: the picks will be chosen on the race's last sample, {where} search items; a sample of fewer "
            f"than {MIN_PICK_SAMPLE} can miss a task's best finalist by up to about a point of accuracy: {larger}"
            "race: [] on every item")
