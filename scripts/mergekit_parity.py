"""Run a folder of recipes through `evo-merge merge` and, where installed, `mergekit-yaml`; compare.

    python scripts/mergekit_parity.py RECIPES_DIR [--mergekit /work/venvs/mergekit/bin/mergekit-yaml]
    python scripts/mergekit_parity.py --make-recipes DIR   # a tiny Llama family and one recipe per method
        [--evolve-python /work/venvs/mergekit/bin/python]    # + best_config.yaml as mergekit-evolve saves it

Prints one row per recipe: tensors compared, bit-identical, max absolute difference and max
relative difference (per tensor, max |a - b| / max |b|). mergekit is not a dependency: install it in
a separate virtual environment and pass its `mergekit-yaml` (without it only evo-merge runs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

RECIPES = {  # method -> (global parameters, per-model parameters); linear and slerp-like take no base
    "linear": ({}, [{"weight": 0.6}, {"weight": 0.4}]),
    "task_arithmetic": ({"lambda": 0.9, "int8_mask": True}, [{"weight": 0.7}, {"weight": 0.5}]),
    "ties": ({"int8_mask": True}, [{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.7}]),
    "breadcrumbs": ({}, [{"weight": 0.7, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.9}]),
    "breadcrumbs_ties": ({}, [{"weight": 0.7, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.9}]),
    "sce": ({"select_topk": 0.5}, [{"weight": 1.0}, {"weight": 1.0}]),
    "model_stock": ({}, [{"weight": 1.0}, {"weight": 1.0}]),
    "nuslerp": ({}, [{"weight": 0.3}, {"weight": 0.7}]),
    "multislerp": ({}, [{"weight": 0.3}, {"weight": 0.7}]),
    "karcher": ({}, [{"weight": 1.0}, {"weight": 1.0}]),
    "nearswap": ({"t": 0.01}, [{"weight": 1.0}]),
    "arcee_fusion": ({}, [{"weight": 1.0}]),
    "slerp": ({"t": [0.0, 0.3, 1.0]}, [{}]),
    "dare_ties": ({}, [{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.5}]),
    "della": ({}, [{"weight": 0.7, "density": 0.5, "epsilon": 0.1}, {"weight": 0.5, "density": 0.5}]),
}
NO_BASE = {"linear", "multislerp", "karcher"}


# mergekit-evolve's own genome code turns a random genotype (per-layer weights, negative weights
# allowed) into the configuration it saves as best_config.yaml (int8_mask, normalize, bfloat16)
EVOLVE_SNIPPET = """
import sys, torch
from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition
base, *models = sys.argv[1:-1]
definition = ModelGenomeDefinition(models=models, base_model=base, merge_method="task_arithmetic",
                                   layer_granularity=1, allow_negative_weights=True)
