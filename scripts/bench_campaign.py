"""IRT-scored search vs the same search scored on all items, on the demo zoo; plus user baselines.

    .venv/bin/python scripts/bench_campaign.py --zoo runs/zoo/tiny-lm --sizes 8x4,16x8 [--kinds gpirt,adaptive]

For each campaign size (population x generations), same seed: (a) candidates scored by each of
`--kinds` (default gpirt: `--anchors` items per task scenario on average, default 5, about 20
per task, spread over a task's scenarios by `--allocation`, default neyman as in a campaign;
adaptive: items chosen per candidate until the standard error is below target), (b) every
candidate scored on all items. Prints search items per candidate, item evaluations in the search
phase and in total (IRT calibration and the final phase included), the hypervolume of each final
front measured on the search items, and each best-per-task pick against the endpoint trained for
its task, all at the product's default final phase (each pick's 3 best estimates and 8 front
members, measured on every search item; the picks on the held-out items too). The runs measure
every estimated front member; what a final phase measures is nested in
what a larger one measures, so a second table gives the total items and hypervolume of smaller
and larger final phases from the same runs. The runs measure every finalist (`final.race: []`);
a campaign races them by default, and since the race's decisions depend only on the finalists'
scores on its samples, a third table replays it on the runs (the campaign's own sample, and
`--race-draws` others): total items, measured hypervolume, and the merges its stages build;
`--race 0.125` (repeatable) replays other stages (`final.race`) the same way, a table each.
`--warmup N` calibrates IRT on N warm-up merges with the base and endpoints (default 4, the
demo's; a campaign's default is 8), in folders named `-wN`. `--one-set` scores every candidate on one
anchor set and `--no-pool` chooses the finalists on each one's own estimates, as before defaults
version 9 (`estimator.anchor_sets: 1`, `final.pool_estimates: false`), in folders named `-one-set`
and `-own`; `--one-draw` draws each anchor set once, as before defaults version 10
(`estimator.anchor_balance: 1`), in folders named `-one-draw`.
With `--follow-up`, each IRT-scored campaign is followed by one on the same models, tasks and
seed that reuses its fitted IRT models (`estimator.irt_model: FOLDER/irt`: no warm-up merges),
compared alike in every table.
With `--allocation-draws N`, the full run's candidates are also estimated with each run's IRT
models and its anchor budget spread by each allocation, over N anchor seeds: the allocations
compared without a search trajectory or one anchor draw's luck; `--balance-draws N` compares anchor
sets of one draw and balanced ones (`estimator.anchor_balance` 1 and the default) alike.
Then measures the baselines a user would try first (task arithmetic with lambda from a grid,
TIES with density 0.2, TSV-M with alpha 1; `scripts/campaign_baselines.py`) and checks that the
campaign's measured front dominates or matches each.

    .venv/bin/python scripts/bench_campaign.py --zoo runs/zoo/tiny-lm --sizes 16x8 --granularity model,blocks:1

With `--granularity`, runs the IRT-scored campaign once per coefficient granularity instead (same
seed, population, generations and anchors, so the same item budget) and prints each measured
front: what a finer genome buys.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import yaml
from campaign_baselines import comparison_table, measured_front  # a sibling script
from scipy.stats import spearmanr

from evo_merge.cli.template import campaign_text
from evo_merge.config import Campaign, FinalSpec
from evo_merge.irt import Estimator, IRTModel, select_anchors
from evo_merge.irt.kinds import ANCHOR_ALLOCATIONS, DEFAULT_ANCHOR_BALANCE
from evo_merge.search.binding import DEFAULTS_META, as_written_at, config_fingerprint
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import reference_candidates
from evo_merge.search.front import (
    Distinct,
    candidates,
    choose,
    finalists,
    pick_rounds,
    to_measure,
    warmups_scored_whole,
)
from evo_merge.search.holdout import HOLDOUT_META
from evo_merge.search.objectives import Objectives
from evo_merge.search.pooling import pooled
from evo_merge.search.race import SEED_OFFSET, RaceSample, run_race
from evo_merge.search.store import BASELINES_META, SEARCH, CampaignStore
from evo_merge.search.workspace import resolve_campaign
from evo_merge.zoo.manifest import finished_zoo

ALL = 10_000  # evaluate_top of the bench's runs: every estimated front member is measured
DEFAULT = FinalSpec()  # the final phase a user gets
FINAL_GRID = ((1, 0), (1, 4), (2, 4), (3, 0), (3, 4), (DEFAULT.top_k, DEFAULT.evaluate_top), (3, ALL))


def run_campaign(zoo: Path, families: list[str], out: Path, population: int, generations: int, kind: str,
                 anchors: int, reuse: bool, granularity: str = "model", seed: int = 0,
                 allocation: str = "neyman", warmup: int = 4, irt_model: Path | None = None,
                 one_set: bool = False, pool: bool = True, one_draw: bool = False) -> tuple[CampaignRunner, float]:
    text = campaign_text(zoo.resolve(), families, name=out.name, anchors=anchors, population=population,
                         generations=generations, top=ALL, warmup=warmup)
    config = yaml.safe_load(text)
    config["estimator"]["kind"] = kind
    config["estimator"]["irt_model"] = None if irt_model is None else str(irt_model.resolve())
    config["algorithm"]["seed"] = seed
    config["coefficients"]["granularity"] = granularity
    config["estimator"]["anchor_allocation"] = allocation
    if one_set:  # as before defaults version 9: one anchor set for every candidate
        config["estimator"]["anchor_sets"] = 1
    if one_draw:  # as before defaults version 10: each anchor set one stratified draw
        config["estimator"]["anchor_balance"] = 1
    config["final"]["pool_estimates"] = pool
    config["final"]["race"] = []  # every finalist measured: the tables replay smaller and raced final phases
    config["final"]["measure_whole"] = "survivors"  # (what it was without a race; keeps older runs reusable)
    campaign = Campaign.model_validate(config)
    resolved = resolve_campaign(campaign, zoo)
    store = CampaignStore(out)
    # a run folder written under older defaults runs with them: stale where that differs from today's
    version = store.get_meta(DEFAULTS_META) or 1
    stale = (config_fingerprint(resolved, written_at=version) != store.get_meta("config")
             or (kind != "full" and as_written_at(resolved, version) != resolved))
    store.close()
    if not reuse or stale:
        shutil.rmtree(out, ignore_errors=True)
    # the runner holds the folder's lock while it opens and runs, as `evo-merge run` holds it: two benches
    # reusing one folder would both export into it
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
                                    args.reuse, granularity, args.seed, args.allocation)
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
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
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
    parser.add_argument("--allocation", default="neyman", choices=ANCHOR_ALLOCATIONS,
                        help="how each task's anchors are spread over its scenarios (estimator.anchor_allocation)")
    parser.add_argument("--one-set", action="store_true",
                        help="one anchor set for every candidate (estimator.anchor_sets 1, the default before "
                        "version 9), in folders named -one-set")
    parser.add_argument("--no-pool", action="store_true",
                        help="finalists chosen on each candidate's own estimates (final.pool_estimates false, the "
                        "default before version 9), in folders named -own")
    parser.add_argument("--one-draw", action="store_true",
                        help="each anchor set one stratified draw (estimator.anchor_balance 1, the default before "
                        "version 10), in folders named -one-draw")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up merges calibrating IRT with the base and "
                        "endpoints (estimator.warmup_merges)")
    parser.add_argument("--balance-draws", type=int, default=0, metavar="N",
                        help="also estimate the full run's candidates with each run's IRT models on anchor sets of "
                        "one draw and balanced ones, over N anchor seeds")
    parser.add_argument("--allocation-draws", type=int, default=0, metavar="N",
                        help="also estimate the full run's candidates with each allocation over N anchor seeds")
    parser.add_argument("--front-draws", type=int, default=0, metavar="N",
                        help="also choose the final phase's front members by either rule (final.front_choice) on "
                        "the full run's candidates, estimated by each run's IRT models over N anchor seeds")
    parser.add_argument("--race-draws", type=int, default=5, metavar="N",
                        help="the race's table also over N other sample seeds")
    parser.add_argument("--race", action="append", default=[], metavar="STAGES", type=race_stages,
                        help="also replay the race with these stages (final.race), e.g. 0.125 or 0.125,0.25")
    parser.add_argument("--follow-up", action="store_true",
                        help="after each IRT-scored campaign, a follow-up on the same models and tasks reusing "
                             "its fitted models (estimator.irt_model: its irt/), in a folder named -followup")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-campaign"))
    parser.add_argument("--seed", type=int, default=0, help="the campaigns' seed (a search is one trajectory: "
                        "compare estimators over several seeds, each in its own --out)")
    args = parser.parse_args()
    families = finished_zoo(args.zoo).endpoints
    if args.granularity:
        for size in args.sizes.split(","):
            compare_granularities(args, families, size)
        return

    kinds = args.kinds.split(",")
    rows, runs, last = [], [], None
    for size in args.sizes.split(","):
        population, generations = map(int, size.split("x"))
        # anchors play no part in a full-evaluation run: fixed, so its finished runs are reusable
        full, t_full = run_campaign(
            args.zoo, families, args.out / f"full-{size}", population, generations, "full", 20, args.reuse,
            seed=args.seed,
        )
        for kind in kinds:
            anchored = f"{kind}-a{args.anchors}-{args.allocation}-{size}" if kind != "gpirt" else \
                f"irt-a{args.anchors}-{size}" + ("" if args.allocation == "neyman" else f"-{args.allocation}")
            folder = args.out / ((f"{kind}-{size}" if kind == "adaptive" else anchored)
                                 + ("" if args.warmup == 4 else f"-w{args.warmup}")
                                 + ("-one-set" if args.one_set else "") + ("-own" if args.no_pool else "")
                                 + ("-one-draw" if args.one_draw else ""))
            runner, wall = run_campaign(args.zoo, families, folder, population, generations, kind, args.anchors,
                                        args.reuse, seed=args.seed, allocation=args.allocation, warmup=args.warmup,
                                        one_set=args.one_set, pool=not args.no_pool, one_draw=args.one_draw)
            rows.append((size, kind, *compare(runner, full), wall, t_full))
            runs.append((size, kind, runner, full))
            print(f"[{size} {kind}] " + " | ".join(str(v) for v in rows[-1][2:]), flush=True)
            last = runner
            print(f"  best-per-task picks vs the endpoints (search items): {picks_vs_endpoints(runner)}", flush=True)
            if args.follow_up and kind not in ("full", "adaptive"):
                follow, wall = run_campaign(args.zoo, families, folder.with_name(folder.name + "-followup"),
                                            population, generations, kind, args.anchors, args.reuse, seed=args.seed,
                                            allocation=args.allocation, warmup=args.warmup, irt_model=folder / "irt",
                                            one_set=args.one_set, pool=not args.no_pool, one_draw=args.one_draw)
                rows.append((size, f"{kind}, follow-up", *compare(follow, full), wall, t_full))
                runs.append((size, f"{kind}, follow-up", follow, full))
                print(f"[{size} {kind}, follow-up] " + " | ".join(str(v) for v in rows[-1][2:]), flush=True)

    print("\n| campaign (pop x gen) | estimator | items per candidate (search) | search items / full | ratio "
          "| total items / full | ratio | HV / full (measured) | ratio | wall s / full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, kind, per, search, total, hv, wall, t_full in rows:
        print(
            f"| {size} | {kind} | {per:.1f} | {search[0]:,} / {search[1]:,} | {search[1] / search[0]:.1f}x "
            f"| {total[0]:,} / {total[1]:,} | {total[1] / total[0]:.1f}x | {hv[0]:.4f} / {hv[1]:.4f} "
            f"| {hv[0] / hv[1]:.3f} | {wall:.0f} / {t_full:.0f} |"
        )

    print("\nthe estimators on the full-evaluation run's search candidates (no search trajectory: every run's "
          "estimator scores the same candidates from their anchors; truth is their score on the search items):")
    print(estimator_table(runs))
    if args.allocation_draws:
        print(f"\nanchor allocations on the same candidates, {args.allocation_draws} anchor draws each (the runs' "
              "IRT models; no search trajectory):")
        print(allocation_table(runs, args.allocation_draws))
    if args.balance_draws:
        print(f"\nanchor sets of one draw and balanced, on the same candidates, {args.balance_draws} anchor draws each "
              "(the runs' IRT models; no search trajectory):")
        print(allocation_table(runs, args.balance_draws, balances=(1, DEFAULT_ANCHOR_BALANCE)))

    print(f"\nthe default final phase raced (final.race {DEFAULT.race}, race_tolerance {DEFAULT.race_tolerance}), "
          "replayed on the runs, which measured every finalist:")
    print(race_table(runs, args.race_draws))
    for stages in args.race:
        print(f"\nthe same final phase raced with final.race {stages} instead, replayed alike:")
        print(race_table(runs, args.race_draws, stages))

    print("\ntotal items (full / this) and measured hypervolume (this / full) by the size of the final phase "
          f"(default: top_k {DEFAULT.top_k}, evaluate_top {DEFAULT.evaluate_top}):")
    print(final_phase_table(runs))
    print("\nthe same, the front members past each task's best chosen by the hypervolume their estimates add "
          "(final.front_choice hypervolume, defaults version 11) or farthest from those chosen (spread, before):")
    print(front_choice_table(runs))
    if args.front_draws:
        print(f"\nthe front-member rules without a trajectory: the full run's candidates estimated by each run's IRT "
              f"models from {args.front_draws} anchor seeds, pooled, the finalists chosen by either rule:")
        print(front_draws_table(runs, args.front_draws))

    print(f"\nbaselines vs the {kinds[-1]} campaign's measured front ({args.sizes.split(',')[-1]}, every "
          "estimated front member measured), on the search items (held-out items left out):")
    print(comparison_table(last))


def final_keys(runner: CampaignRunner, top_k: int, evaluate_top: int, front_choice: str | None = None) -> list[str]:
    """The keys a final phase of this size measures (its front members chosen by `front_choice`, default
    the run's), in its order. Its choices are nested (each pick's best estimates first, the front members
    added one at a time), so from a run that measured more, every smaller final phase's figures follow
    exactly, without running it."""
    workspace = runner.workspace
    ran = workspace.campaign.final
    if top_k > ran.top_k or evaluate_top > ran.evaluate_top:
        raise ValueError(f"the run measured top_k {ran.top_k}, evaluate_top {ran.evaluate_top}: not a superset")
    final = ran.model_copy(update={"top_k": top_k, "evaluate_top": evaluate_top,
                                   "front_choice": front_choice or ran.front_choice})
    chosen = to_measure(workspace.store, runner.objectives, final, Distinct(runner.space, final.distinct))
    return [e.key for e in chosen]


@cache
def held_out_scored(runner: CampaignRunner) -> Counter[str]:
    """Held-out item scores per evaluation key outside calibration (read once per run: every
    final-phase size of the table asks)."""
    store = runner.workspace.store
    held = {(task, item) for task, items in store.get_meta(HOLDOUT_META, {}).items() for item in items}
    rows = store.db.execute("SELECT key, task, item FROM item_scores JOIN evaluations ON id = evaluation_id "
                            "WHERE phase != 'calibration'")
    return Counter(key for key, task, item in rows if (task, item) in held)


def total_items(runner: CampaignRunner, measured: Collection[str], picks: Collection[str] | None = None) -> int:
    """Item evaluations of the run had its final phase measured only `measured` on the search
    items, and the held-out items of `picks` (default: the picks chosen among `measured`);
    calibration's measurements and the references' held-out items always count."""
    store = runner.workspace.store
    if picks is None:
        picks = {e.key for e in choose([e for e in candidates(store) if e.measured is not None and e.key in measured],
                                       runner.objectives, runner.workspace.campaign.final).values()}
    held = held_out_scored(runner)
    total = 0
    for key, phase, spent, more in store.db.execute(
            "SELECT key, phase, items_evaluated, items_measured FROM evaluations"):
        final_phase = more - held[key] if key in measured else 0
        total += spent + (more if phase == "calibration" else final_phase)
    held_per_pick = sum(map(len, store.get_meta(HOLDOUT_META, {}).values()))
    return total + len(picks) * held_per_pick


def compare(runner: CampaignRunner, full: CampaignRunner, top_k: int = DEFAULT.top_k,
            evaluate_top: int = DEFAULT.evaluate_top,
            front_choice: str | None = None) -> tuple[float, tuple, tuple, tuple]:
    """(search items per search candidate, search items, total items, measured hypervolume), each
    as (this run, the full-evaluation run) after the first, with a final phase of the given size
    (its front members chosen by `front_choice`, default each run's own).
    Every candidate of the full-evaluation run is measured on the search items as it is searched,
    so its front is all of them; its final phase adds the held-out items of what it measures."""
    store, full_store = runner.workspace.store, full.workspace.store
    searched = store.evaluations(SEARCH)
    search = (store.items_evaluated("search"), full_store.items_evaluated("search"))
    chosen, chosen_full = (final_keys(run, top_k, evaluate_top, front_choice) for run in (runner, full))
    total = (total_items(runner, chosen), total_items(full, chosen_full))
    hv = (runner.objectives.hypervolume(measured_front(runner, chosen)[1]),
          full.objectives.hypervolume(measured_front(full)[1]))
    return search[0] / max(len(searched), 1), search, total, hv


def final_phase_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]]) -> str:
    """Total item ratio and measured hypervolume ratio per final-phase size, from the same runs."""
    lines = ["| campaign | estimator | " + " | ".join(
        f"top_k {k}, evaluate_top {'all' if n == ALL else n}" for k, n in FINAL_GRID) + " |",
        "|---|---|" + "---|" * len(FINAL_GRID)]
    for size, kind, runner, full in runs:
        cells = []
        for top_k, evaluate_top in FINAL_GRID:
            _, _, total, hv = compare(runner, full, top_k, evaluate_top)
            cells.append(f"{total[1] / total[0]:.1f}x / {hv[0] / hv[1]:.3f}")
        lines.append(f"| {size} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def front_choice_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]]) -> str:
    """Total item ratio and measured hypervolume ratio with the final phase's front members chosen by
    either rule (`final.front_choice`): at the default top_k and a few evaluate_top, every finalist
    measured whole, and the default final phase raced (the front it shows), from the same runs."""
    choices = ("spread", "hypervolume")
    grid = [(n, choice) for n in (4, DEFAULT.evaluate_top, 12) for choice in choices]
    lines = ["| campaign | estimator | " + " | ".join(f"evaluate_top {n}, {choice}" for n, choice in grid)
             + " | " + " | ".join(f"raced, {choice}" for choice in choices) + " |",
             "|---|---|" + "---|" * (len(grid) + len(choices))]
    for size, kind, runner, full in runs:
        cells = []
        for evaluate_top, choice in grid:
            _, _, total, hv = compare(runner, full, DEFAULT.top_k, evaluate_top, choice)
            cells.append(f"{total[1] / total[0]:.1f}x / {hv[0] / hv[1]:.3f}")
        _, _, (_, full_total), (_, full_hv) = compare(runner, full)
        for choice in choices:
            if runner.scoring.adaptive():  # not raced here (as in race_table)
                cells.append("-")
                continue
            total, hv, *_ = raced_final_phase(runner, runner.workspace.campaign.algorithm.seed, front_choice=choice)
            cells.append(f"{full_total / total:.1f}x / {hv / full_hv:.3f}")
        lines.append(f"| {size} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def race_stages(text: str) -> list[float]:
    """`--race`: comma-separated sample fractions, growing, each in (0, 1)."""
    stages = [float(part) for part in text.split(",")]
    if not stages or any(not 0 < f < 1 for f in stages) or stages != sorted(set(stages)):
        raise argparse.ArgumentTypeError(f"{text!r}: growing fractions in (0, 1), e.g. 0.125,0.25")
    return stages


def raced_final_phase(runner: CampaignRunner, seed: int, stages: Sequence[float] = DEFAULT.race,
                      front_choice: str | None = None) -> tuple[int, float, float, int, int, int]:
    """The default final phase raced at the product's defaults (`race_tolerance`, `measure_whole`;
    `final.race` unless other `stages` are given), replayed on this run, which measured every
    finalist: the race's decisions and the picks depend only on the finalists' scores on the
    sample's items, so it takes those a campaign would. Returns the run's total items; the
    measured hypervolume of the front the campaign reports (with `measure_whole: picks`, the
    survivors no other dominates on the sample: measured here, since the run measured them,
    though the campaign measures only its picks) and of the measured candidates alone (the
    picks); the finalists; the survivors; and the merges its stages build (each stage builds
    every live finalist once more). A finalist scored on samples only costs the sample items it
    lacked before the final phase (its anchors); one measured whole what the final phase costs
    it without a race."""
    store, scoring, objectives = runner.workspace.store, runner.scoring, runner.objectives
    finalists = final_keys(runner, DEFAULT.top_k, DEFAULT.evaluate_top, front_choice)  # in the campaign's order
    stored = {key: store.item_scores(key) for key in finalists}
    sample = RaceSample({n: scoring.search_ids(n) for n in scoring.names},
                        {n: scoring.tasks[n].scenarios for n in scoring.names}, seed + SEED_OFFSET)
    whole_before = warmups_scored_whole(runner.ledger, finalists)  # the standard warm-ups: nothing left to score
    seen: dict[str, set] = {}
    builds = []

    def score(keys, items, label):
        builds.append(len(set(keys) - whole_before))  # a finalist measured whole is not built again
        for key in keys:
            anchors = {(n, i) for n, ids in scoring.anchor_items(key).items() for i in ids}  # its own set's
            seen[key] = set() if key in whole_before else \
                {(n, i) for n, ids in items.items() for i in ids} - anchors
        return {key: stored[key] for key in keys}

    live, left, last = run_race(finalists, sample, stages, objectives, score, DEFAULT.race_tolerance)
    truth = {e.key: e for e in candidates(store) if e.key in finalists}
    if DEFAULT.measure_whole == "survivors" or last is None:
        whole, shown = set(live), set(live)
        picks = None
    else:  # the picks' rounds (`pick_rounds`): every candidate a round picks is measured whole
        sampled = [replace(truth[k], measured=sample.score(stored[k], last)) for k in live]
        rounds = [{e.key for e in chosen.values()} for _, chosen, _ in pick_rounds(
            sampled, objectives, runner.workspace.campaign.final, whole_before & set(live),
            lambda key: truth[key].measured)]
        whole, picks = set().union(*rounds), rounds[-1]
        known = [truth[e.key] if e.key in whole | whole_before else e for e in sampled]  # as pareto.csv shows them
        shown = {known[i].key for i in objectives.non_dominated(np.array([objectives.vector(e.measured)
                                                                          for e in known]))}
    total = total_items(runner, whole, picks) + sum(len(seen[key]) for key in finalists if key not in whole)
    hv = objectives.hypervolume(np.array([objectives.vector(truth[k].measured) for k in shown]))
    hv_measured = objectives.hypervolume(measured_front(runner, whole)[1])
    return total, hv, hv_measured, len(finalists), len(live), sum(builds)


def perfect_race(runner: CampaignRunner) -> int:
    """The run's total items had a race known the measured scores for free: only the finalists no
    other finalist dominates (and the picks) measured, nothing spent on samples. No race can save
    more; the hypervolume is the whole final phase's."""
    store, objectives = runner.workspace.store, runner.objectives
    finalists = final_keys(runner, DEFAULT.top_k, DEFAULT.evaluate_top)
    measured = [e for e in candidates(store) if e.key in finalists]
    points = np.array([objectives.vector(e.measured) for e in measured])
    keep = {measured[i].key for i in objectives.non_dominated(points)}
    keep |= {e.key for e in choose(measured, objectives, runner.workspace.campaign.final).values()}
    return total_items(runner, keep)


