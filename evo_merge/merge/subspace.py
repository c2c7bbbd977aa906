"""Singular-vector methods: TSV-M, TSV-C and Iso-C (Gargiulo et al. 2025, Marczak et al. 2025).

They act on 2-D weight matrices; embeddings and the LM head (recognised by name) and all other
tensors (biases, norms) are treated as plain task vectors unless ``embeddings`` is set. TSV-M and
TSV-C pieces are returned factored (`LowRank`: rank r/T per task), so the in-place merger keeps
about (m + n) r numbers per matrix whatever the number of tasks, never a dense copy per task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evo_merge.merge.pieces import LowRank, Piece, Scaled
from evo_merge.merge.registry import Hyperparameter as H
from evo_merge.merge.registry import Params, register_method
from evo_merge.weights.arch import EMBEDDING_NAME

ALPHA = H("alpha", 1.0, 0.0, 3.0, help="global scale of the merged update", search_range=(0.5, 1.5))
EMBEDDINGS = H("embeddings", False, searchable=False, help="also decompose embedding / LM-head matrices")


def is_decomposed(delta: torch.Tensor, name: str, params: Params) -> bool:
    """Whether a tensor gets the singular-vector treatment."""
    return decomposes(delta.shape, name, params.get("embeddings", False))


def decomposes(shape: Sequence[int], name: str, embeddings: bool = False) -> bool:
    """`is_decomposed` from a shape (checkpoint headers suffice)."""
    return len(shape) == 2 and (embeddings or not EMBEDDING_NAME.search(name))


def svd(m: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD computed in at least float32 (torch has none for bfloat16 or float16, the dtypes a
    recipe may compute in); factors returned in `dtype`, by default `m`'s."""
    u, s, vh = torch.linalg.svd(m.float() if m.itemsize < 4 else m, full_matrices=False)
    dtype = dtype or m.dtype
    return u.to(dtype), s.to(dtype), vh.to(dtype)


def top_k_svd(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = svd(delta)
    return u[:, :k], s[:k], vh[:k].T


def nearest_orthogonal(m: torch.Tensor) -> torch.Tensor:
    """Polar factor of `m` (if m = P S Q^T then P Q^T): the closest matrix with orthonormal columns."""
    p, _, qh = svd(m, torch.promote_types(m.dtype, torch.float32))
    return (p @ qh).to(m.dtype)


def tsv_rank(delta: torch.Tensor | Sequence[int], n_tasks: int) -> int:
    """Rank kept per task (r/T) of a matrix, from the matrix or its shape."""
    shape = delta.shape if isinstance(delta, torch.Tensor) else delta
    return max(1, min(shape) // n_tasks)


def orthogonalised_pieces(factors: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[LowRank]:
    """TSV-M pieces from each task's top-k factors (u: m x k, sigma: k, v: n x k) of one matrix.

    D_t = U_perp[:, block_t] diag(sigma_t) V_perp[:, block_t]^T, with U_perp and V_perp the polar
    factors of the stacked u's and v's. The orthogonalisation does not depend on the task
    coefficients, so sum_t c_t D_t is the TSV-M merge with sigma_t scaled by c_t. The pieces are
    views of U_perp and V_perp: together they hold (m + n) T k numbers.
    """
    k = factors[0][1].numel()
    u_perp = nearest_orthogonal(torch.cat([u for u, _, _ in factors], dim=1))
    v_perp = nearest_orthogonal(torch.cat([v for _, _, v in factors], dim=1))
    # s is copied: a view of an SVD's singular values would keep all of them
    return [LowRank(u_perp[:, t * k:(t + 1) * k], s.clone(), v_perp[:, t * k:(t + 1) * k])
            for t, (_, s, _) in enumerate(factors)]


def tsv_m_pieces(deltas: Sequence[torch.Tensor]) -> list[LowRank]:
    """Per-task TSV-M pieces of one matrix from the task vectors (top r/T triplets each)."""
    k = tsv_rank(deltas[0], len(deltas))
    return orthogonalised_pieces([top_k_svd(d, k) for d in deltas])


@register_method(
    "tsv",
    hyperparameters=[ALPHA, EMBEDDINGS],
    threaded=True,
    keeps_unchanged=True,
    scale=lambda w, p: p["alpha"],
    piece_params=("embeddings",),
)
def tsv(base, deltas, params: Params, name: str) -> list[Piece]:
    """TSV-M: merge each matrix's top task singular vectors after decorrelating them."""
    if is_decomposed(deltas[0], name, params):
        return tsv_m_pieces([d.to(base.dtype) for d in deltas])
    return [Scaled(d, len(deltas)) for d in deltas]


def task_in_range(weights: Sequence[float], params: Params) -> str | None:
    """TSV-C's `task` must name one of the endpoints: the method's refusal (`MergeMethod.check`),
    so that a recipe's plan and a campaign file name it before any merge work."""
    task = params["task"]
    return f"task {task} is not a model index (0..{len(weights) - 1})" if task >= len(weights) else None


@register_method(
    "tsv_c",
    threaded=True,
    keeps_unchanged=True,
    check=task_in_range,
    hyperparameters=[H("task", 0, 0, None, searchable=False, help="index of the model to reconstruct"),
                     ALPHA, EMBEDDINGS],
    scale=lambda w, p: p["alpha"],
    piece_params=("task", "embeddings"),
)
def tsv_c(base, deltas, params: Params, name: str) -> list[Piece]:
    """TSV-C: task `task` rebuilt from its top r/T singular triplets (about 1/T of its storage)."""
    t = params["task"]
    pieces: list[Piece] = [None] * len(deltas)
    delta = deltas[t]
    if is_decomposed(delta, name, params):
        u, s, v = top_k_svd(delta.to(base.dtype), tsv_rank(delta, len(deltas)))
        # copies of the top-k slices only (views would keep the full SVD alive); v^T keeps its layout
        pieces[t] = LowRank(u.contiguous(), s.clone(), v.T.clone().T)
    else:
        pieces[t] = delta
    return pieces


@register_method("iso_c", hyperparameters=[ALPHA, EMBEDDINGS], threaded=True, keeps_unchanged=True)
def iso_c(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Iso-C: the summed task vector with its singular values flattened to their mean."""
    total = sum(w * d for w, d in zip(weights, deltas))
    if is_decomposed(total, name, params):
        u, s, vh = svd(total)
        total = s.mean() * (u @ vh)
    return base + params["alpha"] * total
