"""MASS storage: the base plus each task's TSV-C factors, and the TSV-M merge of any task subset.

Each 2-D weight keeps task t's top k = r/T singular triplets (U_t, sigma_t, V_t^T); other
tensors keep the whole task vector. A subset S of tasks is merged as in TSV-M, but over the
stored triplets of S only: the stacked U and V of S are replaced by their polar factors, so
the orthogonalisation depends on S (compute it per subset; the caller caches). With S = all
tasks this is exactly the registered `tsv` method; with one task it is exactly `tsv_c`.

The factors are kept like the in-place merger's task vectors (`merge.storage`: the storage dtype
and placement of the campaign) and read back in float32 on the device for each merge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from evo_merge.errors import UserError
from evo_merge.merge.pieces import Scaled
from evo_merge.merge.registry import combine_pieces
from evo_merge.merge.storage import Stash, Storage
from evo_merge.merge.subspace import is_decomposed, orthogonalised_pieces, top_k_svd, tsv_rank
from evo_merge.weights import Checkpoint, heads
from evo_merge.weights.dtypes import all_finite

COMPUTE_DTYPE = torch.float32
Triplet = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # u (m, k), s (k,), vt (k, n)
Track = Callable[[Iterable, int], Iterable]
_NO_EMBEDDINGS = {"embeddings": False}


def factor_key(task: int, name: str, part: str) -> str:
    """Key of one stored factor: part is u, s, vt (2-D weights) or delta (other tensors)."""
    return f"task{task}::{name}::{part}"


def _cpu_stash() -> Stash:
    return Stash(Storage(), torch.device("cpu"), COMPUTE_DTYPE)


@dataclass
class MassFactors:
    """Base tensors and per-task factors of every floating tensor, kept by `stash`."""

    base: dict[str, torch.Tensor]
    lowrank: dict[str, list[Triplet]]  # 2-D weights: one triplet per task
    dense: dict[str, list[torch.Tensor]]  # other tensors: one task vector per task
    stored_dtypes: dict[str, torch.dtype]  # the base checkpoint's dtype of each tensor
    stash: Stash = field(default_factory=_cpu_stash)

    @property
    def n_tasks(self) -> int:
        return len(next(iter({**self.lowrank, **self.dense}.values())))

    @classmethod
    def build(cls, base: Checkpoint, endpoints: Sequence[Checkpoint], track: Track | None = None,
              stash: Stash | None = None) -> MassFactors:
        """Decompose each endpoint's task vector, one tensor at a time (nothing else held), on
        the stash's device; keep the factors in its storage dtype and placement."""
        stash = stash or _cpu_stash()
        untie = heads.heads_to_untie(base, endpoints)
        if untie:
            raise UserError(f"MASS: an endpoint has an output head of its own ({untie[0]}) but the base {base.path} "
                            "ties its head to its embedding; MASS routes on the base's tied model (merge them "
                            "with the other methods, which write an untied output)")
        names = [n for n in heads.merge_targets(base, endpoints) if base.dtype(n).is_floating_point]
        out = cls({}, {}, {}, {}, stash)
        similarity = _Similarity(base, endpoints)
        for name in track(names, len(names)) if track else names:
            sources = [heads.source_name(c, name) for c in (base, *endpoints)]  # a tied head is the embedding
            theta0 = stash.upcast(base.tensor(name, COMPUTE_DTYPE))
            deltas = [stash.upcast(ep.tensor(source, COMPUTE_DTYPE)) - theta0
                      for ep, source in zip(endpoints, sources[1:])]
            if bad := next((c for c, t in zip((base, *endpoints), (theta0, *deltas))
                            if not all_finite(t)), None):  # the SVD failed with a LinAlgError
                raise UserError(f"MASS: tensor {name} of {bad.path} holds NaN or Inf (a corrupt model); not decomposed")
            dtype = stash.storage.stored_dtype([base, *endpoints], sources)
            out.base[name] = stash.keep(theta0, dtype)
            out.stored_dtypes[name] = base.dtype(name)
            if is_decomposed(theta0, name, _NO_EMBEDDINGS):
                similarity.add(name, theta0, deltas)
                k = tsv_rank(theta0, len(endpoints))
                # vt keeps V^T's rows as the SVD returns them, so products match `tsv_c` bit for bit;
                # copies of the top-k slices only (views would keep the whole SVD alive)
                triplets = (top_k_svd(d, k) for d in deltas)
                out.lowrank[name] = [tuple(stash.keep(f, dtype) for f in (u.contiguous(), s.clone(), v.T.clone()))
                                     for u, s, v in triplets]
            else:
                out.dense[name] = [stash.keep(d, dtype) for d in deltas]
        similarity.check()
        return out

    def follow(self, device: torch.device) -> None:
        """Merge on `device` from now on: the factors move there, or stay on the host (pinned for a
        GPU) with `host` placement, as the stash keeps them."""
        stash = Stash(self.stash.storage, device, self.stash.compute)

        def kept(tensor: torch.Tensor) -> torch.Tensor:
            return stash.keep(tensor, tensor.dtype)

        self.base = {name: kept(t) for name, t in self.base.items()}
        self.lowrank = {name: [tuple(kept(f) for f in triplet) for triplet in triplets]
                        for name, triplets in self.lowrank.items()}
        self.dense = {name: [kept(d) for d in deltas] for name, deltas in self.dense.items()}
        self.stash = stash

    def merged(self, tasks: Sequence[int]) -> Iterator[tuple[str, torch.Tensor]]:
        """The TSV-M merge (alpha 1, unit coefficients) of the stored factors of `tasks`, in
        float32 on the stash's device."""
        weights = [1.0] * len(tasks)
        upcast = self.stash.upcast
        for name, theta0 in self.base.items():
            if name in self.lowrank:
                pieces = subset_pieces([tuple(upcast(f) for f in self.lowrank[name][t]) for t in tasks])
            else:
                pieces = [Scaled(self.stash.move(self.dense[name][t]), len(tasks)) for t in tasks]  # as TSV-M's
            yield name, combine_pieces(upcast(theta0), pieces, weights, 1.0)

    def stored(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) pairs of the task factors to save, in the base checkpoint's dtypes."""
        for name in self.base:
            dtype = self.stored_dtypes[name]
            for t in range(self.n_tasks):
                if name in self.lowrank:
                    for part, tensor in zip(("u", "s", "vt"), self.lowrank[name][t]):
                        yield factor_key(t, name, part), tensor.to(dtype)
                else:
                    yield factor_key(t, name, "delta"), self.dense[name][t].to(dtype)

    @classmethod
    def load(
        cls, store: Checkpoint, base: Checkpoint, lowrank: Sequence[str], dense: Sequence[str], n_tasks: int
    ) -> MassFactors:
        """Read factors saved by `stored` (and the base); a missing tensor is a user error naming it."""

        def read(ckpt: Checkpoint, key: str) -> torch.Tensor:
            if key not in ckpt:
                raise UserError(f"{ckpt.path}: MASS tensor {key!r} is missing (incomplete or damaged MASS folder)")
            return ckpt.tensor(key, COMPUTE_DTYPE)

        out = cls({}, {}, {}, {})
        for name in [*lowrank, *dense]:
            out.base[name] = read(base, name)
            out.stored_dtypes[name] = base.dtype(name)
            if name in lowrank:
                out.lowrank[name] = [
                    tuple(read(store, factor_key(t, name, p)) for p in ("u", "s", "vt")) for t in range(n_tasks)
                ]
                shapes = {(u.shape[0], vt.shape[1]) for u, _, vt in out.lowrank[name]}
            else:
                out.dense[name] = [read(store, factor_key(t, name, "delta")) for t in range(n_tasks)]
                shapes = {tuple(d.shape) for d in out.dense[name]}
            if shapes != {tuple(out.base[name].shape)}:  # a linked base replaced by another model
                raise UserError(f"{store.path}: MASS tensor {name}'s factors are of shape {sorted(shapes)[0]}, and the "
                                f"base's {name} of shape {tuple(out.base[name].shape)}: not the base it was built on")
        return out