def race_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]], draws: int,
               stages: Sequence[float] = DEFAULT.race) -> str:
    """Total item ratio and measured hypervolume ratio of the default final phase, measured whole and
    raced: on the campaign's own sample, and over `draws` other sample seeds (mean, range)."""
    lines = ["| campaign | estimator | measured whole: total / HV | raced: total / HV of the front shown / of the "
             "picks alone (finalists -> survivors; the cost) "
             f"| raced, {draws} other samples: total, HV (mean, range) | a perfect race: total |",
             "|---|---|---|---|---|---|"]
    for size, kind, runner, full in runs:
        if runner.scoring.adaptive():
            continue  # an adaptive test's items per candidate are not stored apart from the final phase's
        seed = runner.workspace.campaign.algorithm.seed
        _, _, (whole, full_total), (whole_hv, full_hv) = compare(runner, full)
        total, hv, hv_picks, finalists, survivors, merges = raced_final_phase(runner, seed, stages)
        more = [raced_final_phase(runner, seed + 1000 + k, stages) for k in range(draws)]
        ratios = [full_total / m[0] for m in more]
        hvs = [m[1] / full_hv for m in more]
        lines.append(f"| {size} | {kind} | {full_total / whole:.2f}x / {whole_hv / full_hv:.3f} "
                     f"| {full_total / total:.2f}x / {hv / full_hv:.3f} / {hv_picks / full_hv:.3f} "
                     f"({finalists} -> {survivors}; {whole - total:,} items saved for {merges} more merges) "
                     f"| {np.mean(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}), "
                     f"{np.mean(hvs):.3f} ({min(hvs):.3f}-{max(hvs):.3f}) | {full_total / perfect_race(runner):.2f}x |")
    return "\n".join(lines)


