"""Every merge method against values computed by hand or by an independent implementation."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from evo_merge.errors import UserError
from evo_merge.merge import get_method, list_methods, register_method
from evo_merge.merge.registry import Hyperparameter
from evo_merge.merge.subspace import nearest_orthogonal


def run(method, base, deltas, weights=None, name="layers.0.mlp.weight", **params):
    m = get_method(method)
    weights = weights or [1.0] * len(deltas)
    return m.fn(base, deltas, weights, m.resolve(params, len(deltas)), name)


T = torch.tensor


def test_linear_weighted_average_and_unnormalized_sum():
    base = T([0.0, 0.0])
    a, b = T([1.0, 2.0]), T([5.0, -2.0])
    deltas = [a - base, b - base]
    assert torch.allclose(run("linear", base, deltas, [1.0, 3.0]), T([4.0, -1.0]))
    assert torch.allclose(run("linear", base, deltas, [1.0, 3.0], normalize=False), T([16.0, -4.0]))


def test_task_arithmetic():
    base = T([1.0, 1.0, 1.0])
    deltas = [T([1.0, 0.0, -1.0]), T([0.0, 2.0, 2.0])]
    out = run("task_arithmetic", base, deltas, [0.5, 1.0], **{"lambda": 2.0})
    assert torch.allclose(out, T([2.0, 5.0, 4.0]))


TIES_DELTAS = [T([3.0, -1.0, 2.0, 0.0, 1.0]), T([-2.0, 2.0, -2.0, 0.0, 1.0]), T([1.0, -4.0, 0.0, 0.0, -1.0])]


def test_ties_sign_election_with_ties_and_zeros():
    # entry 0: 3,-2,1 -> +, mean(3,1)=2; entry 1: -1,2,-4 -> -, mean(-1,-4)=-2.5;
    # entry 2: 2,-2,0 sums to 0 -> + elected, zero never votes -> 2; entry 3: all zero -> 0;
    # entry 4: 1,1,-1 -> +, 1
    out = run("ties", torch.zeros(5), TIES_DELTAS)
    assert torch.allclose(out, T([2.0, -2.5, 2.0, 0.0, 1.0]))


def test_ties_weights_apply_before_election():
    # weighted first delta: [6,-2,4,0,2]; entry 0: (6+1)/(2+1); entry 1: (-2-4)/(2+1); entry 2: 4/2
    out = run("ties", torch.zeros(5), TIES_DELTAS, [2.0, 1.0, 1.0])
    assert torch.allclose(out, T([7 / 3, -2.0, 2.0, 0.0, 1.0]))


def test_ties_trims_per_tensor_by_magnitude():
    deltas = [T([3.0, -1.0, 2.0, 0.0, 1.0]), T([-2.5, 2.0, -1.5, 0.0, 1.0]), T([1.5, -4.0, 0.0, 0.0, -1.0])]
    # density 0.4 of 5 entries keeps 2 per task: [3,0,2,0,0], [-2.5,2,0,0,0], [1.5,-4,0,0,0]
    out = run("ties", torch.full((5,), 10.0), deltas, density=0.4)
    assert torch.allclose(out, 10 + T([2.25, -4.0, 2.0, 0.0, 0.0]))


@pytest.mark.parametrize("tie_block", [64, 2**20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ties_trimming_keeps_the_first_of_entries_tied_at_the_cut(monkeypatch, dtype, tie_block):
    """bfloat16 task vectors hold many equal magnitudes: the cut must keep exactly k entries, the
    ones a stable descending sort puts first (position breaks ties), on every device; the first
    tied entries found a block at a time (many blocks, or one), and a cut's bucket that one value
    fills (the zeros of an unchanged endpoint) found by a count."""
    import evo_merge.merge.methods as methods
    from evo_merge.merge.methods import magnitude_mask

    monkeypatch.setattr(methods, "TIE_BLOCK", tie_block)
    generator = torch.Generator().manual_seed(0)
    delta = (torch.randint(-3, 4, (4000,), generator=generator).to(torch.float32) / 4).to(dtype)
    delta[:1500] = 0  # a third of it zeros: at density 0.5 and 0.9 the cut falls on them
    for density in (0.1, 0.33, 0.5, 0.9):
        k = int(density * delta.numel())
        expected = torch.zeros(delta.numel(), dtype=torch.bool)
        expected[torch.argsort(delta.abs().float(), descending=True, stable=True)[:k]] = True
        mask = magnitude_mask(delta, density)
        assert int(mask.sum()) == k and torch.equal(mask, expected), density


def test_a_cut_in_a_bucket_of_several_values_ranks_them():
    """A cut's bucket holding over 1/64 of the entries is first checked for holding one value (then
    nothing is ranked): 1.0 and 1.001 share a 16-bit bucket, and taking it for one value kept 15
    entries where 5 were asked for (audit 97)."""
    from evo_merge.merge.methods import top_mask

    values = T([1.0] * 10 + [1.001] * 10)
    assert top_mask(values.clone(), 5).tolist() == [False] * 10 + [True] * 5 + [False] * 5
    generator = torch.Generator().manual_seed(4)  # most of a tensor in one bucket, 8 values in it, and ties
    values = 1 + torch.randint(0, 8, (3000,), generator=generator).float() * 2**-12
    for k in (1, 700, 1500, 2999):
        expected = torch.zeros(values.numel(), dtype=torch.bool)
        expected[torch.argsort(values, descending=True, stable=True)[:k]] = True
        assert torch.equal(top_mask(values.clone(), k), expected), k


def test_a_rescaled_trim_that_kept_only_zeros_is_not_divided_by_them():
    """Breadcrumbs' outlier cut can remove every non-zero entry of a sparse task vector (an
    embedding with a few new rows): the L1 rescale then has nothing to rescale, and leaves it
    unscaled as mergekit does, where dividing by the kept zeros gave NaN (audit 97)."""
    out = run("breadcrumbs", torch.zeros(10), [T([5.0] + [0.0] * 9)], density=0.5, gamma=0.1, rescale=True)
    assert torch.equal(out, torch.zeros(10))


def test_the_l1_rescale_of_tiny_task_vectors_is_mergekit_s():
    """mergekit's rescale divides by the kept L1 norm unless it is below 1e-7: task vectors of 1e-5
    are rescaled (kept 7e-5 of 1e-4: by 10/7)."""
    out = run("ties", torch.zeros(4), [T([4e-5, 3e-5, 2e-5, 1e-5])], density=0.5, rescale=True)
    assert torch.allclose(out, T([4e-5, 3e-5, 0.0, 0.0]) * (10 / 7), rtol=1e-5, atol=0)


def test_sce_selection_keeps_the_first_of_entries_tied_at_the_cut():
    """SCE picked its high-variance entries with topk, which chooses among ties (thousands from
    bfloat16 checkpoints) in no set order: a candidate scored on a GPU could differ from its recipe
    rebuilt on a CPU. The first by position are kept, as a stable descending sort orders them."""
    from evo_merge.merge.sparse import sce_mask

    generator = torch.Generator().manual_seed(1)
    stacked = (torch.randint(-2, 3, (3, 3000), generator=generator).to(torch.float32) / 4).to(torch.bfloat16)
    variance = torch.var(stacked.float(), dim=0, unbiased=False)
    for topk in (0.2, 0.5, 0.9):
        k = int(torch.count_nonzero(variance) * topk)
        expected = torch.zeros(variance.numel(), dtype=torch.bool)
        expected[torch.argsort(variance, descending=True, stable=True)[:k]] = True
        mask = sce_mask(stacked.float(), topk).bool()
        assert int(mask.sum()) == k and torch.equal(mask, expected), topk


def test_ties_trimming_keeps_k_entries_when_a_delta_holds_nan():
    """A NaN ranks first (as topk ranks it): the cut stays at the k-th largest, k entries kept."""
    from evo_merge.merge.methods import magnitude_mask

    mask = magnitude_mask(T([float("nan"), 3.0, 2.0, 1.0, 0.5, 0.1]), 0.5)
    assert mask.tolist() == [True, True, True, False, False, False]


def test_ties_trimming_keeps_int_of_density_times_entries_as_mergekit():
    """mergekit keeps int(density * n) entries (rounded down): 7 entries at density 0.5 keep 3,
    not round(3.5) = 4. Every other test uses a density where density * n is a whole number."""
    from evo_merge.merge.methods import magnitude_mask

    mask = magnitude_mask(T([1.0, -7.0, 3.0, 6.0, -2.0, 5.0, 4.0]), 0.5)
    assert mask.tolist() == [False, True, False, True, False, True, False]
    # through TIES: each task keeps its 3 largest (7 * 0.5 = 3.5 -> 3)
    deltas = [T([1.0, -7.0, 3.0, 6.0, -2.0, 5.0, 4.0]), T([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])]
    out = run("ties", torch.zeros(7), deltas, density=0.5)
    # kept [0,-7,0,6,0,5,0] and [7,6,5,0,0,0,0]; entry 1: -7+6 -> -, -7; entry 3: 6; entry 5: 5
    assert torch.equal(out, T([7.0, -7.0, 5.0, 6.0, 0.0, 5.0, 0.0]))


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_lambda_below_one_scales_the_merged_task_vector(method):
    """lambda < 1 (half of its search range, 0.5 to 1.5) must shrink the merged task vector: a
    check for lambda > 1 instead of lambda != 1 merged every such candidate at lambda 1."""
    base = torch.full((5,), 10.0)
    # density 1 drops nothing, so DARE is plain task arithmetic (dare_ties: with sign election)
    out = run(method, base, TIES_DELTAS, density=1.0, **{"lambda": 0.5})
    mixed = {"ties": T([2.0, -2.5, 2.0, 0.0, 1.0]),  # the TIES average of test_ties_sign_election...
             "dare_linear": T([2.0, -3.0, 0.0, 0.0, 1.0]),  # the plain sum of the three
             "dare_ties": T([4.0, -5.0, 2.0, 0.0, 2.0])}[method]  # the sum of the agreeing entries
    assert torch.allclose(out, base + 0.5 * mixed)


def _mergekit_steps(base, deltas, weights, consensus, normalize, lam):
    """mergekit's generalized task arithmetic on whole tensors: stack, weigh, elect, sum, divide, scale."""
    w = torch.tensor(weights, dtype=base.dtype).view(-1, *[1] * base.dim())
    stacked = torch.stack(deltas) * w
    if consensus:
        agree = stacked.sign() == torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(base.dtype)
        mixed, divisor = (stacked * agree).sum(dim=0), (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = stacked.sum(dim=0), w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return base + (mixed * lam if lam != 1 else mixed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_models", [2, 5])
@pytest.mark.parametrize(("method", "consensus"), [("ties", True), ("dare_linear", False)])
def test_chunked_consensus_gives_the_whole_tensor_steps_bits(monkeypatch, dtype, n_models, method, consensus):
    """The per-entry steps run a chunk at a time; at 5 models torch's sum over them orders its
    terms by where an entry falls in its vectorised loop, so chunks start where the whole
    tensor's loop starts a block: every entry, the tail's included, gets the whole-tensor bits."""
    import evo_merge.merge.methods as methods

    monkeypatch.setattr(methods, "CONSENSUS_CHUNK", 64)
    g = torch.Generator().manual_seed(7)
    # 1073 entries: 16 chunks and a tail of 49; 1028 and 65540 (a vocabulary of 3277 x 20): a tail of
    # 4, which torch sums over the models otherwise alone than at the end of a longer row
    for shape in [(37, 29), (257, 4), (3277, 20)]:
        base = torch.randn(shape, generator=g).to(dtype)
        scales = torch.logspace(-4, 2, shape[1])  # magnitudes that make the order of a sum show
        deltas = [(torch.randn(shape, generator=g) * scales).to(dtype) for _ in range(n_models)]
        weights = [0.7, -0.4, 1.3, 0.2, 0.9][:n_models]
        for normalize, lam in [(True, 1.0), (False, 0.6)]:
            got = run(method, base, deltas, weights, density=1.0, normalize=normalize, **{"lambda": lam})
            want = _mergekit_steps(base, deltas, weights, consensus, normalize, lam)
            assert torch.equal(got.view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               want.view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32)), shape


def _trimmed_copies(method, deltas, density, rescale, name):
    """Each task vector trimmed as mergekit materialises it: the masked copy, then rescaled (TIES by
    its L1 norm, DARE by the density)."""
    from evo_merge.merge.methods import magnitude_mask, random_mask, tensor_seed

    kept = []
    for t, delta in enumerate(deltas):
        if method == "ties":
            copy = delta * magnitude_mask(delta, density)
            before, after = delta.abs().sum(), copy.abs().sum()
            kept.append(copy * (before / after) if rescale and before >= 1e-7 and after >= 1e-7 else copy)
        else:
            copy = delta * random_mask(delta, density, tensor_seed(0, name, t))
            kept.append(copy / density if rescale else copy)
    return kept


@pytest.mark.parametrize("n_models", [2, 5])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize(("method", "consensus"), [("ties", True), ("dare_ties", True), ("dare_linear", False)])
def test_trimmed_task_vectors_kept_as_masks_give_the_trimmed_copies_bits(monkeypatch, n_models, rescale, method,
                                                                         consensus):
    """TIES and DARE keep each trimmed task vector as its mask and apply it (and the rescaling) a
    chunk at a time, not as T trimmed float32 copies alive at once: every entry must come out as
    the copies give it, -0.0 included."""
    import evo_merge.merge.methods as methods

    monkeypatch.setattr(methods, "CONSENSUS_CHUNK", 64)
    g = torch.Generator().manual_seed(11)
    for shape in [(37, 29), (3277, 20), (5,)]:
        base = torch.randn(shape, generator=g)
        deltas = [torch.randn(shape, generator=g) * torch.logspace(-4, 1, shape[-1]) for _ in range(n_models)]
        weights = [0.7, -0.4, 1.3, 0.2, 0.9][:n_models]
        normalize = method == "ties"
        got = run(method, base, deltas, weights, density=0.4, rescale=rescale, normalize=normalize)
        kept = _trimmed_copies(method, deltas, 0.4, rescale, "layers.0.mlp.weight")
        want = _mergekit_steps(base, kept, weights, consensus, normalize, 1.0)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), shape


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "della"])
@pytest.mark.parametrize("source", ["stored float32", "stored bfloat16", "bfloat16 endpoint"])
def test_task_vectors_formed_where_they_are_read_give_the_formed_ones_bits(monkeypatch, method, source):
    """The in-place merger hands these methods its stored task vectors (or endpoints and the base)
    to form a chunk at a time, not as T float32 tensors alive at once: every entry, -0.0 included,
    as from the task vectors formed first."""
    import evo_merge.merge.methods as methods
    from evo_merge.merge.apply import merge_tensor
    from evo_merge.merge.task_vectors import TaskVector

    monkeypatch.setattr(methods, "CONSENSUS_CHUNK", 64)
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(37, 29, generator=g) * 0.02).bfloat16().float()
    raw = [torch.randn(37, 29, generator=g) * 0.001 for _ in range(3)]
    vectors = {"stored float32": [TaskVector(d) for d in raw],
               "stored bfloat16": [TaskVector(d.bfloat16()) for d in raw],
               "bfloat16 endpoint": [TaskVector((base + d).bfloat16(), base) for d in raw]}[source]
    m = get_method(method)
    params = m.resolve({"density": 0.4, **({"epsilon": 0.1} if method == "della" else {})}, 3)
    streamed = merge_tensor(m, base, vectors, [0.7, -0.4, 1.3], params, "model.layers.0.mlp.weight")
    formed = merge_tensor(m, base, [v.whole() for v in vectors], [0.7, -0.4, 1.3], params, "model.layers.0.mlp.weight")
    assert torch.equal(streamed.view(torch.int32), formed.view(torch.int32))
    assert all(v.source.dtype == (torch.float32 if source == "stored float32" else torch.bfloat16) for v in vectors)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_ties"])
