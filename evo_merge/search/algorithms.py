"""pymoo algorithms by name, set up for ask-and-tell over a `SearchSpace`.

Multi-objective algorithms see one objective per task; single-objective ones (`ga`, `cmaes`)
see the declared weighted sum (`objective.weights`) while every task is still estimated and
stored. Genetic algorithms work on the mixed-variable genome with pymoo's mixed-variable
operators; CMA-ES needs a plain real vector and uses `RealEncoding`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating, MixedVariableSampling
from pymoo.operators.sampling.rnd import FloatRandomSampling

from evo_merge.search.candidate import Candidate
from evo_merge.search.space import RealEncoding, SearchSpace, SeededSampling


@dataclass
class SearchAlgorithm:
    """A set-up pymoo algorithm and the map from its individuals to candidates."""

    algorithm: Algorithm
    to_candidate: Callable[[Any], Candidate]


def _reference_directions(n_objectives: int, population: int, seed: int) -> np.ndarray:
    from pymoo.util.ref_dirs import get_reference_directions

    return get_reference_directions("energy", n_objectives, population, seed=seed)


def _mixed(name: str, population: int, sampling, n_objectives: int, seed: int) -> Algorithm:
    operators = {"sampling": sampling,
                 "mating": MixedVariableMating(eliminate_duplicates=MixedVariableDuplicateElimination()),
                 "eliminate_duplicates": MixedVariableDuplicateElimination()}
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=population, **operators)
    if name == "nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3

        return NSGA3(ref_dirs=_reference_directions(n_objectives, population, seed), pop_size=population, **operators)
    if name == "smsemoa":
        from pymoo.algorithms.moo.sms import SMSEMOA

        return SMSEMOA(pop_size=population, **operators)
    from pymoo.algorithms.soo.nonconvex.ga import GA

    return GA(pop_size=population, **operators)


def _cmaes(population: int, sampling: SeededSampling) -> Algorithm:
    """CMA-ES from the first seed (the centre of the box without one), step 0.3 of the box."""
    from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

    x0 = sampling.genomes[0] if sampling.genomes else None
    return CMAES(x0=x0, sigma=0.3, pop_size=population, restarts=0)


def make_algorithm(name: str, space: SearchSpace, *, n_objectives: int, population: int, generations: int,
                   seed: int, seeds: Sequence[Candidate] = ()) -> SearchAlgorithm:
    """The algorithm `name`, set up to stop after `generations`; its first generation starts
    from the `seeds` the space can express, the rest random."""
    genomes = space.expressible(seeds)
    if name == "cmaes":
        encoding = RealEncoding(space)
        sampling = SeededSampling([encoding.vector(g) for g in genomes], FloatRandomSampling())
        algorithm = _cmaes(population, sampling)
        problem = encoding.problem(n_objectives)
        to_candidate = lambda x: space.decode(encoding.genome(x))  # noqa: E731
    else:
        sampling = SeededSampling(genomes, MixedVariableSampling())
        algorithm = _mixed(name, population, sampling, n_objectives, seed)
        problem = space.problem(n_objectives)
        to_candidate = space.decode
    algorithm.setup(problem, termination=("n_gen", generations), seed=seed)
    return SearchAlgorithm(algorithm, to_candidate)
