"""Search at the size users merge: the in-place merger's memory and time on a >= 0.5B Llama.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py [--root /tmp/bench_scale] [--repeats 3]
        [--device cuda]   # on a GPU: the module and merges there; adds each method's GPU peak

1. Builds (or reuses under --root) random-weight Llama-architecture checkpoints in bfloat16: a
   base and 3 endpoints that differ from it by small random task vectors (written tensor by
   tensor; ~1 GB each on disk).
2. For each storage setting (float32 on the device, bfloat16 on the device, bfloat16 on the
   host; the device is the CPU here) a fresh process opens the workbench a campaign would (a
   bfloat16 evaluation module and the in-place merger), then builds candidates of task
   arithmetic, TSV-M and TIES, in that order (float32 and host: task arithmetic only, see
   MODES), each scored by a cheap fitness (one forward pass on fixed random tokens). It reports setup time,
   per-candidate merge time against the
   memory-bound floor (the stored tensors read once and the module written once, at the copy
   bandwidth measured in the same process), process max RSS as a multiple of the model's bf16
   size, and the memory plan's prediction next to it (before TIES, and with it).
3. Prints the plan extrapolated to 7B, 13B and 70B Llama shapes with 3 and 8 endpoints.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from evo_merge.merge.footprint import GIB, Setting, Shapes, TensorInfo, plan_lines, shapes_of
from evo_merge.merge.pieces import LowRank, Scaled
from evo_merge.merge.storage import Storage

T = 3
# float32 storage runs task arithmetic only: its TSV-M SVDs take as long as in bf16 (minutes on one
# core) and TIES's per-tensor work on top of 4 (T + 1) bytes per parameter would crowd a 24 GiB machine
MODES = {"float32 / device": ("float32", "device", ("task_arithmetic",)),
         "bfloat16 / device": ("bfloat16", "device", ("task_arithmetic", "tsv", "ties")),
         "bfloat16 / host": ("bfloat16", "host", ("task_arithmetic",))}  # on a CPU, the same memory as device
METHODS = {"task_arithmetic": {"lambda": 1.0}, "tsv": {"alpha": 1.0}, "ties": {"density": 0.4}}
FITNESS_BATCH, FITNESS_LEN = 4, 32
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
def build_checkpoints(root: Path, noise: float = 1e-3) -> tuple[Path, list[Path]]:
    """Base + T endpoints in bf16 (endpoint = base + noise * N(0, 1), per tensor, seeded)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from evo_merge.zoo.tokenizer import build_char_tokenizer

    folders = [root / "base", *(root / f"ft{t}" for t in range(T))]
    if (root / "done").exists():
        return folders[0], folders[1:]
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
            gen = torch.Generator().manual_seed(k)
            base = torch.ones(info.shape) if len(info.shape) == 1 else 0.02 * torch.randn(info.shape, generator=gen)
            if index:
                gen.manual_seed(1_000_003 * index + k)
                base += noise * torch.randn(info.shape, generator=gen)
            state[info.name] = base.to(torch.bfloat16)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del state
        print(f"  wrote {folder}", flush=True)
    (root / "done").touch()
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


