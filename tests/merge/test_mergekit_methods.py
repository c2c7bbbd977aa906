"""mergekit's methods against hand-computed values, invariants and sampling statistics."""

import math

import pytest
import torch

from evo_merge.errors import UserError
from evo_merge.merge import get_method
from evo_merge.merge.sparse import della_probabilities

T = torch.tensor


def run(method, base, deltas, weights=None, name="model.layers.0.mlp.weight", **params):
    m = get_method(method)
    weights = weights or [1.0] * len(deltas)
    return m.fn(base, deltas, weights, m.resolve(params, len(deltas)), name)


def test_breadcrumbs_drops_outliers_and_small_entries():
    delta = T([0.1, -5.0, 0.3, 2.0, -0.2, 0.4, 1.0, -0.05, 0.6, 0.7])
    # density 0.5 keeps 5 of 10; gamma 0.1 drops the largest (|-5|), then the 4 smallest
    out = run("breadcrumbs", torch.zeros(10), [delta], density=0.5, gamma=0.1)
    assert torch.equal(out, T([0.0, 0.0, 0.0, 2.0, 0.0, 0.4, 1.0, 0.0, 0.6, 0.7]))
    # rescale: the survivors scaled to the L1 norm of the whole task vector
    scaled = run("breadcrumbs", torch.zeros(10), [delta], density=0.5, gamma=0.1, rescale=True)
    assert torch.allclose(scaled.abs().sum(), delta.abs().sum())


def test_breadcrumbs_ties_elects_signs_after_trimming():
    deltas = [T([1.0, -2.0]), T([-3.0, 1.0])]
    out = run("breadcrumbs_ties", torch.zeros(2), deltas)  # density 1: nothing trimmed, sum, no normalize
    assert torch.equal(out, T([-3.0, -2.0]))


def test_sce_weights_tasks_by_energy_and_erases_minority_signs():
    d1, d2 = T([1.0, 1.0]), T([3.0, -3.0])
    # energies 1 and 9 -> weights 0.1, 0.9; entry 1: sum -2 elects minus, only d2 votes
    out = run("sce", torch.zeros(2), [d1, d2], [5.0, 0.1])  # model weights are not used
    assert torch.allclose(out, T([(0.1 * 1 + 0.9 * 3) / 1.0, -3.0]))


def test_sce_merges_a_0_d_tensor_weighting_each_task_by_its_own_energy():
    """A scalar parameter (a 0-d tensor) was a TypeError (`len()` of a 0-d tensor): each task's
    energy is its mean squared delta over its entries, here the one: 1 and 9, weights 0.1, 0.9."""
    out = run("sce", torch.tensor(0.5), [torch.tensor(1.0), torch.tensor(3.0)])
    assert out.shape == () and torch.allclose(out, torch.tensor(0.5 + (0.1 * 1 + 0.9 * 3) / 1.0))


def test_sce_weights_tasks_alike_when_their_energies_sum_under_1e_6():
    """mergekit's SCE: a task's energy is its mean squared delta, and where they sum under 1e-6 every
    task weighs the same; real fine-tunes (deltas ~1e-3 and less) are that case. Energies 1e-8 and
    9e-8: weights 1/2, 1/2 (summed energies, 1e-5 and 9e-5, would give 0.1 and 0.9: 2.8e-4)."""
    out = run("sce", torch.zeros(1000), [torch.full((1000,), 1e-4), torch.full((1000,), 3e-4)])
    assert torch.allclose(out, torch.full((1000,), 2e-4), rtol=1e-5, atol=0)


def test_model_stock_interpolation_ratio():
    base = torch.zeros(2)
    d1, d2 = T([1.0, 0.0]), T([0.0, 1.0])  # orthogonal: cos 0 -> t 0 -> the base
    assert torch.allclose(run("model_stock", base, [d1, d2]), base)
    same = [T([1.0, 1.0]), T([2.0, 2.0])]  # cos 1 -> t = 2 / 2 = 1 -> the average
    assert torch.allclose(run("model_stock", base, same), T([1.5, 1.5]))


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_keeps_the_base_where_task_vectors_are_opposed(filter_wise):
    """cos -1 for two models: t = 2 cos / (1 + cos) has no value; mergekit keeps the base there
    (it gave NaN and inf, then an 'overflowed the output dtype' refusal)."""
    base = T([[0.5, 0.5], [1.0, 1.0]])
    opposed = [T([[1.0, 0.0], [1.0, 1.0]]), T([[-1.0, 0.0], [2.0, 2.0]])]
    out = run("model_stock", base, opposed, filter_wise=filter_wise)
    assert torch.isfinite(out).all()
    if filter_wise:  # row 0 opposed: the base; row 1 aligned: t 1, the average
        assert torch.equal(out, T([[0.5, 0.5], [2.5, 2.5]]))
    else:
        cos = (-1.0 + 2.0 + 2.0) / (math.sqrt(3.0) * math.sqrt(9.0))  # the flattened offsets
        t = 2 * cos / (1 + cos)
        assert torch.allclose(out, base + t * (opposed[0] + opposed[1]) / 2)
    assert torch.equal(run("model_stock", base[0], [T([1.0, 0.0]), T([-1.0, 0.0])]), base[0])


