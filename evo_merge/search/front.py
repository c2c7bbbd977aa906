"""The final phase: measure what may be exported, then pick among measured candidates.

Estimates rank candidates well on average but not at the top: the best estimate for a task is
often not the best candidate for it. So for every requested pick (best per task, balanced, each
named weighting) the `top_k` best candidates *for that pick* by estimate (pooled over similar
recipes, `pool_estimates`: a candidate's neighbours correct its own few anchors) are finalists, together
with front members whose estimates add the most hypervolume and the standard merges (baselines);
near-duplicates are skipped so every slot buys a distinct candidate. The finalists race
(`race_finalists`, the statistics in `race`): one that another finalist matches on every task
within the tolerance leaves. Picks are then chosen on scored items, never on estimates: on the
race's last sample, shared by every survivor (`measure_whole: picks`, the default), or on every
search item (`survivors`); a pick that falls behind once measured whole is chosen again
(`pick_rounds`). The picks are measured on every item they miss (`measure_picks`):
held-out items serve only to report what is published, so they are scored for the picks alone,
and for the base and endpoints to compare with.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import cache, partial

import numpy as np

from evo_merge.config import FinalSpec
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import Items, ItemScores
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.objectives import Objectives
from evo_merge.search.pooling import pooled
from evo_merge.search.race import PICKS_META, RACE_META, SEED_OFFSET, RaceSample, run_race
from evo_merge.search.space import SearchSpace
from evo_merge.search.store import BASELINE, BASELINES_META, POOLED_META, CampaignStore, Evaluation, competing

MEASURE_STAGE = "final: measuring the finalists"
PICKS_STAGE = "final: measuring the picks on every item"
PickScore = Callable[[Mapping[str, float]], float]  # task scores -> how good for the pick (higher is better)


def candidates(store: CampaignStore) -> list[Evaluation]:
    """The store's successful search and baseline evaluations (`competing`), in a fixed order: ids
    follow completion order on a cluster, so ties are broken by generation and key."""
    return sorted(competing(store.evaluations()), key=lambda e: (e.generation or 0, e.key))


def front(store: CampaignStore, objectives: Objectives) -> list[Evaluation]:
    """Non-dominated candidates, by estimated scores and directions."""
    return non_dominated(candidates(store), objectives)


def non_dominated(evaluations: Sequence[Evaluation], objectives: Objectives) -> list[Evaluation]:
    points = np.array([objectives.vector(e.estimates) for e in evaluations])
    points = points.reshape(len(evaluations), len(objectives.names))
    return [evaluations[i] for i in sorted(objectives.non_dominated(points))]


def pick_scores(objectives: Objectives, final: FinalSpec) -> dict[str, PickScore]:
    """The score each requested pick maximises: a task's oriented score, the balanced mean, or a named weighting."""
    scores: dict[str, PickScore] = {}
    if "best_per_task" in final.export:
        scores.update({f"best-{task}": partial(objectives.goodness, task=task) for task in objectives.names})
    if "balanced" in final.export:
        scores["balanced"] = objectives.balanced
    for name, pick in final.picks.items():
        scores[name] = Objectives.of(objectives.names, objectives.directions, pick.weights).balanced
    return scores


