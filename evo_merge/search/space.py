"""The genome: which method, one coefficient per endpoint, and the method's hyperparameters.

Mixed variables for pymoo (a `Choice` of method, `Real`/`Integer` numbers). Every method's
hyperparameters are in the genome; only the chosen method's count, so a candidate's identity
(`Candidate.key`) ignores the others and two genomes that build the same model share one
evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymoo.core.mixed import MixedVariableSampling
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.core.variable import Choice, Integer, Real

from evo_merge.merge.kinds import MASS, kind_hyperparameter, kind_hyperparameters

SIGNIFICANT = 6  # genomes equal to 6 significant digits are the same candidate


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


@dataclass(frozen=True)
class Candidate:
    """A merge recipe in search form: method, per-endpoint weights, method parameters."""

    method: str
    weights: tuple[float, ...]
    params: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return json.dumps([self.method, list(self.weights), [list(p) for p in self.params]])

    @classmethod
    def from_key(cls, key: str) -> Candidate:
        method, weights, params = json.loads(key)
        return cls(method, tuple(weights), tuple((k, v) for k, v in params))

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


class SearchSpace:
    def __init__(self, methods: Mapping[str, Mapping[str, tuple[float, float]]], n_models: int,
                 coefficient_range: tuple[float, float]):
        self.methods = {name: dict(ranges) for name, ranges in methods.items()}
        self.n_models = n_models
        self.coefficient_range = coefficient_range

    def _hyper_ranges(self, method: str) -> dict[str, tuple[float, float]]:
        """Searched hyperparameters: the configured range, else the method's declared range."""
        ranges = {}
        for hp in kind_hyperparameters(method):
            if not hp.searchable or hp.kind is bool:
                continue
            if hp.name in self.methods[method]:
                ranges[hp.name] = tuple(self.methods[method][hp.name])
            elif hp.search_range is not None:
                ranges[hp.name] = hp.search_range
            elif hp.low is not None and hp.high is not None:
                ranges[hp.name] = (hp.low, hp.high)
        return ranges

    def variables(self) -> dict[str, Any]:
        variables: dict[str, Any] = {"method": Choice(options=list(self.methods))}
        for t in range(self.n_models):
            variables[f"c{t}"] = Real(bounds=self.coefficient_range)
        for method in self.methods:
            for name, (low, high) in self._hyper_ranges(method).items():
                kind = Integer if kind_hyperparameter(method, name).kind is int else Real
                variables[f"{method}.{name}"] = kind(bounds=(low, high))
        return variables

    def decode(self, x: Mapping[str, Any]) -> Candidate:
        method = str(x["method"])
        if method == MASS:  # routing picks the tasks; endpoint weights play no part
            weights = (1.0,) * self.n_models
        else:
            weights = tuple(_round(float(x[f"c{t}"])) for t in range(self.n_models))
        params = []
        for name in self._hyper_ranges(method):
            value = x[f"{method}.{name}"]
            params.append((name, int(value) if isinstance(value, (int, np.integer)) else _round(float(value))))
        return Candidate(method, weights, tuple(sorted(params)))

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        """A genome that decodes to `candidate`, values clipped to the searched ranges; the other
        methods' hyperparameters sit mid-range (they play no part)."""
        x: dict[str, Any] = {"method": candidate.method}
        low, high = self.coefficient_range
        for t in range(self.n_models):
            x[f"c{t}"] = float(np.clip(candidate.weights[t], low, high))
        params = candidate.param_dict
        for method in self.methods:
            for name, (lo, hi) in self._hyper_ranges(method).items():
                value = params.get(name, (lo + hi) / 2) if method == candidate.method else (lo + hi) / 2
                value = min(max(value, lo), hi)
                x[f"{method}.{name}"] = round(value) if kind_hyperparameter(method, name).kind is int else float(value)
        return x

    def problem(self, n_objectives: int) -> Problem:
        return MergeProblem(self.variables(), n_objectives)

    def sample(self, n: int, seed: int) -> list[Candidate]:
        """`n` random candidates (uniform over methods and ranges), reproducible from `seed`."""
        population = MixedVariableSampling()(self.problem(1), n, random_state=np.random.default_rng(seed))
        return [self.decode(individual.X) for individual in population]


def standard_merges(n_models: int, lambdas: Sequence[float] = (0.3, 0.5, 0.7, 1.0)) -> dict[str, Candidate]:
    """The merges a user tries first, each endpoint weighted 1: task arithmetic over a lambda
    grid, TIES at density 0.2, TSV-M at alpha 1."""
    ones = (1.0,) * n_models
    out = {f"task_arithmetic lambda={lam}": Candidate("task_arithmetic", ones, (("lambda", lam),)) for lam in lambdas}
    out["ties density=0.2"] = Candidate("ties", ones, (("density", 0.2), ("lambda", 1.0)))
    out["tsv alpha=1"] = Candidate("tsv", ones, (("alpha", 1.0),))
    return out


class SeededSampling(Sampling):
    """The first generation: the given genomes, then random ones (pymoo's mixed-variable sampling)."""

    def __init__(self, genomes: Sequence[Mapping[str, Any]]):
        super().__init__()
        self.genomes = [dict(g) for g in genomes]

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        seeded = self.genomes[:n_samples]
        return seeded + MixedVariableSampling()._do(problem, n_samples - len(seeded), random_state=random_state)


class MergeProblem(Problem):
    """Only the variables and objective count: evaluation happens outside (ask-and-tell), so the
    problem pickles with the algorithm and holds no models or runners."""

    def __init__(self, variables: dict[str, Any], n_objectives: int):
        super().__init__(vars=variables, n_obj=n_objectives)


def objectives(scores: Sequence[float], directions: Sequence[str]) -> np.ndarray:
    """pymoo minimises: negate the scores to maximise."""
    return np.array([-s if d == "maximize" else s for s, d in zip(scores, directions)], dtype=float)
