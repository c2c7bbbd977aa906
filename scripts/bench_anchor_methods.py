"""Anchor methods compared on a campaign's candidates, with pre-fitted IRT models (no search trajectory).

    PYTHONPATH=. .venv/bin/python scripts/bench_anchor_methods.py runs/b16-s0-new/full-16x8 [RUN ...] \
        [--irt-model irt_models] [--methods kmeans-irt,stratified-irt] [--anchors 5] [--draws 10]

A campaign with `estimator.irt_model` scores its candidates with models fitted elsewhere, on 30 or
more subjects, where `auto` anchors cluster the items. This takes the candidates of finished
full-evaluation runs (`bench_campaign.py`'s `full-*` folders, every candidate measured on every
item; opened as they are, never run again), estimates each task's score with gp-IRT on each
anchor method's anchors (the campaign's neyman allocation, `--anchors` per scenario on average,
`--draws` anchor seeds), the models' held-out items left out as a campaign does, and prints per
method the MAE per task and the measured hypervolume of the front the estimates pick over the
true front's (mean and range over the draws): what the anchors alone change in what a campaign
would pick.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_campaign import _full_candidates, _picked_front_hv, estimated_vectors  # a sibling script

from evo_merge.config import Campaign
from evo_merge.irt import IRTModel
from evo_merge.search.campaign import CampaignRunner
from evo_merge.shipped import shipped_dir


def compare(full_run: Path, irt_model: Path, methods: list[str], anchors: int, draws: int) -> list[str]:
    """Table rows for one full run: per method, MAE per task and the picked front's HV ratio."""
    full = CampaignRunner.open(Campaign.load(full_run / "campaign.yaml"), full_run, full_run)
    seed = full.workspace.campaign.algorithm.seed
    _, rows, truth = _full_candidates(full, full)
    objectives = full.objectives
    models = {name: IRTModel.load(irt_model / name).without_items(full.scoring.holdout[name])
              for name in objectives.names}
    lines = []
    for method in methods:
        mae, hv = [], []
        for draw in range(draws):
            est = estimated_vectors(models, rows, objectives, anchors, method, draw, "neyman")
            mae.append(np.abs(est - truth).mean(axis=0))
            hv.append(_picked_front_hv(full, est, truth)[0])
        cells = " / ".join(f"{v:.3f}" for v in np.mean(mae, axis=0))
        lines.append(f"| {seed} | {len(rows)} | {method} | {cells} | {np.mean(hv):.3f} ({min(hv):.3f}-{max(hv):.3f}) |")
    full.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("runs", type=Path, nargs="+", help="finished full-evaluation run folders")
    parser.add_argument("--irt-model", type=Path, default=shipped_dir("irt_models"),
                        help="a fitted IRT folder per task (default: the shipped ones)")
    parser.add_argument("--methods", default="kmeans-irt,stratified-irt")
    parser.add_argument("--anchors", type=int, default=5, help="anchors per scenario, on average")
    parser.add_argument("--draws", type=int, default=10, help="anchor seeds per method")
    args = parser.parse_args()
    print("| seed | candidates | anchor method | MAE per task | HV of the estimated front / of the true front |")
    print("|---|---|---|---|---|")
    for full_run in args.runs:
        for line in compare(full_run, args.irt_model, args.methods.split(","), args.anchors, args.draws):
            print(line, flush=True)


if __name__ == "__main__":
    main()
