"""A zoo at work (tiny-lm or smollm2): adapter throughput, and what a simple merge of its endpoints reaches.

1. Items per second of the lm-eval adapter (all items of each family), and the cost of one
   small call (20 anchor items, 1 item): a search evaluates thousands of candidates on a few
   anchors each, so the fixed per-call cost matters as much as the throughput.
2. `--merge-check`: simple merges of the endpoints (with `evo_merge.merge.InPlaceMerger`):
   task arithmetic theta0 + lambda * sum of the task vectors for a few lambdas, over all three
   endpoints and over each pair; TIES at a few densities and TSV-M (alpha 1) over all three.
   Accuracy on every family next to the zoo table, and `keep_<family>`: the share of that
   endpoint's gain over the base a merge holding it keeps on its family,
   (merge - base) / (endpoint - base). Is a merge within reach of the endpoints?

Usage: `.venv/bin/python scripts/bench_eval.py --zoo ZOO_DIR [--model base] [--merge-check]`
(build the zoo first with `evo-merge zoo build --out ZOO_DIR`). `--items N` uses the first N
items of each family instead of all (a 135M model on a CPU: ~2-16 items/s), in both modes;
`--batch-sizes` the lm-eval batch sizes timed.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial
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
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
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
            full = _timed(partial(task.evaluate, model, tok, ids), repeats=1)
            small = _timed(partial(task.evaluate, model, tok, ids[: args.anchors]), repeats=5)
            one = _timed(partial(task.evaluate, model, tok, ids[:1]), repeats=5)
            rows.append(
                {
                    "task": task.name,
                    "batch": batch_size,
                    "items": len(ids),
                    ("all items/s" if args.items is None else "items/s"): len(ids) / full,
                    f"{args.anchors} items: s/call": small,
                    "1 item: s/call": one,
                }
            )
    print(f"torch threads: {args.threads}; model: {args.model}; machine load (1 min): {os.getloadavg()[0]:.1f}")
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


def merge_check(zoo: Path, lambdas: list[float], densities: list[float], n_items: int | None = None) -> None:
    import itertools

    from evo_merge.merge.inplace import InPlaceMerger
    from evo_merge.weights import Checkpoint
    from evo_merge.zoo.tinylm import zoo_table

    tok, models = load_zoo(zoo)
    module = models["base"]
    merger = InPlaceMerger(
        module, Checkpoint.open(zoo / "base"), [Checkpoint.open(zoo / family) for family in FAMILIES]
    )
    merges = {}  # label -> (method, params, the families merged)
    for group in [FAMILIES, *itertools.combinations(FAMILIES, 2)]:
        name = "all" if group == FAMILIES else "+".join(group)
        merges |= {f"TA {name} lambda={lam}": ("task_arithmetic", {"lambda": lam}, group) for lam in lambdas}
    merges |= {f"TIES all density={d}": ("ties", {"density": d}, FAMILIES) for d in densities}
    merges["TSV-M all alpha=1"] = ("tsv", {}, FAMILIES)
    rows = [zoo_table({name: models[name] for name in ("base", *FAMILIES)}, tok, n_items)]
    for label, (method, params, group) in merges.items():
        merger.apply(method, [float(f in group) for f in FAMILIES], params)
        rows.append(zoo_table({label: module}, tok, n_items))
    table = pd.concat(rows)
    table["sum"] = table[list(FAMILIES)].sum(axis=1)
    base = table.loc["base"]
    for family in FAMILIES:
        gain = table.loc[family, family] - base[family]
        holds = [family in merges.get(row, (None, None, ()))[2] for row in table.index]
        table[f"keep_{family}"] = ((table[family] - base[family]) / gain).where(holds) if gain > 0 else float("nan")
    print(
        f"accuracy (%) on {f'the first {n_items}' if n_items else 'all'} items per family; merges weight each "
        "endpoint they hold 1; keep_f = (merge - base) / (endpoint f - base) on family f"
    )
    print(table.round(2).to_markdown(floatfmt=".2f").replace("nan", "   "))


if __name__ == "__main__":
    main()
