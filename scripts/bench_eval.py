"""A zoo at work (tiny-lm or smollm2): adapter throughput, and what a simple merge of its endpoints reaches.

1. Items per second of the lm-eval adapter (all items of each family), and the cost of one
   small call (20 anchor items, 1 item): a search evaluates thousands of candidates on a few
   anchors each, so the fixed per-call cost matters as much as the throughput.
2. `--merge-check`: simple merges of the three endpoints (with `evo_merge.merge.InPlaceMerger`):
   task arithmetic theta0 + lambda * sum of the task vectors for a few lambdas, TIES at a few
   densities, TSV-M (alpha 1); accuracy on all items of every family, next to the zoo table:
   is a merge within reach of the endpoints on their own families?

Usage: `.venv/bin/python scripts/bench_eval.py --zoo ZOO_DIR [--model base] [--merge-check]`
(build the zoo first with `evo-merge zoo build --out ZOO_DIR`). `--items N` uses the first N
items of each family instead of all (a 135M model on a CPU: ~2-16 items/s), in both modes;
`--batch-sizes` the lm-eval batch sizes timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from evo_merge.tasks.registry import resolve_task
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.zoo.tinylm import load_zoo


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: builds the HF wrapper, first forward passes
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--model", default="base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--anchors", type=int, default=20)
    parser.add_argument("--merge-check", action="store_true")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 0.5, 0.75, 1.0])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.3])
    parser.add_argument("--items", type=int, default=None, help="first N items per family (default: all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    if args.merge_check:
        torch.set_num_threads(args.threads)
        merge_check(args.zoo, args.lambdas, args.densities, args.items)
        return
    torch.set_num_threads(args.threads)
    tok, models = load_zoo(args.zoo)
    model = models[args.model]
    rows = []
    for family in FAMILIES:
        for batch_size in args.batch_sizes:
            task = resolve_task(family, batch_size=batch_size)
            ids = task.item_ids[: args.items]
            full = _timed(lambda: task.evaluate(model, tok, ids), repeats=1)
            small = _timed(lambda: task.evaluate(model, tok, ids[: args.anchors]), repeats=5)
            one = _timed(lambda: task.evaluate(model, tok, ids[:1]), repeats=5)
            rows.append({
                "task": task.name, "batch": batch_size, "items": len(ids),
                ("all items/s" if args.items is None else "items/s"): len(ids) / full, f"{args.anchors} items: s/call": small, "1 item: s/call": one,
            })
    print(f"torch threads: {args.threads}; model: {args.model}; machine load (1 min): {os.getloadavg()[0]:.1f}")
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


def merge_check(zoo: Path, lambdas: list[float], densities: list[float], n_items: int | None = None) -> None:
    from evo_merge.merge.inplace import InPlaceMerger
    from evo_merge.weights import Checkpoint
    from evo_merge.zoo.tinylm import zoo_table

    tok, models = load_zoo(zoo)
    module = models["base"]
    merger = InPlaceMerger(
        module, Checkpoint.open(zoo / "base"), [Checkpoint.open(zoo / family) for family in FAMILIES]
    )
    merges = {f"TA lambda={lam}": ("task_arithmetic", {"lambda": lam}) for lam in lambdas}
    merges |= {f"TIES density={d}": ("ties", {"density": d}) for d in densities}
    merges["TSV-M alpha=1"] = ("tsv", {})
    rows = []
    for label, (method, params) in merges.items():
        merger.apply(method, [1.0] * len(FAMILIES), params)
        rows.append(zoo_table({label: module}, tok, n_items).iloc[0].rename(label))
    table = pd.concat([pd.read_csv(zoo / "table.csv", index_col="model"), pd.DataFrame(rows)])
    print(f"accuracy (%) on {f'the first {n_items}' if n_items else 'all'} items; merges of the three endpoints (weights 1 each)")
    print("(zoo rows: from the zoo's table.csv, on the items its build settings name)")
    print(table.round(1).to_markdown())


if __name__ == "__main__":
    main()
