"""A user's path at the size users merge, end to end: `evo-merge plan`, `run` (calibration,
search, final phase, the picks exported) and `merge` of an exported pick's recipe, on
bench_scale's random-weight Llama checkpoints, each command's peak host and GPU memory measured.

    python scripts/bench_scale_campaign.py --shape 7B --root /tmp/bs7 --run /dev/shm/run7 \
        [--placement host] [--device cuda] [--items 200] [--population 8] [--generations 2]

The fitness tasks are plugins defined here (`logit_choice`), as a user's own tasks would be:
item i is a random prompt of 8-64 tokens and two tokens; it scores 1 when the model's next-token
logit of the first exceeds the second's. A random-weight model gets about half of a task right,
and merges flip the items whose margin is small, so the IRT fit and the search have responses
that vary (nothing to learn from, which is not what this measures). The run folder is written
where `--run` says (a RAM-backed folder such as /dev/shm keeps a 7B export off a small disk).

The rebuilt pick must equal the run's export tensor for tensor (the recipe is what a user
publishes); the script says how many tensors are bit-identical and the largest difference.
Peak host memory is each command's max RSS (wait4), with the largest RssAnon sampled beside it
(what the page cache cannot take back); the GPU's is the largest `memory.used` that `nvidia-smi`
reported while the command ran (the CUDA context included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import bench_scale  # beside this file: the checkpoints, their shapes, /proc/PID/status
import pandas as pd
import torch

from evo_merge.tasks.base import ItemTable, score_series

GIB = 2**30
LENGTHS = (8, 16, 32, 64)  # prompt lengths: one scenario each


class LogitChoice(ItemTable):
    """Two-way choice on the next token after a random prompt (see the module's docstring)."""

    def __init__(self, name: str, seed: int, items: int, vocab: int, batch_size: int):
        gen = torch.Generator().manual_seed(seed)
        lengths = [LENGTHS[i % len(LENGTHS)] for i in range(items)]
        self.name, self.batch_size, self.lengths = name, batch_size, lengths
        self.prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
        self.pairs = torch.randint(0, vocab, (items, 2), generator=gen)
        self._set_items([f"{name}-{i:04d}" for i in range(items)], [f"len{n}" for n in lengths])

    @torch.no_grad()
    def evaluate(self, model, tokenizer=None, item_ids: Sequence[str] | None = None) -> pd.Series:
        positions = self._positions(item_ids)
        device = next(model.parameters()).device
        scores: dict[int, float] = {}
        for length in LENGTHS:  # one prompt length per batch: no padding
            same = [p for p in positions if self.lengths[p] == length]
            for start in range(0, len(same), self.batch_size):
                batch = same[start:start + self.batch_size]
                logits = model(torch.stack([self.prompts[p] for p in batch]).to(device)).logits[:, -1].float()
                pair = self.pairs[batch].to(device)
                won = logits.gather(1, pair[:, :1]) > logits.gather(1, pair[:, 1:])
                scores.update(zip(batch, won.squeeze(1).float().tolist()))
        return score_series(self.name, [self._ids[p] for p in positions], [scores[p] for p in positions])


def logit_choice(name: str = "choice", seed: int = 0, items: int = 200, vocab: int = 32000,
                 batch_size: int = 64) -> LogitChoice:
    """The campaign's task plugin (`bench_scale_campaign:logit_choice`)."""
    return LogitChoice(name, seed, items, vocab, batch_size)


def campaign_yaml(base: Path, models: Sequence[Path], args: argparse.Namespace, vocab: int) -> str:
    tasks = "\n".join(f"  - {{task: 'bench_scale_campaign:logit_choice', name: choice{k}, "
                      f"options: {{name: choice{k}, seed: {k}, items: {args.items}, vocab: {vocab}}}}}"
                      for k in range(len(models)))
    endpoints = "\n".join(f"  - {m}" for m in models)
    return f"""name: scale-campaign
base_model: {base}
models:
{endpoints}
tasks:
{tasks}
methods:
  task_arithmetic: {{}}
  ties: {{density: [0.2, 1.0]}}
coefficients: {{low: 0.0, high: 1.5}}
estimator: {{kind: gpirt, anchors: 3, warmup_merges: 2, backend: torch}}
algorithm: {{name: nsga2, population: {args.population}, generations: {args.generations}, seed: 0}}
evaluator: {{kind: local, batch_size: 64, sequence_tokens: 64}}
final: {{evaluate_top: 2, export: [balanced], race: []}}
storage: {{dtype: bfloat16, placement: {args.placement}}}
dtype: bfloat16
device: {args.device}
"""


class GpuSampler:
    """The largest `memory.used` nvidia-smi reports while a command runs (MiB; None without it)."""

    def __init__(self):
        self.peak, self._proc = None, None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                           "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.peak = max(self.peak or 0, int(line))

    def stop(self) -> float | None:
        if self._proc is not None:
            self._proc.terminate()
            self._thread.join(timeout=5)
        return None if self.peak is None else self.peak / 1024


def anon_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Poll `pid`'s resident anonymous memory (RssAnon) every 0.2 s into peak[0]: max RSS also
    counts the resident pages of mapped files (checkpoints read through safetensors' maps,
    `disk` placement's files), which the kernel can drop; RssAnon is what it cannot."""
    while not stop.wait(0.2):
        try:
            peak[0] = max(peak[0], bench_scale._status("RssAnon", pid))
        except OSError:  # the process has just ended
            continue


def measured(command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run `command` (output to `log`); its exit code, wall seconds, max RSS, peak RssAnon
    (sampled) and GPU peak (GiB), also printed at once (a bench stopped later keeps them)."""
    sampler, start, stop, anon = GpuSampler(), time.perf_counter(), threading.Event(), [0]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        poller = threading.Thread(target=anon_peak, args=(process.pid, stop, anon), daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        stop.set()
        poller.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    row = {"command": command[3], "rc": process.returncode, "wall_s": time.perf_counter() - start,
           "rss_gib": usage.ru_maxrss * 1024 / GIB, "anon_gib": anon[0] / GIB, "gpu_gib": sampler.stop()}
    print(f"{row['command']}: exit {row['rc']}, {row['wall_s']:.0f} s, max RSS {row['rss_gib']:.2f} GiB "
          f"(RssAnon {row['anon_gib']:.2f}), GPU peak "
          + ("-" if row["gpu_gib"] is None else f"{row['gpu_gib']:.2f} GiB"), flush=True)
    return row


def tensors_of(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file (of a sharded export's several) holding it."""
    from safetensors import safe_open

    where = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            where.update(dict.fromkeys(f.keys(), file))
    return where


def compare(exported: Path, rebuilt: Path) -> str:
    """Tensor-by-tensor agreement of two model folders' safetensors."""
    from safetensors import safe_open

    a, b = tensors_of(exported), tensors_of(rebuilt)
    if sorted(a) != sorted(b):
        return f"different tensor names ({len(a)} against {len(b)})"
    same, worst = 0, 0.0
    for name in sorted(a):
        with safe_open(a[name], "pt") as fa, safe_open(b[name], "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if torch.equal(x, y):
            same += 1
        else:
            worst = max(worst, float((x.float() - y.float()).abs().max()))
    return f"{same} of {len(a)} tensors bit-identical" + (f", largest difference {worst:.3g}" if same < len(a) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_scale"), help="bench_scale's checkpoints")
    parser.add_argument("--run", type=Path, default=Path("/tmp/bench_scale_run"), help="run folder (replaced)")
    parser.add_argument("--shape", choices=["0.5B", "7B"], default="0.5B")
    parser.add_argument("--layers", type=int, help="fewer for a smoke run")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--device", default=None,
                        help="where the campaign evaluates and merges (default: cuda where torch sees a GPU, else cpu)")
    parser.add_argument("--placement", choices=["device", "host", "disk"], default="host")
    parser.add_argument("--items", type=int, default=200, help="items per task (3 tasks)")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--logs", type=Path, help="the commands' logs (default: beside the run folder)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    if args.shape != "0.5B":
        bench_scale.SMALL.update(bench_scale.LLAMAS[args.shape])
    bench_scale.SMALL.update({k: v for k, v in (("layers", args.layers), ("vocab", args.vocab)) if v is not None})
    if args.build_only:
        bench_scale.build_checkpoints(args.root, device=args.device)
        return
    # built in a process of its own: a child's max RSS starts from its parent's (kept through exec)
    if built := subprocess.run([sys.executable, *sys.argv, "--build-only"]).returncode:
        raise SystemExit(built)  # the build said why (a --root of other settings)
    base, models = bench_scale.build_checkpoints(args.root)  # the folders, built
    shutil.rmtree(args.run, ignore_errors=True)
    args.run.parent.mkdir(parents=True, exist_ok=True)
    config = args.run.with_suffix(".yaml")
    config.write_text(campaign_yaml(base, models, args, bench_scale.SMALL["vocab"]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    cli = [sys.executable, "-m", "evo_merge"]
    logs = args.logs or args.run.parent / f"{args.run.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = [measured([*cli, "plan", str(config), "--out", str(args.run)], logs / "plan.log", env)]
    print((logs / "plan.log").read_text(), flush=True)
    rows.append(measured([*cli, "run", str(config), "--out", str(args.run)], logs / "run.log", env))
    print("".join((logs / "run.log").read_text().splitlines(keepends=True)[-25:]), flush=True)
    from evo_merge.search.store import CampaignStore

    # the balanced pick's folder: models/balanced, or a best-<task> one when that pick is the same model
    exported = CampaignStore(args.run).exported() if (args.run / CampaignStore.DB).exists() else {}
    pick = args.run / (exported["balanced"][1] if "balanced" in exported else "models/balanced")
    agreement = "no export to rebuild"
    if (pick / "merge_recipe.yaml").exists():
        print((pick / "merge_recipe.yaml").read_text(), flush=True)
        rebuilt = args.run.parent / f"{args.run.name}-rebuilt"
        shutil.rmtree(rebuilt, ignore_errors=True)
        rows.append(measured([*cli, "merge", str(pick / "merge_recipe.yaml"), "--out", str(rebuilt),
                              "--device", args.device], logs / "merge.log", env))
        print((logs / "merge.log").read_text()[-2000:], flush=True)
        agreement = compare(pick, rebuilt) if rows[-1]["rc"] == 0 else "the rebuild failed"
        shutil.rmtree(rebuilt, ignore_errors=True)
    size = sum(t.numel for t in bench_scale.llama_tensors(**bench_scale.SMALL)) / 1e9
    print(f"\n{size:.2f}B parameters, {len(models)} endpoints, storage bfloat16 / {args.placement}, "
          f"device {args.device}, {args.items} items x {len(models)} tasks, "
          f"NSGA-II {args.population} x {args.generations}")
    print("| command | exit | wall s | peak RSS GiB | peak RssAnon GiB | GPU peak GiB (nvidia-smi) |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        gpu = "-" if r["gpu_gib"] is None else f"{r['gpu_gib']:.2f}"
        print(f"| {r['command']} | {r['rc']} | {r['wall_s']:.0f} | {r['rss_gib']:.2f} | {r['anon_gib']:.2f} | {gpu} |")
    print(f"rebuilt from the export's recipe: {agreement}")
    if any(r["rc"] for r in rows):  # a failed command fails the bench, whose table says which
        raise SystemExit(1)


if __name__ == "__main__":
    main()