class Distinct:
    """Whether two candidates are near-duplicates: the same method and either the same recipe
    rounded to 2 decimals, or every genome coordinate (scaled to its searched range) closer than
    `tolerance`."""

    def __init__(self, space: SearchSpace, tolerance: float):
        self.space, self.tolerance = space, tolerance

    def _coordinates(self, candidate: Candidate) -> np.ndarray:
        """The recipe's coordinates (`SearchSpace.coordinates`), and any parameter outside the
        genome as it is: two merges that differ there are two candidates."""
        searched = self.space.methods.get(candidate.method, {})
        fixed = [float(v) for k, v in candidate.params if k not in searched]
        return np.concatenate([self.space.coordinates(candidate), fixed])

    def same(self, a: Candidate, b: Candidate) -> bool:
        if a.method != b.method or len(a.params) != len(b.params):
            return False
        ca, cb = self._coordinates(a), self._coordinates(b)
        rounded = np.array_equal(np.round([*self.space.coefficients(a), *a.param_dict.values()], 2),
                                 np.round([*self.space.coefficients(b), *b.param_dict.values()], 2))
        return rounded or float(np.max(np.abs(ca - cb), initial=0.0)) < self.tolerance

    def first(self, ranked: Sequence[Evaluation], k: int, taken: Sequence[Evaluation] = ()) -> list[Evaluation]:
        """The first `k` of `ranked` that are no near-duplicate of one another nor of `taken`."""
        chosen: list[Evaluation] = []
        for e in ranked:
            if len(chosen) == k:
                break
            candidate = Candidate.from_key(e.key)
            if not any(self.same(candidate, Candidate.from_key(o.key)) for o in (*taken, *chosen)):
                chosen.append(e)
        return chosen


def front_members(members: Sequence[Evaluation], objectives: Objectives, n: int, distinct: Distinct,
                  choice: str = "hypervolume") -> list[Evaluation]:
    """Up to `n` distinct front members to measure: the best estimate per task first, then, one at
    a time, the member whose estimates add the most hypervolume to those chosen (`choice`
    "hypervolume"), or the member farthest from those chosen in oriented estimate space ("spread",
    the rule before defaults version 11). Farthest-first spends slots on the front's thin corners;
    hypervolume-first on the members that would enlarge the measured front most were the
    estimates right, which is what the final phase is judged by."""
    chosen: list[Evaluation] = []
    for task in objectives.names:
        chosen += distinct.first(sorted(members, key=lambda e: -objectives.goodness(e.estimates, task)), 1, chosen)
    chosen = chosen[:n]
    rest = distinct.first(members, len(members), chosen)
    return chosen + FRONT_CHOICES[choice](chosen, rest, objectives, n - len(chosen))


def _by_hypervolume(chosen: Sequence[Evaluation], rest: Sequence[Evaluation], objectives: Objectives,
                    k: int) -> list[Evaluation]:
    """Up to `k` of `rest`, each the one adding the most hypervolume to `chosen` and those taken
    before it (the first of equal gains). Lazily: a member's gain only shrinks as others are taken
    (hypervolume is submodular), so a gain computed before bounds it, and a member is taken once its
    gain, computed now, is at least every other's bound; the same choice as computing every gain at
    every step, in a few gains a step past the first, which matters with many tasks."""
    points = [objectives.vector(e.estimates) for e in chosen]
    vectors = [objectives.vector(e.estimates) for e in rest]
    bounds = [(-np.inf, i) for i in range(len(rest))]  # (-bound on the gain, index): the first is the best
    taken: list[Evaluation] = []
    while len(taken) < k and bounds:
        while True:
            _, i = heapq.heappop(bounds)
            gain = objectives.hypervolume_gain(np.array(points), vectors[i])
            if not bounds or (gain, -i) >= (-bounds[0][0], -bounds[0][1]):
                break
            heapq.heappush(bounds, (-gain, i))
        taken.append(rest[i])
        points.append(vectors[i])
    return taken


def _farthest(chosen: Sequence[Evaluation], rest: Sequence[Evaluation], objectives: Objectives,
              k: int) -> list[Evaluation]:
    """Up to `k` of `rest`, each the one farthest from `chosen` and those taken before it, in oriented
    estimate space (the first of equals)."""
    signs, rest, taken = objectives.signs(), list(rest), []
    points = [signs * objectives.vector(e.estimates) for e in chosen]
    while len(taken) < k and rest:
        gaps = [float(np.min(np.linalg.norm(np.array(points) - signs * objectives.vector(e.estimates), axis=1)))
                for e in rest]
        taken.append(rest.pop(int(np.argmax(gaps))))
        points.append(signs * objectives.vector(taken[-1].estimates))
    return taken


