"""Merge pieces that are kept factored, so that what the in-place merger stores stays small.

A `pieces` method's candidate is ``base + scale * sum_t w_t piece_t`` (registry.combine_pieces).
Most pieces are plain tensors, usually the task vectors themselves. TSV's are rank-k products
U diag(s) V^T: kept as factors they take (m + n + 1) k numbers instead of m n, and a candidate
expands them with one matrix product. TSV's share of a tensor it does not decompose is the task
vector divided by T, kept as that division rather than a copy. The file merge and the in-place
merger expand pieces with the same code, so both give the same bits.
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

    def dense(self) -> torch.Tensor:
        return (self.u * self.s) @ self.v.T

    def map(self, fn: TensorMap) -> LowRank:
        return LowRank(fn(self.u), fn(self.s), fn(self.v))


@dataclass(frozen=True)
class Scaled:
    """tensor / divisor, computed when a candidate is built."""

    tensor: torch.Tensor
    divisor: float

    def dense(self) -> torch.Tensor:
        return self.tensor / self.divisor

    def map(self, fn: TensorMap) -> Scaled:
        return Scaled(fn(self.tensor), self.divisor)


Piece = torch.Tensor | LowRank | Scaled | None  # None: a zero piece, nothing to add


def dense(piece: Piece) -> torch.Tensor | None:
    """The piece as one tensor (a plain tensor is returned as is)."""
    return piece if piece is None or isinstance(piece, torch.Tensor) else piece.dense()


def map_piece(piece: Piece, fn: TensorMap) -> Piece:
    """The same piece with each of its tensors passed through `fn` (cast, move, store)."""
    if piece is None:
        return None
    return fn(piece) if isinstance(piece, torch.Tensor) else piece.map(fn)
