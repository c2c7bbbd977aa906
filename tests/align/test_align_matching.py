"""Matchers recover known ground truth: a randomly permuted copy is aligned back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_helpers import CONFIGS, trained_like

from evo_merge.align.api import align_models, aligned_states, with_state
from evo_merge.align.assign import assign
from evo_merge.align.builders import spec_for
from evo_merge.align.c2m3 import c2m3, pairwise, perm_objective
from evo_merge.align.spec import Group, PermSpec, apply_permutation, compose, identity, inverse, random_permutation
from evo_merge.align.zipping import zip_merge
from evo_merge.zoo.tiny import make_tiny_causal_lm


def _permuted(arch, model, seed):
    spec = spec_for(arch, model)
    state = model.state_dict()
    perms = random_permutation(spec, spec.sizes(spec.split(state)), np.random.default_rng(seed))
    return spec, state, apply_permutation(spec, state, perms), perms


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["weight", "mudsc", "c2m3"])
@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet"])
def test_recovers_permuted_copy(name, method):
    net = trained_like(CONFIGS[name], seed=0)
    spec, state, permuted, perms = _permuted(CONFIGS[name]["arch"], net, seed=3)
    other = with_state(net, permuted)
    data = torch.randn(64, CONFIGS[name].get("in_dim", 64), generator=torch.Generator().manual_seed(1))
    found = align_models(spec, [state, permuted], method, modules=[net, other], data=data, f=0.5)
    # the permutation found for the copy is the inverse of the one that made it
    for g, p in found.perms[1].items():
        np.testing.assert_array_equal(p, inverse(perms)[g])
    _assert_same(aligned_states(spec, [state, permuted], found)[1], state)


@pytest.mark.parametrize("method", ["activation", "mudsc"])
def test_matching_on_activations_leaves_the_caller_s_models_as_they_were(method):
    """Models in train mode were run so: the matching read batch statistics, and each forward
    moved their BatchNorm running statistics, which a state dict taken without a copy carried
    into the aligned output."""
    net = trained_like(CONFIGS["cnn_bn"], seed=0)
    spec, state, permuted, perms = _permuted("cnn", net, seed=3)
    other = with_state(net, permuted)
    net.train(), other.train()
    frozen = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # one part kept in eval mode by its owner: given back so
    modes = [[m.training for m in model.modules()] for model in (net, other)]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (net, other)]
    data = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    found = align_models(spec, [net.state_dict(), other.state_dict()], method, modules=[net, other], data=data)
    assert [[m.training for m in model.modules()] for model in (net, other)] == modes and not frozen.training
    for model, saved in zip((net, other), before):
        _assert_same(model.state_dict(), saved)
    for g, p in found.perms[1].items():  # and what eval-mode activations say: the copy's true permutation
        np.testing.assert_array_equal(p, inverse(perms)[g])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_weight_matching_recovers_heads(arch):
    model = make_tiny_causal_lm(arch, vocab_size=40, hidden=32, layers=2, heads=4, seed=0)
    spec, state, permuted, perms = _permuted(arch, model, seed=4)
    found = align_models(spec, [state, permuted], "weight")
    _assert_same(aligned_states(spec, [state, permuted], found)[1], state)


def test_already_aligned_models_come_out_unchanged():
    a, b = (trained_like(CONFIGS["mlp"], seed=s) for s in (0, 1))
    spec = spec_for("mlp", a)
    states = [a.state_dict(), b.state_dict()]
    first = aligned_states(spec, states, align_models(spec, states, "weight"))
    again = align_models(spec, first, "weight")
    assert all((p == np.arange(len(p))).all() for p in again.perms[1].values())
    _assert_same(aligned_states(spec, first, again)[1], first[1])


def test_c2m3_cycle_consistent_and_beats_pairwise_to_reference():
    nets = [trained_like(CONFIGS["mlp"], seed=s) for s in range(4)]
    spec = spec_for("mlp", nets[0])
    states = [spec.split(n.state_dict()) for n in nets]
    perms = c2m3(spec, states)
    for i, j, k in [(0, 1, 2), (1, 2, 3), (3, 1, 0), (2, 0, 3)]:
        composed = compose(pairwise(perms, j, k), pairwise(perms, i, j))  # C -> B, then B -> A
        for g, p in pairwise(perms, i, k).items():
            np.testing.assert_array_equal(composed[g], p)
    reference = align_models(spec, [n.state_dict() for n in nets], "weight").perms
    ours, theirs = perm_objective(spec, states, perms), perm_objective(spec, states, reference)
    naive = perm_objective(spec, states, [identity(spec.sizes(states[0]))] * 4)
    assert ours >= theirs > naive


def test_two_level_assignment_keeps_blocks_and_ties():
    spec = PermSpec(
        axes={"q": ("a",), "v": ("b",)},
        groups={"a": Group(blocks=2, within=False, tie="t"), "b": Group(blocks=2, tie="t")},
    )
    rng = np.random.default_rng(0)
    truth = {"a": np.array([2, 3, 0, 1]), "b": np.array([3, 2, 1, 0])}  # heads swapped, b also inside
    scores = {g: np.eye(4)[p] * 5 + rng.random((4, 4)) for g, p in truth.items()}
    found = assign(spec, ["a", "b"], scores)
    for g in truth:
        np.testing.assert_array_equal(found[g], truth[g])


def test_zip_of_a_model_with_itself_is_the_model():
    net = trained_like(CONFIGS["mlp"], seed=0)
    spec = spec_for("mlp", net)
    data = torch.randn(64, 20, generator=torch.Generator().manual_seed(0))
    merged = with_state(net, zip_merge(spec, net, net, data, f=0.5))
    torch.testing.assert_close(merged(data), net(data), rtol=1e-4, atol=1e-5)


def test_correlations_equal_numpy_s():
    """Matching by activations ranks units by Pearson correlation: rows against rows, and columns
    from the moments gathered batch by batch, as numpy computes them (no centring, or a variance
    for a standard deviation, gave other matches)."""
    from evo_merge.align.features import moments_correlation, pearson_rows

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 50, generator=gen) + 2.0, torch.randn(4, 50, generator=gen) * 3.0 - 1.0
    y[0] = 0.5 * x[0] + 0.2 * y[0]
    expected = np.corrcoef(torch.cat([x, y]).double().numpy())[:3, 3:]
    np.testing.assert_allclose(pearson_rows(x, y), expected, atol=1e-5)
    z = torch.cat([x, y]).T.double()  # 50 rows of 7 columns
    np.testing.assert_allclose(moments_correlation(z.sum(0), z.T @ z, len(z)), np.corrcoef(z.T.numpy()), atol=1e-9)


def test_mudsc_s_balance_search_scores_aligned_averages(monkeypatch):
    """`search_f` scores each f's merge of the reference with the other model aligned to it: of a
    permuted copy, the merge is the model itself (its average with itself) wherever the matching
    recovers the copy (every f of the grid but 0 here). Averaged unaligned, the merges it ranked were
    none of them the model."""
    import evo_merge.align.api as api

    net = trained_like(CONFIGS["mlp"], seed=0)
    spec, _, permuted, _ = _permuted(CONFIGS["mlp"]["arch"], net, seed=3)
    other = with_state(net, permuted)
    data = torch.randn(64, CONFIGS["mlp"].get("in_dim", 64), generator=torch.Generator().manual_seed(1))
    scored, score = [], api.merge_score
    monkeypatch.setattr(api, "merge_score", lambda merged, *args: scored.append(merged.state_dict()) or score(
        merged, *args))
    api.search_f(spec, net, other, data)
    itself = [all(torch.allclose(merged[name], tensor, atol=1e-6) for name, tensor in net.state_dict().items())
              for merged in scored]
    assert itself == [False, True, True, True, True]
