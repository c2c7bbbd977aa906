"""IRT-scored search vs the same search scored on all items, on the demo zoo; plus user baselines.

    .venv/bin/python scripts/bench_campaign.py --zoo runs/zoo/tiny-lm --sizes 8x4,16x8 [--kinds gpirt,adaptive]

For each campaign size (population x generations), same seed: (a) candidates scored by each of
`--kinds` (default gpirt: `--anchors` items per task scenario, default 5, about 20 per task;
adaptive: items chosen per candidate until the standard error is below target), (b) every
candidate scored on all items. Prints search items per candidate, item evaluations in the search
phase and in total (IRT calibration and the final phase included), the hypervolume of each final
front measured on the search items, and each best-per-task pick against the endpoint trained for
its task. Then measures the baselines a user would try first (task arithmetic with
lambda from a grid, TIES with density 0.2, TSV-M with alpha 1; `scripts/campaign_baselines.py`)
and checks that the campaign's measured front dominates or matches each.

    .venv/bin/python scripts/bench_campaign.py --zoo runs/zoo/tiny-lm --sizes 16x8 --granularity model,blocks:1

With `--granularity`, runs the IRT-scored campaign once per coefficient granularity instead (same
seed, population, generations and anchors, so the same item budget) and prints each measured
front: what a finer genome buys.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import yaml
from campaign_baselines import comparison_table, measured_front  # a sibling script

from evo_merge.cli.template import campaign_text
from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import reference_candidates
from evo_merge.search.front import candidates, choose
from evo_merge.search.store import CampaignStore
from evo_merge.search.study import SEARCH
from evo_merge.search.workspace import config_fingerprint, resolve_campaign
from evo_merge.zoo.manifest import read_zoo


def run_campaign(zoo: Path, families: list[str], out: Path, population: int, generations: int, kind: str,
                 anchors: int, reuse: bool, granularity: str = "model") -> tuple[CampaignRunner, float]:
    text = campaign_text(zoo.resolve(), families, name=out.name, anchors=anchors, population=population,
                         generations=generations, top=10_000)
    config = yaml.safe_load(text)
    config["estimator"]["kind"] = kind
    config["coefficients"]["granularity"] = granularity
    campaign = Campaign.model_validate(config)
    if not reuse or config_fingerprint(resolve_campaign(campaign, zoo)) != CampaignStore(out).get_meta("config"):
        shutil.rmtree(out, ignore_errors=True)
    runner = CampaignRunner.open(campaign, zoo, out)  # a finished run in `out` is looked up, not re-evaluated
    start = time.perf_counter()
    runner.run()
    return runner, time.perf_counter() - start


def compare_granularities(args: argparse.Namespace, families: list[str], size: str) -> None:
    """One IRT-scored campaign per granularity at one size: items spent, measured hypervolume, the front."""
    population, generations = map(int, size.split("x"))
    print(f"\n| granularity ({size}) | search items | total items | HV (measured) | front size | wall s |")
    print("|---|---|---|---|---|---|")
    fronts = {}
    for granularity in args.granularity.split(","):
        suffix = "" if granularity == "model" else "-" + granularity.replace(":", "")  # model: the default run
        folder = args.out / f"irt-a{args.anchors}-{size}{suffix}"
        runner, wall = run_campaign(args.zoo, families, folder, population, generations, "gpirt", args.anchors,
                                    args.reuse, granularity)
        labels, front = measured_front(runner)
        fronts[granularity] = (runner.objectives.names, labels, front)
        print(
            f"| {granularity} | {runner.workspace.store.items_evaluated('search'):,} | "
            f"{runner.workspace.store.items_evaluated(measured=True):,} | {runner.objectives.hypervolume(front):.4f} | "
            f"{len(labels)} | {wall:.0f} |",
            flush=True,
        )
    for granularity, (tasks, labels, front) in fronts.items():
        print(f"\nmeasured front, granularity {granularity}:\n| model | " + " | ".join(tasks) + " |")
        print("|---|" + "---|" * len(tasks))
        for label, scores in zip(labels, front):
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in scores) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo/tiny-lm"))
    parser.add_argument("--sizes", default="8x4,16x8", help="population x generations, comma separated")
    parser.add_argument(
        "--anchors", type=int, default=5, help="anchors per task scenario (5 x 4-5 scenarios: about 20 per task)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs of the same config in --out (all evaluations are looked up)",
    )
    parser.add_argument(
        "--granularity",
        default=None,
        metavar="LIST",
        help="compare coefficient granularities instead (e.g. model,blocks:1), IRT-scored",
    )
    parser.add_argument("--kinds", default="gpirt", help="estimators compared with full evaluation, e.g. "
                        "gpirt,adaptive")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-campaign"))
    args = parser.parse_args()
    families = read_zoo(args.zoo).endpoints
    if args.granularity:
        for size in args.sizes.split(","):
            compare_granularities(args, families, size)
        return

    kinds = args.kinds.split(",")
    rows, last = [], None
    for size in args.sizes.split(","):
        population, generations = map(int, size.split("x"))
        # anchors play no part in a full-evaluation run: fixed, so its finished runs are reusable
        full, t_full = run_campaign(
            args.zoo, families, args.out / f"full-{size}", population, generations, "full", 20, args.reuse
        )
        for kind in kinds:
            folder = args.out / (f"irt-a{args.anchors}-{size}" if kind == "gpirt" else f"{kind}-{size}")
            runner, wall = run_campaign(args.zoo, families, folder, population, generations, kind, args.anchors,
                                        args.reuse)
            rows.append((size, kind, *compare(runner, full), wall, t_full))
            print(f"[{size} {kind}] " + " | ".join(str(v) for v in rows[-1][2:]), flush=True)
            last = runner
            print(f"  best-per-task picks vs the endpoints (search items): {picks_vs_endpoints(runner)}", flush=True)

    print("\n| campaign (pop x gen) | estimator | items per candidate (search) | search items / full | ratio "
          "| total items / full | ratio | HV / full (measured) | ratio | wall s / full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, kind, per, search, total, hv, wall, t_full in rows:
        print(
            f"| {size} | {kind} | {per:.1f} | {search[0]:,} / {search[1]:,} | {search[1] / search[0]:.1f}x "
            f"| {total[0]:,} / {total[1]:,} | {total[1] / total[0]:.1f}x | {hv[0]:.4f} / {hv[1]:.4f} "
            f"| {hv[0] / hv[1]:.3f} | {wall:.0f} / {t_full:.0f} |"
        )

    print(f"\nbaselines vs the {kinds[-1]} campaign's measured front ({args.sizes.split(',')[-1]}), "
          "on the search items (held-out items left out):")
    print(comparison_table(last))


def compare(runner: CampaignRunner, full: CampaignRunner) -> tuple[float, tuple, tuple, tuple]:
    """(search items per search candidate, search items, total items, measured hypervolume), each
    as (this run, the full-evaluation run) after the first."""
    store, full_store = runner.workspace.store, full.workspace.store
    searched = store.evaluations(SEARCH)
    search = (store.items_evaluated("search"), full_store.items_evaluated("search"))
    total = (store.items_evaluated(measured=True), full_store.items_evaluated(measured=True))
    hv = tuple(run.objectives.hypervolume(measured_front(run)[1]) for run in (runner, full))
    return search[0] / max(len(searched), 1), search, total, hv


def picks_vs_endpoints(runner: CampaignRunner) -> str:
    """Each best-per-task pick's measured score on its task (search items), and as a multiple of
    the endpoint named like the task (the zoo's endpoints are), measured alike in calibration."""
    store, objectives = runner.workspace.store, runner.objectives
    measured = [e for e in candidates(store) if e.measured is not None]
    chosen = choose(measured, objectives, runner.workspace.campaign.final)
    endpoints = {label.removeprefix("endpoint "): store.get(c.key)
                 for label, c in reference_candidates(runner.workspace.endpoint_labels())[1:]}
    cells = []
    for task in objectives.names:
        pick, ref = chosen.get(f"best-{task}"), endpoints.get(task)
        if pick is None:
            continue
        cell = f"{task} {pick.measured[task]:.3f}"
        if ref is not None and ref.measured:
            cell += f" ({pick.measured[task] / ref.measured[task]:.2f}x the endpoint's {ref.measured[task]:.3f})"
        cells.append(cell)
    return "; ".join(cells) or "no best-per-task picks"


if __name__ == "__main__":
    main()