def rss_peak() -> int:
    """This process's max RSS (VmHWM: unlike ru_maxrss, not inherited from the parent through exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bandwidth(device: str = "cpu") -> float:
    """Bytes per second of a large in-memory copy on `device` (read + write counted)."""
    src, dst = torch.empty(2**27, device=device), torch.empty(2**27, device=device)  # 512 MiB each
    best = min(timed(lambda: dst.copy_(src)) for _ in range(3))
    return 2 * 2**29 / best


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
        return base + nbytes(d for ds in merger._deltas.values() for d in ds), 0
    total, flops = base, 0
    for pieces in merger._pieces[key].values():
        for piece in pieces:
            if isinstance(piece, LowRank):
                total += nbytes((piece.u, piece.s, piece.v))
                flops += 2 * piece.u.shape[0] * piece.v.shape[0] * piece.s.numel()
            elif isinstance(piece, Scaled):
                total += nbytes([piece.tensor])
    return total, flops


def child(root: Path, mode: str, repeats: int, device: str = "cpu") -> dict:
    from evo_merge.search.candidate import Candidate
    from evo_merge.search.local import LocalEvaluator
    from evo_merge.search.workbench import Workbench

    torch.set_num_threads(1)
    base, models = build_checkpoints(root)
    dtype, placement, methods = MODES[mode]
    storage = Storage.parse(dtype, placement)
    out = {"rss_start": rss_peak()}
    start = time.perf_counter()
    bench = Workbench.open(base, models, device=device, dtype="bfloat16", storage=storage)
    out["setup_s"], out["rss_setup"] = time.perf_counter() - start, rss_peak()
    evaluator = LocalEvaluator(bench, {"forward": ForwardFitness(SMALL["vocab"])})
    out["bandwidth"], out["matmul"] = bandwidth(device), matmul_rate(device)
    module_bytes = nbytes(bench.module.state_dict().values())
    gen = torch.Generator().manual_seed(1)
    for method in methods:
        params = METHODS[method]
        candidates = [Candidate(method, tuple((0.5 + torch.rand(T, generator=gen)).tolist()), tuple(params.items()))
                      for _ in range(repeats + 1)]
        first = timed(lambda c=candidates[0]: evaluator.build(c))
        merges = [timed(lambda c=c: evaluator.build(c)) for c in candidates[1:]]
        fitness = timed(lambda c=candidates[-1]: evaluator.evaluate(c, {"forward": None}))
        read, flops = read_per_candidate(bench.merger, method, ("tsv", "False"))
        out[method] = {"first_s": first, "merge_s": statistics.median(merges), "fitness_s": fitness,
                       "floor_s": (read + module_bytes) / out["bandwidth"], "gemm_floor_s": flops / out["matmul"],
                       "rss_after": rss_peak()}
        if device.startswith("cuda"):  # what the GPU held at most, next to the host's peak
            out[method]["device_peak"] = torch.cuda.max_memory_allocated()
        print(f"  {mode}: {method} done ({first:.1f} s first, {statistics.median(merges):.2f} s per candidate)",
              file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- report (parent)
def predicted(shapes: Shapes, storage: Storage, methods: tuple[str, ...], on_gpu: bool) -> tuple[int, int]:
    setting = Setting(T, methods, storage, torch.bfloat16, on_gpu, batch_size=FITNESS_BATCH, seq_len=FITNESS_LEN)
    lines = plan_lines(shapes, setting)
    return sum(line.host for line in lines), sum(line.device for line in lines)


def report(results: dict, shapes: Shapes, model_bytes: int) -> None:
    def x(n: int) -> str:
        return f"{n / model_bytes:.2f}x"

    print(f"\nmodel: {sum(t.numel for t in shapes.tensors) / 1e9:.3f}B parameters, bf16 size "
          f"{model_bytes / GIB:.2f} GiB, T = {T} endpoints, 1 thread")
    print("| storage | methods so far | setup s | max RSS, x bf16 size | max RSS GiB | plan GiB | plan error | "
          "GPU plan: host / device GiB | GPU peak GiB (measured) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        dtype, placement, methods = MODES[mode]
        storage = Storage.parse(dtype, placement)
        for i, method in enumerate(methods):
            peak = r[method]["rss_after"]
            host = predicted(shapes, storage, methods[:i + 1], False)[0]
            gpu_host, gpu_device = predicted(shapes, storage, methods[:i + 1], True)
            print(f"| {mode} | {' + '.join(methods[:i + 1])} | {r['setup_s']:.0f} | {x(peak)} | {peak / GIB:.2f} | "
                  f"{host / GIB:.2f} | {(host - peak) / peak:+.0%} | {gpu_host / GIB:.2f} / {gpu_device / GIB:.2f} | "
                  + (f"{r[method]['device_peak'] / GIB:.2f} |" if "device_peak" in r[method] else "- |"))
    target = (2 + T + 1.6) * model_bytes + 1.5 * GIB
    print(f"target for bf16 storage with TSV-M: <= (2 + T + 1.6) x bf16 size + 1.5 GiB = {target / GIB:.2f} GiB")
    print("\n| storage | method | first candidate s | merge s per candidate | memory floor s | ratio | "
          "GEMM floor s | fitness s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        for method in MODES[mode][2]:
            m = r[method]
            print(f"| {mode} | {method} | {m['first_s']:.1f} | {m['merge_s']:.2f} | {m['floor_s']:.2f} | "
                  f"{m['merge_s'] / m['floor_s']:.1f}x | {m['gemm_floor_s']:.2f} | {m['fitness_s']:.2f} |")
    r = next(iter(results.values()))
    print(f"copy bandwidth {r['bandwidth'] / 1e9:.1f} GB/s, float32 GEMM {r['matmul'] / 1e9:.0f} GFLOP/s")


def extrapolate() -> None:
    print("\nplan for Llama shapes on one GPU (bf16 checkpoints and module, batch 8 x 512 tokens), host / device GiB;"
          " 'all' = task arithmetic + TSV-M + TIES; ratio = device / (module + activations):")
    print("| model | T | bf16, device, all | bf16, host, all | bf16, host, TA + TSV-M (ratio) | float32, device, all |")
    print("|---|---|---|---|---|---|")
    everything, lean = tuple(METHODS), ("task_arithmetic", "tsv")
    for name, shape in LLAMAS.items():
        shapes = Shapes(llama_tensors(**shape), shape["vocab"], shape["hidden"])
        module = shapes.nbytes(torch.bfloat16)
        for n in (3, 8):
            cells = []
            for storage, methods in ((Storage(torch.bfloat16, "device"), everything),
                                     (Storage(torch.bfloat16, "host"), everything),
                                     (Storage(torch.bfloat16, "host"), lean),
                                     (Storage(torch.float32, "device"), everything)):
                lines = plan_lines(shapes, Setting(n, methods, storage, torch.bfloat16, True, batch_size=8))
                host, device = sum(line.host for line in lines), sum(line.device for line in lines)
                cell = f"{host / GIB:.0f} / {device / GIB:.0f}"
                if methods == lean:
                    activations = next(line.device for line in lines if line.what.startswith("activations"))
                    cell += f" ({device / (module + activations):.2f})"
                cells.append(cell)
            print(f"| {name} ({module / GIB:.1f} GiB bf16) | {n} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--layers", type=int, default=SMALL["layers"], help="fewer for a smoke run")
    parser.add_argument("--vocab", type=int, default=SMALL["vocab"])
    parser.add_argument("--device", default="cpu", help="where the module and the merges live (cuda on a GPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SMALL.update(layers=args.layers, vocab=args.vocab)
    shape_args = ["--root", str(args.root), "--repeats", str(args.repeats), "--device", args.device,
                  "--layers", str(args.layers),
                  "--vocab", str(args.vocab)]
    if args.child:
        print(json.dumps(child(args.root, args.child, args.repeats, args.device)))
        return
    base, models = build_checkpoints(args.root)
    shapes = shapes_of(base, models)
    results = {}
    for mode in args.modes:
        saved = args.root / f"result-{mode.replace(' / ', '-')}.json"  # a mode measured before is not re-run
        if not saved.exists():
            done = subprocess.run([sys.executable, __file__, *shape_args, "--child", mode], stdout=subprocess.PIPE,
                                  text=True)
            if done.returncode:
                sys.exit(f"{mode} failed (exit {done.returncode})")
            saved.write_text(done.stdout.strip().splitlines()[-1])
        results[mode] = json.loads(saved.read_text())
        print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    report(results, shapes, shapes.nbytes(None))
    extrapolate()


if __name__ == "__main__":
    main()
