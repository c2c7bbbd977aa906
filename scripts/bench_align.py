"""Alignment benchmark on the mnist zoo: merge accuracy per method, loss barriers, timings.

For each architecture (MLP 4x512, BatchNorm CNN) and each pair kind (two seeds on all classes;
a 0-4 / 5-9 disjoint-class pair) it prints the test accuracy of the endpoints, naive
averaging, weight matching, activation matching, MuDSC (align, f searched on a training
sample; and zip), C2M3 (pair, and 3 seeds), each without and with REPAIR (BatchNorm reset for
the CNN), and the loss barrier along the linear path from A to the aligned B
(max_a L(a) - ((1-a) L(0) + a L(1)), test cross-entropy, 11 points; CNN paths with BatchNorm
reset at each point) with the loss at its midpoint (for disjoint-class pairs the endpoints'
losses are so high that the barrier is 0 and the midpoint loss says more). Then the time to align two 4x512 MLPs.

    .venv/bin/python scripts/bench_align.py [--zoo DIR] [--markdown FILE] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from evo_merge.align.api import align_models, aligned_states, average, with_state
from evo_merge.align.builders import spec_for
from evo_merge.align.repair import repair, reset_batchnorm
from evo_merge.align.zipping import zip_merge
from evo_merge.weights import load_model_folder
from evo_merge.zoo.mnist import build_mnist_zoo

SAMPLE = 1000  # training inputs for activations, f search and REPAIR


@torch.no_grad()
def evaluate(net, x, y) -> tuple[float, float]:
    logits = net(x)
    return float((logits.argmax(-1) == y).double().mean()), float(torch.nn.functional.cross_entropy(logits, y))


def merged_model(template, states, sample, endpoints=None):
    """Average `states`; with `endpoints`, also REPAIR (or BatchNorm reset) on `sample`."""
    net = with_state(template, average(states))
    if endpoints is not None:
        repair(net, endpoints, sample)
    return net


def barrier(template, a, b, sample, x, y) -> tuple[float, float]:
    """The loss barrier along the path, and the loss at its midpoint."""
    alphas = np.linspace(0, 1, 11)
    losses = []
    for alpha in alphas:
        net = with_state(template, average([a, b], [1 - alpha, alpha]))
        reset_batchnorm(net, sample)
        losses.append(evaluate(net, x, y)[1])
    line = (1 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(np.array(losses) - line)), losses[5]


def bench_pair(names, zoo: Path, train, test) -> list[dict]:
    models = [load_model_folder(zoo / n)[0] for n in names]
    arch = json.loads((zoo / names[0] / "config.json").read_text())["arch"]
    spec = spec_for(arch, models[0])
    states = [m.state_dict() for m in models]
    sample, labels = train["x"][:SAMPLE], train["y"][:SAMPLE]
    x, y = test["x"], test["y"]
    rows = [{"method": f"endpoint {n}", "acc": evaluate(m, x, y)[0]} for n, m in zip(names[:2], models[:2])]

    def add(method, aligned, seconds, path=True):
        ends = [with_state(models[0], s) for s in aligned]
        row = {"method": method, "seconds": seconds}
        row["acc"] = evaluate(merged_model(models[0], aligned, sample), x, y)[0]
        row["acc_repair"] = evaluate(merged_model(models[0], aligned, sample, ends), x, y)[0]
        if path:
            row["barrier"], row["loss_mid"] = barrier(models[0], aligned[0], aligned[1], sample, x, y)
        rows.append(row)

    add("naive average", states[:2], 0.0)
    for method in ("weight", "activation", "mudsc", "c2m3"):
        start = time.perf_counter()
        found = align_models(spec, states[:2], method, modules=models[:2], data=sample, labels=labels)
        seconds = time.perf_counter() - start
        label = {"weight": "weight matching", "activation": "activation matching"}.get(method, method)
        if method == "mudsc":
            label = f"MuDSC align (f={found.f})"
            mudsc_f, mudsc_states = found.f, aligned_states(spec, states[:2], found)
        add("C2M3 (2 models)" if method == "c2m3" else label, aligned_states(spec, states[:2], found), seconds)
    start = time.perf_counter()
    zipped = with_state(models[0], zip_merge(spec, models[0], with_state(models[0], mudsc_states[1]), sample, mudsc_f))
    seconds = time.perf_counter() - start
    row = {"method": f"MuDSC zip (f={mudsc_f})", "seconds": seconds, "acc": evaluate(zipped, x, y)[0]}
    ends = [with_state(models[0], s) for s in mudsc_states]
    row["acc_repair"] = evaluate(repair(zipped, ends, sample), x, y)[0]
    rows.append(row)
    if len(states) > 2:
        start = time.perf_counter()
        found = align_models(spec, states, "c2m3")
        add(
            f"C2M3 ({len(states)} models)", aligned_states(spec, states, found), time.perf_counter() - start, path=False
        )
    return rows


def timing(zoo: Path) -> dict[str, float]:
    """Seconds to align two 4x512 MLPs (seed pair) per method, activation data 1,000 inputs."""
    models = [load_model_folder(zoo / n)[0] for n in ("mlp-s0", "mlp-s1")]
    spec = spec_for("mlp", models[0])
    states = [m.state_dict() for m in models]
    sample = load_file(zoo / "data" / "train.safetensors")["x"][:SAMPLE]
    out = {}
    for method in ("weight", "activation", "mudsc", "c2m3"):
        start = time.perf_counter()
        align_models(spec, states, method, modules=models, data=sample, f=0.5)
        out[method] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--zoo", type=Path, default=Path("/tmp/evo_merge_mnist_zoo"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = build_mnist_zoo(args.zoo)
    manifest = json.loads((zoo / "manifest.json").read_text())
    train = load_file(zoo / manifest["data"]["train"])
    test = load_file(zoo / manifest["data"]["test"])
    console = Console()
    lines = []
    for kind in ("mlp", "cnn"):
        for pair, names in (
            ("different seeds", manifest["seeds"][kind]),
            ("disjoint classes 0-4/5-9", manifest["disjoint"][kind]),
        ):
            rows = bench_pair(names, zoo, train, test)
            title = f"{kind.upper()}, {pair}: test accuracy (10 classes)"
            table = Table(title=title)
            cols = ("method", "acc", "acc_repair", "barrier", "loss_mid", "seconds")
            for col in cols:
                table.add_column(col)
            lines += [f"\n**{title}**\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in rows:
                cells = [row["method"]] + [f"{row[c]:.3f}" if c in row else "-" for c in cols[1:]]
                table.add_row(*cells)
                lines.append("| " + " | ".join(cells) + " |")
            console.print(table)
    seconds = timing(zoo)
    msg = f"align two 4x512 MLPs ({torch.get_num_threads()} torch threads): " + ", ".join(
        f"{m} {s:.2f} s" for m, s in seconds.items()
    )
    console.print(msg)
    lines.append(f"\n{msg}")
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
