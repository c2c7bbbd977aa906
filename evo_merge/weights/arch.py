"""Architecture knowledge as data: one table per model family, read by name-based code.

Merging, MASS routing and alignment each need to know a few facts about a model by its tensor
names: which tensors are embeddings or the output head (kept out of singular-vector methods),
where the blocks are and which weight is the first one of a block's MLP (what MASS routes on),
and how to recognise the family from a config. Written once here, like mergekit's architecture
definitions, a new family is one more table instead of a regex edited in three modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """Tensor-name facts about one family: module paths from the model root, except `mlp` (a
    block's MLP module, "" when the block holds the MLP weights itself) and `mlp_inputs`."""

    name: str
    model_types: tuple[str, ...] = ()  # HF config `model_type` values; empty for the plain nets
    embeddings: tuple[str, ...] = ()  # token (and position) embedding modules
    positions: tuple[str, ...] = ()  # the position embeddings among them (no row per token)
    before_blocks: tuple[str, ...] = ()  # other modules the embeddings feed before block 0 (a norm, a projection)
    head: tuple[str, ...] = ()  # the output head (LM head or classifier)
    blocks: str = ""  # the module list holding the numbered blocks
    mlp: str = "mlp"
    mlp_inputs: tuple[str, ...] = ()  # the MLP's first weight(s), in order of preference

    @property
    def is_hf(self) -> bool:
        return bool(self.model_types)


LLAMA = Architecture(
    "llama", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "smollm3"),
    embeddings=("model.embed_tokens",), head=("lm_head",), blocks="model.layers", mlp_inputs=("gate_proj", "up_proj"),
)
GPT2 = Architecture("gpt2", ("gpt2",), embeddings=("transformer.wte", "transformer.wpe"),
                    positions=("transformer.wpe",), head=("lm_head",), blocks="transformer.h", mlp_inputs=("c_fc",))
GPT_NEOX = Architecture("gpt_neox", ("gpt_neox",), embeddings=("gpt_neox.embed_in",), head=("embed_out",),
                        blocks="gpt_neox.layers", mlp_inputs=("dense_h_to_4h",))
GPTJ = Architecture("gptj", ("gptj",), embeddings=("transformer.wte",), head=("lm_head",), blocks="transformer.h",
                    mlp_inputs=("fc_in",))
PHI = Architecture("phi", ("phi",), embeddings=("model.embed_tokens",), head=("lm_head",), blocks="model.layers",
                   mlp_inputs=("fc1",))
# Phi-3 fuses the MLP's gate and up projections: gate_up_proj reads the MLP input, as gate_proj does
PHI3 = Architecture("phi3", ("phi3",), embeddings=("model.embed_tokens",), head=("lm_head",), blocks="model.layers",
                    mlp_inputs=("gate_up_proj",))
FALCON = Architecture("falcon", ("falcon", "bloom"), embeddings=("transformer.word_embeddings",), head=("lm_head",),
                      before_blocks=("transformer.word_embeddings_layernorm",),  # BLOOM's embedding norm
                      blocks="transformer.h", mlp_inputs=("dense_h_to_4h",))
OPT = Architecture("opt", ("opt",), embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
                   positions=("model.decoder.embed_positions",), head=("lm_head",), blocks="model.decoder.layers",
                   before_blocks=("model.decoder.project_in",),  # opt-350m's projection of the embeddings
                   mlp="", mlp_inputs=("fc1",))
MLP = Architecture("mlp", blocks="fcs")  # its classifier head is the last of `fcs`
CNN = Architecture("cnn", head=("head",), blocks="convs")
RESNET = Architecture("resnet", head=("head",), blocks="blocks")

ARCHITECTURES: tuple[Architecture, ...] = (LLAMA, GPT2, GPT_NEOX, GPTJ, PHI, PHI3, FALCON, OPT, MLP, CNN, RESNET)
HF_ARCHS: tuple[Architecture, ...] = tuple(a for a in ARCHITECTURES if a.is_hf)


def _last(path: str) -> str:
    return path.rpartition(".")[2]


def _alternatives(names: set[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names))


# The modules' own names (the path's last component) of every HF family, each kind once: the
# merge's slices, tied heads and vocabularies read them from here, not from lists of their own.
TOKEN_EMBEDDINGS = frozenset(_last(m) for a in HF_ARCHS for m in a.embeddings if m not in a.positions)
POSITION_EMBEDDINGS = frozenset(_last(m) for a in HF_ARCHS for m in a.positions)
OUTPUT_HEADS = frozenset(_last(m) for a in HF_ARCHS for m in a.head)
BEFORE_BLOCKS = frozenset(_last(m) for a in HF_ARCHS for m in a.before_blocks)


def module_named(names: set[str] | frozenset[str]) -> re.Pattern[str]:
    """A tensor of one of these modules, matched by the module's own name so that a bare backbone
    (no `model.`) or a wrapped model (`base_model.model.`) is recognised too."""
    return re.compile(rf"(?:^|\.)(?:{_alternatives(set(names))})(?:\.|$)")


# kept out of singular-vector methods
EMBEDDING_NAME = module_named(TOKEN_EMBEDDINGS | POSITION_EMBEDDINGS | OUTPUT_HEADS)


def mlp_input_pattern(arch: Architecture) -> re.Pattern[str]:
    """`<prefix><last blocks component>.<layer>.[<mlp>.]<input>.weight`, with any prefix for the
    same reason as `module_named`."""
    block, inputs = re.escape(_last(arch.blocks)), _alternatives(set(arch.mlp_inputs))
    mlp = rf"{re.escape(arch.mlp)}\." if arch.mlp else ""
    return re.compile(rf"^(?:.*\.)?{block}\.(?P<layer>\d+)\.{mlp}(?P<proj>{inputs})\.weight$")


def hf_model_type(source: Mapping[str, Any] | Any) -> str | None:
    """The HF `model_type` of a config dict or of a module (its `.config`); None for anything
    else (a plain network, a bare state dict). The one test of "is this an HF model"."""
    if isinstance(source, Mapping):
        value = source.get("model_type")
    else:
        value = getattr(getattr(source, "config", None), "model_type", None)
    return value if isinstance(value, str) else None


def architecture_of(source: Mapping[str, Any] | Any) -> Architecture | None:
    """The table for a config dict or a module: by HF `model_type`, or by the plain nets'
    `arch` key (a module built by `weights.nets` carries it as `net_config`); None if unknown."""
    model_type = hf_model_type(source)
    if model_type is not None:
        return next((a for a in HF_ARCHS if model_type in a.model_types), None)
    config = source if isinstance(source, Mapping) else getattr(source, "net_config", None) or {}
    return next((a for a in ARCHITECTURES if not a.is_hf and a.name == config.get("arch")), None)

