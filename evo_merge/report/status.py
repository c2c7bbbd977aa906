"""What `evo-merge status` says of a run folder, line by line: where the run is, its evaluations,
the best estimate per task, the picks as measured, its anchors and notes, and the items spent.
Read from the store alone (no model, no task), so it answers in a second while a run works; the
command prints the lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evo_merge.markup import shell, visible
from evo_merge.progress import hms
from evo_merge.search.holdout import HOLDOUT_META, held_out_scores, search_item_count
from evo_merge.search.irt_files import changed_irt_models
from evo_merge.search.layout import IRT_FOLDER
from evo_merge.search.metrics import (
    NO_SEARCH,
    NONE_SCORED,
    item_totals,
    mixed_revisions_note,
    picks_no_better_than_inputs,
    se_note,
    search_saving,
    search_time_left,
)
from evo_merge.search.objectives import Objectives
from evo_merge.search.race import PICKS_META, RACE_META, race_summary, rounds_summary
from evo_merge.search.run_folder import pick_folder_change
from evo_merge.search.store import (
    ANCHORS_META,
    BASELINE,
    BASELINES_META,
    CALIBRATION,
    CALIBRATION_META,
    POOLED_META,
    SEARCH,
    CampaignStore,
    Evaluation,
    competing,
)


def status_lines(run: Path, store: CampaignStore, facts: dict[str, Any], pid: str | None) -> list[str]:
    """The lines `status` prints; `pid`: the process working in the folder now, if one is."""
    lines: list[str] = []
    objectives = Objectives.of_facts(facts)
    evaluations = store.evaluations()  # read once: a long run holds thousands
    search = [e for e in evaluations if e.phase == SEARCH]
    # the best among the candidates: the standard merges (baselines, measured as warm-ups) compete too
    candidates = competing(evaluations)
    finished = store.finished(facts["generations"])
    done = store.generations_completed()
    state = (f"running: pid {pid}" + _where(store, evaluations, done, facts["generations"]) if pid
             else "finished" if finished else f"not running: `{shell('evo-merge', 'resume', run)}` goes on")  # died
    lines.append(f"campaign '{facts['name']}': generation {done}/{facts['generations']} ({state})")
    unmeasured = len(store.measure_failures())
    # the search's best may be one of them: counted, not hidden; as the report marks them, those the
    # search bred too (task arithmetic at lambda 1 among its first generation) included
    baselines = store.get_meta(BASELINES_META, {})
    standard = [e for e in evaluations if e.key in baselines and e.status == "ok"]
    searched = sum(e.phase == SEARCH for e in standard)
    failed = sum(e.status == "failed" for e in evaluations)  # warm-ups too, as the report counts them
    lines.append(f"evaluations: {len(evaluations)} ({len(search)} search, {failed} failed"
                 + (f", {len(standard)} standard merge{'s' if len(standard) > 1 else ''}" if standard else "")
                 + (f" ({searched} of them in the search)" if searched else "")
                 + (f", {unmeasured} failed when measured in the final phase" if unmeasured else "") + ")")
    race_record = store.get_meta(RACE_META) or {}
    sampled = (race_record.get("compared") or {}).get("scores", {})  # survivors' scores on the race's last sample
    lines += _best_lines(objectives, candidates, sampled, search_item_count(facts, store))
    if candidates and (note := se_note(facts, store)):
        lines.append(note)
    if finished:  # a run cut short may hold the picks of an earlier end
        by_id = {e.id: e for e in evaluations}
        lines += _pick_lines(store, by_id)
        picks = {name: by_id[eid] for name, (eid, _) in store.exported().items() if eid in by_id}
        for line in picks_no_better_than_inputs(store, facts, objectives, picks):
            lines.append(line)
    for task, problem in changed_irt_models(run, store).items():  # said before a resume is refused over it
        lines.append(f"IRT model of {task} ({run / IRT_FOLDER / task}): {problem}; `resume` refuses it: remove the "
                     "folder and `resume` fits it again from the stored calibration")
    for task, counts in store.get_meta(ANCHORS_META, {}).items():
        lines.append(f"anchors of {task}: {sum(counts.values())} per candidate ("
                      + ", ".join(f"{scenario} {n}" for scenario, n in counts.items()) + ")")
    if mixed := mixed_revisions_note(store):
        lines.append(mixed)
    if pooled := store.get_meta(POOLED_META):
        lines.append(f"finalists chosen on estimates pooled over similar recipes ({len(pooled)} candidates; "
                      "report.md and pareto.csv show each finalist's as pool_<task>)")
    if race := race_summary(race_record or None):
        lines.append(race)
    if rounds := rounds_summary(store.get_meta(PICKS_META)):
        lines.append(rounds)
    scored = sum(e.status == "ok" for e in search)
    spent, full, saving = search_saving(store, facts, scored)
    saved = f" ({saving:.1f}x saving)" if saving is not None else ""
    compared = (f"{spent:,} vs {full:,} for a full-evaluation search{saved}" if scored
                else NONE_SCORED if search else NO_SEARCH[finished])
    lines.append(f"item evaluations in search: {compared}; in total {item_totals(store)}")
    # what the store holds (scenario names, methods, folders) cannot drive the terminal, nor start a line
    return [visible(line) for line in lines]


def _best_lines(objectives: Objectives, competing: list[Evaluation], sampled: dict[str, dict[str, float]],
                search_items: int) -> list[str]:
    """A line per task: the search's best by what it was told, measured or estimated (± SE), and its
    measurement or race score since, where the final phase took one (the highest of many estimates
    runs high). A candidate the final phase measured higher than its estimate does not count as the
    best here (the picks, chosen on measurements, are listed apart), but is named where it measured
    better than the best's own figure: a standard merge's line read as the run's best."""
    lines = []
    for task in objectives.names if competing else ():
        best = max(competing, key=lambda e: objectives.goodness(e.estimates, task))
        own = (best.measured or {}).get(task, best.estimates[task])
        rival = max((e for e in competing if e.measured and task in e.measured and e is not best),
                    key=lambda e: objectives.goodness(e.measured, task), default=None)
        se = (best.estimate_se or {}).get(task)
        value = f"{best.estimates[task]:.3f}" + (f" ± {se:.3f}" if se is not None else "")
        # a standard merge, or any candidate of a full-evaluation run, is scored on every search item, no SE
        # (an estimate of a folder from before standard errors has none either, and few items)
        measured = se is None and best.items_evaluated >= search_items
        if measured:
            since = ""
        elif best.measured and task in best.measured:
            since = f"; measured {best.measured[task]:.3f} since"
        elif task in sampled.get(best.key, {}):
            since = f"; {sampled[best.key][task]:.3f} on the race's last sample, which the picks were chosen on"
        else:
            since = ""
        better = "higher" if objectives.goodness({task: 1.0}, task) > 0 else "lower"
        # a standard merge competes as measured: said, so the line is not read as a search candidate's (audit 144)
        kind = ", a standard merge" if best.phase == BASELINE else ""
        if rival is not None and objectives.goodness(rival.measured, task) > objectives.goodness({task: own}, task):
            since += f"; evaluation {rival.id} ({rival.method}) measured {better}: {rival.measured[task]:.3f}"
        lines.append(f"best {task} in the search ({better} is better): {value} "
                     f"{'measured' if measured else 'estimated'} (evaluation {best.id}, {best.method}{kind}){since}")
    return lines