genome = ModelGenome(definition)
torch.manual_seed(0)
genotype = 2 * genome.initial_genotype(random=True) - 0.5
open(sys.argv[-1], "w").write(genome.genotype_merge_config(genotype).to_yaml())
"""


def make_recipes(out: Path, evolve_python: str | None = None) -> None:
    from evo_merge.zoo.tiny import save_tiny_family

    base, fts = save_tiny_family(out / "models", "llama", n_finetunes=5)  # the per-method recipes take 2
    for method, (params, per_model) in RECIPES.items():
        recipe = {"merge_method": method, "dtype": "float32"}
        if method not in NO_BASE:
            recipe["base_model"] = str(base)
        recipe["models"] = [{"model": str(m), "parameters": p} for m, p in zip(fts, per_model)]
        if params:
            recipe["parameters"] = params
        (out / f"{method}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    # the steps after trimming with 5 models (the order of their sum), and a normalized sum, which
    # mergekit divides by the weights summed as tensors: 0.7 - 0.4 is 0.29999998 in float32
    weights = (0.7, -0.4, 1.3, 0.2, 0.9)
    five = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(m), "parameters": {"weight": w, "density": 0.6}} for m, w in zip(fts, weights)]}
    (out / "ties_five_models.yaml").write_text(yaml.safe_dump(five, sort_keys=False))
    normalized = {"merge_method": "breadcrumbs", "base_model": str(base), "dtype": "float32",
                  "parameters": {"normalize": True},
                  "models": [{"model": str(m), "parameters": {"weight": w, "density": 0.8}}
                             for m, w in zip(fts, weights[:2])]}
    (out / "breadcrumbs_normalized.yaml").write_text(yaml.safe_dump(normalized, sort_keys=False))
    slices = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(fts[0]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(fts[1]), "layer_range": [1, 2]}]},
    ]}
    (out / "passthrough_slices.yaml").write_text(yaml.safe_dump(slices, sort_keys=False))
    gradient = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                "models": [{"model": str(fts[0]), "parameters": {"weight": [
                    {"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.5}]}},
                    {"model": str(fts[1]), "parameters": {"weight": 0.3}}]}
    (out / "task_arithmetic_gradient_filter.yaml").write_text(yaml.safe_dump(gradient, sort_keys=False))
    chat, adapter = chat_variant(fts[1], out / "models" / "chat"), lora_adapter(fts[0], out / "models" / "lora")
    union = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
             "tokenizer_source": "union", "models": [{"model": f"{fts[0]}+{adapter}", "parameters": {"weight": 0.6}},
                                                     {"model": str(chat), "parameters": {"weight": 0.4}}]}
    (out / "task_arithmetic_union_lora.yaml").write_text(yaml.safe_dump(union, sort_keys=False))
    if evolve_python:
        subprocess.run([evolve_python, "-c", EVOLVE_SNIPPET, str(base), *map(str, fts),
                        str(out / "task_arithmetic_evolve_best_config.yaml")], check=True)


def chat_variant(model_dir: Path, out: Path) -> Path:
    """A copy whose tokenizer adds two chat tokens (embedding rows resized), as chat fine-tunes do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lora_adapter(model_dir: Path, out: Path) -> Path:
    """A random (non-zero) PEFT LoRA adapter for the model's attention projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[int, int, float, float]:
    common = sorted(set(a) & set(b))
    identical, max_abs, max_rel = 0, 0.0, 0.0
    for name in common:
        x, y = a[name].double(), b[name].double()
        if x.shape != y.shape:
            max_abs = max_rel = float("inf")
            continue
        identical += int(torch.equal(a[name], b[name]))
        diff = (x - y).abs()
        max_abs = max(max_abs, float(diff.max()) if diff.numel() else 0.0)
        scale = float(y.abs().max()) if y.numel() else 0.0
        max_rel = max(max_rel, float(diff.max()) / scale if scale > 0 else float(diff.max()) if diff.numel() else 0.0)
    return len(common), identical, max_abs, max_rel


def run(recipe: Path, mergekit: str | None, work: Path) -> str:
    ours = work / f"{recipe.stem}-evo"
    done = subprocess.run([sys.executable, "-m", "evo_merge", "merge", str(recipe), "--out", str(ours)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"| {recipe.stem} | evo-merge failed: {done.stderr.strip().splitlines()[-1]} | | | |"
    if mergekit is None:
        return f"| {recipe.stem} | {len(tensors(ours))} (evo-merge only) | | | |"
    theirs = work / f"{recipe.stem}-mk"
    done = subprocess.run([mergekit, str(recipe), str(theirs), "--quiet", "--random-seed", "0",
                           "--lora-merge-cache", str(work / "lora-cache")],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"| {recipe.stem} | mergekit failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]} | | | |"
    n, same, max_abs, max_rel = compare(tensors(ours), tensors(theirs))
    return f"| {recipe.stem} | {n} | {same} | {max_abs:.2e} | {max_rel:.2e} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", type=Path, nargs="?")
    parser.add_argument("--make-recipes", type=Path, help="write a tiny model family and recipes here, then stop")
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="mergekit-yaml executable")
    parser.add_argument("--evolve-python", help="with --make-recipes: a Python with mergekit (its evolve module) to "
                        "write a best_config.yaml as mergekit-evolve saves it")
    args = parser.parse_args()
    if args.make_recipes:
        make_recipes(args.make_recipes, args.evolve_python)
        return
    if args.recipes is None:
        parser.error("give RECIPES_DIR or --make-recipes DIR")
    print("| recipe | tensors compared | bit-identical | max abs diff | max rel diff |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for recipe in sorted(args.recipes.glob("*.yaml")):
            print(run(recipe, args.mergekit, Path(work)), flush=True)


if __name__ == "__main__":
    main()
