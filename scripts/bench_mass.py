"""MASS on the tiny-lm zoo: accuracy next to the endpoints, TSV-M and the oracle; routing; cost.

1. Routing accuracy of every (layer, token) choice on the evaluation prompts of each family
   (top-1 task = the family's endpoint; the family's task among the kept ones; tasks kept).
2. Accuracy (%) per family of the base, each endpoint, TSV-M (all tasks), MASS (routed per
   input, at `--layer`/`--token`) and the oracle (TSV-C of the family's own endpoint), with the
   share of the TSV-M -> oracle gap that MASS closes; the routing confusion matrix; how the
   rows lm-eval actually sends were routed; MASS keeping at most one task (an ablation).
3. Inference cost: one MASS forward (pass 1 up to the routing block + one pass 2 per task set
   in the batch, merged weights cached) relative to one forward of the base, on a mixed batch.

Usage: `.venv/bin/python scripts/bench_mass.py --zoo ZOO_DIR [--items 300] [--layer L]`
(build the zoo first with `evo-merge zoo build --out ZOO_DIR`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch
from rich.progress import track
from transformers.utils import logging as hf_logging

from evo_merge.mass import MassModel
from evo_merge.tasks.registry import resolve_task
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.weights import load_model_folder


def _prompts(family: str, items: list[str]) -> list[str]:
    task = resolve_task(family)
    (lm_task,) = task.tasks.values()  # a shipped benchmark is one lm-eval task
    docs = dict(zip(task.item_ids, lm_task.eval_docs))
    return [lm_task.doc_to_text(docs[i]) for i in items]


def _route(mass: MassModel, tok, prompts: list[str]) -> tuple[list[int], list[tuple[int, ...]]]:
    enc = tok(prompts, padding=True, return_tensors="pt")
    probs, sets = mass.route(enc["input_ids"], enc["attention_mask"])
    return probs.argmax(1).tolist(), sets


def _logged_routes(mass: MassModel) -> list[tuple[int, ...]]:
    """A list that collects every task set `mass` routes to from now on (wraps its `route`)."""
    log: list[tuple[int, ...]] = []
    route = mass.route

    def logged(*args, **kwargs):
        probs, sets = route(*args, **kwargs)
        log.extend(sets)
        return probs, sets

    mass.route = logged
    return log


def routing_table(mass: MassModel, tok, prompts: dict[str, list[str]], n_layers: int) -> pd.DataFrame:
    chosen = mass.routing.model_copy()
    rows = []
    for layer in range(n_layers):
        for token in ("mean", "last"):
            mass.set_routing(layer, token=token)
            top1 = kept = size = n = 0
            for t, family in enumerate(FAMILIES):
                best, sets = _route(mass, tok, prompts[family])
                top1 += sum(b == t for b in best)
                kept += sum(t in s for s in sets)
                size += sum(len(s) for s in sets)
                n += len(sets)
            rows.append({"layer": layer, "token": token, "top-1 = own task %": 100 * top1 / n,
                         "own task kept %": 100 * kept / n, "tasks kept (mean)": size / n})
    mass.set_routing(chosen.layer, token=chosen.token)
    return pd.DataFrame(rows)


def accuracy(model, tok, items: dict[str, list[str]], batch_size: int) -> dict[str, float]:
    """Accuracy (%) on the given items of each family in `items`."""
    return {f: 100 * float(resolve_task(f, batch_size=batch_size).evaluate(model, tok, ids).mean())
            for f, ids in items.items()}


def cost(mass: MassModel, base_model, tok, prompts: dict[str, list[str]], batch: int, repeats: int) -> dict[str, float]:
    mixed = [p for group in zip(*prompts.values()) for p in group][:batch]
    enc = tok(mixed, padding=True, return_tensors="pt")

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    with torch.no_grad():
        mass.clear_cache()
        start = time.perf_counter()
        mass(**enc)
        cold = time.perf_counter() - start
        base_s = timed(lambda: base_model(**enc))
        mass_s = timed(lambda: mass(**enc))
        pass1_s = timed(lambda: mass.route(**enc))
    sets = mass.route(**enc)[1]
    return {"batch": len(mixed), "task sets in batch": len(set(sets)), "base forward ms": 1000 * base_s,
            "MASS forward ms (warm)": 1000 * mass_s, "of which routing ms": 1000 * pass1_s,
            "MASS / base": mass_s / base_s, "first MASS call ms (merges built)": 1000 * cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--items", type=int, default=300, help="first N evaluation items per family (0: all)")
    parser.add_argument("--layer", type=int, default=None, help="routing block (default: the middle one)")
    parser.add_argument("--token", choices=["mean", "last"], default="mean")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--max-tasks", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    zoo = args.zoo
    tok = load_model_folder(zoo / "base")[1]
    # the first N: the benchmarks cycle through their scenarios, so a prefix covers each equally
    # (every k-th item would keep one scenario of a family whose scenario count divides k)
    items = {f: resolve_task(f).item_ids[: args.items or None] for f in FAMILIES}
    prompts = {f: _prompts(f, items[f]) for f in FAMILIES}

    start = time.perf_counter()
    mass = MassModel.from_checkpoints(zoo / "base", [zoo / f for f in FAMILIES], layer=args.layer, token=args.token,
                                      threshold=args.threshold, max_tasks=args.max_tasks)
    build_s = time.perf_counter() - start
    n_layers = mass.module.config.num_hidden_layers
    print(f"zoo {zoo}; {sum(map(len, items.values()))} items; torch threads {args.threads}; "
          f"machine load (1 min) {os.getloadavg()[0]:.1f}; MASS built in {build_s:.1f} s; "
          f"routing: block {mass.routing.layer} of {n_layers}, token {mass.routing.token}, "
          f"threshold {mass.routing.threshold}, max tasks {mass.routing.max_tasks}\n")

    print("## Routing accuracy on the evaluation prompts, every layer and token\n")
    print(routing_table(mass, tok, prompts, n_layers).round(1).to_markdown(index=False), "\n")

    confusion = pd.DataFrame(0, index=list(FAMILIES), columns=list(FAMILIES))
    for family in FAMILIES:
        for best in _route(mass, tok, prompts[family])[0]:
            confusion.loc[family, FAMILIES[best]] += 1
    print(f"## Routing confusion at block {mass.routing.layer} (rows: true family; columns: top-1 task)\n")
    print(confusion.to_markdown(), "\n")

    table = {}
    for name in track(["base", *FAMILIES], description="endpoints"):
        model = load_model_folder(zoo / name)[0]
        table[name] = accuracy(model, tok, items, args.batch_size)
    mass.pin(mass.all_tasks)
    table["TSV-M"] = accuracy(mass, tok, items, args.batch_size)
    table["oracle (TSV-C own task)"] = {}
    for t, family in enumerate(FAMILIES):
        mass.pin([t])
        table["oracle (TSV-C own task)"].update(accuracy(mass, tok, {family: items[family]}, args.batch_size))
    mass.pin(None)
    routed = _logged_routes(mass)
    lm_eval_routing = {}
    table["MASS"] = {}
    for t, family in enumerate(FAMILIES):
        routed.clear()
        table["MASS"].update(accuracy(mass, tok, {family: items[family]}, args.batch_size))
        lm_eval_routing[family] = {"rows routed": len(routed),
                                   "own task kept %": 100 * sum(t in s for s in routed) / len(routed),
                                   "tasks kept (mean)": sum(map(len, routed)) / len(routed)}
    mass.set_routing(max_tasks=1)
    table["MASS, at most 1 task"] = accuracy(mass, tok, items, args.batch_size)
    mass.set_routing(max_tasks=args.max_tasks)
    acc = pd.DataFrame(table).T
    acc["mean"] = acc[list(FAMILIES)].mean(axis=1)
    print("## Accuracy (%) per family\n")
    print(acc.round(1).to_markdown(), "\n")
    headroom = acc.loc["oracle (TSV-C own task)"] - acc.loc["TSV-M"]
    gap = ((acc.loc["MASS"] - acc.loc["TSV-M"]) / headroom).where(headroom > 0)  # NaN: the oracle is no better
    print("routing of the rows lm-eval sends (prompt + answer without its last token; one row per choice):")
    print(pd.DataFrame(lm_eval_routing).T.round(1).to_markdown(), "\n")
    own = pd.Series({f: acc.loc[f, f] for f in FAMILIES})
    print("share of the TSV-M -> oracle gap closed by MASS:", gap[list(FAMILIES)].round(2).to_dict())
    print("MASS accuracy / own endpoint's accuracy:", (acc.loc["MASS", list(FAMILIES)] / own).round(2).to_dict(), "\n")

    base_model = load_model_folder(zoo / "base")[0]
    print("## Inference cost (one forward on a mixed batch of prompts)\n")
    print(pd.DataFrame([cost(mass, base_model, tok, prompts, 64, 20)]).round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
