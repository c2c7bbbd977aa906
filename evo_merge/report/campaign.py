"""Campaign outputs: pareto.csv, report.md, report.html, pareto.png and progress.png.

Everything is read from the run's store and its facts (tasks, directions, item counts), so a
report is written without opening a model. Hypervolumes and "best" follow each task's direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from evo_merge.markup import html_text, md
from evo_merge.merge.results import mean_and_stderr
from evo_merge.report.html import write_html_report
from evo_merge.search.candidate import Candidate
from evo_merge.search.metrics import generation_metrics
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import CampaignStore, Evaluation


def facts_objectives(facts: dict) -> Objectives:
    """The run's objectives from its stored facts."""
    return Objectives.of([t["name"] for t in facts["tasks"]], [t["direction"] for t in facts["tasks"]],
                         facts.get("weights"))


def evaluation_table(evaluations: Sequence[Evaluation], tasks: Sequence[str]) -> pd.DataFrame:
    """One row per evaluation: id, phase, generation, method, weights, parameters, estimated and measured scores."""
    rows = []
    for e in evaluations:
        candidate = Candidate.from_key(e.key)
        row = {"id": e.id, "phase": e.phase, "generation": e.generation, "status": e.status,
               "method": candidate.method, "weights": " ".join(f"{w:g}" for w in candidate.weights),
               "params": " ".join(f"{k}={v:g}" for k, v in candidate.params), "items": e.items_evaluated}
        for task in tasks:
            row[f"est_{task}"] = (e.estimates or {}).get(task)
            row[f"est_se_{task}"] = (e.estimate_se or {}).get(task)
            row[f"meas_{task}"] = (e.measured or {}).get(task)
        rows.append(row)
    return pd.DataFrame(rows)


def progress_table(store: CampaignStore, objectives: Objectives) -> pd.DataFrame:
    """Per generation: hypervolume of all estimates so far, the best estimate per task (by direction)
    and the item evaluations spent."""
    evaluations = store.evaluations("search")
    generations = sorted({e.generation for e in evaluations if e.status == "ok"})
    return pd.DataFrame([{"generation": g, **generation_metrics(evaluations, objectives, g)} for g in generations])


def plot_pareto(table: pd.DataFrame, tasks: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = (tasks[0], tasks[1]) if len(tasks) > 1 else (tasks[0], tasks[0])
    fig, ax = plt.subplots(figsize=(6, 5))
    search = table[(table.phase == "search") & (table.status == "ok")]
    ax.scatter(search[f"est_{x}"], search[f"est_{y}"], s=12, alpha=0.4, label="candidates (estimated)")
    measured = table[table[f"meas_{x}"].notna() & (table.phase == "search")]
    ax.scatter(measured[f"est_{x}"], measured[f"est_{y}"], marker="o", facecolors="none", edgecolors="C1",
               label="front (estimated)")
    ax.scatter(measured[f"meas_{x}"], measured[f"meas_{y}"], marker="*", s=80, color="C1", label="front (measured)")
    for _, row in measured.iterrows():
        ax.plot([row[f"est_{x}"], row[f"meas_{x}"]], [row[f"est_{y}"], row[f"meas_{y}"]], color="C1", lw=0.6)
    calibration = table[table.phase == "calibration"]
    ax.scatter(calibration[f"meas_{x}"], calibration[f"meas_{y}"], marker="s", color="k", label="base / endpoints / warm-up")
    ax.set_xlabel(x), ax.set_ylabel(y), ax.legend(fontsize=7), ax.set_title("Pareto front")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def plot_progress(progress: pd.DataFrame, tasks: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(progress.generation, progress.hypervolume, marker="o"), a.set_title("hypervolume (estimated)")
    for t in tasks:
        b.plot(progress.generation, progress[f"best_{t}"], marker="o", label=t)
    b.set_title("best estimate per task"), b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_xlabel("generation")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def write_report(run_dir: Path, store: CampaignStore, facts: dict,
                 exported: dict[str, tuple[int, Path]] | None = None) -> Path:
    """Write pareto.csv, the plots, report.md and report.html from the store and the run's facts.
    User strings (task, method and pick names) are escaped in both reports."""
    objectives = facts_objectives(facts)
    tasks = list(objectives.names)
    full_items = sum(t["items"] for t in facts["tasks"])
    table = evaluation_table(store.evaluations(), tasks)
    front = table[(table.phase == "search") & table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)]
    front.to_csv(run_dir / "pareto.csv", index=False)
    progress = progress_table(store, objectives)
    plot_pareto(table, tasks, run_dir / "pareto.png")
    if len(progress):
        plot_progress(progress, tasks, run_dir / "progress.png")

    search_items = store.items_evaluated("search")
    n_search = int(((table.phase == "search")).sum())
    failed = table[table.status == "failed"]
    facts = [f"evaluations: {len(table)} ({n_search} search candidates, {len(failed)} failed)",
             (f"item evaluations in the search phase: {search_items:,}; a full-evaluation search would have "
              f"spent {n_search * full_items:,} ({n_search * full_items / max(search_items, 1):.1f}x more)"),
             (f"item evaluations in total (calibration {store.items_evaluated('calibration'):,}, search, "
              f"front {store.items_evaluated(measured=True) - store.items_evaluated():,}): "
              f"{store.items_evaluated(measured=True):,}")]
    summary = _summary(table, tasks)
    lines = ["# Campaign report", "", *[f"- {fact}" for fact in facts], "",
             "## Reference models and measured front", "",
             summary.map(lambda v: md(v) if isinstance(v, str) else v).rename(columns=md)
             .to_markdown(index=False, floatfmt=".3f", missingval=""), "",
             "![Pareto front](pareto.png)", "", "![Progress](progress.png)", "",
             "Interactive version: report.html (open it in a browser; it needs no network).", ""]
    if exported:
        lines += ["## Exported models", ""] + [f"- {md(name)}: evaluation {i} → {md(path)}" for name, (i, path) in exported.items()]
        lines.append("")
    if len(failed):
        lines += ["## Failures", ""] + [f"- evaluation {r.id} ({md(r.method)}): see state.sqlite" for r in failed.itertuples()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    facts_html = "<ul>" + "".join(f"<li>{html_text(f)}</li>" for f in facts) + "</ul>"
    write_html_report(run_dir, measured_errors(store, table, tasks), progress, tasks,
                      facts_html + "<h2>Reference models and measured front</h2>"
                      + summary.to_html(index=False, float_format="{:.3f}".format, na_rep="", escape=True), exported)
    return path


def measured_errors(store: CampaignStore, table: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """`table` with `se_<task>`: the standard error of each measured score, from its item scores."""
    table = table.copy()
    keys = {e.id: e.key for e in store.evaluations()}
    for task in tasks:
        table[f"se_{task}"] = None
    for index, row in table[table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)].iterrows():
        scores = store.item_scores(keys[row["id"]])
        for task in tasks:
            if scores.get(task):
                table.at[index, f"se_{task}"] = mean_and_stderr(scores[task])[1]
    return table


def _summary(table: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """Everything measured on all items: base, endpoints, warm-up merges and the front."""
    measured = table[table[[f"meas_{t}" for t in tasks]].notna().all(axis=1)]
    cols = ["id", "phase", "method", "weights", "params"] + [c for t in tasks for c in (f"est_{t}", f"est_se_{t}",
                                                                                       f"meas_{t}")]
    return measured[cols]

