"""Time one in-place candidate merge against (a) a plain-torch memory-bound pass and (b) the file path.

    .venv/bin/python scripts/bench_merge.py            # ~134M-parameter Llama, 3 endpoints

(a) writes the same tensors with torch._foreach ops over resident tensors: the floor for any
in-place merge. (b) is what a search without an in-place merger would do per candidate: stream
the merge to an HF folder on disk, then load it back with transformers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evo_merge.merge.export import export_merge
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.pieces import stored_tensors
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.weights import Checkpoint, load_model_folder, save_model_folder


def build_models(root: Path, hidden: int, layers: int, vocab: int, n_endpoints: int) -> tuple[Path, list[Path]]:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    paths = [root / "base"]
    save_model_folder(paths[0], model)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(n_endpoints):
        with torch.no_grad():
            for name, p in model.state_dict().items():
                p.copy_(base_state[name] + 0.01 * torch.randn_like(p))
        paths.append(root / f"ft{i}")
        save_model_folder(paths[-1], model)
    n_params = sum(p.numel() for p in model.parameters())
    return paths[0], paths[1:], n_params


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-tsv", dest="tsv", action="store_false", help="skip tsv (its SVD precompute is slow on CPU)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, endpoints, n_params = build_models(root, args.hidden, args.layers, args.vocab, args.endpoints)
        print(
            f"model: Llama, {n_params / 1e6:.1f}M parameters, {args.endpoints} endpoints, "
            f"{torch.get_num_threads()} threads"
        )
        model, _ = load_model_folder(base)
        start = time.perf_counter()
        merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(p) for p in endpoints])
        print(f"in-place merger set-up (load base + task vectors): {time.perf_counter() - start:.2f} s")
        weights = [0.5, 0.3, 0.7][: args.endpoints] + [0.4] * max(0, args.endpoints - 3)

        # (a) the memory-bound floor: copy the base, add each weighted task vector, all resident
        targets = [merger._targets[n] for n in merger._base]
        bases = list(merger._base.values())
        # what a candidate reads per endpoint: its task vector, or its endpoint (bfloat16 checkpoints)
        deltas = [[stored_tensors(merger._deltas[n][t])[0] for n in merger._base] for t in range(args.endpoints)]

        def reference() -> None:
            with torch.no_grad():
                torch._foreach_copy_(targets, bases)
                for t, w in enumerate(weights):
                    torch._foreach_add_(targets, deltas[t], alpha=w)

        t_ref = timed(reference, args.repeats)
        t_ta = timed(lambda: merger.apply("task_arithmetic", weights), args.repeats)
        t_ref = min(t_ref, timed(reference, args.repeats))  # interleaved again: the machine is noisy

        def file_path(method: str) -> None:
            recipe = Recipe.model_validate(
                {
                    "merge_method": method,
                    "base_model": str(base),
                    "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(endpoints, weights)],
                }
            )
            out = export_merge(plan_from_recipe(recipe), root / f"merged-{method}", overwrite=True)
            load_model_folder(out)

        t_file_ta = timed(lambda: file_path("task_arithmetic"), 3)
        if args.tsv:
            start = time.perf_counter()
            merger.apply("tsv", weights)
            t_tsv_setup = time.perf_counter() - start
            t_tsv = timed(lambda: merger.apply("tsv", weights), args.repeats)
            t_ref = min(t_ref, timed(reference, args.repeats))  # and once more next to the tsv timing
            t_file_tsv = timed(lambda: file_path("tsv"), 1)

    print(f"{'candidate':<34}{'seconds':>10}")
    rows = [
        ("(a) plain-torch reference", t_ref),
        ("in-place task_arithmetic", t_ta),
        ("(b) file path task_arithmetic", t_file_ta),
    ]
    if args.tsv:
        rows += [
            ("in-place tsv (pieces cached)", t_tsv),
            ("tsv one-off SVD precompute", t_tsv_setup),
            ("(b) file path tsv", t_file_tsv),
        ]
    for label, seconds in rows:
        print(f"{label:<34}{seconds:>10.3f}")
    print(f"in-place task_arithmetic / (a): {t_ta / t_ref:.2f}x   (target <= 1.5x)")
    print(f"(b) / in-place task_arithmetic: {t_file_ta / t_ta:.1f}x faster in place   (target >= 10x)")
    if args.tsv:
        print(f"in-place tsv / (a):             {t_tsv / t_ref:.2f}x   (target <= 1.5x)")
        print(f"(b) / in-place tsv:             {t_file_tsv / t_tsv:.1f}x faster in place   (target >= 10x)")


if __name__ == "__main__":
    main()
