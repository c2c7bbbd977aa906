"""The genome: decode/encode round trips, the real-vector encoding, seeded first generations."""

import numpy as np
import pytest

from evo_merge.merge.kinds import declared_ranges
from evo_merge.search.algorithms import make_algorithm
from evo_merge.search.candidate import Candidate, standard_merges
from evo_merge.search.space import RealEncoding, SearchSpace


@pytest.fixture
def space():
    methods = {"task_arithmetic": declared_ranges("task_arithmetic", {}),
               "ties": declared_ranges("ties", {"density": (0.2, 0.9)})}
    return SearchSpace(methods, 2, (0.0, 1.5))


def test_the_genome_has_a_method_choice_a_coefficient_per_model_and_each_methods_ranges(space):
    variables = space.variables()
    assert set(variables) == {"method", "c0", "c1", "task_arithmetic.lambda", "ties.density", "ties.lambda"}
    assert variables["ties.density"].bounds == (0.2, 0.9)


def test_decode_keeps_only_the_chosen_methods_parameters_rounded(space):
    x = {"method": "ties", "c0": 0.123456789, "c1": 1.0, "task_arithmetic.lambda": 0.7,
         "ties.density": 0.5, "ties.lambda": 1.0}
    assert space.decode(x) == Candidate("ties", (0.123457, 1.0), (("density", 0.5), ("lambda", 1.0)))


def test_encode_then_decode_gives_the_candidate_back(space):
    candidate = Candidate("task_arithmetic", (0.25, 1.25), (("lambda", 0.9),))
    assert space.decode(space.encode(candidate)) == candidate


def test_only_candidates_inside_the_ranges_are_expressible(space):
    merges = standard_merges(2)
    expressible = [space.decode(x) for x in space.expressible(list(merges.values()))]
    assert merges["task_arithmetic lambda=0.3"] not in expressible  # lambda searched over [0.5, 1.5]
    assert merges["ties density=0.2"] in expressible and merges["tsv alpha=1"] not in expressible


def test_the_real_encoding_maps_every_vector_to_a_genome_and_back(space):
    encoding = RealEncoding(space)
    rng = np.random.default_rng(0)
    for vector in rng.uniform(size=(20, 1 + len(encoding.names))):
        genome = encoding.genome(vector)
        assert genome["method"] in space.methods
        again = encoding.genome(encoding.vector(genome))
        assert space.decode(again) == space.decode(genome)


@pytest.mark.parametrize("name", ["nsga2", "smsemoa", "ga", "cmaes"])
def test_the_first_generation_starts_from_the_seeds(space, name):
    seeds = [Candidate("task_arithmetic", (1.0, 1.0), (("lambda", 0.7),)),
             Candidate("ties", (1.0, 1.0), (("density", 0.2), ("lambda", 1.0)))]
    search = make_algorithm(name, space, n_objectives=1 if name in ("ga", "cmaes") else 2, population=6,
                            generations=2, seed=0, seeds=seeds)
    asked = [search.to_candidate(ind.X) for ind in search.algorithm.ask()]
    assert seeds[0] in asked
    if name != "cmaes":  # CMA-ES starts its distribution at the first seed and samples around it
        assert seeds[1] in asked and len(asked) == 6


def test_methods_that_ignore_the_weights_decode_them_as_ones():
    """model_stock ignores per-model weights (as in mergekit): genomes differing only there are one candidate."""
    space = SearchSpace({"model_stock": declared_ranges("model_stock", {})}, 2, (0.0, 1.5))
    genomes = [{**space.encode(Candidate("model_stock", (w, 1.0 - w))), "method": "model_stock"} for w in (0.1, 0.9)]
    decoded = [space.decode(g) for g in genomes]
    assert decoded[0] == decoded[1] and decoded[0].weights == (1.0, 1.0)
