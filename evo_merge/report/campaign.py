"""Campaign outputs: evaluations.csv, pareto.csv, report.md, report.html, pareto.png and progress.png.

Everything is read from the run's store and its facts (tasks, directions, item counts), so a
report is written without opening a model. Hypervolumes and "best" follow each task's direction.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from evo_merge.errors import message_line
from evo_merge.files import atomic_write
from evo_merge.markup import md, shell
from evo_merge.merge.results import mean_and_stderr
from evo_merge.report.html import markdown_inline, reference_label, write_html_report
from evo_merge.report.pairs import task_pairs
from evo_merge.search.candidate import Candidate
from evo_merge.search.holdout import HOLDOUT_META, held_out_scores
from evo_merge.search.kinds import rounded_storage_note
from evo_merge.search.layout import EVALUATIONS_CSV, PARETO_CSV, PARETO_PNG, PROGRESS_PNG, REPORT_HTML, REPORT_MD
from evo_merge.search.metrics import (
    NO_SEARCH,
    NONE_SCORED,
    item_totals,
    mixed_revisions_note,
    picks_no_better_than_inputs,
    recorded_metrics,
    se_note,
    search_saving,
)
from evo_merge.search.objectives import Objectives
from evo_merge.search.race import PICKS_META, RACE_META, race_summary, rounds_summary
from evo_merge.search.run_folder import in_run
from evo_merge.search.store import BASELINE, BASELINES_META, CALIBRATION, POOLED_META, SEARCH, CampaignStore, Evaluation

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure


def evaluation_table(evaluations: Sequence[Evaluation], tasks: Sequence[str],
                     sampled: Mapping[str, Mapping[str, float]] | None = None,
                     pooled: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """One row per evaluation: id, phase, generation, method, weights, parameters, estimated
    scores with their SE, (`pool_`) the estimates pooled over similar recipes that the final phase
    chose its finalists on, measured scores, and (`sample_`) the race's sample scores of a
    survivor not measured whole."""
    sampled, pooled = sampled or {}, pooled or {}
    rows = []
    for e in evaluations:
        candidate = Candidate.from_key(e.key)
        row = {"id": e.id, "phase": e.phase, "generation": e.generation, "status": e.status,
               "method": candidate.method, "weights": candidate.weights_text(),
               "params": candidate.params_text(), "items": e.items_evaluated}
        for task in tasks:
            row[f"est_{task}"] = (e.estimates or {}).get(task)
            row[f"est_se_{task}"] = (e.estimate_se or {}).get(task)
            row[f"pool_{task}"] = pooled[e.key].get(task) if e.key in pooled else None
            row[f"meas_{task}"] = (e.measured or {}).get(task)
            row[f"sample_{task}"] = sampled[e.key].get(task) if e.measured is None and e.key in sampled else None
        rows.append(row)
    columns = ["id", "phase", "generation", "status", "method", "weights", "params", "items",
               *(f"{kind}_{task}" for task in tasks for kind in ("est", "est_se", "pool", "meas", "sample"))]
    table = pd.DataFrame(rows, columns=columns)  # the columns even with no row yet (a run cut short in calibration)
    table["generation"] = table["generation"].astype("Int64")  # an integer, blank for calibration (not 1.0)
    return table


def mark_front(scored: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The scored finalists with a `front` column: True where no other row dominates the row's
    scores (measured on every search item, else on the race's sample). Finalists that stayed in
    the race are not all on the front: one may be worse on every task by less than the race's
    tolerance, or (measured whole) by more."""
    shown = [[row[f"meas_{t}"] if pd.notna(row[f"meas_{t}"]) else row[f"sample_{t}"] for t in objectives.names]
             for _, row in scored.iterrows()]
    on_front = set(objectives.non_dominated(np.array(shown, dtype=float).reshape(-1, len(objectives.names))))
    return scored.assign(front=[i in on_front for i in range(len(scored))])


