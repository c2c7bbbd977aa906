"""Permutation specs: which axis of which parameter belongs to which permutation group.

A spec is the single source of truth for the symmetries of an architecture. Every matcher
reads it, and `apply_permutation` is the only place that moves units around, so a spec that
passes the invariance check (permuted model, same outputs) makes every matcher safe.

Conventions: a permutation is an index array `perm` with ``aligned = t.index_select(axis,
perm)``: unit i of the aligned model is unit ``perm[i]`` of the original. Fused tensors (GPT-2
``c_attn``) are split into parts named ``"<param>#<part>"`` before anything else and re-fused
at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from evo_merge.errors import UserError
from evo_merge.schema import Strict, load_yaml, validate

Perms = dict[str, np.ndarray]
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Group:
    """One permutation group.

    `blocks` > 1 splits the group into that many equal blocks (attention heads, GroupNorm
    groups): a permutation moves whole blocks and, if `within`, units inside each block.
    Groups with the same `tie` share their block permutation (Q/K and V/O of one attention
    layer move heads together). `hooks` name where the group's activations are read:
    ``"module"`` (output), ``"module:in"`` (first input), optionally sliced on the channel axis
    with ``"module[start:stop]"``.
    """

    blocks: int = 1
    within: bool = True
    tie: str | None = None
    hooks: tuple[str, ...] = ()


@dataclass
class PermSpec:
    """Per parameter, one group name (or None) per axis; plus group options and fused tensors."""

    axes: dict[str, tuple[str | None, ...]]
    groups: dict[str, Group] = field(default_factory=dict)
    fused: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    in_axis: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.index:
            self.groups.setdefault(name, Group())

    @cached_property
    def index(self) -> dict[str, list[tuple[str, int]]]:
        """The inverse index: group -> every (parameter, axis) it permutes."""
        out: dict[str, list[tuple[str, int]]] = {}
        for param, axes in self.axes.items():
            for axis, group in enumerate(axes):
                if group is not None:
                    out.setdefault(group, []).append((param, axis))
        return out

    @cached_property
    def grouped(self) -> set[str]:
        """Parameters with at least one permuted axis."""
        return {name for name, axes in self.axes.items() if any(a is not None for a in axes)}

    @cached_property
    def units(self) -> list[list[str]]:
        """Groups that must be solved together (same `tie`), in spec order."""
        units: dict[str, list[str]] = {}
        for name in self.index:
            units.setdefault(self.groups[name].tie or f"\0{name}", []).append(name)
        return list(units.values())

    def input_axis(self, param: str, ndim: int) -> int | None:
        """The axis reading a group's units (for zipping); default: axis 1 of a matrix."""
        if param in self.in_axis:
            return self.in_axis[param]
        return 1 if ndim >= 2 else None

    # -- fused tensors -------------------------------------------------------------------
    def split(self, state: Mapping[str, torch.Tensor]) -> State:
        """Replace every fused tensor by its equal parts."""
        out: State = {}
        for name, tensor in state.items():
            if name in self.fused:
                axis, parts = self.fused[name]
                if tensor.shape[axis] % len(parts):
                    raise UserError(
                        f"fused parameter {name}: axis {axis} of size {tensor.shape[axis]} "
                        f"does not split into {len(parts)} parts"
                    )
                for part, piece in zip(parts, tensor.chunk(len(parts), dim=axis)):
                    out[f"{name}#{part}"] = piece
            else:
                out[name] = tensor
        return out

    def fuse(self, state: Mapping[str, torch.Tensor]) -> State:
        """Inverse of `split`."""
        out: State = {}
        for name, tensor in state.items():
            base = name.split("#")[0]
            if base in self.fused:
                if base not in out:
                    axis, parts = self.fused[base]
                    out[base] = torch.cat([state[f"{base}#{p}"] for p in parts], dim=axis)
            else:
                out[name] = tensor
        return out

    # -- checks ----------------------------------------------------------------------------
    def sizes(self, split_state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Group sizes, after checking that the spec covers `split_state` exactly."""
        for name, tensor in split_state.items():
            if name not in self.axes:
                raise UserError(f"permutation spec does not cover parameter {name}")
            if len(self.axes[name]) != tensor.ndim:
                raise UserError(
                    f"permutation spec gives {len(self.axes[name])} axes for parameter {name}, "
                    f"which has {tensor.ndim} (shape {tuple(tensor.shape)})"
                )
        for name in self.axes:
            if name not in split_state:
                raise UserError(f"parameter {name} named in the permutation spec is not in the model")
        sizes: dict[str, int] = {}
        first: dict[str, str] = {}
        for group, members in self.index.items():
            for param, axis in members:
                size = split_state[param].shape[axis]
                if group not in sizes:
                    sizes[group], first[group] = size, f"{param} axis {axis}"
                elif size != sizes[group]:
                    raise UserError(
                        f"parameter {param} axis {axis} has size {size} but group {group} has "
                        f"size {sizes[group]} ({first[group]})"
                    )
            blocks = self.groups[group].blocks
            if sizes[group] % blocks:
                raise UserError(f"group {group} of size {sizes[group]} does not split into {blocks} blocks")
        for unit in self.units:  # one block permutation serves them all: the first one's count was used
            if len({self.groups[g].blocks for g in unit}) > 1:
                counts = ", ".join(f"{g}: {self.groups[g].blocks}" for g in unit)
                raise UserError(f"groups tied as {self.groups[unit[0]].tie!r} split into different numbers of "
                                f"blocks ({counts}); tied groups move the same blocks")
        return sizes


def check_same_shapes(states: list[Mapping[str, torch.Tensor]], names: list[str]) -> None:
    """All models must share parameter names and shapes; name the first difference."""
    ref = states[0]
    for state, who in zip(states[1:], names[1:]):
        for name in [*ref, *(n for n in state if n not in ref)]:
            if name not in state or name not in ref:
                where = names[0] if name not in ref else who
                raise UserError(f"parameter {name} is missing from model {where}")
            if ref[name].shape != state[name].shape:
                raise UserError(
                    f"models differ at parameter {name}: shape {tuple(ref[name].shape)} in {names[0]} "
                    f"vs {tuple(state[name].shape)} in {who}"
                )


# -- permutations ------------------------------------------------------------------------
def permute_tensor(
    spec: PermSpec, name: str, tensor: torch.Tensor, perms: Perms, skip_axis: int | None = None
) -> torch.Tensor:
    """Apply `perms` to every grouped axis of one (split) parameter, except `skip_axis`."""
    for axis, group in enumerate(spec.axes[name]):
        if group is not None and axis != skip_axis and group in perms:
            tensor = tensor.index_select(axis, torch.as_tensor(perms[group], dtype=torch.long))
    return tensor


def apply_permutation(spec: PermSpec, state: Mapping[str, torch.Tensor], perms: Perms) -> State:
    """The state dict with every group's permutation applied (fused tensors handled)."""
    split = spec.split(state)
    spec.sizes(split)
    return spec.fuse({name: permute_tensor(spec, name, t, perms) for name, t in split.items()})


def identity(sizes: Mapping[str, int]) -> Perms:
    return {g: np.arange(n) for g, n in sizes.items()}


def compose(first: Perms, then: Perms) -> Perms:
    """The permutation `then` applied after `first` (index arrays compose as first[then])."""
    return {g: np.asarray(first[g])[np.asarray(then[g])] for g in first}


def inverse(perms: Perms) -> Perms:
    return {g: np.argsort(p) for g, p in perms.items()}


def random_permutation(spec: PermSpec, sizes: Mapping[str, int], rng: np.random.Generator) -> Perms:
    """A random permutation that respects block structure, `within` and ties."""
    perms: Perms = {}
    for unit in spec.units:
        blocks = spec.groups[unit[0]].blocks
        block_perm = rng.permutation(blocks)
        for g in unit:
            size = sizes[g] // blocks
            inner = [rng.permutation(size) if spec.groups[g].within else np.arange(size) for _ in range(blocks)]
            perms[g] = np.concatenate([block_perm[b] * size + inner[b] for b in range(blocks)])
    return perms


# -- YAML ---------------------------------------------------------------------------------
def load_spec_yaml(path: str | Path) -> PermSpec:
    """A hand-written spec for a custom architecture.

    ```yaml
    params:            # parameter -> one group name or null per axis
      fc1.weight: [h1, null]
      fc1.bias: [h1]
      fc2.weight: [null, h1]
      fc2.bias: [null]
    groups:            # optional: blocks / within / tie / hooks per group
      h1: {hooks: ["fc2:in"]}
    fused: {}          # optional: param -> {axis: 1, parts: [q, k, v]}
    in_axis: {}        # optional: param -> axis that reads its input (null for embeddings)
    ```
    """
    path = Path(path)
    spec = validate(_SpecFile, load_yaml(path), path)
    fused = {name: (part.axis, tuple(part.parts)) for name, part in spec.fused.items()}
    groups = {name: Group(g.blocks, g.within, g.tie, tuple(g.hooks)) for name, g in spec.groups.items()}
    return PermSpec(axes={name: tuple(v) for name, v in spec.params.items()}, groups=groups, fused=fused,
                    in_axis=dict(spec.in_axis))


class _GroupFile(Strict):
    blocks: int = Field(1, ge=1)
    within: bool = True
    tie: str | None = None
    hooks: list[str] = []


class _FusedFile(Strict):
    axis: int = Field(ge=0)
    parts: list[str] = Field(min_length=2)


class _SpecFile(Strict):
    """What a spec file may hold, checked at the edge: `blocks: 0` was a ZeroDivisionError deep in
    the matching, `parts: qkv` the parts q, k and v."""

    params: dict[str, list[str | None]] = Field(min_length=1)
    groups: dict[str, _GroupFile] = {}
    fused: dict[str, _FusedFile] = {}
    in_axis: dict[str, int | None] = {}
