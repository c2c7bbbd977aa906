"""Search at the size users merge: the in-place merger's memory and time on a >= 0.5B Llama.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py [--root /tmp/bench_scale] [--repeats 3]
        [--device cuda]   # on a GPU: the module and merges there; adds each method's GPU peak and
                          # task arithmetic through torch's eager ops next to the one-pass kernel
        [--shape 7B] [--methods task_arithmetic ties] [--mode-timeout 300]

1. Builds (or reuses under --root) random-weight Llama-architecture checkpoints in bfloat16: a
   base and 3 endpoints that differ from it by small random task vectors (written tensor by
   tensor; ~1 GB each on disk).
2. For each storage setting (float32 on the device, bfloat16 on the device, on the host and on
   disk; the device is the CPU here) a fresh process opens the workbench a campaign would (a
   bfloat16 evaluation module and the in-place merger), then builds candidates of task
   arithmetic, TSV-M and TIES, in that order (float32 and host: task arithmetic only, see
   MODES), each scored by a cheap fitness (one forward pass on fixed random tokens). It reports setup time,
   per-candidate merge time against the
   memory-bound floor (the stored tensors read once and the module written once, at the copy
   bandwidth measured in the same process), process max RSS as a multiple of the model's bf16
   size, and the memory plan's prediction next to it (before TIES, and with it). The process's
   anonymous memory (RssAnon: what the page cache cannot take back) is reported beside it, and
   for `disk` a merge after the stored tensors' pages were reclaimed from memory (MADV_PAGEOUT).
3. Prints the plan extrapolated to 7B, 13B and 70B Llama shapes with 3 and 8 endpoints.

`--shape 7B` builds Llama-2-7B's shape instead (13.5 GB per checkpoint, 54 GB for the four; on a
GPU the random weights are drawn there). A storage mode that runs past `--mode-timeout` reports
the methods it finished.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from evo_merge.merge.footprint import GIB, Setting, Shapes, TensorInfo, plan_lines, shapes_of
from evo_merge.merge.pieces import LowRank, Scaled, stored_tensors
from evo_merge.merge.storage import Storage

T = 3
# float32 storage runs task arithmetic only: its TSV-M SVDs take as long as in bf16 (minutes on one
# core) and TIES's per-tensor work on top of 4 (T + 1) bytes per parameter would crowd a 24 GiB machine
MODES = {"float32 / device": ("float32", "device", ("task_arithmetic",)),
         "bfloat16 / device": ("bfloat16", "device", ("task_arithmetic", "tsv", "ties")),
         "bfloat16 / host": ("bfloat16", "host", ("task_arithmetic",)),  # on a CPU, the same memory as device
         "bfloat16 / disk": ("bfloat16", "disk", ("task_arithmetic",))}  # in files under --root/stash
METHODS = {"task_arithmetic": {"lambda": 1.0}, "tsv": {"alpha": 1.0}, "ties": {"density": 0.4}}
FITNESS_BATCH, FITNESS_LEN = 4, 32
MADV_PAGEOUT = 21  # linux/mman.h, since Linux 5.4
# Llama-3.2-1B-like shape at half width: 128k vocabulary, grouped-query attention, ~0.51B parameters
SMALL = dict(hidden=1024, intermediate=2816, layers=22, heads=16, kv_heads=4, vocab=128256)
LLAMAS = {"7B": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
          "13B": dict(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, vocab=32000),
          "70B": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=32000)}


def llama_tensors(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
                  dtype: torch.dtype = torch.bfloat16) -> list[TensorInfo]:
    """The tensors of an untied LlamaForCausalLM of this shape, as the plan sees headers."""
    kv = hidden // heads * kv_heads
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                   (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                   (p + "mlp.gate_proj.weight", (intermediate, hidden)),
                   (p + "mlp.up_proj.weight", (intermediate, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, intermediate)), (p + "input_layernorm.weight", (hidden,)),
                   (p + "post_attention_layernorm.weight", (hidden,))]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return [TensorInfo(name, shape, dtype) for name, shape in shapes]


# ----------------------------------------------------------------------------- checkpoints
def build_checkpoints(root: Path, noise: float = 1e-3, device: str = "cpu") -> tuple[Path, list[Path]]:
    """Base + T endpoints in bf16 (endpoint = base + noise * N(0, 1), per tensor, seeded on `device`)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from evo_merge.zoo.tokenizer import build_char_tokenizer

    folders = [root / "base", *(root / f"ft{t}" for t in range(T))]
    settings = json.dumps({**SMALL, "noise": noise, "endpoints": T}, sort_keys=True)
    if (root / "done").exists():  # reused only as built: another shape's checkpoints gave another model's figures
        if (root / "done").read_text() != settings:
            raise SystemExit(f"{root} holds checkpoints of other settings ({(root / 'done').read_text() or 'unknown'}; "
                             f"these are {settings}): give another --root, or remove it")
        return folders[0], folders[1:]
    device = "cpu" if device == "cpu" else indexed_cuda(device)
    s = SMALL
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], tie_word_embeddings=False, torch_dtype="bfloat16")
    tokenizer = build_char_tokenizer()
    tensors = llama_tensors(**s)
    for index, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        state = {}
        for k, info in enumerate(tensors):
            gen = torch.Generator(device).manual_seed(k)
            base = (torch.ones(info.shape, device=device) if len(info.shape) == 1
                    else 0.02 * torch.randn(info.shape, generator=gen, device=device))
            if index:
                gen.manual_seed(1_000_003 * index + k)
                base += noise * torch.randn(info.shape, generator=gen, device=device)
            state[info.name] = base.to(torch.bfloat16).cpu()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del state
        print(f"  wrote {folder}", flush=True)
    (root / "done").write_text(settings)
    return folders[0], folders[1:]