def test_task_vectors_of_a_bfloat16_base_are_formed_in_bfloat16_as_a_recipe_computes(method):
    """A recipe with `dtype: bfloat16` merges in bfloat16: its task vectors formed where they are
    read are endpoint - base in bfloat16, the bits of the task vectors formed first (audit 97: the
    dtype they are formed in was untested; deltas of 0.3 round there)."""
    from evo_merge.merge.apply import merge_tensor
    from evo_merge.merge.task_vectors import TaskVector

    g = torch.Generator().manual_seed(3)
    base = (torch.randn(37, 29, generator=g) * 0.02).bfloat16()
    ends = [(base.float() + torch.randn(37, 29, generator=g) * 0.3).bfloat16() for _ in range(3)]
    m = get_method(method)
    params = m.resolve({"density": 0.4}, 3)
    streamed = merge_tensor(m, base, [TaskVector(e, base) for e in ends], [0.7, -0.4, 1.3], params, "layers.0.mlp.w")
    formed = merge_tensor(m, base, [e - base for e in ends], [0.7, -0.4, 1.3], params, "layers.0.mlp.w")
    assert streamed.dtype == torch.bfloat16 and torch.equal(streamed.view(torch.int16), formed.view(torch.int16))


def test_a_non_contiguous_task_vector_is_flattened_once_not_per_chunk():
    """A .bin checkpoint's transposed views reach the merge non-contiguous: flattening them for each
    65,536-entry chunk copied the whole tensor each time (TIES 15x slower, audit 94). The flat
    copy is made once, and the chunks give the whole task vector's bits."""
    from evo_merge.merge.task_vectors import TaskVector

    g = torch.Generator().manual_seed(5)
    base = torch.randn(300, 500, generator=g).T  # non-contiguous
    vector = TaskVector((base + torch.randn(500, 300, generator=g)).bfloat16(), base)
    assert not vector.source.is_contiguous()
    rows = torch.empty(base.numel())
    for start in range(0, base.numel(), 4096):
        vector.write(slice(start, start + 4096), rows[start:start + 4096])
        if start == 0:
            flat = vector._flat[0]
    assert vector._flat[0] is flat and torch.equal(rows, vector.whole().reshape(-1))


