"""Wall time per generation: the local evaluator vs dask LocalClusters of 1 and 2 workers.

    .venv/bin/python scripts/bench_distributed.py --zoo runs/zoo/tiny-lm --population 16 --items 40

One generation of candidates (sampled from the search space with a fixed seed, task arithmetic,
TIES and TSV-M) is scored on the same anchor-like item subset of each shipped family task, by
(a) a LocalEvaluator in this process, (b) a 1-worker and (c) a 2-worker LocalCluster, in turn
(local, 1, 2, local, 1, 2, ...: the machine's other load drifts alike over the three). Cluster
start-up and the one-off model load on each worker are timed apart from the generations; the
first generation also pays each process's one-off merge pieces (TSV-M SVDs), the later ones are
steady state (best of them reported). Everything runs with one torch thread per process, so 1 worker vs local isolates
dask's overhead and 2 workers vs 1 the scaling.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import statistics
import time
from pathlib import Path

import torch

from evo_merge.merge.kinds import declared_ranges
from evo_merge.search.distributed import DaskEvaluator, WorkerSpec
from evo_merge.search.space import SearchSpace
from evo_merge.tasks.registry import resolve_task
from evo_merge.zoo.manifest import finished_zoo, has_zoo


def timed_generation(evaluator, jobs) -> tuple[float, float]:
    """Wall seconds for the generation, and the evaluator-side seconds summed over its jobs."""
    start = time.perf_counter()
    results = list(evaluator.evaluate_many(jobs))
    wall = time.perf_counter() - start
    failed = [outcome for _, outcome, _ in results if isinstance(outcome, Exception)]
    assert not failed, failed[0]
    return wall, sum(seconds for _, _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo/tiny-lm"),
                        help="a tiny-lm zoo folder (built there with the default settings if missing)")
    parser.add_argument("--population", type=int, default=16, help="candidates in the generation")
    parser.add_argument("--items", type=int, default=40, help="items per task each candidate is scored on")
    parser.add_argument("--repeats", type=int, default=3, help="generations timed per evaluator")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if not has_zoo(args.zoo):
        from evo_merge.zoo.tinylm import build_tinylm_zoo

        build_tinylm_zoo(args.zoo)
    zoo = args.zoo.resolve()
    families = finished_zoo(zoo).endpoints
    settings = (("batch_size", args.batch_size),)
    spec = WorkerSpec(str(zoo / "base"), tuple(str(zoo / f) for f in families),
                      tuple((f, f, settings) for f in families), "cpu", "float32")

    rng = random.Random(args.seed)
    items = {f: sorted(rng.sample(resolve_task(f, **dict(settings)).item_ids, args.items)) for f in families}
    space = SearchSpace(
        {m: declared_ranges(m, {}) for m in ("task_arithmetic", "ties", "tsv")}, len(families), (0.0, 1.5)
    )
    jobs = [(candidate, items) for candidate in space.sample(args.population, seed=args.seed)]
    job_bytes = statistics.mean(len(pickle.dumps((spec, *job))) for job in jobs)
    print(
        f"zoo {zoo} ({', '.join(families)}), {len(jobs)} candidates x {args.items} items x {len(families)} tasks, "
        f"{args.repeats} generations each, 1 torch thread per process, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )

    rows: dict[str, dict] = {}
    evaluators = {}
    try:
        start = time.perf_counter()
        evaluators["local"] = spec.build()
        rows["local"] = dict(start=0.0, load=time.perf_counter() - start, walls=[], busy=[], workers=1)
        for n in (1, 2):
            name = f"dask {n} worker{'s' if n > 1 else ''}"
            start = time.perf_counter()
            evaluator = evaluators[name] = DaskEvaluator(spec, n_workers=n)
            evaluator.client.wait_for_workers(n)
            up = time.perf_counter() - start
            start = time.perf_counter()
            evaluator.warm_up()
            rows[name] = dict(start=up, load=time.perf_counter() - start, walls=[], busy=[], workers=n)
        # interleaved, so that the other load on the machine drifts alike over all three
        for _ in range(args.repeats):
            for name, evaluator in evaluators.items():
                wall, busy = timed_generation(evaluator, jobs)
                rows[name]["walls"].append(wall)
                rows[name]["busy"].append(busy)
        result_bytes = len(pickle.dumps(next(evaluators["local"].evaluate_many(jobs[:1]))))
    finally:
        for evaluator in reversed(evaluators.values()):  # last started first: each restores dask's log level
            evaluator.close()

    steady = {name: min(r["walls"][1:] or r["walls"]) for name, r in rows.items()}
    print(
        f"\n{'evaluator':<16}{'start s':>9}{'load s':>8}{'gen 1 s':>9}{'steady s':>10}{'per cand. s':>12}"
        f"{'busy %':>8}{'vs local':>10}{'vs 1 worker':>13}"
    )
    for name, r in rows.items():
        per = steady[name] / len(jobs)
        busy_share = 100 * min(r["busy"][1:] or r["busy"]) / (steady[name] * r["workers"])
        print(
            f"{name:<16}{r['start']:>9.1f}{r['load']:>8.1f}{r['walls'][0]:>9.2f}{steady[name]:>10.2f}{per:>12.3f}"
            f"{busy_share:>8.0f}{steady['local'] / steady[name]:>9.2f}x"
            f"{steady['dask 1 worker'] / steady[name]:>12.2f}x"
        )

    one, two, local_s = steady["dask 1 worker"], steady["dask 2 workers"], steady["local"]
    r1 = rows["dask 1 worker"]  # the 1-worker time not spent evaluating: dask's share
    overhead_ms = 1000 * max(0.0, one - min(r1["busy"][1:] or r1["busy"])) / len(jobs)
    print(
        f"\nspeed-up with 2 workers: {one / two:.2f}x over 1 worker, {local_s / two:.2f}x over local "
        f"(first generation: {rows['dask 1 worker']['walls'][0] / rows['dask 2 workers']['walls'][0]:.2f}x)"
    )
    print(
        f"what limits it: 2 cores shared by both workers, the driver and the scheduler (load average "
        f"{os.getloadavg()[0]:.1f} now, other processes included); dask's round trip per candidate "
        f"(~{overhead_ms:.0f} ms here: scheduling, pickling a {job_bytes / 1024:.1f} KiB job and a "
        f"{result_bytes / 1024:.1f} KiB result) against {local_s / len(jobs) * 1000:.0f} ms of evaluation; "
        f"and one-off costs every worker pays again: starting ({rows['dask 2 workers']['start']:.0f} s), "
        f"importing and loading the models ({rows['dask 2 workers']['load']:.1f} s), its own TSV-M/TIES pieces "
        "in the first generation."
    )


if __name__ == "__main__":
    main()