def progress_table(store: CampaignStore, objectives: Objectives) -> pd.DataFrame:
    """Per generation: hypervolume of all merges' estimates so far, the best merge's estimate per
    task (by direction) and the item evaluations spent, as the generation ended (what the trackers
    logged; `generation_metrics`)."""
    # a first generation the search looked up whole (its seeds: endpoints and standard warm-ups) has a row too
    generations = sorted({e.generation for e in store.evaluations(SEARCH) if e.status == "ok"}
                         | set(range(1, store.generations_completed() + 1)))
    return pd.DataFrame([{"generation": g, **metrics}
                         for g, metrics in zip(generations, recorded_metrics(store, objectives, generations))])


def plot_pareto(table: pd.DataFrame, tasks: Sequence[str], path: Path, endpoints: Sequence[str] = ()) -> None:
    """One panel per pair of tasks (`task_pairs`); the legend once, on the first; the base and the
    endpoints named beside their points (`endpoints`: the run's names for them)."""
    from matplotlib.figure import Figure

    pairs = task_pairs(tasks)
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(6 * cols, 5 * rows))  # no pyplot (see `_save`)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (x, y) in zip(axes.flat, pairs):
        _pareto_panel(ax, table, x, y, endpoints)
    for ax in axes.flat[len(pairs):]:
        ax.set_visible(False)
    if axes.flat[0].get_legend_handles_labels()[0]:  # nothing scored yet (a run calibrating): no empty legend
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("Pareto front")
    _save(fig, path)


def _pareto_panel(ax, table: pd.DataFrame, x: str, y: str, endpoints: Sequence[str]) -> None:
    def scatter(rows: pd.DataFrame, kind: str, **style) -> None:  # nothing to draw: no legend entry either
        if len(rows):
            ax.scatter(rows[f"{kind}_{x}"], rows[f"{kind}_{y}"], **style)

    search = table[(table.phase == SEARCH) & (table.status == "ok")]
    scatter(search, "est", s=12, alpha=0.4, label="candidates (estimated)")
    measured = table[table[f"meas_{x}"].notna() & (table.phase == SEARCH)]
    standard = table[table[f"meas_{x}"].notna() & (table.phase == BASELINE)]  # measured as warm-ups
    scatter(measured, "est", marker="o", facecolors="none", edgecolors="C1", label="finalists (estimated)")
    scatter(measured, "meas", marker="*", s=80, color="C1", label="finalists (measured)")
    scatter(standard, "meas", marker="D", s=40, color="C4", label="standard merges (measured)")
    scatter(table[table[f"sample_{x}"].notna()], "sample", marker="x", s=40, color="C2",
            label="race survivors (sample scores)")
    for _, row in measured.iterrows():
        ax.plot([row[f"est_{x}"], row[f"meas_{x}"]], [row[f"est_{y}"], row[f"meas_{y}"]], color="C1", lw=0.6)
    calibration = table[table.phase == CALIBRATION]
    scatter(calibration, "meas", marker="s", color="k", label="base / endpoints / warm-up")
    for _, row in calibration.iterrows():
        label = reference_label(row, endpoints)
        if label != "warm-up" and pd.notna(row[f"meas_{x}"]):
            ax.annotate(label.removeprefix("endpoint "), (row[f"meas_{x}"], row[f"meas_{y}"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(x), ax.set_ylabel(y)


def plot_progress(progress: pd.DataFrame, tasks: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))  # no pyplot (see `_save`)
    a, b = fig.subplots(1, 2)
    a.plot(progress.generation, progress.hypervolume, marker="o"), a.set_title("hypervolume (estimated)")
    for t in tasks:
        b.plot(progress.generation, progress[f"best_{t}"], marker="o", label=t)
    b.set_title("best merge's estimate per task"), b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no generation 2.5
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    """The figure as a PNG, written like every report file (`atomic_write`). The figures are plain
    `Figure`s, never pyplot's: a PNG is drawn by the Agg canvas savefig picks for it, so the caller's
    backend stays (`matplotlib.use("Agg")` switched a notebook's, whose inline figures then went
    unshown), and no figure is left in pyplot's list to close."""
    buffer = io.BytesIO()
    fig.tight_layout(), fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())


def write_report(
    run_dir: Path, store: CampaignStore, facts: dict, exported: dict[str, tuple[int, Path]] | None = None,
    finished: bool = True,
    running: str | None = None,
) -> Path:
    """Write evaluations.csv (every evaluation, with the id `export --pick` takes), pareto.csv, the
    plots, report.md and report.html from the store and the run's facts
    (`finished` False: of a run cut short, or of one `running` now, its pid: which the report says
    first). User strings (task,
    method and pick names) are escaped in both reports."""
    objectives = Objectives.of_facts(facts)
    tasks = list(objectives.names)
    race = store.get_meta(RACE_META)
    evaluations = store.evaluations()
    table = evaluation_table(evaluations, tasks, ((race or {}).get("compared") or {}).get("scores"),
                             store.get_meta(POOLED_META))
    scored = (table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)
              | table[[f"sample_{t}" for t in tasks]].notna().all(axis=1))  # race survivors: their sample scores
    front = mark_front(table[table.phase.isin([SEARCH, BASELINE]) & scored], objectives)
    atomic_write(run_dir / EVALUATIONS_CSV, table.to_csv(index=False))
    atomic_write(run_dir / PARETO_CSV, front.to_csv(index=False))
    progress = progress_table(store, objectives)
    plot_pareto(table, tasks, run_dir / PARETO_PNG, facts.get("endpoints", ()))
    if len(progress):
        plot_progress(progress, tasks, run_dir / PROGRESS_PNG)

    lines_of_facts = _run_facts(run_dir, store, facts, table, finished, race, running)
    by_id = {e.id: e for e in evaluations}
    picks = {name: by_id[eid] for name, (eid, _) in (exported or {}).items() if eid in by_id}
    lines_of_facts += picks_no_better_than_inputs(store, facts, objectives, picks, quote=md)
    summary = _summary(table, tasks, store, exported or {})
    baselines = store.get_meta(BASELINES_META, {})
    compared = _compared(table, {e.id: baselines[e.key] for e in evaluations if e.key in baselines}, tasks)
    path = run_dir / REPORT_MD
    atomic_write(path, _markdown(run_dir, store, evaluations, table, lines_of_facts, summary, compared, exported,
                                 race))
    facts_html = "<ul>" + "".join(f"<li>{markdown_inline(f)}</li>" for f in lines_of_facts) + "</ul>"
    write_html_report(
        run_dir,
        measured_errors(store, table, tasks),
        progress,
        tasks,
        facts_html
        + "<h2>Reference models and measured candidates</h2>"
        + summary.to_html(index=False, escape=True)
        + ("<h2>Compared on the race's last sample</h2><p>Survivors of the final-phase race not measured on every "
           "item: their scores on the race's last sample, on which the picks were chosen.</p>"
           + compared.to_html(index=False, escape=True) if len(compared) else ""),
        exported,
        facts.get("endpoints", ()),
    )
    return path


