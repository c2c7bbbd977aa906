"""TIES's magnitude trim on a CPU: the k-th largest by bucketed float32 bits against `torch.topk`.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_trim.py [--rows 2816 --cols 4096]

Prints, for one Llama-7B-like MLP matrix (11.5M entries) and 3 task vectors, the time of finding
the cut at three densities each way (both must give the same value), and of a whole TIES merge of
the tensor with either, as ratios measured in this run.
"""

from __future__ import annotations

import argparse
import time

import torch

import evo_merge.merge.methods as methods
from evo_merge.merge.apply import merge_tensor
from evo_merge.merge.registry import get_method


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--rows", type=int, default=2816)
    parser.add_argument("--cols", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    shape = (args.rows, args.cols)
    base = torch.randn(shape, generator=gen) * 0.02
    deltas = [torch.randn(shape, generator=gen) * 0.001 for _ in range(3)]
    magnitude = deltas[0].abs().flatten()
    print(f"{magnitude.numel() / 1e6:.1f}M entries, one thread")
    for density in (0.1, 0.4, 0.9):
        k = int(density * magnitude.numel())
        same = torch.equal(torch.topk(magnitude, k, sorted=False).values.min(), methods._cut(magnitude, k)[0])
        slow = best_of(lambda k=k: torch.topk(magnitude, k, sorted=False).values.min())
        fast = best_of(lambda k=k: methods._cut(magnitude, k)[0])
        print(f"density {density}: topk {slow:.3f} s, bucketed {fast:.3f} s, {slow / fast:.1f}x, same cut: {same}")
    ties = get_method("ties")
    params = ties.resolve({"density": 0.4}, 3)

    def merge():
        return merge_tensor(ties, base, deltas, [1.0, 0.8, 1.2], params, "model.layers.0.mlp.up_proj.weight")

    def topk_cut(values: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
        """The cut and its counts as a GPU finds them (`methods._cut`'s topk path), on the CPU."""
        cut = torch.topk(values, k, sorted=False).values.min()
        return cut, int(torch.count_nonzero(values > cut)), int(torch.count_nonzero(values == cut))

    fast_out, fast = merge(), best_of(merge)
    bucketed = methods._cut  # what `top_mask` calls
    methods._cut = topk_cut
    try:
        slow_out, slow = merge(), best_of(merge)
    finally:
        methods._cut = bucketed
    print(f"TIES merge of the tensor (density 0.4): with topk {slow:.3f} s, bucketed {fast:.3f} s, "
          f"{slow / fast:.2f}x, identical: {torch.equal(slow_out, fast_out)}")


if __name__ == "__main__":
    main()