def _cells(values, fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def _full_candidates(runner: CampaignRunner, full: CampaignRunner) -> tuple[list[str], list, np.ndarray]:
    """The full run's scored search candidates: their keys, their item scores, and their true
    objective vectors (scores on the search items) as `runner` orients them."""
    store = full.workspace.store
    keys = [e.key for e in store.evaluations(SEARCH) if e.status == "ok"]
    rows = [store.item_scores(key) for key in keys]
    return keys, rows, np.array([runner.objectives.vector(runner.scoring.search_scores(scores)) for scores in rows])


def _picked_front_hv(runner: CampaignRunner, est: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """The true hypervolume of the front the estimates pick, over the true front's; and its size."""
    front = runner.objectives.non_dominated(est)
    return runner.objectives.hypervolume(truth[front]) / runner.objectives.hypervolume(truth), len(front)


def estimator_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]]) -> str:
    """Per task: MAE, Spearman rank correlation and RMSE over the RMS of the reported SE of each
    fixed-anchor run's estimator on the full run's candidates; and the hypervolume of the front
    the estimates pick, measured, over the full run's. A campaign's measured hypervolume is one
    search trajectory; this isolates the estimator."""
    lines = ["| campaign | estimator | MAE per task | Spearman per task | RMSE / SE per task | "
             "HV of the estimated front / of the true front |", "|---|---|---|---|---|---|"]
    for size, kind, runner, full in runs:
        scoring = runner.scoring
        if scoring.adaptive() or scoring.estimators is None:
            continue
        keys, rows, truth = _full_candidates(runner, full)
        estimates = [scoring.estimate(scores, key) for key, scores in zip(keys, rows)]  # each on its anchor set
        est = np.array([runner.objectives.vector(values) for values, _ in estimates])
        se = np.array([runner.objectives.vector(errors) for _, errors in estimates])
        hv, picked = _picked_front_hv(runner, est, truth)
        mae = np.abs(est - truth).mean(axis=0)
        rho = [spearmanr(est[:, k], truth[:, k])[0] for k in range(est.shape[1])]
        calibration = np.sqrt(((est - truth) ** 2).mean(axis=0) / (se**2).mean(axis=0))
        lines.append(f"| {size} | {kind} | {_cells(mae, '.4f')} | {_cells(rho, '.3f')} | {_cells(calibration, '.2f')} "
                     f"| {hv:.3f} ({picked} of {len(truth)}) |")
    return "\n".join(lines)


