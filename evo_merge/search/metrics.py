"""Per-generation progress of a search: hypervolume, best estimate per task, item evaluations spent;
and what the report and `status` say of the estimates they show (`se_note`).

One definition shared by the report (a row per generation) and experiment trackers (a step per
generation), so both show the same numbers. The study loop computes it as each generation ends
and stores it with the generation: an adaptive test continued before the final phase changes
stored estimates and items later, and a generation's progress is what the search had then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from evo_merge.irt.kinds import ADAPTIVE, ADAPTIVE_ERROR_REVISION, POSTERIOR_SE_CAVEAT, SE_CAVEATS
from evo_merge.search.candidate import reference_candidates
from evo_merge.search.holdout import search_item_count
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import BASELINE, FROM_CACHE_META, SEARCH, CampaignStore, Evaluation


def generation_metrics(evaluations: Sequence[Evaluation], objectives: Objectives, generation: int,
                       known: Sequence[Evaluation] = ()) -> dict[str, float]:
    """Over the search evaluations up to `generation` and the candidates `known` before the search
    (the standard merges measured as warm-ups, which the search looks up): `hypervolume` of the
    successful estimates, `best_<task>` by each task's direction, and `items` (item evaluations the
    search spent, failures included; the warm-ups' are calibration's). Merges only: the endpoints
    and the base seed the first generation but are the inputs, not results, so the best merge
    found so far can lie below an endpoint on its own task."""
    tasks = objectives.names
    upto = [e for e in evaluations if e.phase == SEARCH and e.generation is not None and e.generation <= generation]
    scored = [e for e in [*upto, *known] if e.status == "ok"]
    ok = np.array([[e.estimates[t] for t in tasks] for e in scored]).reshape(-1, len(tasks))
    signs = objectives.signs()
    best = (ok * signs).max(axis=0) * signs if len(ok) else np.full(len(tasks), np.nan)
    return {"hypervolume": objectives.hypervolume(ok), **{f"best_{t}": float(best[i]) for i, t in enumerate(tasks)},
            "items": float(sum(e.items_evaluated for e in upto))}


def recorded_metrics(store: CampaignStore, objectives: Objectives,
                     generations: Sequence[int]) -> list[dict[str, float]]:
    """Each of `generations`' metrics as stored when it ended; recomputed from the store (read once),
    as the study computes them, for a folder written before they were stored."""
    stored = [store.metrics(generation) for generation in generations]
    if all(metrics is not None for metrics in stored):
        return stored
    search, known = store.evaluations(SEARCH), store.evaluations(BASELINE)
    return [metrics if metrics is not None else generation_metrics(search, objectives, generation, known=known)
            for generation, metrics in zip(generations, stored)]


def search_time_left(ends: Sequence[float], remaining: int) -> tuple[float, float] | None:
    """(seconds left in the search, seconds per generation) from when the generations ended: the
    median time between two ends, so the hours a run lay stopped before a resume do not count.
    None with fewer than two ends, or nothing left."""
    if remaining <= 0 or len(ends) < 2:
        return None
    per_generation = float(np.median(np.diff(ends)))
    return per_generation * remaining, per_generation


PHASE_NAMES = {BASELINE: "standard merges"}  # a phase as the item totals name it: the baselines are those merges


def item_totals(store: CampaignStore) -> str:
    """'N (calibration a, search b, standard merges c, final phase d)': every item evaluation of
    the run, each phase's share named, so the parts add up to the total, and how many of them the
    score cache answered. The standard merges' share is mostly their measurement as warm-ups, which
    reads as spent on baselines otherwise."""
    phases = store.items_by_phase()
    parts = ", ".join(f"{PHASE_NAMES.get(phase, phase)} {n:,}" for phase, n in phases.items()
                      if n or phase in (SEARCH, "final phase"))
    # scores an earlier run measured count as items the campaign asked for; said, as they cost this run nothing
    cached = store.get_meta(FROM_CACHE_META, 0)
    return f"{sum(phases.values()):,} ({parts})" + (f", {cached:,} of them read from the score cache" if cached else "")


# what `status` and the report say of a search that scored no candidate of its own, by whether the run
# finished: one stopped in calibration has none yet ("0 vs 0 for a full-evaluation search" said
# nothing); a finished one asked only candidates measured before it (its seeds, looked up)
NO_SEARCH = {False: "none yet (no search candidate)",
             True: "none (every candidate it asked was measured before it: the endpoints and standard merges)"}
# and of a search every candidate of which failed (no saving to compare: "0 vs 0", audit 145)
NONE_SCORED = "none scored: every search candidate failed (the failures say why)"


def search_saving(store: CampaignStore, facts: Mapping, n_scored: int) -> tuple[int, int, float | None]:
    """(item evaluations the search phase spent, what a full-evaluation search of its `n_scored`
    candidates would have spent, their ratio; None where nothing was spent): one figure for `status`
    and the report. A failed candidate counts on the spent side alone, with the items its tasks
    scored before one failed (what full evaluation would have spent on it is not known): a run with
    failures shows a saving a little below the real one, never above (counted in the full search's,
    a run with a third of its candidates failed showed 120x where 80x was saved: audit 144)."""
    spent, full = store.items_evaluated(SEARCH), n_scored * search_item_count(facts, store)
    return spent, full, full / spent if spent else None


def se_caveat(facts: Mapping, store: CampaignStore) -> str | None:
    """The caveat on `estimate ± SE` of a run whose estimator's SE leaves part of the error out
    (`SE_CAVEATS`: mp-IRT's simulated merges; an adaptive test's posterior alone, in a folder any of
    whose candidates were scored before estimator revision 4 measured the IRT model's own error),
    where gp-IRT's is measured on held-out calibration subjects. A pick's card gives it as it is."""
    kind = facts.get("estimator")
    if kind in SE_CAVEATS:
        return f"{kind} estimates: {SE_CAVEATS[kind]}"
    revision, mixed = store.estimator_revisions()
    if kind == ADAPTIVE and min(mixed or [revision or 0]) < ADAPTIVE_ERROR_REVISION:
        return f"{kind} estimates scored before estimator revision {ADAPTIVE_ERROR_REVISION}: {POSTERIOR_SE_CAVEAT}"
    return None


def se_note(facts: Mapping, store: CampaignStore) -> str | None:
    """`se_caveat` as `status` and the report give it, with where the docs explain it."""
    caveat = se_caveat(facts, store)
    return None if caveat is None else f"{caveat} (docs/irt.md)"


def mixed_revisions_note(store: CampaignStore) -> str | None:
    """The line a folder reopened under another estimator revision gets (`status`, report.md): its
    candidates' estimates were made by more than one set of formulas."""
    mixed = store.estimator_revisions()[1]
    if not mixed:
        return None
    return ("estimates: this folder was scored by estimator revisions "
            + " and ".join("unrecorded (before revisions)" if r == 0 else str(r) for r in mixed)
            + "; candidates scored after it was reopened use the later (CHANGELOG.md, IRT standard errors)")


def picks_no_better_than_inputs(store: CampaignStore, facts: Mapping, objectives: Objectives,
                                picks: Mapping[str, Evaluation], quote: Callable[[str], str] = str) -> list[str]:
    """A line for each pick measured no better than one of the merge's inputs (the base, an
    endpoint) on every task, and for a `best-<task>` pick, one measured below an input on its task:
    the search's candidates are merges, never the endpoints themselves, and a pick that keeps one
    endpoint scores as it does or below it; published, it adds nothing that input does not give.
    (Runs from before the endpoints were recorded: none said.) `quote` writes a name as the line's
    reader takes it (`markup.md` for Markdown)."""
    labels = facts.get("endpoints")
    if not labels:
        return []
    inputs = [(label, e.measured) for label, candidate in reference_candidates(labels)
              if (e := store.get(candidate.key)) is not None and e.measured]

    def what(label: str) -> str:
        return "the base model" if label == "base" else f"the endpoint {quote(label)}"

    lines = []
    for name, pick in picks.items():
        if not pick.measured:
            continue
        dominating = next((label for label, scores in inputs if all(
            task in scores and task in pick.measured
            and objectives.goodness(scores, task) >= objectives.goodness(pick.measured, task)
            for task in objectives.names)), None)
        if dominating is not None:
            lines.append(f"{quote(name)} is measured no better than {what(dominating)} on every task (on the search "
                         "items): that model is as good a pick, and this merge adds nothing to it")
            continue
        # a best-<task> pick is published for that task: an input scoring higher on it serves it better
        task = name.removeprefix("best-") if name.startswith("best-") else None
        if task in objectives.names and task in pick.measured:
            better = [(label, scores[task]) for label, scores in inputs if task in scores
                      and objectives.goodness(scores, task) > objectives.goodness(pick.measured, task)]
            if better:
                label, score = max(better, key=lambda b: objectives.goodness({task: b[1]}, task))
                lines.append(f"{quote(name)} measures {pick.measured[task]:.3f} on {quote(task)} (on the search "
                             f"items), below {what(label)}'s {score:.3f}: that model serves {quote(task)} better")
    return lines