# final.front_choice -> how the front members past each task's best are taken (config holds the names)
FRONT_CHOICES: dict[str, Callable[[Sequence[Evaluation], Sequence[Evaluation], Objectives, int], list[Evaluation]]] = {
    "hypervolume": _by_hypervolume, "spread": _farthest}


def to_measure(store: CampaignStore, objectives: Objectives, final: FinalSpec, distinct: Distinct) -> list[Evaluation]:
    """What the final phase measures (`finalists`, on estimates pooled over similar recipes with
    `pool_estimates`, the run's baselines with `final.baselines`). Returned as stored (with their own
    estimates)."""
    pool = candidates(store)
    ranked = pooled_as_first(store, pool, distinct.space, objectives.names) if final.pool_estimates else pool
    baselines = store.get_meta(BASELINES_META, {}) if final.baselines else {}
    own = {e.key: e for e in pool}
    return [own[e.key] for e in finalists(ranked, objectives, final, distinct, baselines)]


def finalists(ranked: Sequence[Evaluation], objectives: Objectives, final: FinalSpec, distinct: Distinct,
              baselines: Collection[str] = ()) -> list[Evaluation]:
    """Each pick's top-k distinct candidates of `ranked` by estimate, `evaluate_top` front members
    (`front_members`, by `final.front_choice`), and the `baselines` among them; in that order, each once."""
    chosen = [e for score in pick_scores(objectives, final).values()
              for e in distinct.first(sorted(ranked, key=lambda e: -score(e.estimates)), final.top_k)]
    chosen += front_members(non_dominated(ranked, objectives), objectives, final.evaluate_top, distinct,
                            final.front_choice)
    chosen += [e for e in ranked if e.key in baselines]
    return list({e.key: e for e in chosen}.values())


def pooled_as_first(store: CampaignStore, pool: Sequence[Evaluation], space: SearchSpace,
                    names: Sequence[str]) -> list[Evaluation]:
    """`pool` with the estimates pooled over similar recipes (`pooling.pooled`) when the final
    phase first chose its finalists, stored then: pooling leans on measured candidates, so the
    measurements the final phase (or `export --pick`) adds would move them, and a resumed final
    phase would choose other finalists."""
    stored = store.get_meta(POOLED_META)
    if stored is None:
        stored = {e.key: e.estimates for e in pooled(pool, space, names) if e.measured is None}  # (measured: as is)
        store.set_meta(POOLED_META, stored)
    return [replace(e, estimates=stored.get(e.key, e.estimates)) for e in pool]


def race_finalists(ledger: EvaluationLedger, finalists: Sequence[Evaluation], objectives: Objectives,
                   final: FinalSpec, seed: int) -> tuple[list[Evaluation], Callable[[str], dict[str, float]] | None]:
    """The finalists that survive the race, scored through the log (stored as they arrive, so a
    resumed race looks its stages up and takes the same decisions), the leavers recorded in
    `RACE_META`; and, with `measure_whole: picks`, the score on the last stage's sample of a
    candidate that has its items (every survivor, and every candidate measured whole), the
    survivors' recorded too. A finalist measured before (`export --pick`) races like the others
    but is no leaver: it has every item already."""
    scoring, store = ledger.scoring, ledger.store
    sample = RaceSample({n: scoring.search_ids(n) for n in scoring.names},
                        {n: scoring.tasks[n].scenarios for n in scoring.names}, seed + SEED_OFFSET)

    def score(keys: Sequence[str], items: Items, label: str) -> dict[str, ItemScores]:
        ledger.measure([store.get(k) for k in keys], label, held_out=False, among=items)
        stored = {k: store.item_scores(k) for k in keys}
        return {k: s for k, s in stored.items() if all(set(ids) <= s.get(t, {}).keys() for t, ids in items.items())}

    live, left, last = run_race([e.key for e in finalists], sample, final.race, objectives, score,
                                final.race_tolerance)
    left = {key: leaver for key, leaver in left.items() if store.get(key).measured is None}
    failures = store.measure_failures()
    record: dict = {"finalists": len(finalists), "tolerance": final.race_tolerance, "left": left,
                    "failed": sorted(e.key for e in finalists if e.key in failures)}
    on_sample = None
    if final.measure_whole == "picks" and last is not None:
        @cache  # the survivors' scores serve the record here and the picks' choice after
        def on_sample(key: str) -> dict[str, float]:
            return sample.score(store.item_scores(key), last)

        record["compared"] = {"stage": last, "items": sum(map(len, sample.items(last).values())),
                              "scores": {k: on_sample(k) for k in live},
                              "measured": sorted(warmups_scored_whole(ledger, [e.key for e in finalists]))}
    store.set_meta(RACE_META, record)
    return [e for e in finalists if e.key in live or e.measured is not None], on_sample


