"""The genome: which method, endpoint coefficients, and the method's hyperparameters.

One coefficient per endpoint, or (`granularity: blocks:N`) one per endpoint per group of N
blocks plus one for the tensors outside the blocks (`groups` per endpoint).

Mixed variables for pymoo (a `Choice` of method, `Real`/`Integer` numbers). Every method's
hyperparameters are in the genome; only the chosen method's count, so a candidate's identity
(`Candidate.key`) ignores the others and two genomes that build the same model share one
evaluation. CMA-ES, which needs a plain real vector, uses `RealEncoding`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.core.mixed import MixedVariableSampling
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.core.variable import Choice, Integer, Real

from evo_merge.merge import layers
from evo_merge.merge.groups import n_groups
from evo_merge.merge.kinds import Ranges, kind_hyperparameter
from evo_merge.search.candidate import MODEL, Candidate, grouped_candidate, round_value
from evo_merge.search.kinds import candidate_kind
from evo_merge.weights import Checkpoint


class SearchSpace:
    """`methods` maps each searched method to its searched hyperparameter ranges (already
    resolved by its kind, e.g. MASS's routing layers from the base); `fixed` to the values its
    other hyperparameters take in every candidate (a DARE seed), which are no genes."""

    def __init__(self, methods: Mapping[str, Ranges], n_models: int, coefficient_range: tuple[float, float],
                 granularity: str = MODEL, groups: int = 1, fixed: Mapping[str, Mapping[str, Any]] | None = None):
        self.methods = {name: dict(ranges) for name, ranges in methods.items()}
        self.fixed = {name: dict((fixed or {}).get(name, {})) for name in self.methods}
        self.n_models = n_models
        self.coefficient_range = coefficient_range
        self.granularity, self.groups = granularity, groups

    def _is_int(self, method: str, name: str) -> bool:
        return kind_hyperparameter(method, name).kind is int

    def _coefficients(self, t: int) -> list[str]:
        """Endpoint `t`'s coefficient variables (model granularity keeps the names older runs replay)."""
        return [f"c{t}"] if self.groups == 1 else [f"c{t}_{g}" for g in range(self.groups)]

    def variables(self) -> dict[str, Any]:
        variables: dict[str, Any] = {"method": Choice(options=list(self.methods))}
        for t in range(self.n_models):
            for name in self._coefficients(t):
                variables[name] = Real(bounds=self.coefficient_range)
        for method, ranges in self.methods.items():
            for name, (low, high) in ranges.items():
                kind = Integer if self._is_int(method, name) else Real
                variables[f"{method}.{name}"] = kind(bounds=(low, high))
        return variables

    def decode(self, x: Mapping[str, Any]) -> Candidate:
        method = str(x["method"])
        params = list(self.fixed[method].items())
        for name in self.methods[method]:
            value = x[f"{method}.{name}"]
            params.append((name, int(value) if isinstance(value, (int, np.integer)) else round_value(float(value))))
        if not candidate_kind(method).uses_weights(method):
            return Candidate(method, (1.0,) * self.n_models, tuple(sorted(params)))
        groups = [[round_value(float(x[n])) for n in self._coefficients(t)] for t in range(self.n_models)]
        return grouped_candidate(method, groups, tuple(sorted(params)), self.granularity)

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        """A genome that decodes to `candidate`, values clipped to the searched ranges; the other
        methods' hyperparameters sit mid-range (they play no part). A model-granularity candidate
        has its weight in every group."""
        x: dict[str, Any] = {"method": candidate.method}
        low, high = self.coefficient_range
        names = [name for t in range(self.n_models) for name in self._coefficients(t)]
        for name, weight in zip(names, self.coefficients(candidate)):
            x[name] = float(np.clip(weight, low, high))
        params = candidate.param_dict
        for method, ranges in self.methods.items():
            for name, (lo, hi) in ranges.items():
                value = params.get(name, (lo + hi) / 2) if method == candidate.method else (lo + hi) / 2
                value = min(max(value, lo), hi)
                x[f"{method}.{name}"] = round(value) if self._is_int(method, name) else float(value)
        return x

    def coefficients(self, candidate: Candidate) -> list[float]:
        """The candidate's weights laid out as this genome's coefficients, endpoint by endpoint
        (a model-granularity weight fills its endpoint's groups): comparable across granularities."""
        out: list[float] = []
        for weights in candidate.endpoint_weights(self.n_models):
            out += list(weights) * self.groups if len(weights) == 1 else list(weights)
        return out

    def coordinates(self, candidate: Candidate) -> np.ndarray:
        """Where a candidate lies among recipes, each coordinate in [0, 1]: its method (one-hot),
        its coefficients and its method's searched hyperparameters, scaled by their ranges; the
        other methods' hyperparameters are 0, since they play no part. Parameters outside the
        genome (a standard merge's fixed TIES density) are left out."""
        low, high = self.coefficient_range
        method = [float(candidate.method == m) for m in self.methods]
        coefficients = [(w - low) / (high - low) for w in self.coefficients(candidate)]
        params = candidate.param_dict
        hyper = [(params[name] - lo) / (hi - lo) if m == candidate.method and name in params and hi > lo else 0.0
                 for m, ranges in self.methods.items() for name, (lo, hi) in ranges.items()]
        return np.array([*method, *coefficients, *hyper], dtype=float)

    def expressible(self, candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
        """Genomes of the candidates this space can express exactly (method searched, values in range)."""
        genomes = [(c, self.encode(c)) for c in candidates if c.method in self.methods]
        return [x for c, x in genomes if self.decode(x) == c]

    def problem(self, n_objectives: int) -> Problem:
        """Only the variables and objective count: evaluation happens outside (ask-and-tell), so the
        problem holds no models or runners."""
        return Problem(vars=self.variables(), n_obj=n_objectives)

    def sample(self, n: int, seed: int) -> list[Candidate]:
        """`n` random candidates (uniform over methods and ranges), reproducible from `seed`."""
        population = MixedVariableSampling()(self.problem(1), n, random_state=np.random.default_rng(seed))
        return [self.decode(individual.X) for individual in population]


def coefficient_groups(block_size: int | None, base: Path) -> int:
    """Coefficients per endpoint: 1, or one per group of `block_size` of the base's blocks plus
    one for the tensors outside them (read from the checkpoint's headers only)."""
    if block_size is None:
        return 1
    with Checkpoint.open(base) as checkpoint:
        return n_groups(layers.count_layers(checkpoint.names), block_size)


class RealEncoding:
    """The genome as a vector in [0, 1]^d for real-valued algorithms: the method is the
    interval of the first coordinate it falls in, integers are rounded after scaling."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.names = [n for n in space.variables() if n != "method"]

    def problem(self, n_objectives: int) -> Problem:
        d = 1 + len(self.names)
        return Problem(n_var=d, n_obj=n_objectives, xl=np.zeros(d), xu=np.ones(d))

    def genome(self, vector: Sequence[float]) -> dict[str, Any]:
        variables = self.space.variables()
        methods = variables["method"].options
        x: dict[str, Any] = {"method": methods[min(int(float(vector[0]) * len(methods)), len(methods) - 1)]}
        for name, value in zip(self.names, vector[1:]):
            low, high = variables[name].bounds
            scaled = low + float(np.clip(value, 0.0, 1.0)) * (high - low)
            x[name] = int(round(scaled)) if isinstance(variables[name], Integer) else scaled
        return x

    def vector(self, genome: Mapping[str, Any]) -> np.ndarray:
        variables = self.space.variables()
        methods = list(variables["method"].options)
        first = (methods.index(genome["method"]) + 0.5) / len(methods)
        rest = [(genome[n] - variables[n].bounds[0]) / (variables[n].bounds[1] - variables[n].bounds[0])
                for n in self.names]
        return np.array([first, *rest], dtype=float)


class SeededSampling(Sampling):
    """The first generation: the given genomes, then random ones from `random`."""

    def __init__(self, genomes: Sequence[Any], random: Sampling):
        super().__init__()
        self.genomes, self.random = list(genomes), random

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        seeded = self.genomes[:n_samples]
        if len(seeded) == n_samples:
            return np.asarray(seeded, dtype=float) if seeded and isinstance(seeded[0], np.ndarray) else seeded
        rest = self.random(problem, n_samples - len(seeded), random_state=random_state).get("X")
        if isinstance(rest, np.ndarray) and rest.dtype != object:  # real vectors
            return np.vstack([np.asarray(seeded, dtype=float).reshape(-1, problem.n_var), rest])
        return [*seeded, *rest]