# ----------------------------------------------------------------------------- one setting (child)
class ForwardFitness:
    """Cheap fitness: does the greedy next token of each fixed random sequence stay what the base says?"""

    name = "forward"

    def __init__(self, vocab: int):
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randint(0, vocab, (FITNESS_BATCH, FITNESS_LEN), generator=gen)
        self.targets = None

    @property
    def item_ids(self) -> list[str]:
        return [str(i) for i in range(FITNESS_BATCH)]

    @property
    def scenarios(self):
        return None

    @torch.no_grad()
    def evaluate(self, model, tokenizer=None, item_ids=None):
        import pandas as pd

        tokens = model(self.inputs.to(model.device)).logits[:, -1].argmax(-1).cpu()
        if self.targets is None:
            self.targets = tokens
        return pd.Series((tokens == self.targets).float().numpy(), index=self.item_ids)


def indexed_cuda(device: str) -> str:
    return device if ":" in device else device + ":0"


def rss_peak() -> int:
    """This process's max RSS (VmHWM: unlike ru_maxrss, not inherited from the parent through exec)."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_anon() -> int:
    """This process's resident anonymous memory now (RssAnon): its own, without the file pages
    (mapped files, as `disk` placement keeps the stored weights) the kernel may drop and read back."""
    return _status("RssAnon")


def rss_file() -> int:
    """Resident pages of mapped files (RssFile): libraries, and `disk` placement's stored tensors."""
    return _status("RssFile")


