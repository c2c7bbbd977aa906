"""Permutation specs for known layouts: MLP, CNN (BatchNorm / GroupNorm), residual net, and the
Hugging Face Llama and GPT-2 causal LMs.

Rules shared by all: the input axis of the first layer and the class/vocabulary axis of the
head are never permuted; every tensor that reads or writes a residual stream shares that
stream's permutation; attention heads move as blocks, Q/K and V/O tied to the same head order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from evo_merge.align.spec import Group, PermSpec, load_spec_yaml
from evo_merge.errors import UserError, did_you_mean
from evo_merge.weights.arch import CNN, GPT2, LLAMA, MLP, RESNET, architecture_of, hf_model_type


def _norm_params(prefix: str, kind: str | None, group: str) -> dict[str, tuple]:
    if kind == "bn":
        names = ("weight", "bias", "running_mean", "running_var")
        return {f"{prefix}.{n}": (group,) for n in names} | {f"{prefix}.num_batches_tracked": ()}
    if kind == "gn":
        return {f"{prefix}.weight": (group,), f"{prefix}.bias": (group,)}
    return {}


def _channel_group(config: Mapping[str, Any], hooks: tuple[str, ...]) -> Group:
    blocks = config.get("groups", 4) if config.get("norm", "bn") == "gn" else 1
    return Group(blocks=blocks, hooks=hooks)


def mlp_spec(config: Mapping[str, Any]) -> PermSpec:
    hidden = list(config.get("hidden", [512]))
    axes: dict[str, tuple] = {}
    groups = {}
    for i in range(len(hidden) + 1):
        out = f"h{i}" if i < len(hidden) else None
        axes[f"fcs.{i}.weight"] = (out, f"h{i - 1}" if i else None)
        axes[f"fcs.{i}.bias"] = (out,)
        if out:
            groups[out] = Group(hooks=(f"act.{i}",))
    return PermSpec(axes=axes, groups=groups)


def cnn_spec(config: Mapping[str, Any]) -> PermSpec:
    channels = list(config.get("channels", [16, 32]))
    norm = config.get("norm", "bn")
    axes: dict[str, tuple] = {}
    groups = {}
    for i in range(len(channels)):
        g = f"c{i}"
        axes[f"convs.{i}.weight"] = (g, f"c{i - 1}" if i else None, None, None)
        axes[f"convs.{i}.bias"] = (g,)
        axes |= _norm_params(f"norms.{i}", norm, g)
        hook = f"convs.{i + 1}:in" if i + 1 < len(channels) else "head:in"
        groups[g] = _channel_group(config, (hook,))
    axes["head.weight"] = (None, f"c{len(channels) - 1}")
    axes["head.bias"] = (None,)
    return PermSpec(axes=axes, groups=groups)


def resnet_spec(config: Mapping[str, Any]) -> PermSpec:
    norm = config.get("norm", "bn")
    n_blocks = config.get("blocks", 2)
    axes: dict[str, tuple] = {"stem.weight": ("res", None, None, None), "stem.bias": ("res",)}
    axes |= _norm_params("stem_norm", norm, "res")
    groups = {"res": _channel_group(config, tuple(f"blocks.{j}" for j in range(n_blocks)))}
    for j in range(n_blocks):
        p, g = f"blocks.{j}", f"b{j}"
        axes |= {f"{p}.c1.weight": (g, "res", None, None), f"{p}.c1.bias": (g,)}
        axes |= {f"{p}.c2.weight": ("res", g, None, None), f"{p}.c2.bias": ("res",)}
        axes |= _norm_params(f"{p}.n1", norm, g) | _norm_params(f"{p}.n2", norm, "res")
        groups[g] = _channel_group(config, (f"{p}.c2:in",))
    axes["head.weight"] = (None, "res")
    axes["head.bias"] = (None,)
    return PermSpec(axes=axes, groups=groups)


def llama_spec(config: Any, param_names: set[str]) -> PermSpec:
    """HF Llama. RoPE rotates fixed dimension pairs inside a head, so Q/K may only move whole
    heads (``within=False``); V/O may also permute dimensions inside a head."""
    heads = config.num_attention_heads
    if getattr(config, "num_key_value_heads", heads) != heads:
        raise UserError("llama: grouped-query attention (num_key_value_heads != num_attention_heads) is not supported")
    embed, blocks = f"{LLAMA.embeddings[0]}.weight", LLAMA.blocks
    axes: dict[str, tuple] = {embed: (None, "res"), "model.norm.weight": ("res",)}
    groups = {"res": Group(hooks=tuple(f"{blocks}.{i}" for i in range(config.num_hidden_layers)))}
    for i in range(config.num_hidden_layers):
        p, qk, vo, mlp = f"{blocks}.{i}", f"L{i}.qk", f"L{i}.vo", f"L{i}.mlp"
        attn = f"{p}.self_attn"
        axes |= {f"{attn}.q_proj.weight": (qk, "res"), f"{attn}.k_proj.weight": (qk, "res")}
        axes |= {f"{attn}.v_proj.weight": (vo, "res"), f"{attn}.o_proj.weight": ("res", vo)}
        axes |= {f"{attn}.{n}_proj.bias": (g,) for n, g in (("q", qk), ("k", qk), ("v", vo))}
        axes[f"{attn}.o_proj.bias"] = ("res",)
        axes |= {f"{p}.mlp.gate_proj.weight": (mlp, "res"), f"{p}.mlp.up_proj.weight": (mlp, "res")}
        axes |= {f"{p}.mlp.down_proj.weight": ("res", mlp), f"{p}.mlp.gate_proj.bias": (mlp,)}
        axes |= {f"{p}.mlp.up_proj.bias": (mlp,), f"{p}.mlp.down_proj.bias": ("res",)}
        axes |= {f"{p}.input_layernorm.weight": ("res",), f"{p}.post_attention_layernorm.weight": ("res",)}
        tie = f"L{i}.heads"
        groups[qk] = Group(heads, within=False, tie=tie, hooks=(f"{attn}.q_proj", f"{attn}.k_proj"))
        groups[vo] = Group(heads, tie=tie, hooks=(f"{attn}.v_proj",))
        groups[mlp] = Group(hooks=(f"{p}.mlp.down_proj:in",))
    axes[f"{LLAMA.head[0]}.weight"] = (None, "res")
    optional = {n for n in axes if n.endswith(".bias")}
    axes = {n: a for n, a in axes.items() if n not in optional or n in param_names}
    return PermSpec(axes=axes, groups=groups, in_axis={embed: None})


def gpt2_spec(config: Any) -> PermSpec:
    """HF GPT-2: Conv1D weights are (in, out); ``c_attn`` is fused QKV along axis 1."""
    h, heads = config.n_embd, config.n_head
    embeddings = [f"{m}.weight" for m in GPT2.embeddings]  # token and position embeddings
    axes: dict[str, tuple] = {
        **dict.fromkeys(embeddings, (None, "res")),
        "transformer.ln_f.weight": ("res",),
        "transformer.ln_f.bias": ("res",),
        f"{GPT2.head[0]}.weight": (None, "res"),
    }
    groups = {"res": Group(hooks=tuple(f"{GPT2.blocks}.{i}" for i in range(config.n_layer)))}
    fused, in_axis = {}, dict.fromkeys(embeddings)
    for i in range(config.n_layer):
        p, qk, vo, mlp = f"{GPT2.blocks}.{i}", f"L{i}.qk", f"L{i}.vo", f"L{i}.mlp"
        c_attn = f"{p}.attn.c_attn"
        fused[f"{c_attn}.weight"] = (1, ("q", "k", "v"))
        fused[f"{c_attn}.bias"] = (0, ("q", "k", "v"))
        axes |= {f"{c_attn}.weight#q": ("res", qk), f"{c_attn}.weight#k": ("res", qk)}
        axes[f"{c_attn}.weight#v"] = ("res", vo)
        axes |= {f"{c_attn}.bias#q": (qk,), f"{c_attn}.bias#k": (qk,), f"{c_attn}.bias#v": (vo,)}
        axes |= {f"{p}.attn.c_proj.weight": (vo, "res"), f"{p}.attn.c_proj.bias": ("res",)}
        axes |= {f"{p}.mlp.c_fc.weight": ("res", mlp), f"{p}.mlp.c_fc.bias": (mlp,)}
        axes |= {f"{p}.mlp.c_proj.weight": (mlp, "res"), f"{p}.mlp.c_proj.bias": ("res",)}
        for ln in ("ln_1", "ln_2"):
            axes |= {f"{p}.{ln}.weight": ("res",), f"{p}.{ln}.bias": ("res",)}
        for name in (f"{c_attn}.weight#q", f"{c_attn}.weight#k", f"{c_attn}.weight#v"):
            in_axis[name] = 0
        for name in (f"{p}.attn.c_proj.weight", f"{p}.mlp.c_fc.weight", f"{p}.mlp.c_proj.weight"):
            in_axis[name] = 0
        tie = f"L{i}.heads"
        groups[qk] = Group(heads, tie=tie, hooks=(f"{c_attn}[0:{h}]", f"{c_attn}[{h}:{2 * h}]"))
        groups[vo] = Group(heads, tie=tie, hooks=(f"{c_attn}[{2 * h}:{3 * h}]",))
        groups[mlp] = Group(hooks=(f"{p}.mlp.c_proj:in",))
    return PermSpec(axes=axes, groups=groups, fused=fused, in_axis=in_axis)


# the architectures (tables of `weights.arch`) with a built-in permutation spec, sized from the model
_BUILDERS: dict[str, Callable[[nn.Module], PermSpec]] = {
    MLP.name: lambda model: mlp_spec(model.net_config),
    CNN.name: lambda model: cnn_spec(model.net_config),
    RESNET.name: lambda model: resnet_spec(model.net_config),
    LLAMA.name: lambda model: llama_spec(model.config, set(model.state_dict())),
    GPT2.name: lambda model: gpt2_spec(model.config),
}
ARCHS = tuple(_BUILDERS)
# the HF model types whose every tensor a built-in spec moves (its table's other types add tensors it
# does not know: qwen3's and olmo2's per-head q/k norms, gemma2's extra block norms, olmo's
# weightless norms), checked on logits against the unaligned model
SPEC_MODEL_TYPES = {LLAMA.name: ("llama", "mistral", "qwen2", "gemma", "smollm3"), GPT2.name: ("gpt2",)}


def check_arch(arch: str, source: Any, key: str = "--arch") -> None:
    """`arch` is a .yaml spec, or a built-in one that matches `source` (a config dict or a module);
    errors name `key`, the option or campaign key it came from."""
    if arch in ARCHS:
        found = architecture_of(source)
        if found is None or found.name != arch:
            described = "no architecture we know" if found is None else f"architecture {found.name!r}"
            raise UserError(f"{key} {arch} does not match the model's config.json ({described})")
        model_type = hf_model_type(source)
        if model_type is not None and model_type not in SPEC_MODEL_TYPES.get(arch, (model_type,)):
            raise UserError(f"{key} {arch}: its permutation spec covers model types "
                            f"{', '.join(SPEC_MODEL_TYPES[arch])}, not {model_type!r}, whose tensors it does not all "
                            "move; write a .yaml spec for it (docs/zoos.md)")
    elif Path(arch).suffix not in (".yaml", ".yml"):
        raise UserError(f"{key} {arch!r} is not one of {', '.join(ARCHS)} or a .yaml spec{did_you_mean(arch, ARCHS)}")
    else:  # there and well formed, before any model is read: `plan` said "fits" of a spec that was missing
        try:
            load_spec_yaml(arch)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None


def spec_for(arch: str, model: nn.Module, key: str = "--arch") -> PermSpec:
    """The spec for `arch` (a built-in name or a YAML path), sized from `model`."""
    check_arch(arch, model, key)
    return _BUILDERS[arch](model) if arch in ARCHS else load_spec_yaml(arch)