def test_a_method_that_does_not_stream_gets_its_task_vectors_as_tensors(monkeypatch):
    """A method of your own (or any without `streams`) is handed tensors, formed from the merger's
    task vectors, as the registry documents its fn."""
    from evo_merge.merge import registry
    from evo_merge.merge.apply import merge_tensor
    from evo_merge.merge.task_vectors import TaskVector

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # registered for this test only
    seen = []

    @register_method("test_sees_tensors", replace=True)
    def sees(base, deltas, weights, params, name):
        seen.extend(type(d) for d in deltas)
        return base + sum(deltas)

    base = T([1.0, 2.0])
    out = merge_tensor(get_method("test_sees_tensors"), base, [TaskVector(T([3.0, 5.0]), base)], [1.0], {}, "x")
    assert seen == [torch.Tensor] and torch.equal(out, T([3.0, 5.0]))


@pytest.mark.parametrize("method", ["dare_linear", "breadcrumbs", "della_linear"])
def test_a_normalized_sum_divides_by_the_weights_summed_in_the_compute_dtype(method):
    """As mergekit: in bfloat16, 0.7 and -0.4 are 0.69921875 and -0.400390625, summing to
    0.298828125, so two equal task vectors average to themselves; divided by 0.3 as a Python sum
    (bfloat16 0.30078125) they came out 0.9922."""
    one = torch.ones(4, dtype=torch.bfloat16)
    out = run(method, torch.zeros(4, dtype=torch.bfloat16), [one, one], [0.7, -0.4], normalize=True)
    assert torch.equal(out, one)