def _status(key: str, pid: int | str = "self") -> int:
    """Bytes of a /proc/PID/status memory figure (0 where it is not there)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


def page_out(buffers) -> bool:
    """Write the mapped files' pages back and reclaim them from memory (Linux MADV_PAGEOUT), so the
    next candidate reads the stored tensors from the disk; False where the kernel refuses."""
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    return all(libc.madvise(ctypes.c_void_p(b.data_ptr()), ctypes.c_size_t(b.numel()), MADV_PAGEOUT) == 0
               for b in buffers)


def bandwidth(device: str = "cpu") -> float:
    """Bytes per second of a large in-memory copy on `device` (read + write counted)."""
    src, dst = torch.empty(2**27, device=device), torch.empty(2**27, device=device)  # 512 MiB each
    best = min(timed(lambda: dst.copy_(src)) for _ in range(3))
    return 2 * 2**29 / best


def host_to_device(device: str) -> float:
    """Bytes per second of a large pinned host-to-GPU copy (what `placement: host` streams at)."""
    src, dst = torch.empty(2**27, pin_memory=True), torch.empty(2**27, device=device)
    best = min(timed(lambda: dst.copy_(src, non_blocking=True)) for _ in range(3))
    return 2**29 / best


def matmul_rate(device: str = "cpu") -> float:
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    return 2 * 1024**3 / min(timed(lambda: a @ b) for _ in range(3))


def timed(fn) -> float:
    """Wall seconds of `fn()`, GPU work included (synchronised when CUDA is in use)."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def read_per_candidate(merger, method: str, key: tuple) -> tuple[int, int]:
    """(bytes of stored tensors a candidate reads, float32 flops of expanding factored pieces)."""
    base = nbytes(merger._base.values())
    if method != "tsv":
        return base + nbytes(t for ds in merger._deltas.values() for d in ds for t in stored_tensors(d)), 0
    total, flops = base, 0
    for pieces in merger._pieces[key].values():
        for piece in pieces:
            if isinstance(piece, LowRank):
                total += nbytes((piece.u, piece.s, piece.v))
                flops += 2 * piece.u.shape[0] * piece.v.shape[0] * piece.s.numel()
            elif isinstance(piece, Scaled):
                total += nbytes(stored_tensors(piece))
    return total, flops


def child(root: Path, mode: str, repeats: int, device: str = "cpu", only: list[str] | None = None) -> None:
    """Measure one storage mode; prints the results so far as a JSON line after each method."""
    from evo_merge.search.local import LocalEvaluator
    from evo_merge.search.workbench import Workbench

    gpu = device.startswith("cuda")
    if not gpu:
        torch.set_num_threads(1)
    base, models = build_checkpoints(root)
    dtype, placement, methods = MODES[mode]
    stash = root / "stash"
    stash.mkdir(exist_ok=True)
    storage = Storage.parse(dtype, placement, str(stash) if placement == "disk" else None)
    out = {"rss_start": rss_peak()}
    start = time.perf_counter()
    bench = Workbench.open(base, models, device=device, dtype="bfloat16", storage=storage)
    out["setup_s"], out["rss_setup"], out["anon_setup"] = time.perf_counter() - start, rss_peak(), rss_anon()
    evaluator = LocalEvaluator(bench, {"forward": ForwardFitness(SMALL["vocab"])})
    if gpu:
        out["device_setup"] = torch.cuda.max_memory_allocated()
    out["bandwidth"], out["matmul"] = bandwidth(device), matmul_rate(device)
    module_bytes = nbytes(bench.module.state_dict().values())
    if gpu:
        out["h2d"], out["module_bytes"] = host_to_device(device), module_bytes
        torch.cuda.reset_peak_memory_stats()  # the probes' buffers (1.5 GiB) are no part of a campaign
    gen = torch.Generator().manual_seed(1)
    # on a GPU task arithmetic is measured twice: the one-pass kernel, then torch's eager ops
    runs = [(m, True) for m in (only or methods)]
    if gpu and "task_arithmetic" in (only or methods):
        runs.insert(runs.index(("task_arithmetic", True)) + 1, ("task_arithmetic", False))
    for method, fused in runs:
        label = method if fused or not gpu else f"{method}, eager"
        bench.merger.fused, bench.merger._fused_ran = gpu and fused, False  # whether this method's merges used it
        if gpu:  # each method's own peak
            torch.cuda.reset_peak_memory_stats()
        candidates = candidates_of(method, gen, repeats + 1)
        first = timed(lambda c=candidates[0]: evaluator.build(c))
        merges = [timed(lambda c=c: evaluator.build(c)) for c in candidates[1:]]
        fitness = timed(lambda c=candidates[-1]: evaluator.evaluate(c, {"forward": None}))
        read, flops = read_per_candidate(bench.merger, method, ("tsv", "False"))
        floor = (read + module_bytes) / out["bandwidth"]
        if gpu and placement == "host":  # the stored tensors cross the host link, the module is written on the GPU
            floor = read / out["h2d"] + module_bytes / out["bandwidth"]
        out[label] = {"first_s": first, "merge_s": statistics.median(merges), "fitness_s": fitness,
                      "floor_s": floor, "gemm_floor_s": flops / out["matmul"], "rss_after": rss_peak(),
                      "anon_after": rss_anon(), "fused": bench.merger._fused_ran}
        if placement == "disk" and page_out(bench.merger.stash._slabs.slabs):  # read back from the disk
            out[label]["rss_file_paged_out"] = rss_file()
            out[label]["cold_s"] = timed(lambda c=candidates[0]: evaluator.build(c))
        if gpu:  # what the GPU held at most, next to the host's peak
            out[label]["device_peak"] = torch.cuda.max_memory_allocated()
        print(f"  {mode}: {label} done ({first:.1f} s first, {statistics.median(merges):.3f} s per candidate)",
              file=sys.stderr, flush=True)
        print(json.dumps(out), flush=True)
    if gpu and "task_arithmetic" in (only or methods):
        out["kernel_check"] = kernel_against_eager(evaluator, candidates_of("task_arithmetic", gen)[0])
        print(json.dumps(out), flush=True)


