"""MASS on one task is TSV-C of that task, on all tasks TSV-M, bit for bit (tensors and logits)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from evo_merge.mass import MassFactors, MassModel
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.weights import Checkpoint


def _reference(base, endpoints):
    module = AutoModelForCausalLM.from_pretrained(base).eval()
    return module, InPlaceMerger(module, Checkpoint.open(base), [Checkpoint.open(e) for e in endpoints])


def _ids(rows=5, length=9, seed=0):
    return torch.randint(3, 100, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task", [0, 1, 2])
def test_one_task_selected_is_the_tsv_c_reconstruction_of_that_task(family, task):
    _, base, endpoints = family
    mass = MassModel.from_checkpoints(base, endpoints, max_tasks=1)
    ref, merger = _reference(base, endpoints)
    expected = dict(merger.tensors("tsv_c", [1.0] * 3, {"task": task}))
    got = mass.merged_tensors([task])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    merger.apply("tsv_c", [1.0] * 3, {"task": task})
    mass.pin([task])
    ids = _ids()
    assert torch.equal(mass(ids).logits, ref(ids).logits)


def test_all_tasks_selected_is_tsv_m(family):
    _, base, endpoints = family
    mass = MassModel.from_checkpoints(base, endpoints, threshold=0.0, max_tasks=3)  # every task passes
    ref, merger = _reference(base, endpoints)
    expected = dict(merger.tensors("tsv", [1.0] * 3))
    got = mass.merged_tensors(["ft1", "ft2", "ft3"])
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    ids = _ids()
    assert mass.route(ids)[1] == [(0, 1, 2)] * len(ids)
    merger.apply("tsv", [1.0] * 3)
    assert torch.equal(mass(ids).logits, ref(ids).logits)


def test_subset_merge_of_orthogonal_tasks_is_the_sum_of_their_reconstructions():
    # tasks 0 and 1 use disjoint coordinate directions: orthogonalisation changes nothing
    eye = torch.eye(6)
    triplets = [
        (eye[:, 0:2], torch.tensor([3.0, 1.0]), eye[0:2]),
        (eye[:, 2:4], torch.tensor([2.0, 0.5]), eye[2:4]),
        (eye[:, 4:6], torch.tensor([1.0, 1.0]), eye[4:6]),
    ]
    base = {"w": torch.ones(6, 6), "b": torch.zeros(6)}
    dense = [torch.full((6,), float(t)) for t in range(3)]
    factors = MassFactors(base, {"w": triplets}, {"b": dense}, {"w": torch.float32, "b": torch.float32})
    merged = dict(factors.merged([0, 1]))
    expected_w = torch.ones(6, 6) + torch.diag(torch.tensor([3.0, 1.0, 2.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(merged["w"], expected_w, atol=1e-6)
    assert torch.allclose(merged["b"], torch.full((6,), 0.5))  # the mean of tasks 0 and 1


def test_mixed_batch_is_served_row_by_row_by_its_own_task_set(llama_family):
    base, endpoints = llama_family
    mass = MassModel.from_checkpoints(base, endpoints)
    ids = _ids(rows=8, seed=3)
    sets = mass.route(ids)[1]
    assert len(set(sets)) > 1  # the test needs a mixed batch
    logits = mass(ids).logits
    for row, key in enumerate(sets):
        mass.pin(key)
        assert torch.allclose(logits[row], mass(ids[row:row + 1]).logits[0], atol=1e-5)
    mass.pin(None)
    generated = mass.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    for row, key in enumerate(sets):
        mass.pin(key)
        alone = mass.generate(ids[row:row + 1], attention_mask=torch.ones_like(ids[row:row + 1]),
                              max_new_tokens=5, do_sample=False)
        assert torch.equal(generated[row], alone[0])
    mass.pin(None)
    for settings in ({"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}):
        # generate expands each prompt's row in place: the rows past the prompts were uninitialised logits
        generated = mass.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                  **settings)
        copies = settings.get("num_return_sequences", 1)
        for row, key in enumerate(sets):
            mass.pin(key)
            alone = mass.generate(ids[row:row + 1], attention_mask=torch.ones_like(ids[row:row + 1]),
                                  max_new_tokens=4, do_sample=False, **settings)
            assert torch.equal(generated[row * copies:(row + 1) * copies], alone), (settings, row)
        mass.pin(None)


def test_task_set_cache_is_bounded_and_reused(llama_family):
    base, endpoints = llama_family
    mass = MassModel.from_checkpoints(base, endpoints, cache_size=2)
    first = mass.merged_tensors([0])
    assert mass.merged_tensors([0]) is first
    mass.merged_tensors([1])
    mass.merged_tensors([1])
    mass.merged_tensors([0, 1])  # a third set: the least recently used one, {0}, goes
    again = mass.merged_tensors([0])
    assert again is not first and all(torch.equal(again[n], first[n]) for n in first)
    assert mass.merged_tensors([0, 1]) is mass.merged_tensors([0, 1])