def _where(store: CampaignStore, evaluations: list[Evaluation], done: int, generations: int) -> str:
    """Where a working run is: `; calibrating: 5 of 12 subjects measured` (hours at 7B), `; about
    0:42:10 left in the search (0:05:16 a generation)` once two generations have ended, or `; in
    the final phase`."""
    if done >= generations:
        return "; in the final phase"
    planned = store.get_meta(CALIBRATION_META)
    measured = sum(e.phase in (CALIBRATION, BASELINE) for e in evaluations)  # warm-ups are stored as baselines
    if planned and measured < planned:
        return f"; calibrating: {measured} of {planned} subjects measured"
    left = search_time_left(store.generation_ends()[:done], generations - done)
    return f"; about {hms(left[0])} left in the search ({hms(left[1])} a generation)" if left else ""


def measured_on(store: CampaignStore) -> str:
    """What a pick's scores were measured on, as `status` and `export` name it."""
    held = any(store.get_meta(HOLDOUT_META, {}).values())
    return "measured on every search item" + (" / on the held-out items" if held else "")


def measured_scores(store: CampaignStore, evaluation: Evaluation) -> str:
    """`arith 0.846 / 0.896, lang ...`: a measured candidate's score per task on the search items,
    and on the held-out items where the task holds some out."""
    held = held_out_scores(store, evaluation.key, store.get_meta(HOLDOUT_META, {})) or {}
    return ", ".join(f"{task} {score:.3f}" + (f" / {held[task]:.3f}" if task in held else "")
                     for task, score in evaluation.measured.items())


def _pick_lines(store: CampaignStore, by_id: dict[int, Evaluation]) -> list[str]:
    """The exported picks with what the final phase measured: the best estimates above are the
    search's, and the race can find one of them over-estimated (it is then not a pick)."""
    picks, lines = store.exported(), []
    if picks:
        lines.append(f"picks, {measured_on(store)}:")
    for name, (eid, folder) in picks.items():
        if not (store.run_dir / folder).is_dir():  # (an absolute folder of an older run is read as it is)
            folder = f"{folder} (missing: `evo-merge resume` exports it again)"
        elif changed := pick_folder_change(store.run_dir / folder):
            folder = f"{folder} (changed: {visible(changed)}; `evo-merge resume` exports it again)"
        evaluation = by_id.get(eid)
        if evaluation is None or not evaluation.measured:  # a folder that lost its tail: said, not guessed
            lines.append(f"  {name}: evaluation {eid}, not found measured; {folder}")
            continue
        lines.append(f"  {name}: evaluation {eid} ({evaluation.method}): {measured_scores(store, evaluation)}; "
                     f"{folder}")
    return lines