def test_nuslerp_of_opposed_task_vectors_interpolates_linearly():
    """In float32 the cosine of opposed vectors is -1 exactly and sin(acos(-1)) is -8.7e-8, not 0:
    dividing by it wrote entries of 1e5. Colinear is judged by the cosine, as mergekit judges it."""
    a = T([0.02, 0.0, 0.0])
    for row_wise, flatten in ((False, True), (True, False), (False, False)):
        out = run("nuslerp", torch.zeros(1, 3), [a.view(1, 3), -0.5 * a.view(1, 3)], [1.0, 1.0],
                  nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
        assert torch.allclose(out, 0.25 * a.view(1, 3)), (row_wise, flatten)


def test_nuslerp_and_multislerp_reduce_to_slerp_and_keep_norms():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    zero = torch.zeros(2)
    mid = T([math.sqrt(0.5), math.sqrt(0.5)])
    assert torch.allclose(run("nuslerp", zero, [a, b], [1.0, 1.0]), mid, atol=1e-6)
    assert torch.allclose(run("multislerp", zero, [a, b], [1.0, 1.0]), mid, atol=1e-6)
    quarter = run("nuslerp", zero, [a, b], [3.0, 1.0])  # t = 1/4 of the angle from a
    assert torch.allclose(quarter, T([math.cos(math.pi / 8), math.sin(math.pi / 8)]), atol=1e-6)


def test_multislerp_rescales_to_the_weighted_mean_norm_of_unequal_models():
    """The output norm is sum(w_i |v_i|) / sum(w): with equal weights and unit norms a plain mean of
    the norms gives the same value, so that test could not tell them apart. [2, 0] at weight 3 and
    [0, 1] at weight 1: the unit directions average to (3, 1)/4, whose tangent step is zero, so the
    result is (3, 1)/sqrt(10) times (3 * 2 + 1 * 1) / 4 = 1.75 (a plain mean would give 1.5)."""
    base = T([1.0, -1.0])
    out = run("multislerp", base, [T([2.0, 0.0]), T([0.0, 1.0])], [3.0, 1.0])
    assert torch.allclose(out, base + 1.75 * T([3.0, 1.0]) / math.sqrt(10.0), atol=1e-6)


def test_multislerp_keeps_the_base_where_no_model_changed_the_tensor():
    """Endpoints folded from LoRA adapters, or fine-tuned with frozen norms, leave most tensors as
    the base: with three models or more every such tensor stopped the merge, blaming the weights."""
    base = T([[0.5, -1.0], [2.0, 0.25]])
    zero = torch.zeros_like(base)
    for n in (2, 3, 4):
        assert torch.equal(run("multislerp", base, [zero] * n, [0.6, 0.9, 0.3, 0.2][:n]), base), n
    with pytest.raises(UserError, match="cancel out"):  # directions that do cancel: still said
        run("multislerp", torch.zeros(2), [T([1.0, 0.0]), T([-1.0, 0.0]), T([0.0, 0.0])], [1.0, 1.0, 1.0])


def test_multislerp_refuses_weights_it_cannot_normalise():
    """Weights summing to 0 made every tensor NaN, refused only as it was written, as an overflow."""
    m = get_method("multislerp")
    params = m.resolve({}, 3)
    assert "weights sum to 0" in m.check([1.0, -1.0, 0.0], params)
    assert m.check([1.0, -1.0, 0.0], m.resolve({"normalize_weights": False}, 3)) is None
    assert m.check([0.6, 0.9, 0.3], params) is None


def test_karcher_mean_of_the_base_and_the_models():
    base = T([1.0, 0.0])
    deltas = [T([-1.0, 1.0])]  # the other model is (0, 1): the mean direction is 45 degrees
    out = run("karcher", base, deltas, max_iter=50, tol=1e-9)
    assert torch.allclose(out, T([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-5)


def test_karcher_scales_the_mean_direction_by_the_mean_norm_of_unequal_models():
    """Unit norms could not tell the mean norm from the largest (audit 147): the base (2, 0) and a
    model (0, 1) give the 45-degree direction scaled by (2 + 1) / 2 = 1.5, not by 2."""
    out = run("karcher", T([2.0, 0.0]), [T([-2.0, 1.0])], max_iter=50, tol=1e-9)
    assert torch.allclose(out, 1.5 * T([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-5)


def test_nearswap_swaps_close_entries_and_blends_far_ones():
    base, delta = T([0.0, 0.0]), T([0.005, 0.04])
    out = run("nearswap", base, [delta], t=0.01)  # weight min(1, 0.01/0.005)=1, 0.01/0.04=0.25
    assert torch.allclose(out, T([0.005, 0.01]))
    # mergekit 0.1 floors the distance at 1e-6: below a t of 1e-6 entries closer than that blend
    # by t / 1e-6 (0.1 here), where t / |d| took the model's; the entry the model left stays the base's
    base, delta = T([0.0, 2.0, 0.0, 0.0]), T([5e-7, 0.0, -4e-8, 1e-3])
    assert torch.allclose(run("nearswap", base, [delta], t=1e-7), T([5e-8, 2.0, -4e-9, 1e-7]), rtol=1e-6, atol=0)
    assert torch.equal(run("nearswap", base, [delta], t=0.0), base)
    # the entry the model left keeps the base's bits, a -0.0 too, as mergekit's weight 1 keeps it (audit 136)
    base, delta = T([-0.0, 0.3]), T([0.0, 0.0])
    kept = run("nearswap", base, [delta], t=1e-7).view(torch.int32)
    assert torch.equal(kept, base.view(torch.int32))
    with pytest.raises(UserError, match="parameters.t: required"):
        get_method("nearswap").resolve({}, 1)


def test_arcee_fusion_keeps_only_outlying_changes():
    base = torch.zeros(4, 8)
    delta = torch.zeros(4, 8)
    delta[1, 3] = 2.0
    out = run("arcee_fusion", base, [delta])
    assert torch.equal(out, delta)  # the one large change survives; zero changes stay zero


def test_passthrough_scales_one_model():
    assert torch.equal(run("passthrough", T([1.0, -2.0]), [], scale=0.5), T([0.5, -1.0]))


def test_della_probabilities_rise_with_magnitude_rank():
    delta = T([[0.1, -3.0, 0.5, 2.0, -0.01]])
    probs = della_probabilities(delta, 0.5, 0.1)
    assert torch.allclose(probs, T([[0.45, 0.6, 0.5, 0.55, 0.4]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_breadcrumbs_and_della_rank_tied_magnitudes_by_position(dtype):
    """bfloat16 task vectors hold many equal magnitudes: Breadcrumbs' cuts and DELLA's ranks order
    them as a stable ascending sort does (position breaks ties), the same entries on every device;
    an unstable sort breaks ties its own way on a CPU and another on a GPU."""
    generator = torch.Generator().manual_seed(0)
    delta = (torch.randint(-3, 4, (4000,), generator=generator).to(torch.float32) / 4).to(dtype)
    order = torch.argsort(delta.abs().float(), stable=True)
    kept = run("breadcrumbs", torch.zeros(4000, dtype=dtype), [delta], density=0.5, gamma=0.1) != 0
    expected = torch.zeros(4000, dtype=torch.bool)
    expected[order[1600:3600]] = True  # the 400 largest (gamma) and the 1600 smallest dropped
    assert torch.equal(kept, expected & (delta != 0))
    ranks = torch.empty(4000, dtype=torch.float32)
    ranks[order] = torch.arange(4000, dtype=torch.float32)
    assert torch.equal(della_probabilities(delta, 0.5, 0.1), (0.5 - 0.1) + ranks / 3999 * 2 * 0.1)


def test_breadcrumbs_cuts_keep_the_ranks_a_stable_sort_gives():
    """Breadcrumbs' two cuts against the stable ascending sort they replace, ranks start to stop - 1:
    continuous, bfloat16 and small-integer magnitudes (ties at either cut), zeros, and the ends
    (nothing dropped at the top, nothing at the bottom, nothing kept)."""
    from evo_merge.merge.sparse import _ranked_between

    gen = torch.Generator().manual_seed(1)
    for n in (1, 5, 1000, 4099):
        x = torch.randn(n, generator=gen)
        for values in (x, x.bfloat16().float(), torch.randint(0, 4, (n,), generator=gen).float()):
            values = values.abs()
            order = torch.sort(values, stable=True).indices
            for start, stop in {(0, n), (0, n // 2), (n // 3, n), (n // 3, n - n // 10), (n // 2, n // 2), (n, n),
                                (max(n - 1, 0), n)}:
                expected = torch.zeros(n, dtype=torch.bool)
                expected[order[start:stop]] = True
                assert torch.equal(_ranked_between(values, start, stop), expected), (n, start, stop)


def test_della_keeps_the_expected_density_and_is_unbiased():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 50, generator=gen)
    outs = torch.stack([run("della_linear", torch.zeros(40, 50), [delta], density=0.4, epsilon=0.2, seed=s)
                        for s in range(200)])
    assert abs(float((outs != 0).float().mean()) - 0.4) < 0.01
    probs = della_probabilities(delta, 0.4, 0.2)
    sd = delta.abs() * torch.sqrt((1 - probs) / probs) / math.sqrt(200)
    assert ((outs.mean(0) - delta).abs() <= 5 * sd + 1e-6).all()
    # the largest entries are kept more often than the smallest
    kept = (outs != 0).float().mean(0).flatten()
    order = delta.abs().flatten().argsort()
    assert kept[order[-200:]].mean() > kept[order[:200]].mean() + 0.25


def test_della_rejects_epsilon_outside_the_density():
    with pytest.raises(UserError, match="epsilon"):
        run("della", torch.zeros(10), [torch.randn(10)], density=0.9, epsilon=0.15)


def test_mergekit_keys_that_do_not_change_tensors_are_accepted():
    base, deltas = torch.zeros(3), [T([1.0, -2.0, 0.5]), T([0.5, 1.0, -1.0])]
    plain = run("task_arithmetic", base, deltas)
    assert torch.equal(run("task_arithmetic", base, deltas, int8_mask=True, rescale=True), plain)
    assert torch.equal(run("ties", base, deltas, int8_mask=True), run("ties", base, deltas))


def test_new_methods_declare_search_ranges_inside_their_bounds():
    for name in ("della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "sce"):
        for hp in get_method(name).hyperparameters:
            if hp.searchable:
                low, high = hp.search_range or (hp.low, hp.high)
                bottom = -float("inf") if hp.low is None else hp.low  # lambda: any real number
                top = float("inf") if hp.high is None else hp.high
                assert bottom <= low < high <= top, (name, hp.name)
    della = get_method("della")
    density, epsilon = della.hyperparameter("density"), della.hyperparameter("epsilon")
    # every searched density keeps density +/- the default epsilon inside (0, 1)
    assert density.search_range[0] - epsilon.default > 0 and density.search_range[1] + epsilon.default < 1


NEW_METHODS = ["arcee_fusion", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "karcher",
               "model_stock", "multislerp", "nearswap", "nuslerp", "sce"]


@pytest.mark.parametrize("method", NEW_METHODS)
def test_every_sampled_search_candidate_is_a_valid_merge(method):
    from evo_merge.merge.kinds import declared_ranges
    from evo_merge.search.space import SearchSpace

    m = get_method(method)
    n_models = m.n_models[1] or 3
    for candidate in SearchSpace({method: declared_ranges(method, {})}, n_models, (0.0, 1.5)).sample(16, seed=1):
        params = m.resolve(candidate.param_dict, n_models)  # in bounds, required ones present
        base = torch.randn(6, 5)
        out = m.fn(base, [torch.randn(6, 5) * 0.1 for _ in range(n_models)], list(candidate.weights), params,
                   "model.layers.0.mlp.up_proj.weight")
        assert out.shape == base.shape and torch.isfinite(out).all()


def test_passthrough_is_not_a_search_candidate():
    from evo_merge.merge.kinds import kind_hyperparameters

    with pytest.raises(UserError, match="passthrough copies"):
        kind_hyperparameters("passthrough")


def test_breadcrumbs_drops_fewer_outliers_where_density_and_gamma_exceed_one():
    """n = 10, density 0.9, gamma 0.2: 2 outliers and 10 - 9 - 2 = -1 small entries; mergekit drops one
    outlier fewer (1) and no small entry, keeping int(0.9 * 10) = 9: every entry but the largest (|-5|)."""
    delta = T([0.1, -5.0, 0.3, 2.0, -0.2, 0.4, 1.0, -0.05, 0.6, 0.7])
    out = run("breadcrumbs", torch.zeros(10), [delta], density=0.9, gamma=0.2)
    assert torch.equal(out, T([0.1, 0.0, 0.3, 2.0, -0.2, 0.4, 1.0, -0.05, 0.6, 0.7]))


def test_arcee_fusion_keeps_a_change_scored_exactly_at_the_threshold():
    """mergekit keeps scores >= median + 1.5 IQR. One row, base zeros: every score is |delta| times
    the row's KL divergence k > 0, so [3, 1, 1, 1, 1, 1, 0.5] scores k [3, 1, 1, 1, 1, 1, 0.5]; sorted,
    indices floor(q * 6) give median (3), q1 (1) and q3 (4) all k: the threshold is k exactly. The
    five changes of 1 sit at it and are kept with the 3; the 0.5 below it is dropped."""
    base = torch.zeros(1, 7)
    delta = T([[3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]])
    out = run("arcee_fusion", base, [delta])
    assert torch.equal(out, T([[3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]))