def warmups_scored_whole(ledger: EvaluationLedger, keys: Iterable[str]) -> set[str]:
    """The keys of standard merges scored on every search item when first stored, before any
    final phase: the warm-ups. (`items_evaluated` counts what an evaluation was first scored on;
    the final phase's measurement adds to `items_measured`.)"""
    whole = sum(len(ledger.scoring.search_ids(name)) for name in ledger.scoring.names)
    return {k for k in keys if (e := ledger.store.get(k)).phase == BASELINE and e.items_evaluated >= whole}


def measure_final(ledger: EvaluationLedger, objectives: Objectives, final: FinalSpec, space: SearchSpace,
                  references: Sequence[Candidate] = (), seed: int = 0) -> list[Evaluation]:
    """Measure the final phase's candidates on the search items, those that survive its race
    when `final.race` has stages (and the references' held-out items). Returns what the picks
    are chosen among: every candidate measured on every search item (those measured before, e.g.
    by `evo-merge export`, included) and the race's survivors. With `measure_whole: picks`, all of
    them carry their scores on the race's last sample in place of a measurement, so that none is
    compared on other items than the rest (`measure_picks` then measures the picks)."""
    chosen = to_measure(ledger.store, objectives, final, Distinct(space, final.distinct))
    on_sample = None
    # a race that ran runs again from the store, whatever was measured since (the picks, `export --pick`), so
    # that a resumed run compares as the first did; full evaluation, having measured every candidate, races none
    raced = ledger.store.get_meta(RACE_META) is not None
    if final.race and (raced or any(e.measured is None for e in chosen)):
        chosen, on_sample = race_finalists(ledger, chosen, objectives, final, seed)
    if on_sample is None:
        ledger.measure(chosen, MEASURE_STAGE, held_out=False)
    ledger.measure([e for e in map(ledger.store.get, (c.key for c in references)) if e is not None], MEASURE_STAGE)
    measured = [e for e in candidates(ledger.store) if e.measured is not None]
    if on_sample is None:
        return measured
    pool = {e.key: e for e in [*measured, *chosen]}
    order = {e.key: i for i, e in enumerate(candidates(ledger.store))}  # ties and front-N go in one order: a
    # resumed final phase found more candidates measured (the picks) and listed them first
    return [replace(pool[key], measured=on_sample(key)) for key in sorted(pool, key=order.__getitem__)]


