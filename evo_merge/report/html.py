"""report.html: the campaign in one self-contained page to explore, beside report.md.

A static PNG cannot answer "which recipe is this point?" or "how far was the estimate from the
measurement?". The page holds interactive plotly figures (the front, estimated and measured, with
recipes and standard errors on hover; the base, endpoints and warm-up merges on the same axes;
progress per generation) and each exported pick's model card. plotly's JavaScript is embedded,
so the file opens offline, from disk or as a mailed attachment; nothing is fetched from a network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from evo_merge.files import atomic_write
from evo_merge.markup import html_text
from evo_merge.report.pairs import task_pairs
from evo_merge.search.layout import REPORT_HTML
from evo_merge.search.store import BASELINE, CALIBRATION, SEARCH

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
pre{{background:#f6f6f6;padding:.5em;overflow-x:auto}} .card{{border:1px solid #ddd;padding:0 1em;margin:1em 0}}</style>
</head><body>
{body}
</body></html>
"""


def recipe_text(row: pd.Series) -> str:
    return f"#{row['id']} {row['method']} weights [{row['weights']}]" + (f" {row['params']}" if row["params"] else "")


def hover(row: pd.Series, tasks: Sequence[str]) -> str:
    """Hover text of one evaluation: its recipe, then per task estimate, measurement and SE."""
    lines = [html_text(recipe_text(row))]
    for task in tasks:
        est, meas, se = row.get(f"est_{task}"), row.get(f"meas_{task}"), row.get(f"se_{task}")
        est_se = row.get(f"est_se_{task}")
        est_text = None
        if pd.notna(est):
            est_text = f"est {est:.3f}" + (f" ± {est_se:.3f}" if est_se is not None and pd.notna(est_se) else "")
        parts = [est_text, f"meas {meas:.3f}" if pd.notna(meas) else None,
                 f"SE {se:.3f}" if se is not None and pd.notna(se) else None]
        lines.append(f"{html_text(task)}: " + ", ".join(p for p in parts if p))
    return "<br>".join(lines)


def reference_label(row: pd.Series, endpoints: Sequence[str] = ()) -> str:
    """base / endpoint NAME / warm-up, read from a calibration genome (the base is all-zero weights,
    an endpoint one weight 1 with lambda 1); an endpoint by its number where `endpoints` (the run's
    names for them, which runs from before they were recorded lack) does not name it."""
    weights = [float(w) for w in str(row["weights"]).split()]
    if not any(weights):
        return "base"
    if max(weights) == 1.0 and sum(weights) == 1.0 and row["params"] in ("lambda=1", ""):
        k = weights.index(1.0)
        return f"endpoint {endpoints[k] if k < len(endpoints) else k}"
    return "warm-up"


