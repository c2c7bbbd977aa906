"""Memory of streamed checkpoint I/O: reading tensor by tensor, and exporting in shards.

Prints the peak growth of anonymous memory (RssAnon, sampled after every tensor; memory-mapped
file pages are page cache and not counted) while (a) reading every tensor of a checkpoint one at
a time and (b) streaming them into a sharded export, against the largest tensor and shard size.
Expected: (a) about one tensor, (b) about one shard plus one tensor, whatever the model size.
glibc may keep freed large blocks on its heap (dynamic mmap threshold), which can show as up to
twice these figures; `MALLOC_MMAP_THRESHOLD_=1048576` measures what is actually live.

    MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/python scripts/bench_weights_memory.py \
        [--tensors 16] [--mib 16] [--shard-mib 64]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from evo_merge.weights import Checkpoint, write_model_folder


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--mib", type=int, default=16, help="size of each tensor")
    parser.add_argument("--shard-mib", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    numel = args.mib * 2**20 // 4
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.safetensors"
        save_file({f"layer{i}.weight": torch.full((numel,), float(i)) for i in range(args.tensors)}, str(src))
        gc.collect()
        with Checkpoint.open(src) as ckpt:
            total = ckpt.num_bytes() / 2**20
            start, peak = rss_anon_mib(), 0.0
            t0 = time.perf_counter()
            for name in ckpt.names:
                tensor = ckpt.tensor(name)
                peak = max(peak, rss_anon_mib() - start)
                del tensor
            read_s = time.perf_counter() - t0
            print(f"model {total:.0f} MiB in {len(ckpt)} tensors of {args.mib} MiB")
            print(f"read, tensor by tensor: peak +{peak:.0f} MiB anon ({peak / args.mib:.2f} x one tensor), "
                  f"{total / read_s:.0f} MiB/s")

            def stream():
                nonlocal peak
                for name in ckpt.names:
                    yield name, ckpt.tensor(name)
                    peak = max(peak, rss_anon_mib() - start)

            gc.collect()
            start, peak = rss_anon_mib(), 0.0
            t0 = time.perf_counter()
            write_model_folder(Path(tmp) / "out", stream(), max_shard_bytes=args.shard_mib * 2**20)
            write_s = time.perf_counter() - t0
            print(f"export, {args.shard_mib} MiB shards: peak +{peak:.0f} MiB anon "
                  f"({peak / (args.shard_mib + args.mib):.2f} x (shard + tensor)), {total / write_s:.0f} MiB/s")


if __name__ == "__main__":
    main()
