"""pymoo algorithms by name, set up for ask-and-tell over a `SearchSpace`.

Multi-objective algorithms see one objective per task; single-objective ones (`ga`, `cmaes`)
see the declared weighted sum (`objective.weights`) while every task is still estimated and
stored. Genetic algorithms work on the mixed-variable genome with pymoo's mixed-variable
operators; CMA-ES needs a plain real vector and uses `RealEncoding`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    """A set-up pymoo algorithm and the map from its individuals to candidates. `own_numpy_state`:
    the algorithm draws from numpy's global generator (the `cma` library behind CMA-ES does), which
    anything else in the process may draw from between two asks (a plugin task): it gets a state
    of its own, swapped in around each ask and tell, so that a resume asks what the first run asked.
    `one_starting_point`: the first generation is one point whatever the population (CMA-ES)."""

    algorithm: Algorithm
    to_candidate: Callable[[Any], Candidate]
    own_numpy_state: tuple | None = None
    one_starting_point: bool = False

    def ask(self) -> Any:
        with self._numpy_state():
            return self.algorithm.ask()

    def tell(self, **kwargs: Any) -> None:
        with self._numpy_state():
            self.algorithm.tell(**kwargs)

    @contextmanager
    def _numpy_state(self) -> Iterator[None]:
        if self.own_numpy_state is None:
            yield
            return
        outside = np.random.get_state()
        np.random.set_state(self.own_numpy_state)
        try:
            yield
        finally:
            self.own_numpy_state = np.random.get_state()
            np.random.set_state(outside)


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
    if name == "ga":
        from pymoo.algorithms.soo.nonconvex.ga import GA

        return GA(pop_size=population, **operators)
    raise ValueError(f"no algorithm {name!r}")  # config.AlgorithmName lists those above


def _cmaes(population: int, sampling: SeededSampling, dimensions: int) -> Algorithm:
    """CMA-ES from the first seed (the centre of the unit box without one: pymoo would draw 20
    points whatever the population), step 0.3 of the box. Its first generation is that point."""
    from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

    x0 = sampling.genomes[0] if sampling.genomes else np.full(dimensions, 0.5)
    return CMAES(x0=x0, sigma=0.3, pop_size=population, restarts=0)


# `cma` reads a seed of 0 as "from the clock": a campaign's default seed made CMA-ES runs that a
# resume could not replay. Seed 0 is given to it as this instead (any other seed as it is).
CMA_SEED_FOR_0 = 2**31 - 1


def make_algorithm(name: str, space: SearchSpace, *, n_objectives: int, population: int, generations: int,
                   seed: int, seeds: Sequence[Candidate] = ()) -> SearchAlgorithm:
    """The algorithm `name`, set up to stop after `generations`; its first generation starts
    from the `seeds` the space can express, the rest random (CMA-ES: from the first of them
    alone, its starting point, else the centre of the box)."""
    genomes = space.expressible(seeds)
    if name == "cmaes":
        encoding = RealEncoding(space)
        sampling = SeededSampling([encoding.vector(g) for g in genomes], FloatRandomSampling())
        problem = encoding.problem(n_objectives)
        algorithm = _cmaes(population, sampling, problem.n_var)
        to_candidate = lambda x: space.decode(encoding.genome(x))  # noqa: E731
        seed = seed or CMA_SEED_FOR_0
        own_state = np.random.RandomState(seed).get_state()
    else:
        sampling = SeededSampling(genomes, MixedVariableSampling())
        algorithm = _mixed(name, population, sampling, n_objectives, seed)
        problem = space.problem(n_objectives)
        to_candidate = space.decode
        own_state = None
    algorithm.setup(problem, termination=("n_gen", generations), seed=seed)
    return SearchAlgorithm(algorithm, to_candidate, own_state, one_starting_point=name == "cmaes")
