"""C2M3: cycle-consistent matching of N models to one universe with Frank-Wolfe.

Every model m gets, per group g, a map P_m^g into the universe; pairwise maps are P_i^T P_j, so
they compose exactly by construction. The objective is the weight-matching objective summed
over all pairs, sum_{i<j} <U_i, U_j> with U_m the model mapped to the universe. It is
maximised over doubly stochastic matrices with Frank-Wolfe: the gradient's structured linear
assignment gives the vertex, one step size shared by every matrix is found by an exact line
search (the objective is a polynomial in the step), and the result is rounded to permutations
by assignment. Model 0 fixes the gauge (its map is the identity), so the universe is expressed
in model 0's basis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evo_merge.align.assign import assign
from evo_merge.align.spec import Perms, PermSpec, State, compose, identity, inverse

Maps = list[dict[str, torch.Tensor]]


def _apply(
    spec: PermSpec, name: str, tensor: torch.Tensor, maps: dict[str, torch.Tensor], skip: int | None = None
) -> torch.Tensor:
    for axis, group in enumerate(spec.axes[name]):
        if group is not None and axis != skip:
            moved = tensor.movedim(axis, 0)
            tensor = (maps[group] @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape).movedim(0, axis)
    return tensor


def _universe(spec: PermSpec, states: Sequence[State], maps: Maps) -> list[State]:
    """Every model mapped into the universe; model 0 (the gauge, identity maps) as it is."""
    return [dict(states[0])] + [{n: _apply(spec, n, t, m) for n, t in s.items()} for s, m in zip(states[1:], maps[1:])]


def _grouped_float(spec: PermSpec, states: Sequence[State]) -> list[State]:
    return [{n: t.float() for n, t in s.items() if n in spec.grouped} for s in states]


def perm_objective(spec: PermSpec, states: Sequence[State], perms: Sequence[Perms]) -> float:
    """The C2M3 objective of permutations (per model, into a common basis); states are split.
    Re-expressed in model 0's basis first: the objective does not depend on the gauge."""
    maps = [{g: _as_matrix(p, torch.float32) for g, p in pairwise(perms, 0, m).items()} for m in range(len(perms))]
    return objective(spec, _grouped_float(spec, states), maps)


def objective(spec: PermSpec, states: Sequence[State], maps: Maps) -> float:
    """sum over pairs i<j of <U_i, U_j> (grouped parameters only; the rest is a constant)."""
    univ = _universe(spec, states, maps)
    total = 0.0
    for name in univ[0]:
        stack = [u[name] for u in univ]
        summed = sum(stack)
        total += 0.5 * float((summed * summed).sum() - sum((u * u).sum() for u in stack))
    return total


def _gradients(spec: PermSpec, states: Sequence[State], maps: Maps) -> Maps:
    univ = _universe(spec, states, maps)
    summed = {name: sum(u[name] for u in univ) for name in univ[0]}
    grads: Maps = [{}]  # model 0 is the gauge: no gradient needed
    for state, m_maps, u in zip(states[1:], maps[1:], univ[1:]):
        grad = {}
        for g, members in spec.index.items():
            total = 0
            for name, axis in members:
                others = (summed[name] - u[name]).movedim(axis, 0)
                mine = _apply(spec, name, state[name], m_maps, skip=axis).movedim(axis, 0)
                total = total + others.reshape(len(others), -1) @ mine.reshape(len(mine), -1).T
            grad[g] = total
        grads.append(grad)
    return grads


def _line_search(
    spec: PermSpec, states: Sequence[State], maps: Maps, direction: Maps, value: float
) -> tuple[float, float]:
    """The best shared step in [0, 1] and the objective there; exact, as the objective is a
    polynomial in the step (`value`: the objective at step 0)."""
    degree = 2 * max(sum(g is not None for g in axes) for axes in spec.axes.values())
    steps = np.linspace(0.0, 1.0, degree + 1)
    values = [value] + [
        objective(spec, states, [{g: p[g] + t * d[g] for g in p} for p, d in zip(maps, direction)]) for t in steps[1:]
    ]
    poly = np.polynomial.Polynomial.fit(steps, values, degree)
    candidates = [0.0, 1.0] + [r.real for r in poly.deriv().roots() if abs(r.imag) < 1e-9 and 0 < r.real < 1]
    best = max(candidates, key=poly)
    return best, float(poly(best))


def _sinkhorn(matrix: torch.Tensor, iters: int = 10) -> torch.Tensor:
    for _ in range(iters):
        matrix = matrix / matrix.sum(1, keepdim=True)
        matrix = matrix / matrix.sum(0, keepdim=True)
    return matrix


def _as_matrix(perm: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(len(perm), len(perm), dtype=dtype)
    out[torch.arange(len(perm)), torch.as_tensor(perm)] = 1
    return out


def c2m3(
    spec: PermSpec, states: Sequence[State], *, max_iter: int = 30, tol: float = 1e-5, seed: int = 0
) -> list[Perms]:
    """Per model, the permutations into the universe (model 0: identity). States are split."""
    sizes = spec.sizes(states[0])
    states = _grouped_float(spec, states)
    gen = torch.Generator().manual_seed(seed)
    maps: Maps = [{g: torch.eye(n) for g, n in sizes.items()}]
    for _ in states[1:]:
        maps.append({g: _sinkhorn(torch.exp(0.01 * torch.randn(n, n, generator=gen))) for g, n in sizes.items()})
    value = objective(spec, states, maps)
    for _ in range(max_iter):
        grads = _gradients(spec, states, maps)
        direction: Maps = [{g: torch.zeros_like(p) for g, p in maps[0].items()}]
        for m in range(1, len(states)):
            vertex: dict[str, torch.Tensor] = {}
            for unit in spec.units:
                best = assign(spec, unit, {g: grads[m][g].double().numpy() for g in unit})
                vertex |= {g: _as_matrix(best[g], torch.float32) for g in unit}
            direction.append({g: vertex[g] - maps[m][g] for g in sizes})
        step, new_value = _line_search(spec, states, maps, direction, value)
        maps = [{g: p[g] + step * d[g] for g in p} for p, d in zip(maps, direction)]
        if step == 0.0 or new_value - value <= tol * max(1.0, abs(value)):
            break
        value = new_value
    out = []
    for m_maps in maps:
        perms: Perms = {}
        for unit in spec.units:
            perms |= assign(spec, unit, {g: m_maps[g].double().numpy() for g in unit})
        out.append(perms)
    unchanged = [identity(sizes)] * len(states)
    # never worse than leaving the models as they are (so aligned models come out unchanged)
    return out if perm_objective(spec, states, out) > perm_objective(spec, states, unchanged) else unchanged


def pairwise(perms: Sequence[Perms], i: int, j: int) -> Perms:
    """Model j expressed in model i's basis: P_i^T P_j as index arrays."""
    return compose(perms[j], inverse(perms[i]))
