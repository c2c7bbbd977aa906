"""IRT-scored search vs the same search scored on all items, on the demo zoo; plus user baselines.

    .venv/bin/python scripts/bench_campaign.py --zoo runs/zoo/tiny-lm --sizes 8x4,16x8

For each campaign size (population x generations), same seed: (a) candidates scored on
`--anchors` items per task scenario (default 5: about 20 per task) with gp-IRT, (b) every
candidate scored on all items. Prints item evaluations in the search phase and in total (IRT
calibration and the front's full evaluation included), and the hypervolume of each final front
measured on all items. Then measures the baselines a user would try first (task arithmetic with
lambda from a grid, TIES with density 0.2, TSV-M with alpha 1; `scripts/campaign_baselines.py`)
and checks that the campaign's measured front dominates or matches each.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import yaml
from campaign_baselines import comparison_table, measured_front  # a sibling script

from evo_merge.config import Campaign
from evo_merge.cli.template import campaign_text
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.store import CampaignStore
from evo_merge.search.workspace import config_fingerprint, resolve_campaign
from evo_merge.zoo.manifest import read_zoo


def run_campaign(zoo: Path, families: list[str], out: Path, population: int, generations: int, kind: str,
                 anchors: int, reuse: bool) -> tuple[CampaignRunner, float]:
    text = campaign_text(zoo.resolve(), families, name=out.name, anchors=anchors, population=population,
                         generations=generations, top=10_000)
    config = yaml.safe_load(text)
    config["estimator"]["kind"] = kind
    campaign = Campaign.model_validate(config)
    if not reuse or config_fingerprint(resolve_campaign(campaign, zoo)) != CampaignStore(out).get_meta("config"):
        shutil.rmtree(out, ignore_errors=True)
    runner = CampaignRunner.open(campaign, zoo, out)  # a finished run in `out` is looked up, not re-evaluated
    start = time.perf_counter()
    runner.run()
    return runner, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo/tiny-lm"))
    parser.add_argument("--sizes", default="8x4,16x8", help="population x generations, comma separated")
    parser.add_argument("--anchors", type=int, default=5,
                        help="anchors per task scenario (5 x 4-5 scenarios: about 20 per task)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs of the same config in --out (all evaluations are looked up)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-campaign"))
    args = parser.parse_args()
    families = read_zoo(args.zoo).endpoints

    rows = []
    for size in args.sizes.split(","):
        population, generations = map(int, size.split("x"))
        irt, t_irt = run_campaign(args.zoo, families, args.out / f"irt-a{args.anchors}-{size}", population,
                                  generations, "gpirt", args.anchors, args.reuse)
        # anchors play no part in a full-evaluation run: fixed, so its finished runs are reusable
        full, t_full = run_campaign(args.zoo, families, args.out / f"full-{size}", population, generations, "full",
                                    20, args.reuse)
        search = (irt.store.items_evaluated("search"), full.store.items_evaluated("search"))
        total = (irt.store.items_evaluated(measured=True), full.store.items_evaluated(measured=True))
        hv = (irt.objectives.hypervolume(measured_front(irt)[1]), full.objectives.hypervolume(measured_front(full)[1]))
        rows.append((size, search, total, hv, (t_irt, t_full)))
        print(f"[{size}] search items {search[0]:,} vs {search[1]:,} ({search[1] / search[0]:.1f}x); "
              f"total {total[0]:,} vs {total[1]:,} ({total[1] / total[0]:.1f}x); "
              f"HV {hv[0]:.4f} vs {hv[1]:.4f} ({hv[0] / hv[1]:.3f}); wall {t_irt:.0f} s vs {t_full:.0f} s", flush=True)

    print("\n| campaign (pop x gen) | search items IRT / full | ratio | total items IRT / full | ratio "
          "| HV IRT / full (measured) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for size, search, total, hv, _ in rows:
        print(f"| {size} | {search[0]:,} / {search[1]:,} | {search[1] / search[0]:.1f}x | {total[0]:,} / {total[1]:,} "
              f"| {total[1] / total[0]:.1f}x | {hv[0]:.4f} / {hv[1]:.4f} | {hv[0] / hv[1]:.3f} |")

    print(f"\nbaselines vs the IRT campaign's measured front ({args.sizes.split(',')[-1]}), all items:")
    print(comparison_table(irt))


if __name__ == "__main__":
    main()
