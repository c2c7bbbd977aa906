"""Registry of merge methods: one small per-tensor function each, with declared hyperparameters.

The search reads the declarations to build its genome; recipes are validated against them.
Every method sees one tensor at a time as (base, task vectors, per-model weights) so that the
same code serves the streaming file merge and the in-place merger of the search.

A method whose result is ``base + scale * sum_t weight_t * piece_t``, with pieces that do not
depend on the weights, registers ``pieces`` instead of ``fn``: the in-place merger then computes
the pieces once (e.g. TSV-M's orthogonalised factors) and each candidate costs one weighted sum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch

from evo_merge.code_files import files_digest, source_file
from evo_merge.dtype_names import float32_refusal
from evo_merge.errors import UserError, described, did_you_mean
from evo_merge.merge.pieces import Piece, add_to, takes_base
from evo_merge.merge.task_vectors import Delta

ENTRY_POINT_GROUP = "evo_merge.merge_methods"
log = logging.getLogger(__name__)

Params = Mapping[str, Any]
# fn(base, deltas, weights, params, name) -> merged tensor; the deltas are tensors, or `TaskVector`s for
# a method registered with `streams=True` (formed with `task_vectors.whole` where needed whole)
MergeFn = Callable[[torch.Tensor, Sequence[Delta], Sequence[float], Params, str], torch.Tensor]
# pieces(base, deltas, params, name) -> one piece per model (a tensor, a factored piece or None); the
# deltas as stored (widened by the function where it computes with them)
PiecesFn = Callable[[torch.Tensor, Sequence[Delta], Params, str], list[Piece]]
# scale(weights, params) -> global factor applied to the weighted sum of pieces
ScaleFn = Callable[[Sequence[float], Params], float]
# why these weights and parameters cannot be merged by the method (None: they can), before any tensor
CheckFn = Callable[[Sequence[float], Params], str | None]


def divides_by_weight_sum(flag: str) -> CheckFn:
    """A check for a method that divides by the weights' sum when its setting `flag` is on:
    weights summing to 0 give NaN or inf, as in mergekit, and a guard dividing by 1 instead would
    write a weighted sum (all zeros, or a difference of models) as if it were an average."""

    def check(weights: Sequence[float], params: Params) -> str | None:
        if params[flag] and abs(sum(weights)) < 1e-8:
            return (f"the weights sum to {sum(weights):g}, which {flag} cannot divide by (set parameters.{flag}: "
                    "false for a weighted sum)")
        return None

    return check


@dataclass(frozen=True)
class Hyperparameter:
    """A method parameter: its default, its search range and whether it is set per model."""

    name: str
    default: float | int | bool
    low: float | None = None
    high: float | None = None
    per_model: bool = False
    searchable: bool = True
    help: str = ""
    search_range: tuple[float, float] | None = None  # where the search looks; default [low, high]
    required: bool = False  # mergekit requires it (no default a recipe could rely on)

    @property
    def kind(self) -> type:
        return type(self.default)

    def coerce(self, value: Any, where: str) -> Any:
        kind = self.kind
        if kind is bool:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
                return bool(value)  # older mergekit saved every parameter as a number (int8_mask: 1.0)
            if not isinstance(value, bool):
                raise UserError(f"{where}: expected true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if why := float32_refusal(value):  # it scales float32 tensors
            raise UserError(f"{where}: {why}")
        if kind is int and float(value) != int(value):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        value = kind(value)
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            allowed = (f"outside [{self.low}, {self.high}]" if self.low is not None and self.high is not None
                       else f"below {self.low}" if self.low is not None else f"above {self.high}")
            raise UserError(f"{where}: {value} is {allowed}")  # not "outside [0, None]"
        return value


MASS = "mass"  # a campaign's input-routed candidate kind (`merge.kinds`): no merge method takes its name
WEIGHT = "weight"  # a model's coefficient in a recipe (`parameters.weight`): no hyperparameter takes its name


# How a method treats the reference model (mergekit's behaviour for each method):
#   "required": the merge is taken relative to `base_model`, which the recipe must name;
#   "optional": relative to `base_model` when named, else to zeros (the method sees whole models);
#   "first":    the reference is itself merged (Karcher mean, passthrough); without a base it is
#               the first model, which is then not also an endpoint;
#   "averaged": as "optional", and a base listed among the models is averaged with them at its
#               weight (linear: mergekit's average takes every listed model); elsewhere a listed
#               base is the reference only.
BASE_MODES = ("required", "optional", "first", "averaged")


@dataclass(frozen=True)
class MergeMethod:
    name: str
    hyperparameters: tuple[Hyperparameter, ...]
    fn: MergeFn
    pieces: PiecesFn | None = None
    scale: ScaleFn | None = None
    n_models: tuple[int, int | None] = (1, None)  # allowed number of endpoints (min, max)
    description: str = ""
    # hyperparameters the pieces depend on: the in-place merger caches pieces per their values
    piece_params: tuple[str, ...] = field(default=())
    base: str = "required"
    uses_weights: bool = True  # False: the per-model weights play no part (mergekit ignores them too)
    check: CheckFn | None = None
    # every piece is a task vector, or one divided by a number: kept as exactly as the task vectors
    # are (`merge.storage.rounds`), where computed pieces (TSV's factors) are kept in the storage dtype
    pieces_are_task_vectors: bool = False
    # it combines the models themselves (base + delta rebuilds each one): below float32 the file
    # path computes it in float32 and rounds once, so slerp at t 1 gives the endpoint exactly
    on_models: bool = False
    # its sums run in BLAS or LAPACK (matrix products, SVDs), whose order follows the CPU's thread
    # count: bit for bit only with as many threads (and the same torch build), where elementwise methods
    # give the same bits on any
    threaded: bool = False
    # a tensor no endpoint changed (every task vector zero) merges to the base's own bits: a merge
    # copies the base there instead of computing it (frozen embeddings, partial fine-tunes, LoRA
    # inputs leave most tensors so; TIES spent 85% of a candidate's merge on them, TSV its SVDs)
    keeps_unchanged: bool = False
    # its fn takes task vectors formed where they are read (`task_vectors.TaskVector`): each whole
    # only while it is trimmed, then a chunk at a time; other methods get them as tensors
    streams: bool = False
    # float32 copies of the largest tensor alive while the method merges it, as (a, b) for a·T + b with T
    # endpoints, beyond the stored task vectors (`merge.footprint` plans memory with it); None: a weighted
    # sum's count (T + 4 for an `fn`, 2 for pieces)
    work_copies: tuple[float, float] | None = None
    module: str = ""  # where the decorated function is defined: a method of your own names its plugin

    @property
    def is_builtin(self) -> bool:
        """One of evo-merge's own methods, not a method of your own (a plugin's or a notebook's)."""
        return self.module.split(".")[0] == "evo_merge"

    def hyperparameter(self, name: str) -> Hyperparameter | None:
        return next((h for h in self.hyperparameters if h.name == name), None)

    def resolve(self, params: Params | None, n_models: int, where: str = "parameters") -> dict[str, Any]:
        """Validate `params`, fill defaults, and broadcast per-model values to lists."""
        params = dict(params or {})
        lo, hi = self.n_models
        if n_models < lo or (hi is not None and n_models > hi):
            if hi == 0:  # passthrough: no "0 model(s) besides the base" for a recipe that may name no base
                raise UserError(f"method {self.name} copies one model's tensors: give that one model (as "
                                f"`base_model` or the only entry of `models`), not {n_models + 1}")
            want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise UserError(f"method {self.name} needs {want} model(s) besides the base, got {n_models}")
        unknown = sorted(set(params) - {h.name for h in self.hyperparameters})
        if unknown:
            known = ", ".join(h.name for h in self.hyperparameters) or "none"
            raise UserError(f"{where}.{unknown[0]}: unknown parameter for method {self.name} (known: {known})")
        resolved: dict[str, Any] = {}
        for hp in self.hyperparameters:
            if hp.required and hp.name not in params:
                raise UserError(f"{where}.{hp.name}: required by method {self.name}")
            value = params.get(hp.name, hp.default)
            if hp.per_model:
                values = value if isinstance(value, (list, tuple)) else [value] * n_models
                if len(values) != n_models:
                    raise UserError(f"{where}.{hp.name}: expected {n_models} values, got {len(values)}")
                resolved[hp.name] = [hp.coerce(v, f"{where}.{hp.name}") for v in values]
            else:
                resolved[hp.name] = hp.coerce(value, f"{where}.{hp.name}")
        return resolved