def front_figure(table: pd.DataFrame, tasks: Sequence[str], pair: tuple[str, str], endpoints: Sequence[str] = ()):
    """The scatter of one pair of tasks (`pairs.task_pairs`); the hover names every task's scores,
    the legend each endpoint by `endpoints`."""
    import plotly.graph_objects as go

    x, y = pair
    fig = go.Figure()
    ok = table[table.status == "ok"]
    search = ok[ok.phase == SEARCH]
    both = ok[f"meas_{x}"].notna() & ok[f"meas_{y}"].notna()
    measured = ok[(ok.phase == SEARCH) & both]
    # the standard merges are measured whole as warm-ups, before any final phase: a trace of their own, not
    # "finalists", though they compete for the picks with them
    standard = ok[(ok.phase == BASELINE) & both]
    calibration = ok[(ok.phase == CALIBRATION) & ok[f"meas_{x}"].notna()]

    def trace(rows: pd.DataFrame, kind: str, name: str, **style) -> None:
        if rows.empty:  # nothing to draw: no legend entry either
            return
        error = {}
        if kind == "meas" and f"se_{x}" in rows:
            error = {"error_x": {"type": "data", "array": rows[f"se_{x}"].tolist()},
                     "error_y": {"type": "data", "array": rows[f"se_{y}"].tolist()}}
        fig.add_trace(go.Scatter(x=rows[f"{kind}_{x}"], y=rows[f"{kind}_{y}"], mode="markers", name=name,
                                 text=[hover(r, tasks) for _, r in rows.iterrows()], hoverinfo="text",
                                 customdata=rows["id"].tolist(), **error, **style))

    trace(search, "est", "candidates (estimated)", marker={"size": 6, "opacity": 0.35, "color": "#1f77b4"})
    trace(measured, "est", "finalists (estimated)", marker={"size": 10, "symbol": "circle-open", "color": "#ff7f0e"})
    trace(measured, "meas", "finalists (measured)", marker={"size": 13, "symbol": "star", "color": "#ff7f0e"})
    trace(standard, "meas", "standard merges (measured)", marker={"size": 11, "symbol": "diamond", "color": "#9467bd"})
    if f"sample_{x}" in ok:  # race survivors not measured whole: their scores on the race's sample
        sampled = ok[ok[f"sample_{x}"].notna() & ok[f"sample_{y}"].notna()]
        trace(sampled, "sample", "race survivors (sample scores)",
              marker={"size": 9, "symbol": "x", "color": "#2ca02c"})
    labels = calibration.apply(reference_label, axis=1, endpoints=endpoints) if len(calibration) else None
    for label, rows in calibration.groupby(labels, sort=False) if labels is not None else ():
        # plotly draws a subset of HTML in legends (links among it): an endpoint's name is text
        trace(rows, "meas", f"{html_text(label)} (measured)", marker={"size": 11, "symbol": "square"})
    for _, row in measured.iterrows():  # estimate -> measurement
        fig.add_trace(
            go.Scatter(
                x=[row[f"est_{x}"], row[f"meas_{x}"]],
                y=[row[f"est_{y}"], row[f"meas_{y}"]],
                mode="lines",
                line={"color": "#ff7f0e", "width": 1},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    fig.update_layout(title=f"Pareto front: estimated and measured ({x} vs {y})" if x != y else
                      "Pareto front: estimated and measured", xaxis_title=x, yaxis_title=y, height=600)
    return fig


def progress_figure(progress: pd.DataFrame, tasks: Sequence[str]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=3,
        subplot_titles=("hypervolume (estimated)", "best merge's estimate per task", "item evaluations spent")
    )
    fig.add_trace(go.Scatter(x=progress.generation, y=progress.hypervolume, name="hypervolume"), row=1, col=1)
    for task in tasks:
        fig.add_trace(go.Scatter(x=progress.generation, y=progress[f"best_{task}"], name=f"best {task}"), row=1, col=2)
    fig.add_trace(go.Scatter(x=progress.generation, y=progress["items"], name="items"), row=1, col=3)
    step = max(1, math.ceil(len(progress) / 10))  # whole generations only, at most about ten ticks
    fig.update_xaxes(title_text="generation", dtick=step)
    fig.update_layout(height=380, title="Progress per generation")
    return fig


def _markdown():
    """The report's Markdown renderer: raw HTML off, images as their text (the report loads
    nothing from the network), tables on (a card's scores)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")


def markdown_inline(text: str) -> str:
    """One line of the report's Markdown (its facts: user strings escaped with `md`) as HTML."""
    return _markdown().renderInline(text)


def card_html(names: Sequence[str], folder: Path) -> str:
    """An exported folder's README.md under the picks it is: front matter as text, the Markdown
    rendered with its tables (the card's scores), raw HTML off and images as their text (the report
    loads nothing from the network). A README that is a link out of the folder is not read: a run
    folder someone sent could put any file of the reader's into the report (which `resume` hands
    its trackers)."""
    readme = folder / "README.md"
    own = readme.is_file() and readme.resolve().is_relative_to(folder.resolve())
    text = readme.read_text(encoding="utf-8") if own else ""
    front, body = "", text
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        front, body = text[4:].split("\n---\n", 1)
    rendered = _markdown().render(body)
    return (
        f'<div class="card" id="pick-{html_text(names[0])}"><h3>{html_text(", ".join(names))} '
        f"(<code>{html_text(folder.name)}</code>)</h3>"
        f"<details><summary>front matter</summary><pre>{html_text(front)}</pre></details>{rendered}</div>"
    )


def write_html_report(
    run_dir: Path,
    table: pd.DataFrame,
    progress: pd.DataFrame,
    tasks: Sequence[str],
    summary: str,
    exported: Mapping[str, tuple[int, Path]] | None = None,
    endpoints: Sequence[str] = (),
) -> Path:
    """Write report.html; `table` has est_/meas_/se_ columns per task, `summary` is trusted HTML,
    `endpoints` the endpoints' names."""
    figures = [front_figure(table, tasks, pair, endpoints) for pair in task_pairs(tasks)]
    figures += [progress_figure(progress, tasks)] if len(progress) else []
    parts = ["<h1>Campaign report</h1>", summary]
    for k, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(k == 0), config={"displaylogo": False}))
    if exported:
        parts.append("<h2>Exported models</h2>")
        folders: dict[Path, list[str]] = {}  # picks that chose one candidate share its folder
        for name, (_, folder) in exported.items():
            folders.setdefault(Path(folder), []).append(name)
        parts += [card_html(names, folder) for folder, names in folders.items()]
    path = run_dir / REPORT_HTML
    atomic_write(path, PAGE.format(title="Campaign report", body="\n".join(parts)))
    return path