def measure_picks(ledger: EvaluationLedger, pool: Sequence[Evaluation], objectives: Objectives,
                  final: FinalSpec) -> dict[str, Evaluation]:
    """Choose the picks among `pool` (`pick_rounds`) and score them on the items they miss: the
    rest of the search items where the race's sample chose them, then the held-out items, what
    their cards and the report publish. Every round follows from the stored scores and the
    candidates measured whole before the first (recorded in `PICKS_META` with each round's picks),
    so a resumed run chooses the same picks. A pick whose scoring fails is no pick (it would be
    exported unmeasured): that round is chosen again without it. Returns the picks as stored."""
    store = ledger.store
    record = store.get_meta(PICKS_META)
    if record is None:  # written before anything is measured: a resume knows what was measured before
        record = {"measured_before": sorted(e.key for e in pool if store.get(e.key).measured is not None),
                  "rounds": []}
        store.set_meta(PICKS_META, record)
    picks: dict[str, Evaluation] = {}
    for index, picks, settled in pick_rounds(pool, objectives, final, record["measured_before"],
                                             lambda key: store.get(key).measured,
                                             lambda: store.measure_failures().keys()):
        keys = list(dict.fromkeys(e.key for e in picks.values()))
        record["rounds"][index:] = [keys]  # a resume replays the rounds: each written at its place
        store.set_meta(PICKS_META, record)
        # a stage of its own per round: a log says a stage once, when it ends, and the settled round
        # (the held-out items: minutes at 7B) went unsaid under the first round's name. There are two
        # rounds at least, so the first is numbered too: a first round with nothing to measure says
        # nothing, and a log showed "(round 2)" after no first
        stage = f"{PICKS_STAGE} (round {index + 1})"
        ledger.measure([store.get(k) for k in keys], stage, held_out=settled)  # held-out items: the picks alone
    return {name: store.get(e.key) for name, e in picks.items()}  # the last round's: settled, none failed


def pick_rounds(pool: Sequence[Evaluation], objectives: Objectives, final: FinalSpec, before: Iterable[str],
                whole: Callable[[str], Mapping[str, float] | None],
                failed: Callable[[], Iterable[str]] = frozenset) -> Iterator[tuple[int, dict[str, Evaluation], bool]]:
    """Each round's number, its picks among `pool` and whether they are the last (settled); the
    caller measures a round's picks on every search item before asking for the next, and the last
    round yielded holds the picks.

    The first round chooses on the scores `pool` carries (with a race, every candidate's on its
    last sample, so that all are compared on the same items). A pick chosen on a sample can fall
    behind once measured whole (its sample score was lucky), behind another candidate's sample
    score or measurement: `pareto.csv` would then show a `front-N` pick dominated, or a better
    candidate than a `best-<task>` pick. So each later round chooses on what is known of each
    candidate (`whole`, its score on every search item, for those measured before, `before`, and
    those picked in an earlier round; its sample score elsewhere), until every pick is known
    whole. `failed`: the keys to leave out (their scoring failed): a round with a failed pick is
    chosen again without it, under the same number."""
    known, index = set(before), 0
    while True:
        out = set(failed())
        scored = [e if index == 0 or e.key not in known else replace(e, measured=whole(e.key)) for e in pool
                  if e.key not in out]
        chosen = choose(scored, objectives, final)
        keys = {e.key for e in chosen.values()}
        settled = index > 0 and keys <= known
        yield index, chosen, settled
        if keys & set(failed()):
            continue
        if settled:
            return
        known |= keys
        index += 1


def choose(measured: Sequence[Evaluation], objectives: Objectives, final: FinalSpec) -> dict[str, Evaluation]:
    """Each pick on scored items (`measured`: every search item, or the race's last sample): the
    best candidate for it; with `front` in the export list, also every candidate no other dominates."""
    if not measured:
        return {}
    # a tie on the pick's own score (common: a task of 120 items scores in steps of 1/120) goes to the
    # candidate better on the other tasks, never to one another candidate dominates
    elsewhere = Objectives.of(objectives.names, objectives.directions).balanced
    chosen = {name: max(measured, key=lambda e: (score(e.measured), elsewhere(e.measured)))
              for name, score in pick_scores(objectives, final).items()}
    if "front" in final.export:
        points = np.array([objectives.vector(e.measured) for e in measured])
        chosen.update({f"front-{measured[i].id}": measured[i] for i in sorted(objectives.non_dominated(points))})
    return chosen