def test_ties_without_normalize_sums_agreeing_entries():
    out = run("ties", torch.zeros(5), TIES_DELTAS, normalize=False)
    assert torch.allclose(out, T([4.0, -5.0, 2.0, 0.0, 2.0]))


def test_dare_is_deterministic_under_a_seed_and_varies_across_seeds():
    base, deltas = torch.zeros(1000), [torch.randn(1000), torch.randn(1000)]
    a = run("dare_linear", base, deltas, density=0.3, seed=7)
    assert torch.equal(a, run("dare_linear", base, deltas, density=0.3, seed=7))
    assert not torch.equal(a, run("dare_linear", base, deltas, density=0.3, seed=8))
    # a different tensor name draws a different mask
    assert not torch.equal(a, run("dare_linear", base, deltas, density=0.3, seed=7, name="other.weight"))


def test_dare_drop_rate_and_unbiasedness():
    base, delta = torch.zeros(2000), torch.randn(2000)
    density, n = 0.4, 300
    outs = torch.stack([run("dare_linear", base, [delta], density=density, seed=s) for s in range(n)])
    kept = (outs != 0).float().mean()
    assert abs(kept - density) < 0.01
    # survivors are rescaled by 1/density, so the mean over seeds tends to the undropped delta
    sd_of_mean = delta.abs() * math.sqrt((1 - density) / density) / math.sqrt(n)
    assert ((outs.mean(0) - delta).abs() <= 5 * sd_of_mean + 1e-6).all()
    assert torch.allclose(outs.mean(0).sum(), delta.sum(), atol=0.05 * delta.abs().sum())


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "ties", "della", "della_linear"])
def test_density_zero_drops_that_models_task_vector(method):
    """0 is inside density's range: the model's task vector is dropped whole (there is nothing to
    rescale), not divided by zero into NaN. TIES kept its largest entry there (mergekit 0.1.5 and
    the paper's top 0% keep none); any density above 0 keeps at least one."""
    base, kept = T([1.0, -1.0, 0.5]), T([0.5, 2.0, -1.0])
    out = run(method, base, [T([3.0, -3.0, 4.0]), kept], density=[0.0, 1.0])
    assert torch.equal(out, base + kept)
    if method == "ties":
        out = run(method, base, [T([3.0, -3.0, 4.0]), kept], density=[0.01, 1.0])
        # 4.0 kept; the election's + sign there drops the other model's -1.0
        assert torch.equal(out, base + T([0.5, 2.0, 4.0]))


