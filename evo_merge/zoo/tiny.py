"""Tiny randomly initialised HF causal LMs (Llama- and GPT-2-style) for tests and the zoo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from evo_merge.weights.export import save_safetensors
from evo_merge.weights.folder import save_model_folder
from evo_merge.zoo.tokenizer import build_char_tokenizer

ARCHS = ("llama", "gpt2")


def make_tiny_causal_lm(
    arch: str = "llama",
    *,
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> PreTrainedModel:
    """A small causal LM with seeded random weights (float32)."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")
    return model.eval()


def save_tiny_family(
    out: str | Path, arch: str = "llama", n_finetunes: int = 2, noise: float = 0.02, seed: int = 0
) -> tuple[Path, list[Path]]:
    """A base and `n_finetunes` perturbed copies saved as HF folders with a tokenizer.

    The perturbations stand in for fine-tuning: enough for I/O and merge tests, where what
    matters is that endpoints share names and shapes and differ from the base.
    """
    out = Path(out)
    tokenizer = build_char_tokenizer()
    base = make_tiny_causal_lm(arch, vocab_size=len(tokenizer), seed=seed)
    paths = []
    for i in range(n_finetunes + 1):
        model = base if i == 0 else _perturbed(base, noise, seed=seed * 1000 + i)
        path = out / ("base" if i == 0 else f"ft{i}")
        save_model_folder(path, model, tokenizer, overwrite=True)
        paths.append(path)
    return paths[0], paths[1:]


def _perturbed(model: PreTrainedModel, noise: float, seed: int) -> PreTrainedModel:
    clone = type(model)(model.config)
    gen = torch.Generator().manual_seed(seed)
    state = {k: v + noise * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    clone.load_state_dict(state)
    return clone.eval()


def tie_embeddings(folder: str | Path, out: str | Path, *, store_head: bool = False) -> Path:
    """A copy of a tiny model folder as a tied-embedding checkpoint, as Llama-3.2-1B/3B and Qwen2.5
    ship: `tie_word_embeddings: true` and no `lm_head.weight` stored (`store_head`: a copy of the
    embedding stored under that name, as some trainers save tied models)."""
    folder, out = Path(folder), Path(out)
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}, indent=2))
    weights = {}
    for file in sorted(out.glob("*.safetensors")):
        weights.update(load_file(file))
        file.unlink()
    del weights["lm_head.weight"]
    if store_head:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_safetensors(weights, out / "model.safetensors")
    return out