_REGISTRY: dict[str, MergeMethod] = {}
_entry_points_loaded = False
_loading_entry_point: str | None = None  # the entry point being imported (`_load_entry_points`)
_entry_point_errors: dict[str, str] = {}  # entry point name -> why it could not be loaded


def register_method(
    name: str,
    *,
    hyperparameters: Sequence[Hyperparameter] = (),
    n_models: tuple[int, int | None] = (1, None),
    scale: ScaleFn | None = None,
    piece_params: Sequence[str] = (),
    base: str = "required",
    uses_weights: bool = True,
    replace: bool = False,
    narrow: MergeFn | None = None,
    check: CheckFn | None = None,
    pieces_are_task_vectors: bool = False,
    on_models: bool = False,
    threaded: bool = False,
    keeps_unchanged: bool = False,
    streams: bool = False,
    work_copies: tuple[float, float] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering a per-tensor merge function.

    Decorate ``fn(base, deltas, weights, params, name) -> tensor``; or, with ``scale=...``, a
    ``pieces(base, deltas, params, name) -> list[piece]`` function (tensors, factored pieces or None)
    whose result is combined as
    ``base + scale(weights, params) * sum_t weights[t] * pieces[t]``. Its deltas may be narrower
    than `base` (the in-place merger passes them as stored, e.g. bf16): widen to ``base.dtype``
    what it computes with, and return a delta itself, unwidened, where it is its own piece. A pieces method may give
    `narrow`, an ``fn`` the file path uses when it computes in a dtype narrower than float32 (a
    bfloat16 recipe): rounding each step where a reference tool rounds it gives that tool's bits.
    `check(weights, params)` says why a merge cannot be computed (None: it can): a recipe is refused
    with it before any tensor, a campaign's candidate fails with it. `pieces_are_task_vectors`: the
    pieces are only task vectors (each possibly divided by a number) and None, so a search keeps them
    exactly where it keeps the task vectors exactly, and its candidates' scores are the exported
    merges' own; computed pieces are kept in the storage dtype, rounded below float32. `on_models`:
    the method combines the models themselves, not their task vectors (an average, an
    interpolation): in a bfloat16 recipe, rebuilding each model as base + (model - base) in
    bfloat16 would round it twice, so the file path computes such a method in float32 and rounds
    its result once. `threaded`: its result's last bits depend on the CPU's thread count (an SVD,
    a matrix product), which the model card then names. `keeps_unchanged`: where every task vector
    of a tensor is zero, the method returns the base exactly (not to rounding: an average of equal
    tensors may differ in its last bit), so merges copy the base there and skip the method.
    `streams`: ``fn`` takes task vectors that are tensors or `task_vectors.TaskVector`s, formed
    whole (`whole`) only where it needs them so, which spares the T float32 copies of a tensor
    that formed task vectors are (the built-in sparsifiers, through `generalized_task_arithmetic`).
    `work_copies=(a, b)`: the method keeps a·T + b float32 copies of a tensor alive while it merges it
    (T endpoints), beyond the stored task vectors: the memory plan counts them for the search and for
    exporting a pick, where a method that does not say is counted as a weighted sum (T + 4 copies).
    `replace=True` replaces a method registered under `name` (a notebook cell run again); without
    it a second registration is a ValueError, except from a plugin's entry point, whose clash is
    logged and the method registered first kept (a notebook's own copy of an installed method made
    every lookup of an unregistered name a ValueError).
    """

    if base not in BASE_MODES:
        raise ValueError(f"base must be one of {BASE_MODES}, got {base!r}")
    _check_declaration(name, hyperparameters)

    def decorator(func: Callable) -> Callable:
        if name in _REGISTRY and not replace:
            if _loading_entry_point is None:
                raise ValueError(f"merge method {name!r} is already registered (replace=True replaces it)")
            log.warning("merge method %r of the entry point %s is already registered (from %s); that one is kept",
                        name, _loading_entry_point, _REGISTRY[name].module)
            return func
        common = dict(n_models=n_models, base=base, uses_weights=uses_weights, check=check, on_models=on_models,
                      threaded=threaded, keeps_unchanged=keeps_unchanged, streams=streams, work_copies=work_copies,
                      module=getattr(func, "__module__", None) or "",  # None for a function exec() made
                      description=(func.__doc__ or "").strip().split("\n")[0])
        if scale is None:
            method = MergeMethod(name, tuple(hyperparameters), fn=func, **common)
        else:
            def fn(base, deltas, weights, params, tensor_name, _pieces=func):
                if narrow is not None and base.dtype.itemsize < 4:
                    return narrow(base, deltas, weights, params, tensor_name)
                return combine_pieces(base, _pieces(base, deltas, params, tensor_name), weights,
                                      scale(weights, params))
            method = MergeMethod(name, tuple(hyperparameters), fn=fn, pieces=func, scale=scale,
                                 piece_params=tuple(piece_params), pieces_are_task_vectors=pieces_are_task_vectors,
                                 **common)
        _REGISTRY[name] = method
        return func

    return decorator


def _check_declaration(name: str, hyperparameters: Sequence[Hyperparameter]) -> None:
    """A method's declaration, refused at registration where it is wrong (a ValueError naming it):
    taken as written, each slip surfaced late (a numpy traceback in a campaign's first generation,
    a refusal of a recipe key the recipe does not hold, one key meaning two things)."""
    if name == MASS:
        raise ValueError(f"merge method name {name!r} is a campaign's MASS kind; name the method otherwise")
    names = [h.name for h in hyperparameters]
    if twice := next((n for n in names if names.count(n) > 1), None):
        raise ValueError(f"merge method {name!r}: hyperparameter {twice!r} is declared twice")
    for h in hyperparameters:
        where = f"merge method {name!r}, hyperparameter {h.name!r}"
        if h.name == WEIGHT:
            raise ValueError(f"{where}: 'weight' is each model's coefficient in a recipe; name it otherwise")
        if not isinstance(h.default, (bool, int, float)) or not math.isfinite(h.default):
            raise ValueError(f"{where}: its default {h.default!r} is not a finite number or true/false")
        if h.low is not None and h.high is not None and h.low > h.high:
            raise ValueError(f"{where}: low {h.low} is above high {h.high}")
        if not isinstance(h.default, bool) and (h.low is not None and h.default < h.low
                                                or h.high is not None and h.default > h.high):
            raise ValueError(f"{where}: its default {h.default} is outside [{h.low}, {h.high}]")
        if h.search_range is not None:
            lo, hi = h.search_range
            if lo > hi or h.low is not None and lo < h.low or h.high is not None and hi > h.high:
                raise ValueError(f"{where}: search_range {h.search_range} is not within [{h.low}, {h.high}]")


def combine_pieces(
    base: torch.Tensor,
    pieces: Iterable[Piece],
    weights: Sequence[float],
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + scale * sum_t w_t piece_t, written into `out` when given (no extra allocation).

    `out` may have a wider dtype than the base and plain-tensor pieces: they are read once each
    and accumulated in `out`'s dtype (torch's type promotion), never copied to it first. An
    endpoint piece's task vector is taken from `base` (`pieces.Endpoint`), widened to out's dtype
    once for all of them."""
    out = base.clone() if out is None else out.copy_(base)
    wide = scratch = None  # for endpoint pieces: the widened base, and room for their differences
    for piece, weight in zip(pieces, weights):
        if weight != 0 and piece is not None:
            if wide is None and takes_base(piece):
                wide, scratch = base.to(out.dtype), torch.empty_like(out)
            add_to(out, piece, scale * weight, base=wide, scratch=scratch)
    return out


def _load_entry_points() -> None:
    """Import every plugin module of the group, once: its @register_method decorators register.

    One that fails to import (a stale entry point naming a module since renamed, a missing
    dependency) is logged and skipped, its error kept for a lookup of its name: the first raised
    a bare ModuleNotFoundError, and every later lookup called the other plugins' methods unknown."""
    global _entry_points_loaded, _loading_entry_point
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before the loop: a plugin listing the methods as it imports reads, not reloads
    _entry_point_errors.clear()
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            where = f"{ep.name} = {ep.value}" + (f" (package {ep.dist.name} {ep.dist.version})" if ep.dist else "")
            _loading_entry_point = where
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001  whatever a plugin's import raises
                _entry_point_errors[ep.name] = f"{where} cannot be loaded ({described(exc)})"
                log.warning("merge-method entry point %s cannot be loaded (%s); its methods are unavailable",
                            where, described(exc))
            finally:
                _loading_entry_point = None
    except BaseException:
        _entry_points_loaded = False  # interrupted: the next lookup tries again
        raise


def get_method(name: str) -> MergeMethod:
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY and (failed := unloadable(name)) is not None:
        raise UserError(failed)
    if name not in _REGISTRY:
        raise UserError(f"unknown merge method {name!r}{did_you_mean(name, list_methods())} "
                        f"(known: {', '.join(list_methods())}){PLUGIN_HINT}")
    return _REGISTRY[name]


def unloadable(name: str) -> str | None:
    """Why the method `name` is not registered where its own entry point failed to load (the package
    named it, and it raised): a lookup says that, not "unknown merge method"."""
    _load_entry_points()
    why = _entry_point_errors.get(name)
    return None if why is None else f"merge method {name!r}: its entry point {why}"


PLUGIN_HINT = ("; a method of your own is found through an installed package's entry point in the group "
               f"{ENTRY_POINT_GROUP}")


def method_code(name: str) -> tuple[str, str] | None:
    """(the file defining a method of your own, a digest of its text), for a run folder to see the
    method's code change between a run and its resume; None for evo-merge's own methods (they change
    with evo-merge, whose run folders record their defaults version) and for one defined where no
    file holds it (a notebook cell)."""
    method = get_method(name)
    if method.is_builtin or (file := source_file(method.pieces or method.fn)) is None:
        return None
    return None if (digest := files_digest([file])) is None else (file, digest)


def method_origin(name: str) -> str | None:
    """Where a method of your own comes from, for the model cards of its merges (whoever rebuilds
    one needs it): the installed package whose entry point registered it ("my-merges 0.1"), else
    the module that defines it; None for evo-merge's own methods."""
    method = get_method(name)
    if method.is_builtin:
        return None
    module = method.module
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (module == ep.module or module.startswith(f"{ep.module}.")) and ep.dist is not None:
            return f"the package {ep.dist.name} {ep.dist.version}"
    return f"the module {module}" if module else "code of no module (made by exec)"


def list_methods() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)