def _run_facts(run_dir: Path, store: CampaignStore, facts: dict, table: pd.DataFrame, finished: bool,
               race: dict | None, running: str | None = None) -> list[str]:
    """The report's opening lines: whether it is finished, evaluations, items spent, held-out items, the race."""
    n_search = int((table.phase == SEARCH).sum())
    n_scored = int(((table.phase == SEARCH) & (table.status == "ok")).sum())
    spent, full, saving = search_saving(store, facts, n_scored)
    n_failed = int((table.status == "failed").sum())
    unmeasured = len(store.measure_failures())  # worked on their anchors, failed when measured in the final phase
    done, total = store.generations_completed(), facts["generations"]
    phase = "in the final phase" if done >= total else "no final phase yet"
    where = f"{done} of {total} generations searched, {phase}"
    going = (f"a run is working in the folder (pid {running}): this report is of this moment" if running
             else f"`{shell('evo-merge', 'resume', run_dir)}` carries it on")
    unfinished = [f"**not finished**: {where}; {going}"] if not finished else []
    lines = [
        *unfinished,
        f"evaluations: {len(table)} ({n_search} search candidates, {n_failed} failed"
        + (f", {unmeasured} failed when measured in the final phase" if unmeasured else "") + ")",
        (f"item evaluations in the search phase: {spent:,}; a full-evaluation search would have spent {full:,}"
         + (f" ({saving:.1f}x more)" if saving is not None else "")) if n_scored
        else f"item evaluations in the search phase: {NONE_SCORED if n_search else NO_SEARCH[finished]}",
        f"item evaluations in total: {item_totals(store)}",
        _holdout_fact(store.get_meta(HOLDOUT_META, {})),
    ]
    if endpoints := facts.get("endpoints"):  # runs from before they were recorded: the campaign file says
        lines.append("endpoints, in the order of each recipe's weights: " + ", ".join(map(md, endpoints)))
    if note := rounded_storage_note(facts):
        lines.append(note)
    notes = (se_note(facts, store), mixed_revisions_note(store), race_summary(race),
             rounds_summary(store.get_meta(PICKS_META)))
    return lines + [line for line in notes if line]


