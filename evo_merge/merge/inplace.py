"""Write merge candidates straight into one resident torch module, without disk I/O.

The search builds thousands of candidates from the same endpoints. This keeps the base and the
task vectors once (in the storage dtype and placement of `merge.storage`), caches
coefficient-free pieces (TSV-M's orthogonalised factors are computed once per model, not per
candidate, and kept factored), and overwrites the module's parameters in place. Each tensor is
combined in float32 by exactly the per-tensor code of the file path. A task vector is kept
exactly where its storage dtype allows: as itself in float32, and as its endpoint in the
checkpoints' own narrower dtype (bfloat16 checkpoints, `auto`), the difference then formed in
float32 as a candidate is built. Either way a candidate written here equals the model
`evo-merge merge` writes from its recipe, bit for bit. Only a storage dtype narrower than the
checkpoints' (float32 checkpoints kept in bfloat16 by choice) rounds the task vectors, once each.
On a GPU with narrower storage (bfloat16), elementwise candidates go through one compiled
kernel per large tensor (`merge.fused`, from FUSED_MIN_ENTRIES): the merge there is bound by
memory traffic, and the eager ops move about four times the bytes the sum needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from evo_merge.errors import UserError
from evo_merge.merge.apply import merge_tensor
from evo_merge.merge.fused import fused_combine
from evo_merge.merge.pieces import ELEMENTWISE, Endpoint, Piece, elementwise_term, map_piece
from evo_merge.merge.registry import MergeMethod, combine_pieces, get_method
from evo_merge.merge.storage import Stash, Storage
from evo_merge.merge.task_vectors import TaskVector, is_zero
from evo_merge.weights import Checkpoint, check_compatible, heads
from evo_merge.weights.devices import indexed
from evo_merge.weights.dtypes import all_finite
from evo_merge.weights.module_names import ModuleTensors, fused_error, module_tensors

# one weight per endpoint for every tensor, or per tensor name (block-group genomes)
Weights = Sequence[float] | Mapping[str, Sequence[float]]

log = logging.getLogger(__name__)


CHUNK = 2**18  # entries combined at a time on the CPU: float32 partial sums stay in cache (fastest of 2^14-2^20)
DEVICE_CHUNK = 2**24  # on a GPU without the one-pass kernel: 64 MiB float32 copies, few kernel launches a tensor
# tensors at least this large go through the compiled kernel on a GPU. A call of it costs about
# 140-250 us of the host's time against about 100 us for the eager ops (H200), which the kernel
# repays only where the eager ops' 4x traffic takes longer: from about 2^24 entries
FUSED_MIN_ENTRIES = 2**24


def _finite(tensor: torch.Tensor, checkpoint: Checkpoint, name: str) -> torch.Tensor:
    """`tensor` where it holds no NaN or Inf, else a user error naming the model: every merge of it
    failed as "non-finite values in merged tensor", a base or endpoint's too, and the run stopped
    promising that a resume would evaluate it again (audit 96)."""
    if not all_finite(tensor):
        raise UserError(f"{checkpoint.path}: tensor {name} holds NaN or Inf (a corrupt model); no merge of it "
                        "can be scored")
    return tensor


class InPlaceMerger:
    def __init__(
        self,
        module: nn.Module,
        base: Checkpoint,
        endpoints: Sequence[Checkpoint],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        storage: Storage = Storage(),
    ):
        """Read the checkpoints tensor by tensor and store each task vector at once (`_keep_task`),
        so setup holds one tensor per endpoint beyond what is stored."""
        check_compatible([base, *endpoints])
        self.module = module
        self.dtype = dtype
        self.n_models = len(endpoints)
        # indexed: `auto` and `cuda` are cuda, which `target.device == self.device` (cuda:0) never
        # equalled, so every tensor of every candidate went through a float32 copy on the GPU
        self.device = indexed(torch.device(device)) if device is not None else next(module.parameters()).device
        self.stash = Stash(storage, self.device, dtype)
        targets = module_tensors(module)  # by the checkpoints' names (transformers renames some as it loads)
        self._targets: dict[str, torch.Tensor] = {}
        self._base: dict[str, torch.Tensor] = {}
        self._deltas: dict[str, list[torch.Tensor | Endpoint]] = {}  # a stored task vector, or its endpoint
        self._unchanged: set[str] = set()  # tensors every endpoint left as the base has them
        for name in heads.merge_targets(base, endpoints):
            # each input's own tensor, or the embedding its tied head is (`heads`)
            sources = [heads.source_name(c, name) for c in (base, *endpoints)]
            _check_target(base, targets, name, sources[0], module)
            if not base.dtype(sources[0]).is_floating_point:
                with torch.no_grad():
                    targets.writable[name].copy_(base.tensor(sources[0]))
                continue
            stored = storage.stored_dtype([base, *endpoints], sources)
            theta0 = _finite(base.tensor(sources[0], dtype), base, sources[0])
            self._targets[name] = targets.writable[name]
            self._base[name] = self.stash.keep(theta0, stored)
            # endpoints only over an exact base: their task vectors are taken from the stored one
            exact_base = stored != dtype and _holds(stored, base, sources[0])
            kept = [self._keep_task(ep, source, theta0, stored, exact_base)
                    for ep, source in zip(endpoints, sources[1:])]
            self._deltas[name] = [task for task, _ in kept]
            if all(unchanged for _, unchanged in kept):
                self._unchanged.add(name)
        self._pieces: dict[tuple, dict[str, list[Piece]]] = {}
        # the compiled one-pass sum for elementwise candidates over narrower-than-float32 storage;
        # on a CPU the cache-sized chunks of the eager sum already read memory once
        self.fused = self.device.type == "cuda"
        self._fused_ran = False
        self.on_tensor: Callable[[int, int], None] | None = None  # told (written, tensors) by `apply`

    def _keep_task(self, endpoint: Checkpoint, source: str, theta0: torch.Tensor, stored: torch.dtype,
                   exact_base: bool) -> tuple[torch.Tensor | Endpoint, bool]:
        """One endpoint's task vector, stored: as its endpoint, read as stored, where the storage
        dtype holds it and the base exactly but not their difference (bfloat16 checkpoints kept in
        bfloat16); else the difference formed in `self.dtype` and stored in `stored`: exact in
        float32, rounded once where a narrower dtype was chosen for wider checkpoints, or the
        endpoint is a LoRA adapter's sum. With it, whether the endpoint left the tensor as the base
        has it (a zero task vector: `MergeMethod.keeps_unchanged`)."""
        if exact_base and _holds(stored, endpoint, source):
            tensor = _finite(endpoint.tensor(source), endpoint, source)
            return Endpoint(self.stash.keep(tensor, stored)), is_zero(TaskVector(tensor, theta0))
        # in place: one float32 copy of the tensor per endpoint read, not two
        delta = _finite(endpoint.tensor(source, self.dtype), endpoint, source).sub_(theta0)
        unchanged = not bool(delta.any())
        return self.stash.keep(delta, stored), unchanged

    def _task_vector(self, stored: torch.Tensor | Endpoint, base: torch.Tensor) -> TaskVector:
        """A stored task vector on the device as stored, to be formed in the compute dtype where it is
        read (`TaskVector`); an endpoint's from `base` (the stored base in the compute dtype), as the
        file merge forms it. A method that streams task vectors forms each a chunk at a time, so the
        T float32 task vectors of a tensor are never alive at once; `merge_tensor` forms them whole
        for the others."""
        if isinstance(stored, Endpoint):
            return TaskVector(self.stash.move(stored.tensor), base)
        return TaskVector(self.stash.move(stored), dtype=self.stash.compute)

    @property
    def names(self) -> list[str]:
        """The floating tensors it merges: the base's, and the heads it unties (`heads.merge_targets`);
        a weight table gives each of them its weights."""
        return list(self._base)

    def _pieces_cache(self, method: MergeMethod, params: Mapping[str, Any]) -> dict[str, list[Piece]]:
        """The pieces kept for `method` at `params`, per tensor, filled as candidates need them: the
        first candidate of a method with pieces (TSV-M's SVDs) computes them as it merges, tensor
        after tensor, so its progress shows, and one that fails partway leaves those done kept."""
        return self._pieces.setdefault(_pieces_key(method, params), {})

    def pieces_pending(self, method: str, params: Mapping[str, Any] | None) -> bool:
        """Whether merging `method` at `params` computes pieces not kept yet: TSV-M's first candidate
        decomposes every matrix (minutes at 1B on a CPU), which its progress line names apart from a
        merge of seconds (audit 126)."""
        m = get_method(method)
        if m.pieces is None or m.pieces_are_task_vectors:
            return False
        kept = self._pieces.get(_pieces_key(m, m.resolve(params, self.n_models)), {})
        return any(name not in kept for name in self._base if not (m.keeps_unchanged and name in self._unchanged))

    def _compute_pieces(self, method: MergeMethod, name: str, params: Mapping[str, Any]) -> list[Piece]:
        """One tensor's pieces, computed in float32 on the device and stored like the task vectors.
        The pieces function gets stored task vectors as stored and widens those it computes with,
        so a piece that is a task vector itself (TSV's share of an embedding) points at the stored
        one, and no float32 copy of every task vector of a 128k-row embedding is made for it. One
        kept as its endpoint is formed in float32 (the pieces of the file merge see those bits),
        except for a method whose pieces are its task vectors, which hands them back untouched: the
        stored tensors stand for them (forming them cost task arithmetic's first candidate 6 s and
        2 GiB at 0.5B parameters)."""
        stored = self._deltas[name]
        if method.pieces_are_task_vectors:
            base = self._base[name]
            deltas = [d.tensor if isinstance(d, Endpoint) else d for d in stored]
        else:
            base = self.stash.upcast(self._base[name])
            # on the device (a copy only with `host`)
            deltas = [self._task_vector(d, base).whole() if isinstance(d, Endpoint) else self.stash.move(d)
                      for d in stored]
        same = {id(d): s for d, s in zip(deltas, stored)}
        dtype = self._base[name].dtype

        def keep(tensor: torch.Tensor) -> torch.Tensor | Endpoint:
            return same[id(tensor)] if id(tensor) in same else self.stash.keep(tensor, dtype)

        pieces = method.pieces(base, deltas, params, name)
        return [map_piece(piece, keep) for piece in pieces]

    def _fetch(self, piece: Piece) -> Piece:
        """A stored piece on the device: plain, scaled and endpoint tensors as stored (the sum reads
        them in their dtype), factored ones in the compute dtype (they go through a matrix product)."""
        if piece is None or isinstance(piece, ELEMENTWISE):
            return map_piece(piece, self.stash.move)
        return map_piece(piece, self.stash.upcast)

    def _checked(self, weights: Sequence[float]) -> list[float]:
        weights = [float(w) for w in weights]
        if len(weights) != self.n_models:
            raise UserError(f"expected {self.n_models} weights, got {len(weights)}")
        return weights

    def _merged(
        self, method: str, weights: Weights, params: Mapping[str, Any] | None, into_module: bool
    ) -> Iterator[tuple[str, torch.Tensor]]:
        m = get_method(method)
        resolved = m.resolve(params, self.n_models)
        table = weights if isinstance(weights, Mapping) else None
        shared = self._checked(weights) if table is None else None  # the scalar path checks once
        upcast = self.stash.upcast
        cache = self._pieces_cache(m, resolved) if m.pieces is not None else None
        for name, stored_base in self._base.items():
            w = shared if table is None else self._checked(table[name])
            # the method's own refusal, as a recipe's plan gives it (`plan._job`), for its pieces too
            if m.check is not None and (why := m.check(w, resolved)) is not None:
                raise RuntimeError(f"{m.name}: tensor {name}: {why}")
            if m.keeps_unchanged and name in self._unchanged:  # the method's result is the base: not computed
                base, target = upcast(stored_base), self._targets[name]
                # as base + 0 is (-0.0 read as 0.0): into the module in one pass, else a new tensor
                into = into_module and target.device == base.device
                yield name, torch.add(base, 0.0, out=target) if into else base + 0.0
                continue
            if cache is None:
                base = upcast(stored_base)
                deltas = [self._task_vector(d, base) for d in self._deltas[name]]
                yield name, merge_tensor(m, base, deltas, w, resolved, name)
                continue
            if name not in cache:
                cache[name] = self._compute_pieces(m, name, resolved)
            pieces = cache[name]
            target = self._targets[name]
            base, scale = self.stash.move(stored_base), m.scale(w, resolved)
            if all(p is None or isinstance(p, ELEMENTWISE) for p in pieces):
                fetched = [self._fetch(p) if x != 0 else None for p, x in zip(pieces, w)]
                if into_module and _elementwise(target, base, fetched):
                    if (self.fused and base.dtype != self.dtype and target.numel() >= FUSED_MIN_ENTRIES
                            and self._fuse(target, base, fetched, w, scale)):
                        yield name, target
                        continue
                    # a chunk at a time: no float32 copy of the whole tensor (the GPU's without the kernel too)
                    yield name, self._combine_in_chunks(target, base, fetched, w, scale)
                    continue
            else:  # factored pieces are widened one at a time, as the sum reaches them
                fetched = (self._fetch(p) if x != 0 else None for p, x in zip(pieces, w))
            direct = (into_module and target.dtype == self.dtype and target.device == self.device
                      and target.is_contiguous())
            out = target if direct else torch.empty(target.shape, dtype=self.dtype, device=self.device)
            yield name, combine_pieces(base, fetched, w, scale, out=out)

    def _fuse(self, target: torch.Tensor, base: torch.Tensor, pieces: Sequence[Piece], weights: Sequence[float],
              scale: float) -> bool:
        """`combine_pieces` into the module by the compiled kernel; False (and the eager ops from
        then on, said once) when this torch cannot compile for the device, which shows at the first
        call. The terms are those `add_to` adds (`elementwise_term`)."""
        terms = [elementwise_term(piece, scale * weight) for piece, weight in zip(pieces, weights)
                 if piece is not None and weight != 0]
        tensors, coefficients, relative = [t for t, _, _ in terms], [c for _, c, _ in terms], [r for _, _, r in terms]
        try:
            fused_combine(target, base, tensors, coefficients, relative)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # raised before anything is written
            # no compiler or Triton for this device (at the first call), or past dynamo's recompile limit
            what = "stopped compiling" if self._fused_ran else "could not be compiled"
            log.warning("the one-pass merge kernel %s for %s (%s: %s); merging with torch's eager ops a chunk "
                        "at a time, which move about 4x the bytes", what, self.device, type(exc).__name__,
                        (str(exc).splitlines() or [""])[0])
            self.fused = False
            return False
        self._fused_ran = True
        return True

    def _combine_in_chunks(self, target: torch.Tensor, base: torch.Tensor, pieces: Sequence[Piece],
                           weights: Sequence[float], scale: float) -> torch.Tensor:
        """`combine_pieces` into the module a chunk at a time (cache-sized on the CPU; on a GPU
        without the one-pass kernel, a size whose float32 copies are small next to the tensor's):
        the stored tensors are read once and the module written once, with no float32 copy of the
        whole tensor. The operations per entry are the same, so are the bits."""
        dest, flat_base = target.view(-1), base.view(-1)
        flat = [map_piece(p, lambda t: t.view(-1)) for p in pieces]
        chunk = CHUNK if self.device.type == "cpu" else DEVICE_CHUNK
        buffer = torch.empty(min(chunk, dest.numel()), dtype=self.dtype, device=self.device)
        for start in range(0, dest.numel(), chunk):
            part = slice(start, start + chunk)
            out = buffer[: dest[part].numel()]
            combine_pieces(flat_base[part], [map_piece(p, lambda t, part=part: t[part]) for p in flat], weights, scale,
                           out=out)
            dest[part].copy_(out)
        return target

    def tensors(
        self, method: str, weights: Weights, params: Mapping[str, Any] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The candidate's merged tensors (compute dtype), one at a time, without touching the module."""
        return self._merged(method, weights, params, into_module=False)

    @torch.no_grad()
    def apply(self, method: str, weights: Weights, params: Mapping[str, Any] | None = None) -> nn.Module:
        """Write the candidate into the module's parameters and return the module. `weights` is one
        weight per endpoint, or a table of them per tensor name (every floating-point tensor)."""
        total = len(self._base)
        if self.on_tensor is not None:
            self.on_tensor(0, total)
        for done, (name, merged) in enumerate(self._merged(method, weights, params, into_module=True), start=1):
            target = self._targets[name]
            if merged is not target:
                target.copy_(merged)
            if self.on_tensor is not None:
                self.on_tensor(done, total)
        return self.module

    def clear_cache(self) -> None:
        """Drop cached pieces (e.g. between search phases that use different methods)."""
        self._pieces.clear()


def _holds(dtype: torch.dtype, checkpoint: Checkpoint, name: str) -> bool:
    """Whether `dtype` holds a checkpoint's tensor exactly: it holds the dtype the tensor is stored
    in, and the tensor is read as stored (not a LoRA adapter's sum, formed in float32)."""
    return torch.promote_types(checkpoint.dtype(name), dtype) == dtype and not checkpoint.computed(name)


def _elementwise(target: torch.Tensor, base: torch.Tensor, pieces: Sequence[Any]) -> bool:
    """Whether a tensor's candidate can be combined chunk by chunk: plain or scaled, contiguous tensors only."""
    tensors = [target, base, *(elementwise_term(p, 1.0)[0] for p in pieces if p is not None)]
    return all(isinstance(t, torch.Tensor) and t.is_contiguous() for t in tensors)


def _check_target(base: Checkpoint, targets: ModuleTensors, name: str, source: str, module: nn.Module) -> None:
    if name in targets.fused:
        raise fused_error(base.path, name, f"the {type(module).__name__} module")
    writable = targets.writable
    if name not in writable:
        raise UserError(f"{base.path}: tensor {name} has no counterpart in the {type(module).__name__} module")
    if writable[name].shape != torch.Size(base.shape(source)):
        raise UserError(f"tensor {name}: checkpoint shape {tuple(base.shape(source))} "
                        f"!= module shape {tuple(writable[name].shape)}")
    if source != name and source in writable and writable[source].data_ptr() == writable[name].data_ptr():
        # a head to untie, in a module that ties it
        raise UserError(f"tensor {name}: an endpoint has it of its own, but the module ties it to "
                        f"{source}; load the base untied (`load_model_folder(..., untie=True)`)")


def _pieces_key(method: MergeMethod, params: Mapping[str, Any]) -> tuple:
    """What a method's pieces depend on: its name and the parameters it declares `piece_params`."""
    return method.name, *(repr(params[k]) for k in method.piece_params)
