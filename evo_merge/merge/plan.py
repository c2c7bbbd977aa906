"""From a recipe to merged tensors, streamed one tensor at a time.

Planning opens every checkpoint's headers only, turns the recipe (whole models or slices) into
one job per output tensor (which tensor of which model is the reference, which are merged, and
the parameters evaluated for that tensor), and checks shapes, so a bad recipe fails before any
weights are read. Streaming then keeps about one tensor per input in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evo_merge.errors import UserError
from evo_merge.merge import layers
from evo_merge.merge.methods import INT8_MASK
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.registry import WEIGHT, Hyperparameter, MergeMethod, get_method, list_methods
from evo_merge.merge.settings import MISSING, layer_position, lookup
from evo_merge.merge.tokens import TokenPlan, is_vocabulary, plan_tokens
from evo_merge.weights import Checkpoint, heads, parse_dtype
from evo_merge.weights.compat import castable, check_architectures, check_vocabularies
from evo_merge.weights.dtypes import dtype_name
from evo_merge.weights.references import ModelRef, open_reference, resolve_reference

log = logging.getLogger(__name__)
# how to merge models of other vocabularies, where their embeddings' rows would be merged as they are
TOKENIZER_HINT = "; a `tokenizer_source` (union, base, model:NAME) merges such models row by token"

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# config lists with one entry per layer (transformers checks their length against the layer count):
# a stack of slices takes each output layer's entry from the layer it copies
PER_LAYER_KEYS = ("layer_types", "mlp_layer_types", "no_rope_layers", "num_attention_heads_per_layer")
# config keys that choose layers by index in a way an output list cannot restate (`_dense_layers`)
INDEXED_LAYER_KEYS = ("first_k_dense_replace", "moe_layer_freq")
# mergekit keys every method accepts, changing no tensor here: int8_mask only picks the dtype of
# mergekit's intermediate sign masks (methods that mask declare it, so the search knows it)
ANY_METHOD = {INT8_MASK.name: INT8_MASK}


@dataclass(frozen=True)
class Entry:
    """One input of a merge group: a model, its parameters and where the recipe says so."""

    model: int
    params: dict[str, Any]
    key: str
    layers: tuple[int, int] | None = None


@dataclass(frozen=True)
class Group:
    """The inputs merged together: the whole recipe (`models:`) or one slice."""

    reference: Entry | None  # None: zeros (a method whose base is optional, and none is named)
    endpoints: list[Entry]
    levels: list[tuple[str, dict[str, Any]]]  # (key path, settings) below the entries: slice, then recipe

    @property
    def settings(self) -> list[dict[str, Any]]:
        return [settings for _, settings in self.levels]


@dataclass
class TensorJob:
    name: str
    reference: tuple[int, str] | None  # (model, tensor name)
    inputs: list[tuple[int, str]]
    weights: list[float]
    params: dict[str, Any]


@dataclass
class MergePlan:
    """A validated recipe: references resolved, one job per output tensor."""

    method: MergeMethod
    refs: list[ModelRef]
    jobs: list[TensorJob]
    source_recipe: Recipe
    dtype: torch.dtype  # computation
    out_dtype: torch.dtype | None  # None: keep each tensor's stored dtype
    donor: int  # the model whose config and tokenizer files the output starts from
    config: dict[str, Any] = field(default_factory=dict)  # config.json overrides
    tokens: TokenPlan | None = None
    allow_pickle: bool = False
    names: dict[str, str] = field(default_factory=dict)  # recipe reference -> resolved name

    @property
    def donor_path(self) -> Path:
        return self.refs[self.donor].path

    def recipe(self) -> Recipe:
        """The recipe that rebuilds this merge: references resolved (absolute folders, Hub ids
        with their commit), defaults written out (a per-model one, such as `weight: 1`, at the top,
        where a model's lookup falls through to it: mergekit requires a weight, so the recipe left it
        unreadable there), dtypes explicit where one was given (none given means float32
        computation with each tensor written in its stored dtype, which only leaving them out says
        again)."""
        data = self.source_recipe.model_dump(exclude_none=True, mode="json")
        _rename_models(data, self.names)
        top = data.setdefault("parameters", {})
        entries = data.get("models") or [source for out in data.get("slices") or [] for source in out["sources"]]
        defaults = [(hp.name, hp.default, hp.per_model) for hp in self.method.hyperparameters if not hp.required]
        for name, default, per_model in [*defaults, *([(WEIGHT, 1.0, True)] if self.method.uses_weights else [])]:
            if name not in top and (not per_model or any(name not in (e.get("parameters") or {}) for e in entries)):
                top[name] = default
        if self.out_dtype is not None:
            data["dtype"], data["out_dtype"] = dtype_name(self.dtype), dtype_name(self.out_dtype)
        return Recipe.model_validate(data)

    def open(self) -> list[Checkpoint]:
        return [open_reference(r, self.allow_pickle) for r in self.refs]


def _rename_models(data: dict, names: dict[str, str]) -> None:
    if "base_model" in data:
        data["base_model"] = names[data["base_model"]]
    for entry in data.get("models") or []:
        entry["model"] = names[entry["model"]]
    for out in data.get("slices") or []:
        if "base_model" in out:
            out["base_model"] = names[out["base_model"]]
        for src in out["sources"]:
            src["model"] = names[src["model"]]
    tokenizer = data.get("tokenizer") or {}
    for token in (tokenizer.get("tokens") or {}).values():
        source = token.get("source")
        if isinstance(source, str) and source in names:
            token["source"] = names[source]
        elif isinstance(source, dict) and source.get("model") in names:
            source["model"] = names[source["model"]]
    if "tokenizer_source" in data:
        data["tokenizer_source"] = _renamed_source(data["tokenizer_source"], names)
    if "source" in tokenizer:
        tokenizer["source"] = _renamed_source(tokenizer["source"], names)


def _renamed_source(value: str, names: dict[str, str]) -> str:
    """A tokenizer source with its model resolved; `model:` stays, so the saved recipe reads as written."""
    prefix = "model:" if value.startswith("model:") else ""
    name = value.removeprefix(prefix)
    return prefix + names[name] if name in names else value


def plan_from_recipe(
    recipe: Recipe, root: Path = Path("."), dtype: str | None = None, source: str | Path | None = None,
    *, allow_pickle: bool = False,
) -> MergePlan:
    """Resolve a recipe. Relative paths are taken against `root` (the recipe's folder), then the CWD.

    `source` (the recipe file) prefixes error messages."""
    try:
        return _plan(recipe, root, dtype, allow_pickle)
    except UserError as exc:
        raise UserError(f"{source}: {exc}" if source else str(exc)) from None


def _resolve_all(recipe: Recipe, root: Path) -> tuple[list[ModelRef], dict[str, int]]:
    """Resolve each distinct reference once; references naming the same model share an index."""
    keys = [("base_model", recipe.base_model)] if recipe.base_model else []
    keys += [(f"models.{i}.model", e.model) for i, e in enumerate(recipe.models or [])]
    for s, out in enumerate(recipe.slices or []):
        keys += [(f"slices.{s}.base_model", out.base_model)] if out.base_model else []
        keys += [(f"slices.{s}.sources.{j}.model", src.model) for j, src in enumerate(out.sources)]
    refs: list[ModelRef] = []
    index: dict[str, int] = {}
    for key, value in keys:
        if value not in index:
            ref = resolve_reference(value, root, key)
            index[value] = next((i for i, r in enumerate(refs) if r.name == ref.name), len(refs))
            if index[value] == len(refs):
                refs.append(ref)
    return refs, index


def _group(method: MergeMethod, base: int | None, entries: list[Entry], levels: list[tuple[str, dict]],
           where: str) -> Group:
    """Split a group's entries into the reference and the endpoints, by the method's base mode."""
    if base is not None:
        # mergekit: a listed base is not an endpoint, except in an average of every listed model (its
        # task vector is 0 there, so it adds its weight to the divisor only)
        endpoints = entries if method.base == "averaged" else [e for e in entries if e.model != base]
        ref_entry = next((e for e in entries if e.model == base), Entry(base, {}, "base_model"))
        return Group(ref_entry, endpoints, levels)
    if method.base == "required":
        raise UserError(f"{where}base_model: required by method {method.name}")
    if method.base == "first":
        return Group(entries[0], entries[1:], levels)
    return Group(None, entries, levels)


def _check_keys(method: MergeMethod, group: Group, anywhere: set[str]) -> list[str]:
    """Every parameter name is one the method declares, at a level where it can apply. A name
    another method declares (`normalize` on model_stock, a per-model `lambda`), which mergekit
    ignores, is ignored with a line saying so (published recipes carry them); any other name is
    refused (a typo would otherwise change nothing, silently). `anywhere`: every method's names."""
    declared = {h.name for h in method.hyperparameters} | {WEIGHT}
    per_model = {h.name for h in method.hyperparameters if h.per_model} | {WEIGHT}
    ignored = []
    for entry in group.endpoints:
        for key in entry.params:
            where = f"{entry.key.rsplit('.', 1)[0]}.parameters.{key}"
            if key in per_model:
                _check_anchors(method.hyperparameter(key), entry.params[key], where)
                continue
            if key not in anywhere:
                raise UserError(f"{where}: not a per-model parameter of method {method.name} "
                                f"(per-model: {', '.join(sorted(per_model))})")
            ignored.append(f"{where}: ignored, not a per-model parameter of method {method.name} (as mergekit does)")
    levels = [(group.reference.key.rsplit(".", 1)[0] + ".parameters", group.reference.params)] \
        if group.reference else []
    for where, settings in [*levels, *group.levels]:
        for key, value in settings.items():
            if key in ANY_METHOD and key not in declared:
                ANY_METHOD[key].coerce(value, f"{where}.{key}")
            elif key in anywhere and key not in declared:
                ignored.append(f"{where}.{key}: ignored, method {method.name} does not use it (as mergekit does)")
            elif key not in declared:
                known = ", ".join(sorted(declared))
                raise UserError(f"{where}.{key}: unknown parameter for method {method.name} (known: {known})")
            else:
                _check_anchors(method.hyperparameter(key), value, f"{where}.{key}")
    return ignored


def _check_anchors(hp: Hyperparameter | None, setting: Any, where: str) -> None:
    """A parameter's value, each anchor of a gradient and each filtered value, as its parameter
    takes it (`hp` None: a weight, any finite number), named by its key: a tensor checks what it
    reads, but one no layer reaches was merged without a word and written into the output's recipe
    as given, and a per-model value out of range was named `parameters.density` there."""
    if not isinstance(setting, list):
        if hp is not None:
            hp.coerce(setting, where)
        return
    for i, anchor in enumerate(setting):
        if isinstance(anchor, dict):
            _check_anchors(hp, anchor.get("value"), f"{where}.{i}.value")
        elif isinstance(anchor, list):
            _check_anchors(hp, anchor, f"{where}.{i}")
        elif hp is not None:
            hp.coerce(anchor, f"{where}.{i}")
        elif isinstance(anchor, bool) or not isinstance(anchor, (int, float)) or not math.isfinite(anchor):
            raise UserError(f"{where}.{i}: expected a finite number, got {anchor!r}")


def _job(method: MergeMethod, group: Group, out_name: str, names: Sequence[str], ref_name: str,
         t: float) -> TensorJob:
    """One output tensor: `names[i]` is the tensor of endpoint i, `ref_name` the reference's."""
    ref_levels = [group.reference.params] if group.reference is not None else []
    top: dict[str, Any] = {}
    for hp in method.hyperparameters:
        if hp.per_model:
            values = [lookup(hp.name, [e.params, *group.settings], n, t) for e, n in zip(group.endpoints, names)]
            if any(v is not MISSING for v in values):
                top[hp.name] = [hp.default if v is MISSING else v for v in values]
        else:
            value = lookup(hp.name, [*ref_levels, *group.settings], out_name, t)
            if value is not MISSING:
                top[hp.name] = value
    weights = []
    for e, n in zip(group.endpoints, names):
        levels = [e.params, *group.settings]
        weight = lookup(WEIGHT, levels, n, t)
        if weight is MISSING and any(WEIGHT in level for level in levels):  # filters, none for this tensor
            raise UserError(f"{e.key.rsplit('.', 1)[0]}: no weight entry applies to tensor {n}; end each filtered "
                            "weight list with an entry without `filter` (mergekit refuses such a recipe too)")
        weight = 1.0 if weight is MISSING else weight  # no weight given anywhere: 1
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UserError(f"{e.key.rsplit('.', 1)[0]}.parameters.weight: expected a number, got {weight!r}")
        weights.append(float(weight))
    params = method.resolve(top, len(group.endpoints))
    if method.check is not None and (why := method.check(weights, params)) is not None:
        raise UserError(f"{method.name}: tensor {out_name}: {why}")
    reference = (group.reference.model, ref_name) if group.reference is not None else None
    return TensorJob(out_name, reference, [(e.model, n) for e, n in zip(group.endpoints, names)], weights, params)


def _model_groups(recipe: Recipe, method: MergeMethod, index: dict[str, int]) -> list[Group]:
    entries = [Entry(index[e.model], dict(e.parameters), f"models.{i}.model") for i, e in enumerate(recipe.models)]
    base = index[recipe.base_model] if recipe.base_model else None
    return [_group(method, base, entries, [("parameters", recipe.parameters)], "")]


def _slice_groups(recipe: Recipe, method: MergeMethod, index: dict[str, int], counts: list[int]) -> list[Group]:
    groups = []
    for s, out in enumerate(recipe.slices):
        entries = []
        for j, src in enumerate(out.sources):
            key = f"slices.{s}.sources.{j}"
            model = index[src.model]
            if src.layer_range[1] > counts[model]:
                raise UserError(f"{key}.layer_range: {list(src.layer_range)} is outside the {counts[model]} "
                                f"layers of {src.model}")
            entries.append(Entry(model, dict(src.parameters), f"{key}.model", src.layer_range))
        lengths = {e.layers[1] - e.layers[0] for e in entries}
        if len(lengths) > 1:
            raise UserError(f"slices.{s}.sources: layer ranges differ in length ({sorted(lengths)})")
        base_name = out.base_model or recipe.base_model
        base = index[base_name] if base_name else None
        if base is not None and base not in [e.model for e in entries]:
            if method.base != "first":  # the base's blocks for the slice are those of a listed source
                raise UserError(f"slices.{s}.sources: the base model {base_name} must be one of the slice's "
                                "sources (with its layer_range), or leave base_model out")
            base = None  # passthrough, karcher: the first source leads, as mergekit does
        levels = [(f"slices.{s}.parameters", out.parameters), ("parameters", recipe.parameters)]
        groups.append(_group(method, base, entries, levels, f"slices.{s}."))
    return groups


def _one_stack(checkpoint: Checkpoint, ref: ModelRef) -> int:
    """The blocks a slice's `layer_range` counts; refused for a checkpoint with two stacks (a
    vision tower beside the decoder), where a range would not say which it cuts."""
    sizes = layers.stack_sizes(checkpoint.names)
    if len(sizes) > 1:
        stacks = ", ".join(f"{stem} ({n} blocks)" for stem, n in sizes.items())
        raise UserError(f"slices: {ref.name} has more than one stack of blocks ({stacks}); "
                        "merge it whole (`models:`), not by slices")
    return max(sizes.values(), default=0)


def _entry_of(group: Group) -> Entry:
    return group.reference if group.reference is not None else group.endpoints[0]


def _model_jobs(method: MergeMethod, group: Group, checkpoints: list[Checkpoint]) -> list[TensorJob]:
    first = heads.merged_names(checkpoints[_entry_of(group).model])
    sizes = layers.stack_sizes(first)
    jobs = []
    for name in first:
        parsed = layers.parse(name)
        t = layer_position(parsed.index, sizes[parsed.stem]) if parsed else layer_position(None, 0)
        jobs.append(_job(method, group, name, [name] * len(group.endpoints), name, t))
    return jobs


def _slice_jobs(method: MergeMethod, groups: list[Group], checkpoints: list[Checkpoint]) -> list[TensorJob]:
    """Pre-layer tensors from the first slice, its layers renumbered in order, the rest from the last."""
    outside = [n for n in heads.merged_names(checkpoints[_entry_of(groups[0]).model]) if layers.parse(n) is None]
    jobs = [_job(method, groups[0], n, [n] * len(groups[0].endpoints), n, 0.0)
            for n in outside if layers.is_pre_layer(n)]
    out_index = 0
    for group in groups:
        lead = _entry_of(group)
        start, end = lead.layers
        for offset in range(end - start):
            t = layer_position(offset, end - start)
            for tensor in layers.layer_tensors(heads.merged_names(checkpoints[lead.model]), start + offset):
                names = [tensor.at(e.layers[0] + offset) for e in group.endpoints]
                jobs.append(_job(method, group, tensor.at(out_index), names, tensor.at(start + offset), t))
            out_index += 1
    last = groups[-1]
    jobs += [_job(method, last, n, [n] * len(last.endpoints), n, 0.0) for n in outside if not layers.is_pre_layer(n)]
    return jobs


def _plan(recipe: Recipe, root: Path, dtype: str | None, allow_pickle: bool) -> MergePlan:
    method = get_method(recipe.merge_method)
    refs, index = _resolve_all(recipe, root)
    checkpoints = [open_reference(r, allow_pickle) for r in refs]
    try:
        check_architectures(checkpoints)
        if recipe.slices is not None:
            groups = _slice_groups(recipe, method, index, [_one_stack(c, r) for c, r in zip(checkpoints, refs)])
        else:
            groups = _model_groups(recipe, method, index)
        anywhere = {h.name for name in list_methods() for h in get_method(name).hyperparameters}
        for line in dict.fromkeys(line for group in groups for line in _check_keys(method, group, anywhere)):
            log.warning(line)
        jobs = (_slice_jobs(method, groups, checkpoints) if recipe.slices is not None
                else _model_jobs(method, groups[0], checkpoints))
        jobs += _own_head_jobs(method, groups[-1], jobs, checkpoints)  # the last group gives the post-layer tensors
        donor = index[recipe.base_model] if recipe.base_model else _entry_of(groups[0]).model
        tokens = plan_tokens(recipe, refs, index, checkpoints, donor, root)
        if tokens is None:  # rows merged as they are: of the same tokens in every input (other sizes: `_check_shapes`)
            check_vocabularies(checkpoints, TOKENIZER_HINT)
        untied = _untied_config(jobs, checkpoints)  # before a missing head is read as its embedding
        _use_tied_embeddings(jobs, checkpoints)
        if recipe.slices is None:
            for line in _unmerged(jobs, checkpoints, refs, _entry_of(groups[0]).model):
                log.warning(line)
        _check_shapes(jobs, checkpoints, refs, tokens)
        config = _layer_config(checkpoints, donor, jobs) if recipe.slices is not None else {}
        config.update(untied if checkpoints[donor].config is not None else {})
    finally:
        for c in checkpoints:
            c.close()
    compute = parse_dtype(dtype or recipe.dtype)  # mergekit: `dtype` computes and, by default, is written
    # `merge --dtype` sets both, as its help says: an exported recipe's `out_dtype: float32` wrote float32 anyway
    out = compute if dtype else parse_dtype(recipe.out_dtype) or compute
    names = {**(tokens.names if tokens is not None else {}), **{value: refs[i].name for value, i in index.items()}}
    return MergePlan(method, refs, jobs, recipe, compute or torch.float32, out, donor, config, tokens, allow_pickle,
                     names)


def _own_head_jobs(method: MergeMethod, group: Group, jobs: list[TensorJob],
                   checkpoints: list[Checkpoint]) -> list[TensorJob]:
    """Jobs for an output head the reference leaves out (tied embeddings) but an endpoint has of
    its own: the reference's embedding stands in for its head, as mergekit reads it, instead of
    the endpoint's head being dropped and the output answering with the merged embedding alone."""
    planned = {job.name for job in jobs}
    found = dict.fromkeys(n for e in group.endpoints for n in checkpoints[e.model].names
                          if n not in planned and heads.is_own_head(checkpoints[e.model], n))
    return [_job(method, group, n, [n] * len(group.endpoints), n, layer_position(None, 0)) for n in found]


def _unmerged(jobs: list[TensorJob], checkpoints: list[Checkpoint], refs: list[ModelRef], first: int) -> list[str]:
    """A line per input with tensors no output tensor reads: a merge follows the first model's
    tensors (as mergekit does), so a deeper endpoint's extra layers, or a tensor only it has, are
    left out of the output; said, since the output is then not the merge of the whole endpoint."""
    read = {source for job in jobs for source in ([job.reference] if job.reference else []) + job.inputs}
    lines = []
    for m in sorted({m for m, _ in read} - {first}):
        left = [n for n in heads.merged_names(checkpoints[m]) if (m, n) not in read]
        if left:
            deeper = any(layers.parse(n) is not None for n in left)
            lines.append(f"{refs[m].name}: {len(left)} of its tensors are not in {refs[first].name} and are left out "
                         f"of the merge ({left[0]}{', ...' if len(left) > 1 else ''})"
                         + ("; a `slices:` recipe chooses the layers of models of other depths" if deeper else ""))
    return lines


def _untied_config(jobs: list[TensorJob], checkpoints: list[Checkpoint]) -> dict[str, Any]:
    """`tie_word_embeddings: false` where a merged head takes an input's own head: the output's
    head then differs from its embedding, and a tied config would have transformers drop it."""
    for job in jobs:
        sources = ([job.reference] if job.reference else []) + job.inputs
        if any(heads.is_own_head(checkpoints[m], n) for m, n in sources):
            return {"tie_word_embeddings": False}
    return {}


def _use_tied_embeddings(jobs: list[TensorJob], checkpoints: list[Checkpoint]) -> None:
    """A model with tied embeddings (`tie_word_embeddings`) stores no output head: its input
    embedding is its head, so that tensor stands in for it, as mergekit and transformers read it."""
    for job in jobs:
        if job.reference is not None:
            m, name = job.reference
            job.reference = m, heads.source_name(checkpoints[m], name)
        job.inputs = [(m, heads.source_name(checkpoints[m], name)) for m, name in job.inputs]


def _check_shapes(jobs: list[TensorJob], checkpoints: list[Checkpoint], refs: list[ModelRef],
                  tokens: TokenPlan | None) -> None:
    """Refuse, before any tensor is read, inputs of one output tensor that cannot be merged together."""
    for job in jobs:
        sources = ([job.reference] if job.reference else []) + job.inputs
        _check_dtypes(sources, checkpoints, refs)
        shapes = [tuple(checkpoints[m].shape(n)) for m, n in sources]
        if tokens is not None and tokens.is_embedding(job.name, shapes[0]):
            tokens.check_job(job.name, [m for m, _ in sources], refs)
            shapes = [s[1:] for s in shapes]  # rows follow the output vocabulary
        for (m, n), shape in zip(sources[1:], shapes[1:]):
            if shape != shapes[0]:
                m0, n0 = sources[0]
                rows_only = tokens is None and len(shape) == 2 and shape[1:] == shapes[0][1:] and is_vocabulary(n)
                hint = f"; their vocabularies differ{TOKENIZER_HINT}" if rows_only else ""
                raise UserError(f"tensor {n} has shape {list(shape)} in {refs[m].name} but {n0} has "
                                f"{list(shapes[0])} in {refs[m0].name}{hint}")


def _check_dtypes(sources: list[tuple[int, str]], checkpoints: list[Checkpoint], refs: list[ModelRef]) -> None:
    """The inputs of one output tensor in dtypes that merge (`compat.castable`), else refused naming
    both models: an integer tensor merged with a floating or another integer one was cast silently."""
    dtypes = [checkpoints[m].dtype(n) for m, n in sources]
    for (m, n), dtype in zip(sources[1:], dtypes[1:]):
        if not castable(dtypes[0], dtype):
            m0, n0 = sources[0]
            raise UserError(f"tensor {n} is {dtype_name(dtype)} in {refs[m].name} but {n0} is "
                            f"{dtype_name(dtypes[0])} in {refs[m0].name}: only floating dtypes can be cast")


def _layer_config(checkpoints: list[Checkpoint], donor: int, jobs: list[TensorJob]) -> dict[str, Any]:
    """The output's layer count, under whichever key the donor's config uses, and its per-layer lists
    (`PER_LAYER_KEYS`: Qwen2's and Gemma's `layer_types`) with each output layer's entry taken from
    the layer it is built from: with the count alone, transformers refused to load a Qwen2 stack."""
    config = checkpoints[donor].config or {}
    key = next((k for k in LAYER_COUNT_KEYS if k in config), None)
    if key is None:
        return {}
    out: dict[str, Any] = {key: layers.count_layers(j.name for j in jobs)}
    sources = _layer_sources(jobs)
    for name in (k for k in PER_LAYER_KEYS if isinstance(config.get(k), list)):
        values = []
        for layer, (model, source) in enumerate(sources):
            own = (checkpoints[model].config or {}).get(name)
            entries = own if isinstance(own, list) else config[name]
            if source >= len(entries):
                raise UserError(f"config.json '{name}' of {checkpoints[model].path} has no entry for layer {source}, "
                                f"which output layer {layer} is built from")
            values.append(entries[source])
        out[name] = values
    return {**out, **_dense_layers(checkpoints, config, sources)}


def _dense_layers(checkpoints: list[Checkpoint], config: dict[str, Any],
                  sources: list[tuple[int, int]]) -> dict[str, Any]:
    """Qwen-MoE's choice of dense layers among sparse ones, by layer index (`mlp_only_layers`, and
    every `decoder_sparse_step`-th layer sparse), for the output's layers: each is dense where the
    layer it is built from was, said as a list of indices (step 1). Copied as it was, a slice that
    moved a dense layer had transformers build a sparse one there and fill it at random. A config
    choosing them otherwise by index (DeepSeek's `first_k_dense_replace`) is refused when a slice
    moves its layers."""
    moved = bool(sources) and sources != [(sources[0][0], i) for i in range(len(sources))]
    if moved and (key := next((k for k in INDEXED_LAYER_KEYS if k in config), None)):
        raise UserError(f"config.json '{key}' chooses layers by their index, which these slices change; "
                        "slices of this architecture are not supported")
    if "mlp_only_layers" not in config and config.get("decoder_sparse_step", 1) == 1:
        return {}

    def dense(model: int, layer: int) -> bool:
        own = checkpoints[model].config or {}
        step = own.get("decoder_sparse_step", 1) or 1
        experts = own.get("num_experts", 1)
        return layer in (own.get("mlp_only_layers") or []) or experts == 0 or (layer + 1) % step != 0

    return {"decoder_sparse_step": 1,
            "mlp_only_layers": [out for out, (model, layer) in enumerate(sources) if dense(model, layer)]}


def _layer_sources(jobs: list[TensorJob]) -> list[tuple[int, int]]:
    """(model, layer) each output layer of the longest stack is built from, in order: its first
    tensor's reference, else its first input."""
    sizes = layers.stack_sizes(j.name for j in jobs)
    if not sizes:  # no block recognised by name: no per-layer list to follow
        return []
    stem = max(sizes, key=sizes.get)
    sources: dict[int, tuple[int, int]] = {}
    for job in jobs:
        out, read = layers.parse(job.name), job.reference or next(iter(job.inputs), None)
        source = layers.parse(read[1]) if read is not None else None
        if out is not None and out.stem == stem and source is not None:
            sources.setdefault(out.index, (read[0], source.index))
    return [sources[i] for i in range(sizes[stem])]