def _markdown(run_dir: Path, store: CampaignStore, evaluations: Sequence[Evaluation], table: pd.DataFrame,
              facts: list[str], summary: pd.DataFrame, compared: pd.DataFrame,
              exported: dict[str, tuple[int, Path]] | None, race: dict | None) -> str:
    """report.md: the facts, the measured table, the plots, the exports, the race's leavers and its
    last sample, the failures."""
    holdout = store.get_meta(HOLDOUT_META, {})
    lines = [
        "# Campaign report",
        "",
        *[f"- {fact}" for fact in facts],
        "",
        "## Reference models and measured candidates",
        "",
        (
            "Estimated (`est_`: for a candidate scored on every search item, a reference model or a standard "
            "merge, its measured score, with no SE) and measured on the search items (`meas_`)"
            + (", and on the held-out items (`held_`)" if any(holdout.values()) else "")
            + ("; `pool_`: the estimate pooled over similar recipes, on which the final phase chose what to measure"
               if any(column.startswith("pool_") for column in summary.columns) else "")
            + "; `baseline`: a standard merge; `picked as`: the exports it was chosen for."
        ),
        "",
        summary.map(md).rename(columns=md).to_markdown(index=False, disable_numparse=True),
        "",
        f"![Pareto front]({PARETO_PNG})",
        "",
        f"![Progress]({PROGRESS_PNG})",
        "",
        f"Interactive version: {REPORT_HTML} (open it in a browser; it needs no network).",
        "",
    ]
    if exported:
        lines += ["## Exported models", ""] + [
            f"- {md(name)}: evaluation {i} → {md(in_run(path, run_dir))}" for name, (i, path) in exported.items()
        ]
        lines.append("")
    race_lines = _race_lines(store, race) if race else []
    if race_lines:
        lines += ["## Left the final-phase race", "",
                  "Not measured on every item: another finalist was, with confidence, at most "
                  f"{race['tolerance']:g} worse on every task.", ""] + race_lines
        lines.append("")
    if len(compared):
        lines += ["## Compared on the race's last sample", "",
                  f"Survivors of the race not measured on every item: scored on the same {race['compared']['items']:,} "
                  f"items ({race['compared']['stage'] * 100:g}% of each task's search items), on which the picks "
                  "were chosen and then measured whole.", "",
                  compared.map(md).rename(columns=md).to_markdown(index=False, disable_numparse=True), ""]
    failed = table[table.status == "failed"]
    measure_failures, adaptive_failures = store.measure_failures(), store.adaptive_failures()
    unmeasured = [(e, measure_failures[e.key]) for e in evaluations if e.key in measure_failures]
    stopped = [(e, adaptive_failures[e.key]) for e in evaluations if e.key in adaptive_failures]
    if len(failed) or unmeasured or stopped:
        errors = {e.id: message_line(e.error) for e in evaluations if e.status == "failed"}
        lines += ["## Failures", ""] + [
            f"- evaluation {r.id} ({md(r.method)}): {md(errors[r.id])}" for r in failed.itertuples()
        ] + [f"- evaluation {e.id} ({md(e.method)}), measured in the final phase: {md(message_line(error))}"
             for e, error in unmeasured] + [
            f"- evaluation {e.id} ({md(e.method)}), an adaptive step (the test stopped there; "
            f"{'measured on every item since' if e.measured else 'its estimate keeps the items it had'}): "
            f"{md(message_line(error))}" for e, error in stopped]
    return "\n".join(lines) + "\n"