def subset_pieces(triplets: Sequence[Triplet]) -> list[torch.Tensor]:
    """Per-task TSV-M pieces of one matrix from the stored triplets of a task subset.

    `subspace.orthogonalised_pieces` of the stored factors. One task needs no
    orthogonalisation (its singular vectors already are orthonormal): its piece is the TSV-C
    reconstruction, bit for bit.
    """
    if len(triplets) == 1:
        u, s, vt = triplets[0]
        return [(u * s) @ vt]
    return orthogonalised_pieces([(u, s, vt.T) for u, s, vt in triplets])

class _Similarity:
    """Cosine between each endpoint's and the base's 2-D weights, all matrices together.

    Fine-tunes stay close to their base (near 1); models trained apart are near 0 even when
    every name and shape matches, and task vectors between them mean nothing. A matrix of its own
    below TENSOR_MIN_COSINE is refused as it is read, before its SVDs: said after the last one, a
    separately trained model cost the whole decomposition (an hour or more of a 7B model's on a CPU).
    """

    MIN_COSINE = 0.5
    TENSOR_MIN_COSINE = 0.2  # one matrix replaced, not fine-tuned: its change outweighs it several times

    def __init__(self, base: Checkpoint, endpoints: Sequence[Checkpoint]):
        self.base, self.endpoints = base, endpoints
        self.dots, self.norms, self.base_norm = [0.0] * len(endpoints), [0.0] * len(endpoints), 0.0

    def add(self, name: str, theta0: torch.Tensor, deltas: Sequence[torch.Tensor]) -> None:
        base_norm = float(theta0.square().sum())
        self.base_norm += base_norm
        for t, delta in enumerate(deltas):
            theta = theta0 + delta
            dot, norm = float((theta * theta0).sum()), float(theta.square().sum())
            self.dots[t] += dot
            self.norms[t] += norm
            if norm and base_norm:  # a matrix of zeros on either side tells nothing on its own
                self._refuse_below(self.endpoints[t], dot, norm, base_norm, self.TENSOR_MIN_COSINE, f"their {name}")

    def check(self) -> None:
        for ep, dot, norm in zip(self.endpoints, self.dots, self.norms):
            self._refuse_below(ep, dot, norm, self.base_norm, self.MIN_COSINE, "their 2-D weights")

    def _refuse_below(self, ep: Checkpoint, dot: float, norm: float, base_norm: float, least: float, what: str) -> None:
        cosine = dot / max((norm * base_norm) ** 0.5, 1e-30)
        if cosine < least:
            raise UserError(
                f"{ep.path} does not look fine-tuned from base {self.base.path}: the cosine of {what} is "
                f"{cosine:.2f} (fine-tunes of a base are near 1, separately trained models near 0)"
            )
