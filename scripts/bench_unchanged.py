"""Merge time with and without copying the tensors no endpoint changed, on a partial fine-tune.

    .venv/bin/python scripts/bench_unchanged.py     # SmolLM2-135M's shape, MLPs of blocks 15-29 changed

The smollm2 demo zoo (and any fine-tune that freezes part of the model, or a LoRA input) leaves
most tensors as the base has them. A method declaring `keeps_unchanged` returns the base there,
so the in-place merger (a search candidate) and the file merge (an export) copy it instead of
computing it. Both are timed on the same models, the skip on and off, in one run: per candidate
for TIES, DARE-TIES and task arithmetic, the first TSV candidate (its SVDs), and a TIES and a TSV
export streamed from the checkpoints. The outputs are checked equal, bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.stream import stream_merge
from evo_merge.weights import Checkpoint, load_model_folder, save_model_folder


def build_models(root: Path, args: argparse.Namespace) -> tuple[Path, list[Path]]:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64 // 3 or 1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    save_model_folder(root / "base", model)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    trained = [f"layers.{i}.mlp." for i in range(args.changed_from, args.layers)]
    endpoints = []
    for e in range(args.endpoints):
        with torch.no_grad():
            for name, p in model.state_dict().items():
                changed = any(t in name for t in trained)
                p.copy_(base_state[name] + 0.001 * torch.randn_like(p) if changed else base_state[name])
        endpoints.append(root / f"ft{e}")
        save_model_folder(endpoints[-1], model)
    return root / "base", endpoints


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit (-0.0 is not 0.0 here, as it is for torch.equal)."""
    kinds = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(kinds[a.element_size()]),
                                              b.contiguous().view(kinds[b.element_size()]))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--changed-from", type=int, default=15, help="first block whose MLP the endpoints change")
    parser.add_argument("--endpoints", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base, endpoints = build_models(Path(tmp), args)
        model = load_model_folder(base)[0]
        merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(e) for e in endpoints])
        unchanged = set(merger._unchanged)
        state = model.state_dict()
        share = sum(state[n].numel() for n in unchanged) / sum(state[n].numel() for n in merger.names)
        print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {len(unchanged)} of "
              f"{len(merger.names)} tensors unchanged ({share:.0%} of the entries merged); one thread")
        weights = [0.6] * len(endpoints)
        print("in-place candidate (s): method, without the skip, with it, ratio")
        for method in ("ties", "dare_ties", "task_arithmetic", "tsv"):
            merger._unchanged = set()
            merger.clear_cache()
            before = seconds(lambda m=method: merger.apply(m, weights))
            slow = {k: v.clone() for k, v in model.state_dict().items()}
            merger._unchanged = set(unchanged)
            merger.clear_cache()
            after = seconds(lambda m=method: merger.apply(m, weights))
            same = all(same_bits(slow[k], v) for k, v in model.state_dict().items())
            label = "tsv (first candidate: its SVDs)" if method == "tsv" else method
            print(f"  {label}: {before:.2f} {after:.2f} {before / after:.1f}x, outputs equal: {same}")
        print("export, streamed from the checkpoints (s): method, without the skip, with it, ratio")
        for method in ("ties", "tsv"):
            recipe = Recipe.model_validate({
                "merge_method": method, "base_model": str(base),
                "models": [{"model": str(e), "parameters": {"weight": w}} for e, w in zip(endpoints, weights)]})
            plan = plan_from_recipe(recipe)
            plan.method = dataclasses.replace(plan.method, keeps_unchanged=False)
            slow: dict[str, torch.Tensor] = {}
            before = seconds(lambda p=plan, out=slow: out.update(stream_merge(p)[1]))
            fast: dict[str, torch.Tensor] = {}
            skipping = plan_from_recipe(recipe)
            after = seconds(lambda p=skipping, out=fast: out.update(stream_merge(p)[1]))
            same = slow.keys() == fast.keys() and all(same_bits(slow[k], fast[k]) for k in slow)
            print(f"  {method}: {before:.2f} {after:.2f} {before / after:.1f}x, outputs equal: {same}")


if __name__ == "__main__":
    main()