def _race_lines(store: CampaignStore, race: dict) -> list[str]:
    baselines = store.get_meta(BASELINES_META, {})
    lines = []
    for key, leaver in race["left"].items():
        evaluation, winner = store.get(key), store.get(leaver["beaten_by"])
        if evaluation.measured is not None:  # measured since (`export --pick`): in the measured table
            continue
        label = f", {md(baselines[key])}" if key in baselines else ""
        lines.append(f"- evaluation {evaluation.id} ({md(evaluation.method)}{label}): left after "
                     f"{leaver['items']:,} items ({leaver['stage'] * 100:g}% of each task's), matched by "
                     f"evaluation {winner.id}")
    return lines


def _compared(table: pd.DataFrame, baselines: Mapping[int, str], tasks: Sequence[str]) -> pd.DataFrame:
    """The race's survivors not measured whole (`sample_` scores, see `evaluation_table`), one row
    each for both reports: id, method, baseline label (by evaluation id), sample score per task."""
    rows = table[table[f"sample_{tasks[0]}"].notna()]
    return pd.DataFrame({"id": rows.id.astype(str), "method": rows.method,
                         "baseline": [baselines.get(i, "") for i in rows.id],
                         **{f"sample_{t}": rows[f"sample_{t}"].map(_cell) for t in tasks}})


def measured_errors(store: CampaignStore, table: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """`table` with `se_<task>`: the standard error of each measured score, from its item scores
    (on the search items, as the measured score is)."""
    table = table.copy()
    keys = {e.id: e.key for e in store.evaluations()}
    holdout = {task: set(items) for task, items in store.get_meta(HOLDOUT_META, {}).items()}
    for task in tasks:
        table[f"se_{task}"] = None
    for index, row in table[table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)].iterrows():
        scores = store.item_scores(keys[row["id"]])
        for task in tasks:
            search = {i: v for i, v in scores.get(task, {}).items() if i not in holdout.get(task, ())}
            if search:
                table.at[index, f"se_{task}"] = mean_and_stderr(search)[1]
    return table


def _holdout_fact(holdout: dict[str, list[str]]) -> str:
    if not any(holdout.values()):
        return "held-out items: none (every reported score is on items the search chose on)"
    counts = ", ".join(f"{task} {len(items)}" for task, items in holdout.items())
    return f"held-out items (never seen by calibration, anchors or search): {counts}"


def _summary(
    table: pd.DataFrame, tasks: Sequence[str], store: CampaignStore, exported: dict[str, tuple[int, Path]]
) -> pd.DataFrame:
    """Everything measured on all items: base, endpoints, warm-up merges, baselines and the
    final phase's candidates, with held-out scores and the picks each was exported as."""
    measured = table[table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)].copy()
    holdout, baselines = store.get_meta(HOLDOUT_META, {}), store.get_meta(BASELINES_META, {})
    by_id = {e.id: e.key for e in store.evaluations()}
    keys = [by_id[i] for i in measured.id]
    held = [held_out_scores(store, key, holdout) or {} for key in keys]
    measured["baseline"] = [baselines.get(key, "") for key in keys]
    measured["picked as"] = [", ".join(n for n, (i, _) in exported.items() if i == e) for e in measured.id]
    for t in tasks:
        measured[f"held_{t}"] = [h.get(t) for h in held]
    pooled = measured[[f"pool_{t}" for t in tasks]].notna().any().any()  # (a task's name may hold "pool_")
    columns = [(f"est_{t}", f"est_se_{t}") + ((f"pool_{t}",) if pooled else ()) + (f"meas_{t}",)
               + ((f"held_{t}",) if holdout.get(t) else ()) for t in tasks]
    cols = ["id", "phase", "method", "weights", "params", "baseline", "picked as"] + [
        c for group in columns for c in group
    ]
    return measured[cols].map(_cell)


def _cell(value: object) -> str:
    """A summary cell as both reports show it: scores to 3 decimals, blank where not measured."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