def test_dare_ties_elects_signs_after_drops():
    deltas = [T([1.0, 1.0]), T([-3.0, 1.0])]
    # density 1: nothing dropped, so dare_ties with rescale equals plain sign election (no normalize)
    out = run("dare_ties", torch.zeros(2), deltas, density=1.0)
    assert torch.allclose(out, T([-3.0, 2.0]))


def test_slerp_endpoints_midpoint_and_colinear_fallback():
    base, other = T([1.0, 0.0]), T([0.0, 1.0])
    delta = [other - base]
    assert torch.allclose(run("slerp", base, delta, t=0.0), base, atol=1e-6)
    assert torch.allclose(run("slerp", base, delta, t=1.0), other, atol=1e-6)
    assert torch.allclose(run("slerp", base, delta, t=0.5), T([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    colinear = [T([2.0, 0.0]) - base]  # same direction: falls back to linear interpolation
    assert torch.allclose(run("slerp", base, colinear, t=0.25), T([1.25, 0.0]))


def test_slerp_needs_exactly_one_other_model():
    with pytest.raises(UserError, match="exactly 1"):
        get_method("slerp").resolve({}, 2)


def _tsv_reference(deltas, k):
    """TSV-M written independently with numpy SVDs and scipy's polar decomposition."""
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = np.linalg.svd(d.double().numpy(), full_matrices=False)
        us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k].T)
    u_perp, _ = scipy.linalg.polar(np.concatenate(us, 1))
    v_perp, _ = scipy.linalg.polar(np.concatenate(vs, 1))
    return u_perp, v_perp, u_perp @ np.diag(np.concatenate(ss)) @ v_perp.T


def test_tsv_m_matches_direct_computation_and_stacked_factors_are_orthogonal():
    gen = torch.Generator().manual_seed(1)
    deltas = [torch.randn(12, 9, generator=gen) for _ in range(3)]
    u_perp, v_perp, expected = _tsv_reference(deltas, k=9 // 3)
    assert np.allclose(u_perp.T @ u_perp, np.eye(9), atol=1e-10)
    assert np.allclose(v_perp.T @ v_perp, np.eye(9), atol=1e-10)
    out = run("tsv", torch.zeros(12, 9), deltas)
    assert np.allclose(out.double().numpy(), expected, atol=1e-4)
    q = nearest_orthogonal(torch.randn(10, 6, generator=gen))
    assert torch.allclose(q.T @ q, torch.eye(6), atol=1e-5)


def test_tsv_m_coefficients_scale_each_tasks_singular_values():
    gen = torch.Generator().manual_seed(2)
    deltas = [torch.randn(8, 8, generator=gen) for _ in range(2)]
    scaled = [deltas[0] * 0.5, deltas[1] * 2.0]  # scaling tau_t scales sigma_t: same as c_t
    assert torch.allclose(run("tsv", torch.zeros(8, 8), deltas, [0.5, 2.0]),
                          run("tsv", torch.zeros(8, 8), scaled), atol=1e-5)


def test_tsv_m_of_orthogonal_low_rank_tasks_is_their_sum():
    # rank k = 4 // 2 = 2 each, in orthogonal row and column spaces: orthogonalisation changes nothing
    e = torch.eye(4)
    deltas = [3 * torch.outer(e[0], e[1]) + torch.outer(e[1], e[0]),
              -2 * torch.outer(e[2], e[3]) + 0.5 * torch.outer(e[3], e[2])]
    assert torch.allclose(run("tsv", torch.ones(4, 4), deltas), torch.ones(4, 4) + deltas[0] + deltas[1], atol=1e-6)


def test_tsv_averages_vectors_and_skips_embeddings():
    deltas = [T([2.0, 0.0]), T([0.0, 4.0])]
    assert torch.allclose(run("tsv", torch.zeros(2), deltas, name="norm.weight"), T([1.0, 2.0]))
    emb = [torch.randn(6, 4), torch.randn(6, 4)]
    assert torch.allclose(run("tsv", torch.zeros(6, 4), emb, name="model.embed_tokens.weight"), (emb[0] + emb[1]) / 2)


def test_tsv_c_is_the_best_rank_k_reconstruction_of_its_task():
    gen = torch.Generator().manual_seed(3)
    deltas = [torch.randn(10, 8, generator=gen) for _ in range(4)]
    out = run("tsv_c", torch.zeros(10, 8), deltas, task=2)
    u, s, vh = np.linalg.svd(deltas[2].numpy(), full_matrices=False)
    k = 8 // 4
    assert np.allclose(out.numpy(), (u[:, :k] * s[:k]) @ vh[:k], atol=1e-5)
    assert torch.linalg.matrix_rank(out) == k


def test_iso_c_flattens_the_spectrum_to_its_mean():
    gen = torch.Generator().manual_seed(4)
    deltas = [torch.randn(7, 5, generator=gen) for _ in range(3)]
    out = run("iso_c", torch.zeros(7, 5), deltas)
    before = torch.linalg.svdvals(sum(deltas))
    after = torch.linalg.svdvals(out)
    assert torch.allclose(after, torch.full_like(after, float(before.mean())), atol=1e-4)


def test_registry_declares_hyperparameters_for_the_search():
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "tsv", "tsv_c", "iso_c"} <= set(
        list_methods())
    density = get_method("ties").hyperparameter("density")
    assert (density.low, density.high, density.per_model, density.searchable) == (0.0, 1.0, True, True)
    assert get_method("tsv").pieces is not None and get_method("ties").pieces is None


def test_resolve_rejects_bad_parameters():
    ties = get_method("ties")
    with pytest.raises(UserError, match="unknown parameter"):
        ties.resolve({"densty": 0.5}, 2)
    with pytest.raises(UserError, match="outside"):
        ties.resolve({"density": 1.5}, 2)
    with pytest.raises(UserError, match="expected 2 values"):
        ties.resolve({"density": [0.5]}, 2)
    with pytest.raises(UserError, match="true or false"):
        ties.resolve({"normalize": "yes"}, 2)
    with pytest.raises(UserError, match="unknown merge method"):
        get_method("frankenmerge")


def test_third_party_method_registers_with_a_decorator():
    @register_method("test_max_abs", hyperparameters=[Hyperparameter("gain", 1.0, 0.0, 2.0)], replace=True)
    def max_abs(base, deltas, weights, params, name):
        """Keep the largest-magnitude delta per entry."""
        stacked = torch.stack(list(deltas))
        idx = stacked.abs().argmax(0, keepdim=True)
        return base + params["gain"] * stacked.gather(0, idx)[0]

    assert "test_max_abs" in list_methods()
    out = run("test_max_abs", torch.zeros(2), [T([1.0, -3.0]), T([-2.0, 1.0])], gain=2.0)
    assert torch.allclose(out, T([-4.0, -6.0]))


def test_the_top_mask_is_a_stable_descending_sorts_first_k_on_every_kind_of_value():
    """The trim's mask against a stable descending sort's first k (a NaN ranked as +inf, ties by
    position), on the bucketed CPU path and topk's (float64 values): when every entry tied with the
    k-th is kept, when some are, and when there are no ties."""
    from evo_merge.merge.methods import top_mask

    gen = torch.Generator().manual_seed(5)
    for kind in range(6):
        for n in (1, 7, 1000, 4099):
            x = torch.randn(n, generator=gen)
            x = [x, x.bfloat16().float(), torch.randint(0, 4, (n,), generator=gen).float(),
                 torch.where(torch.rand(n, generator=gen) < 0.1, torch.inf, x), x * 1e-40,
                 torch.where(torch.rand(n, generator=gen) < 0.2, torch.nan, x.bfloat16().float())][kind].abs()
            for k in sorted({k for k in (1, 2, n // 3, n // 2, n - 1, n) if 1 <= k <= n}):
                expected = torch.zeros(n, dtype=torch.bool)
                expected[torch.sort(x.nan_to_num(nan=torch.inf), descending=True, stable=True).indices[:k]] = True
                for values in (x, x.double()):
                    assert torch.equal(top_mask(values, k), expected), (kind, n, k, values.dtype)


def test_the_bucketed_cut_is_topks_on_every_kind_of_value_and_counts_what_it_cuts():
    """The trim's cut by bucketed float32 bits against torch.topk's, and its counts of the values
    above and equal to it against counts over the whole tensor (the mask is one comparison when
    they add up to k): ties (bfloat16 values widened, small integers), zeros, +inf (a NaN's rank),
    subnormals, and k from 1 to all of them; the topk path too (float64)."""
    from evo_merge.merge.methods import _cut

    gen = torch.Generator().manual_seed(3)
    for kind in range(5):
        for n in (1, 7, 1000, 4099):
            x = torch.randn(n, generator=gen)
            x = [x, x.bfloat16().float(), torch.randint(0, 4, (n,), generator=gen).float(),
                 torch.where(torch.rand(n, generator=gen) < 0.1, torch.inf, x), x * 1e-40][kind].abs()
            for k in sorted({1, max(1, n // 3), max(1, n // 2), n}):
                for values in (x, x.double()):
                    cut, above, tied = _cut(values, k)
                    assert torch.equal(cut, torch.topk(values, k, sorted=False).values.min()), (kind, n, k)
                    assert (above, tied) == (int((values > cut).sum()), int((values == cut).sum())), (kind, n, k)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_each_endpoint_of_a_tensor_draws_its_own_mask(method):
    """The drop seed takes the model's index as well as the tensor's name (`tensor_seed`): two equal
    task vectors of ones at density 0.5, weights 1 and 1, summed. Independent masks keep one of the two
    at about half the entries (DARE: 1 / 0.5 = 2 there; DELLA unrescaled: 1); one mask shared by both
    endpoints gives only 0 and both (4, or 2)."""
    ones = torch.ones(1000)
    rescale = method == "dare_linear"
    out = run(method, torch.zeros(1000), [ones, ones], density=0.5, seed=11, rescale=rescale)
    one_kept = 2.0 if rescale else 1.0
    assert set(out.unique().tolist()) <= {0.0, one_kept, 2 * one_kept}
    assert 400 < int((out == one_kept).sum()) < 600  # Binomial(1000, 1/2): 6 standard deviations either side


@pytest.mark.parametrize("method", ["dare_linear", "breadcrumbs", "della_linear"])
def test_a_normalized_sum_of_weights_cancelling_to_zero_divides_by_one(method):
    """As mergekit: weights summing to 0 (1 and -1) with `normalize` divide by 1, not by 0 (inf and
    NaN). Density 1 keeps everything: base + d1 - d2."""
    base, d1, d2 = T([1.0, -1.0, 0.5]), T([0.5, 2.0, -1.0]), T([1.5, -1.0, 0.25])
    out = run(method, base, [d1, d2], [1.0, -1.0], normalize=True, density=1.0)
    assert torch.equal(out, base + d1 - d2)


def test_a_dropped_normalized_sum_of_weights_cancelling_to_zero_divides_by_one():
    """DARE at density 0.5, weights 1 and -1 with `normalize`: every entry is base + 2 (d1 kept) - 2 * 3
    (d2 kept), each survivor rescaled by 1 / 0.5 and the sum divided by 1: 0, 2, -6 or -4."""
    base = torch.full((1000,), 0.5)
    out = run("dare_linear", base, [torch.ones(1000), torch.full((1000,), 3.0)], [1.0, -1.0], density=0.5,
              normalize=True, seed=3)
    assert set((out - base).unique().tolist()) == {0.0, 2.0, -6.0, -4.0}


def test_tsv_c_scales_its_reconstruction_by_the_chosen_model_s_weight():
    """TSV-C's rebuilt task vector is scaled by its model's weight (and alpha): weight 0.5 gives half
    the change of weight 1. The rank-k reconstruction from numpy's SVD, k = 8 // 4."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(10, 8, generator=gen)
    deltas = [torch.randn(10, 8, generator=gen) for _ in range(4)]
    u, s, vh = np.linalg.svd(deltas[1].double().numpy(), full_matrices=False)
    recon = torch.from_numpy((u[:, :2] * s[:2]) @ vh[:2]).float()
    whole = run("tsv_c", base, deltas, [1.0, 1.0, 1.0, 1.0], task=1)
    half = run("tsv_c", base, deltas, [1.0, 0.5, 1.0, 1.0], task=1)
    assert torch.allclose(whole, base + recon, atol=1e-5)
    assert torch.allclose(half, base + 0.5 * recon, atol=1e-5)
