"""Merge pieces that are kept factored, so that what the in-place merger stores stays small.

A `pieces` method's candidate is ``base + scale * sum_t w_t piece_t`` (registry.combine_pieces).
Most pieces are plain tensors, usually the task vectors themselves. TSV's are rank-k products
U diag(s) V^T: kept as factors they take (m + n + 1) k numbers instead of m n, and a candidate
adds them into its output with one matrix product. TSV's share of a tensor it does not decompose
is the task vector divided by T, kept as that division rather than a copy and read as stored.
The file merge and the in-place merger add pieces with the same code (`add_to`), so both give
the same bits.
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
class Scaled:
    """tensor / divisor, computed when a candidate is built."""

    tensor: torch.Tensor
    divisor: float

    def map(self, fn: TensorMap) -> Scaled:
        return Scaled(fn(self.tensor), self.divisor)


Piece = torch.Tensor | LowRank | Scaled | None  # None: a zero piece, nothing to add


def elementwise_term(piece: torch.Tensor | Scaled, alpha: float) -> tuple[torch.Tensor, float]:
    """The stored tensor and coefficient of alpha * piece, for a plain or scaled piece: a scaled
    piece's division goes into the coefficient, and the tensor is read as stored. The eager sum
    (`add_to`) and the GPU's compiled one (`merge.fused`) both take their terms from here."""
    return (piece, alpha) if isinstance(piece, torch.Tensor) else (piece.tensor, alpha / piece.divisor)


def add_to(out: torch.Tensor, piece: torch.Tensor | LowRank | Scaled, alpha: float) -> None:
    """out += alpha * piece; a plain tensor is read in its own dtype (torch's type promotion)."""
    if isinstance(piece, LowRank):
        piece.add_to(out, alpha)
    else:
        tensor, coefficient = elementwise_term(piece, alpha)
        out.add_(tensor, alpha=coefficient)


def map_piece(piece: Piece, fn: TensorMap) -> Piece:
    """The same piece with each of its tensors passed through `fn` (cast, move, store)."""
    if piece is None:
        return None
    return fn(piece) if isinstance(piece, torch.Tensor) else piece.map(fn)