def estimated_vectors(models: dict[str, IRTModel], rows: list, objectives: Objectives, anchors: int, method: str,
                      seed: int, allocation: str, kind: str = "gpirt",
                      balance: int = DEFAULT_ANCHOR_BALANCE) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's objective vector (rows of item scores) estimated by `kind` from its scores on
    the anchors `method` picks with `seed` (and `balance`) from each task's IRT model (`models`), each
    task's estimate its overall score, clipped to [0, 1]; and their standard errors."""
    values, errors = {}, {}
    for name, model in models.items():
        estimator = Estimator(model, select_anchors(model, anchors, method, seed, allocation, balance=balance), kind)
        matrix = np.array([[scores[name].get(i, np.nan) for i in estimator.anchor_ids] for scores in rows])
        estimates, ses = estimator.estimate_with_overall(matrix)
        values[name], errors[name] = np.clip(estimates[:, -1], 0.0, 1.0), ses[:, -1]
    return tuple(np.array([objectives.vector({n: float(v[j]) for n, v in table.items()}) for j in range(len(rows))])
                 for table in (values, errors))


def front_draws_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]], draws: int) -> str:
    """Both front-member rules (`final.front_choice`) without a search trajectory: each fixed-anchor
    run's IRT models estimate the full run's candidates from `draws` anchor seeds, pooled over similar
    recipes as the final phase pools them (the standard merges measured, as a campaign's warm-ups
    are), and the default final phase's finalists are chosen as the product chooses them (each pick's
    top_k, evaluate_top front members, near-duplicates skipped); the true hypervolume of the finalists over
    all candidates', mean and range, and the finalists' count."""
    lines = ["| campaign | estimator | spread: HV / all candidates' (mean, range), finalists | hypervolume: the same "
             "| hypervolume better / worse (draws) |", "|---|---|---|---|---|"]
    for size, kind, runner, full in runs:
        scoring, objectives = runner.scoring, runner.objectives
        spec, final = runner.workspace.campaign.estimator, runner.workspace.campaign.final
        if scoring.adaptive() or scoring.estimators is None or spec.kind in ("mpirt", "gmpirt"):
            continue
        keys, rows, truth = _full_candidates(runner, full)
        models = {name: fitted.model for name, fitted in scoring.estimators.items()}
        stored = [full.workspace.store.get(key) for key in keys]
        baselines = full.workspace.store.get_meta(BASELINES_META, {})
        distinct, whole = Distinct(runner.space, final.distinct), objectives.hypervolume(truth)
        found = {choice: ([], []) for choice in ("spread", "hypervolume")}
        for seed in range(draws):
            est, se = estimated_vectors(models, rows, objectives, spec.anchors, spec.anchor_method, seed,
                                        spec.anchor_allocation, spec.kind, spec.anchor_balance)
            estimated = [replace(e, measured=None, estimates=dict(zip(objectives.names, map(float, est[j]))),
                                 estimate_se=dict(zip(objectives.names, map(float, se[j]))))
                         if e.key not in baselines else
                         replace(e, estimates=dict(zip(objectives.names, map(float, truth[j]))))
                         for j, e in enumerate(stored)]
            ranked = pooled(estimated, runner.space, objectives.names) if final.pool_estimates else estimated
            for choice, (hvs, counts) in found.items():
                rule = final.model_copy(update={"top_k": DEFAULT.top_k, "evaluate_top": DEFAULT.evaluate_top,
                                                "front_choice": choice})
                chosen = {e.key for e in finalists(ranked, objectives, rule, distinct)}  # baselines not added
                hvs.append(objectives.hypervolume(truth[[keys.index(k) for k in chosen]]) / whole)
                counts.append(len(chosen))
        cells = [f"{np.mean(h):.3f} ({min(h):.3f}-{max(h):.3f}), {np.mean(c):.1f}" for h, c in found.values()]
        (spread, _), (volume, _) = found.values()
        better = sum(b > a + 1e-9 for a, b in zip(spread, volume))
        worse = sum(b < a - 1e-9 for a, b in zip(spread, volume))
        lines.append(f"| {size} | {kind}, {spec.anchors} anchors | {cells[0]} | {cells[1]} | {better} / {worse} |")
    return "\n".join(lines)