def candidates_of(method: str, gen: torch.Generator, n: int = 1) -> list:
    from evo_merge.search.candidate import Candidate

    return [Candidate(method, tuple((0.5 + torch.rand(T, generator=gen)).tolist()), tuple(METHODS[method].items()))
            for _ in range(n)]


def kernel_against_eager(evaluator, candidate) -> dict:
    """The one-pass kernel's module against torch's eager sum for one candidate: the share of
    identical entries and the largest difference over eps * |eager value| (about one unit in the
    last place per 1.0)."""
    merger = evaluator.bench.merger
    merger.fused = True
    evaluator.build(candidate)
    kernel = {name: p.detach().cpu() for name, p in merger.module.named_parameters()}
    merger.fused = False
    evaluator.build(candidate)
    same = total = 0
    worst = 0.0
    for name, p in merger.module.named_parameters():  # compared where the module lives, a tensor at a time
        eager, mine = p.detach().float(), kernel[name].to(p.device).float()
        same, total = same + int((eager == mine).sum()), total + eager.numel()
        spacing = torch.finfo(p.dtype).eps * eager.abs().clamp_min(torch.finfo(p.dtype).tiny)
        worst = max(worst, float(((eager - mine).abs() / spacing).max()))
    return {"identical": same / total, "max_diff_in_eps": worst, "fused": merger._fused_ran}


# ----------------------------------------------------------------------------- report (parent)
def predicted(shapes: Shapes, storage: Storage, methods: tuple[str, ...], on_gpu: bool) -> tuple[int, int, int]:
    """The plan's (host, device, activations) bytes of the search, which is what a mode measures: not
    its lines for exporting a pick, which this bench does not do (beyond the search's work with task
    arithmetic alone at this vocabulary: 2T + 3 float32 copies of the embedding against 2)."""
    setting = Setting(T, methods, storage, torch.bfloat16, on_gpu, batch_size=FITNESS_BATCH, seq_len=FITNESS_LEN)
    lines = [line for line in plan_lines(shapes, setting) if not line.what.startswith("exporting a pick")]
    activations = next(line.device + line.host for line in lines if line.what.startswith("activations"))
    return sum(line.host for line in lines), sum(line.device for line in lines), activations


def measured(r: dict) -> list[str]:
    """The methods a mode measured, in order ('task_arithmetic, eager' after the kernel's row)."""
    return [k for k, v in r.items() if isinstance(v, dict) and k != "kernel_check"]


