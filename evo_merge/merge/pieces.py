"""Merge pieces that are kept factored, so that what the in-place merger stores stays small.

A `pieces` method's candidate is ``base + scale * sum_t w_t piece_t`` (registry.combine_pieces).
Most pieces are plain tensors, usually the task vectors themselves. TSV's are rank-k products
U diag(s) V^T: kept as factors they take (m + n + 1) k numbers instead of m n, and a candidate
adds them into its output with one matrix product. TSV's share of a tensor it does not decompose
is the task vector divided by T, kept as that division rather than a copy and read as stored.
The in-place merger keeps a task vector of bfloat16 checkpoints as its endpoint (`Endpoint`),
which bfloat16 holds exactly, where the difference itself would be rounded. The file merge and
the in-place merger add pieces with the same code (`add_to`), so both give the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TensorMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LowRank:
    """u diag(s) v^T with u (m, k), s (k,), v (n, k)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    def add_to(self, out: torch.Tensor, alpha: float) -> None:
        out.addmm_(self.u * self.s, self.v.T, alpha=alpha)  # accumulated: no dense copy of the product

    def map(self, fn: TensorMap) -> LowRank:
        return LowRank(fn(self.u), fn(self.s), fn(self.v))


@dataclass(frozen=True)
class Endpoint:
    """endpoint - base, a task vector kept as the fine-tuned tensor it comes from and taken from
    the base of the sum it is added to, in that sum's dtype (float32), when a candidate is built.

    A task vector of two bfloat16 tensors rounded to bfloat16 is off by up to half a unit in its
    last place; their difference formed in float32 is exact, as the file merge forms it. Kept so,
    a candidate is the merge its recipe rebuilds, at the same memory."""

    tensor: torch.Tensor

    def map(self, fn: TensorMap) -> Endpoint:
        return Endpoint(fn(self.tensor))


@dataclass(frozen=True)
class Scaled:
    """tensor / divisor, computed when a candidate is built."""

    tensor: torch.Tensor | Endpoint
    divisor: float

    def map(self, fn: TensorMap) -> Scaled:
        return Scaled(map_piece(self.tensor, fn), self.divisor)


Piece = torch.Tensor | LowRank | Scaled | Endpoint | None  # None: a zero piece, nothing to add
ELEMENTWISE = (torch.Tensor, Scaled, Endpoint)  # the pieces a candidate adds entry by entry


def elementwise_term(piece: torch.Tensor | Scaled | Endpoint, alpha: float) -> tuple[torch.Tensor, float, bool]:
    """The stored tensor, coefficient and whether the base is taken from it, of alpha * piece, for
    a plain, scaled or endpoint piece: a scaled piece's division goes into the coefficient, and the
    tensor is read as stored. The eager sum (`add_to`) and the GPU's compiled one (`merge.fused`)
    both take their terms from here."""
    if isinstance(piece, Scaled):
        tensor, coefficient, relative = elementwise_term(piece.tensor, alpha)
        return tensor, coefficient / piece.divisor, relative
    return (piece.tensor, alpha, True) if isinstance(piece, Endpoint) else (piece, alpha, False)


def takes_base(piece: Piece) -> bool:
    """Whether a piece's tensor is an endpoint, whose task vector is taken from the sum's base."""
    return isinstance(piece, ELEMENTWISE) and elementwise_term(piece, 1.0)[2]


def add_to(out: torch.Tensor, piece: torch.Tensor | LowRank | Scaled | Endpoint, alpha: float,
           base: torch.Tensor | None = None, scratch: torch.Tensor | None = None) -> None:
    """out += alpha * piece; a plain tensor is read in its own dtype (torch's type promotion). An
    endpoint piece needs the `base` its task vector is taken from, in out's dtype: the difference is
    formed in that dtype first (into `scratch`, out's shape and dtype), as the file merge forms a
    task vector, so both give the same bits."""
    if isinstance(piece, LowRank):
        piece.add_to(out, alpha)
        return
    tensor, coefficient, relative = elementwise_term(piece, alpha)
    if relative:
        if base is None or base.dtype != out.dtype:
            raise ValueError("an endpoint piece needs the base its task vector is taken from, in the sum's dtype")
        tensor = torch.sub(tensor, base, out=torch.empty_like(out) if scratch is None else scratch)
    out.add_(tensor, alpha=coefficient)


def map_piece(piece: Piece, fn: TensorMap) -> Piece:
    """The same piece with each of its tensors passed through `fn` (cast, move, store)."""
    if piece is None:
        return None
    return fn(piece) if isinstance(piece, torch.Tensor) else piece.map(fn)


def stored_tensors(piece: Piece) -> list[torch.Tensor]:
    """The tensors a piece keeps (for counting its bytes)."""
    if piece is None:
        return []
    if isinstance(piece, torch.Tensor):
        return [piece]
    if isinstance(piece, LowRank):
        return [piece.u, piece.s, piece.v]
    return stored_tensors(piece.tensor)