def allocation_table(runs: list[tuple[str, str, CampaignRunner, CampaignRunner]], draws: int,
                     balances: Sequence[int] = ()) -> str:
    """Each fixed-anchor run's IRT models with its anchor budget spread by each allocation (or, with
    `balances`, by the run's allocation, drawn with each balance), over `draws` anchor seeds,
    estimating the full run's candidates (no trajectory, no one draw's luck): mean MAE and Spearman
    rho per task, and the hypervolume of the front the estimates pick."""
    lines = ["| campaign | estimator | allocation | MAE per task | Spearman per task | HV of the estimated front / "
             "of the true front (mean, range) |", "|---|---|---|---|---|---|"]
    for size, kind, runner, full in runs:
        scoring, objectives = runner.scoring, runner.objectives
        spec = runner.workspace.campaign.estimator
        if scoring.adaptive() or scoring.estimators is None or spec.kind in ("mpirt", "gmpirt"):
            continue  # (mp-IRT kinds would need the endpoints' abilities too)
        _, rows, truth = _full_candidates(runner, full)
        models = {name: fitted.model for name, fitted in scoring.estimators.items()}
        variants = ([(spec.anchor_allocation, b, f"{spec.anchor_allocation}, balance {b}") for b in balances]
                    or [(a, spec.anchor_balance, a) for a in ANCHOR_ALLOCATIONS])
        for allocation, balance, label in variants:
            mae, rho, hv = [], [], []
            for seed in range(draws):
                est, _ = estimated_vectors(models, rows, objectives, spec.anchors, spec.anchor_method, seed,
                                           allocation, spec.kind, balance)
                mae.append(np.abs(est - truth).mean(axis=0))
                rho.append([spearmanr(est[:, k], truth[:, k])[0] for k in range(est.shape[1])])
                hv.append(_picked_front_hv(runner, est, truth)[0])
            lines.append(f"| {size} | {kind}, {spec.anchors} anchors | {label} "
                         f"| {_cells(np.mean(mae, axis=0), '.4f')} | {_cells(np.mean(rho, axis=0), '.3f')} "
                         f"| {np.mean(hv):.3f} ({min(hv):.3f}-{max(hv):.3f}) |")
    return "\n".join(lines)


def picks_vs_endpoints(runner: CampaignRunner) -> str:
    """Each best-per-task pick's measured score on its task (search items), and as a multiple of
    the endpoint named like the task (the zoo's endpoints are), measured alike in calibration; the
    picks of the default final phase."""
    store, objectives = runner.workspace.store, runner.objectives
    chosen_keys = final_keys(runner, DEFAULT.top_k, DEFAULT.evaluate_top)
    measured = [e for e in candidates(store) if e.measured is not None and e.key in chosen_keys]
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