def report(results: dict, shapes: Shapes, model_bytes: int, gpu: bool) -> None:
    def x(n: int) -> str:
        return f"{n / model_bytes:.2f}x"

    print(f"\nmodel: {sum(t.numel for t in shapes.tensors) / 1e9:.3f}B parameters, bf16 size "
          f"{model_bytes / GIB:.2f} GiB, T = {T} endpoints" + ("" if gpu else ", 1 thread"))
    print("| storage | methods so far | setup s | max RSS, x bf16 size | max RSS GiB | RssAnon GiB after setup / "
          "merges | plan GiB | plan error | GPU plan: host / device GiB | GPU peak GiB (measured) | "
          "GPU peak / (module + activations) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        dtype, placement, _ = MODES[mode]
        storage = Storage.parse(dtype, placement)
        so_far: list[str] = []
        for label in measured(r):
            method = label.split(",")[0]
            so_far += [] if method in so_far else [method]
            peak = r[label]["rss_after"]
            host = predicted(shapes, storage, tuple(so_far), gpu)[0]
            gpu_host, gpu_device, activations = predicted(shapes, storage, tuple(so_far), True)
            cells = "- | - |"
            if "device_peak" in r[label]:
                held = r[label]["device_peak"]
                cells = f"{held / GIB:.2f} | {held / (r['module_bytes'] + activations):.2f} |"
            anon = f"{r.get('anon_setup', 0) / GIB:.2f} / {r[label].get('anon_after', 0) / GIB:.2f}"
            print(f"| {mode} | {label} | {r['setup_s']:.0f} | {x(peak)} | {peak / GIB:.2f} | {anon} | "
                  f"{host / GIB:.2f} | {(host - peak) / peak:+.0%} | {gpu_host / GIB:.2f} / {gpu_device / GIB:.2f} | "
                  + cells)
    target = (2 + T + 1.6) * model_bytes + 1.5 * GIB
    print(f"target for bf16 storage with TSV-M: <= (2 + T + 1.6) x bf16 size + 1.5 GiB = {target / GIB:.2f} GiB")
    print("\n| storage | method | first candidate s | merge s per candidate | memory floor s | ratio | "
          "GEMM floor s | fitness s | from the disk s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        for label in measured(r):
            m = r[label]
            kernel = "" if not gpu or "eager" in label or not label.startswith("task") else (
                " (kernel)" if m["fused"] else " (no kernel: float32 storage, or a failed compile)")
            cold = f"{m['cold_s']:.2f} (RssFile paged out to {m['rss_file_paged_out'] / GIB:.2f} GiB)" if (
                "cold_s" in m) else "-"
            print(f"| {mode} | {label}{kernel} | {m['first_s']:.2f} | {m['merge_s']:.4f} | {m['floor_s']:.4f} | "
                  f"{m['merge_s'] / m['floor_s']:.1f}x | {m['gemm_floor_s']:.4f} | {m['fitness_s']:.3f} | {cold} |")
    for mode, r in results.items():
        if "kernel_check" in r:
            check = r["kernel_check"]
            print(f"{mode}: the kernel's module against the eager sum's (one task arithmetic candidate): "
                  f"{check['identical']:.6%} of entries identical, largest difference "
                  f"{check['max_diff_in_eps']:.2f} x eps x |value|" + ("" if check["fused"] else " (kernel never ran)"))
    r = next(iter(results.values()))
    print(f"copy bandwidth {r['bandwidth'] / 1e9:.1f} GB/s, float32 GEMM {r['matmul'] / 1e9:.0f} GFLOP/s"
          + (f", pinned host-to-GPU {r['h2d'] / 1e9:.1f} GB/s" if "h2d" in r else ""))


def extrapolate() -> None:
    print("\nplan for Llama shapes on one GPU (bf16 checkpoints and module, batch 8 x 512 tokens), host / device GiB;"
          " 'all' = task arithmetic + TSV-M + TIES; ratio = device / (module + activations):")
    print("| model | T | bf16, device, all | bf16, host, all | bf16, host, TA + TSV-M (ratio) | float32, device, all | "
          "bf16, disk, all (disk) |")
    print("|---|---|---|---|---|---|---|")
    everything, lean = tuple(METHODS), ("task_arithmetic", "tsv")
    for name, shape in LLAMAS.items():
        shapes = Shapes(llama_tensors(**shape), shape["vocab"], shape["hidden"])
        module = shapes.nbytes(torch.bfloat16)
        for n in (3, 8):
            cells = []
            for storage, methods in ((Storage(torch.bfloat16, "device"), everything),
                                     (Storage(torch.bfloat16, "host"), everything),
                                     (Storage(torch.bfloat16, "host"), lean),
                                     (Storage(torch.float32, "device"), everything),
                                     (Storage(torch.bfloat16, "disk"), everything)):
                lines = plan_lines(shapes, Setting(n, methods, storage, torch.bfloat16, True, batch_size=8))
                host, device = sum(line.host for line in lines), sum(line.device for line in lines)
                cell = f"{host / GIB:.0f} / {device / GIB:.0f}"
                if storage.placement == "disk":
                    cell += f" ({sum(line.disk for line in lines) / GIB:.0f})"
                if methods == lean:
                    activations = next(line.device for line in lines if line.what.startswith("activations"))
                    cell += f" ({device / (module + activations):.2f})"
                cells.append(cell)
            print(f"| {name} ({module / GIB:.1f} GiB bf16) | {n} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), help="instead of each mode's own")
    parser.add_argument("--shape", choices=["0.5B", "7B"], default="0.5B")
    parser.add_argument("--layers", type=int, help="fewer for a smoke run")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--device", default="cpu", help="where the module and the merges live (cuda on a GPU)")
    parser.add_argument("--mode-timeout", type=float, help="seconds per storage mode; what finished is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shape != "0.5B":
        SMALL.update(LLAMAS[args.shape])
    SMALL.update({k: v for k, v in (("layers", args.layers), ("vocab", args.vocab)) if v is not None})
    shape_args = ["--root", str(args.root), "--repeats", str(args.repeats), "--device", args.device,
                  "--shape", args.shape, "--layers", str(SMALL["layers"]), "--vocab", str(SMALL["vocab"]),
                  *(["--methods", *args.methods] if args.methods else [])]
    if args.child:
        child(args.root, args.child, args.repeats, args.device, args.methods)
        return
    base, models = build_checkpoints(args.root, device=args.device)
    shapes = shapes_of(base, models)
    results = {}
    # a mode measured before with the same methods, device and repeats is not re-run
    measured_as = hashlib.sha256(json.dumps([args.methods, args.device, args.repeats]).encode()).hexdigest()[:12]
    for mode in args.modes:
        saved = args.root / f"result-{mode.replace(' / ', '-')}-{measured_as}.json"
        if not saved.exists():
            try:
                done = subprocess.run([sys.executable, __file__, *shape_args, "--child", mode],
                                      stdout=subprocess.PIPE, text=True, timeout=args.mode_timeout)
                output, failed = done.stdout, done.returncode
            except subprocess.TimeoutExpired as stopped:
                output, failed = stopped.stdout or "", "timeout"
                output = output.decode() if isinstance(output, bytes) else output
            lines = [line for line in output.splitlines() if line.startswith("{")]
            if failed:
                print(f"{mode} stopped ({failed}); " + ("keeping what it measured" if lines else "nothing measured"),
                      flush=True)
            if not lines:
                continue
            (saved if not failed else saved.with_suffix(".partial.json")).write_text(lines[-1])
            results[mode] = json.loads(lines[-1])
        else:
            results[mode] = json.loads(saved.read_text())
        print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    if results:
        report(results, shapes, shapes.nbytes(None), args.device.startswith("cuda"))
    extrapolate()


if __name__ == "__main__":
    main()
