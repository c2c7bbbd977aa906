"""A candidate's tensor in one pass over memory on a GPU: base + sum_t c_t piece_t.

A piece may be an endpoint whose task vector is taken from the base (`pieces.Endpoint`): the
kernel reads it and subtracts the base in float32, in registers, as the eager sum does.

Torch's eager ops widen each bfloat16 stored tensor to a float32 copy and add it into a float32
buffer, which is then narrowed into the module: about 4x the bytes the sum needs to read and
write. On a GPU that traffic is the merge's whole cost, so there this sum is compiled
(`torch.compile`, one kernel per number of pieces, shapes and coefficients left symbolic): the
stored tensors are read once in their own dtype, summed in float32 in registers, and the
module's tensor written once. The operations per entry are those of `combine_pieces`, in the
same order; only the rounding of `acc + c * x` may differ (a fused multiply-add), so the result
can differ from the eager sum by one unit in the last place of the float32 sum before it is
narrowed to the module's dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def _combine(target: torch.Tensor, base: torch.Tensor, pieces: list[torch.Tensor], coefficients: list[float],
             relative: list[bool]) -> None:
    wide = base.to(torch.float32)
    acc = wide
    for piece, coefficient, from_base in zip(pieces, coefficients, relative):
        term = piece.to(torch.float32)
        acc = acc + coefficient * (term - wide if from_base else term)
    target.copy_(acc)


@functools.cache
def _compiled():
    # dynamic: one graph for every tensor length; floats stay arguments (dynamo's default from torch
    # 2.6, which pyproject requires: 2.5 compiled a graph per coefficient set); one
    # graph per number of pieces and pattern of `relative` flags (a Python bool is a constant to
    # dynamo). fullgraph: past dynamo's recompile limit (8 graphs) a call raises, where it would
    # run `_combine` eagerly on the whole tensor without a word, peaking at 4 float32 copies of it
    # (`InPlaceMerger._fuse` then merges in chunks)
    return torch.compile(_combine, dynamic=True, fullgraph=True)


def fused_combine(target: torch.Tensor, base: torch.Tensor, pieces: Sequence[torch.Tensor],
                  coefficients: Sequence[float], relative: Sequence[bool]) -> None:
    """target = base + sum_t coefficients[t] * (pieces[t] - base if relative[t] else pieces[t]),
    summed in float32, written in place.

    All tensors contiguous, of the target's number of entries, on one device; the pieces in any
    floating dtype. Zero-coefficient pieces are the caller's to drop (they cost a read)."""
    _compiled()(target.view(-1), base.view(-1), [p.view(-1) for p in pieces], [float(c) for c in coefficients],
                [bool(r) for r in relative])
