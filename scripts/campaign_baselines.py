"""A finished campaign against the merges a user would try first, all measured on every item.

    .venv/bin/python scripts/campaign_baselines.py RUN [--lambdas 0.3 0.5 0.7 1.0]

Rows: the base and the endpoints (calibration), task arithmetic (weight 1 per endpoint, lambda
from a grid), TIES (density 0.2), TSV-M (alpha 1), then the campaign's measured front (the
standard merges the campaign evaluated itself, `final.baselines`, included). A baseline is
covered when one front member scores at least as much on every task; the table says whether a
searched candidate covers it or only the baseline itself does. Baselines are re-evaluated here
with the campaign's own evaluator on its search items (held-out items left out) and not stored.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path

import numpy as np

from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import reference_candidates, standard_merges
from evo_merge.search.evaluator import CandidateFailed
from evo_merge.search.front import BASELINES_META, candidates
from evo_merge.search.scoring import task_scores


def baselines(runner: CampaignRunner, lambdas: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)) -> dict[str, dict[str, float]]:
    """Task score per baseline, measured on every item of the campaign's tasks (not stored)."""
    grid = list(standard_merges(len(runner.workspace.models), lambdas).items())
    jobs = [(candidate, runner.scoring.search_items()) for _, candidate in grid]
    out = {}
    for index, outcome, _ in runner.evaluator().evaluate_many(jobs):
        if not isinstance(outcome, CandidateFailed):
            out[grid[index][0]] = task_scores(outcome, runner.objectives.names)
    return out


def measured_front(runner: CampaignRunner, among: Collection[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Labels and measured scores of the non-dominated search and baseline evaluations measured on
    every item (only those whose key is in `among`, when given)."""
    names = runner.objectives.names
    rows = [e for e in candidates(runner.workspace.store)
            if e.measured is not None and (among is None or e.key in among)]
    scores = np.array([[e.measured[t] for t in names] for e in rows]).reshape(len(rows), -1)
    keep = sorted(runner.objectives.non_dominated(scores))
    return [f"front #{rows[i].id} ({rows[i].method})" for i in keep], scores[keep]


def comparison_table(runner: CampaignRunner, lambdas: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)) -> str:
    """Markdown: reference models, baselines (covered by the front or not), the front."""
    tasks = runner.objectives.names
    labels, front = measured_front(runner)
    baseline_keys = runner.workspace.store.get_meta(BASELINES_META, {})
    searched = np.array([[e.measured[t] for t in tasks] for e in candidates(runner.workspace.store)
                         if e.measured is not None and e.key not in baseline_keys]).reshape(-1, len(tasks))
    lines = ["| model | " + " | ".join(tasks) + " | covered by the front |", "|---|" + "---|" * (len(tasks) + 1)]

    def row(label: str, scores: dict[str, float] | np.ndarray, mark: str = "") -> None:
        values = [scores[t] for t in tasks] if isinstance(scores, dict) else list(scores)
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mark} |")

    for label, candidate in reference_candidates(runner.workspace.endpoint_labels()):
        e = runner.workspace.store.get(candidate.key)
        if e is not None and e.measured:
            row(label, e.measured)
    for label, scores in baselines(runner, lambdas).items():
        point = np.array([scores[t] for t in tasks])
        covered = len(front) and (front >= point - 1e-9).all(axis=1).any()
        by_search = len(searched) and (searched >= point - 1e-9).all(axis=1).any()
        row(label, scores, "NO" if not covered else "yes" if by_search else "yes (by the baseline itself)")
    for label, scores in zip(labels, front):
        row(label, scores)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("run", type=Path, help="a finished campaign run folder")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    args = parser.parse_args()
    config = args.run / "campaign.yaml"
    runner = CampaignRunner.open(Campaign.load(config), config.parent, args.run)
    print(comparison_table(runner, tuple(args.lambdas)))


if __name__ == "__main__":
    main()
