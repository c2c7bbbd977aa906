"""What keeping bf16 checkpoints' task vectors exactly costs a CPU merge: one run, as a ratio.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_exact_storage.py [--root /tmp/bench_exact] [--repeats 7]

Builds a random-weight Llama (about 55M parameters) and 3 endpoints, in bfloat16 and in float32.
The search keeps the bf16 family's task vectors as their endpoints (`storage.dtype: auto`; the
difference is formed in float32 as a candidate is built, so it is the recipe's merge bit for bit),
and the float32 family's, under `storage.dtype: bfloat16`, as task vectors rounded to bf16: the
same stored bytes, the way every bf16 campaign kept them before. Prints the median time of a task
arithmetic candidate written into a bf16 module under each, and their ratio, measured in turn.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.pieces import Endpoint
from evo_merge.merge.storage import Storage
from evo_merge.weights import Checkpoint, save_model_folder

WEIGHTS, PARAMS = [0.5, 0.3, 0.7], {"lambda": 1.0}


def build(root: Path) -> tuple[list[Path], list[Path]]:
    """(float32 folders, bf16 folders): a base and 3 endpoints a small random step from it."""
    config = LlamaConfig(vocab_size=8000, hidden_size=768, intermediate_size=2048, num_hidden_layers=6,
                         num_attention_heads=12, num_key_value_heads=12)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    wide, narrow = [], []
    for i in range(4):
        model = base
        if i:
            model = LlamaForCausalLM(config)
            model.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in base.state_dict().items()})
        wide.append(save_model_folder(root / f"float32-{i}", model, overwrite=True))
        folder = save_model_folder(root / f"bfloat16-{i}", model, overwrite=True)
        for file in folder.glob("*.safetensors"):
            save_file({k: v.bfloat16() for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
        narrow.append(folder)
    return wide, narrow


def merger(folders: list[Path], storage: Storage) -> InPlaceMerger:
    module = LlamaForCausalLM.from_pretrained(folders[0]).to(torch.bfloat16)
    return InPlaceMerger(module, Checkpoint.open(folders[0]), [Checkpoint.open(f) for f in folders[1:]],
                         storage=storage)


def timed(m: InPlaceMerger) -> float:
    start = time.perf_counter()
    m.apply("task_arithmetic", WEIGHTS, PARAMS)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_exact"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the model folders built under --root (1.3 GB)")
    args = parser.parse_args()
    try:
        measure(args)
    finally:
        if not args.keep:  # built again on every run: nothing to reuse (only the folders it wrote)
            for kind in ("float32", "bfloat16"):
                for i in range(4):
                    shutil.rmtree(args.root / f"{kind}-{i}", ignore_errors=True)


def measure(args: argparse.Namespace) -> None:
    wide, narrow = build(args.root)
    exact, rounded = merger(narrow, Storage()), merger(wide, Storage(torch.bfloat16))
    assert all(isinstance(d, Endpoint) for ds in exact._deltas.values() for d in ds)
    assert not any(isinstance(d, Endpoint) for ds in rounded._deltas.values() for d in ds)
    n = sum(t.numel() for t in exact._base.values())
    timed(exact), timed(rounded)  # warm
    times: dict[str, list[float]] = {"exact": [], "rounded": []}
    for _ in range(args.repeats):  # in turn: the machine's other load falls on both alike
        times["exact"].append(timed(exact))
        times["rounded"].append(timed(rounded))
    a, b = statistics.median(times["exact"]), statistics.median(times["rounded"])
    print(f"{n / 1e6:.1f}M parameters, 3 endpoints, bf16 module, {torch.get_num_threads()} torch thread(s)")
    print(f"task arithmetic per candidate: endpoints kept (exact) {a:.3f} s, task vectors rounded to bf16 "
          f"{b:.3f} s: {a / b:.2f}x")


if __name__ == "__main__":
    main()
