"""Tensors no endpoint changed (frozen embeddings, partial fine-tunes, LoRA inputs): a method that
declares `keeps_unchanged` returns the base there, so merges copy it instead of computing it (TIES
spent 85% of a candidate's merge on such tensors of a partial fine-tune, TSV its SVDs)."""

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evo_merge.errors import UserError
from evo_merge.merge import register_method
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.registry import get_method, list_methods
from evo_merge.merge.storage import Storage
from evo_merge.merge.stream import stream_merge
from evo_merge.weights import Checkpoint
from evo_merge.zoo.tiny import save_tiny_family

REQUIRED = {"slerp": {"t": 0.3}, "nearswap": {"t": 0.001}}
EXTRA = {"nearswap": [{"t": 3e-7}, {"t": 0.0}]}  # below the smallest difference a float32 weight shows
# an average or an interpolation of equal tensors may differ from them in its last bit
NOT_DECLARED = {"linear", "karcher", "slerp", "passthrough", "nuslerp", "multislerp"}


def variations(name: str) -> list[dict]:
    """The method's defaults, and each of its switches flipped."""
    method = get_method(name)
    switches = [h.name for h in method.hyperparameters if h.kind is bool]
    given = REQUIRED.get(name, {})
    return [given] + [{**given, s: not method.hyperparameter(s).default} for s in switches] + EXTRA.get(name, [])


@pytest.mark.parametrize("name", sorted(set(list_methods()) - NOT_DECLARED))
def test_a_method_that_declares_it_returns_the_base_bit_for_bit_where_no_task_vector_changed(name):
    """The declaration checked against the method itself (no skip involved): zero task vectors,
    float32 and bfloat16, weights of either sign."""
    method = get_method(name)
    assert method.keeps_unchanged
    n = method.n_models[1] if method.n_models[1] is not None and method.n_models[1] < 3 else 3
    torch.manual_seed(0)
    for dtype, params, weights in itertools.product(
            (torch.float32, torch.bfloat16), variations(name), ([0.4] * n, [1.0, -0.3, 1.7][:n])):
        base = torch.randn(24, 16).to(dtype)
        resolved = method.resolve(params, n)
        out = method.fn(base.clone(), [torch.zeros_like(base) for _ in range(n)], weights, resolved,
                        "model.layers.0.mlp.up_proj.weight")
        assert torch.equal(out.to(dtype), base), (name, dtype, params, weights)


def test_methods_that_average_or_interpolate_do_not_declare_it():
    """Their result for equal tensors is the base to rounding only: computed as before."""
    assert not any(get_method(name).keeps_unchanged for name in NOT_DECLARED)


calls: list[str] = []


@register_method("test_counted_ties", keeps_unchanged=True, replace=True)
def counted_ties(base, deltas, weights, params, name):
    """TIES at its defaults, noting each tensor it is asked to merge."""
    calls.append(name)
    ties = get_method("ties")
    return ties.fn(base, deltas, weights, ties.resolve({}, len(deltas)), name)


@pytest.fixture(scope="module")
def partly_frozen(tmp_path_factory):
    """Two endpoints that changed the MLPs only: every other tensor is the base's, bit for bit."""
    root = tmp_path_factory.mktemp("frozen")
    base, fts = save_tiny_family(root, "llama", n_finetunes=2)
    kept = load_file(str(base / "model.safetensors"))
    for ft in fts:
        tensors = load_file(str(ft / "model.safetensors"))
        save_file({n: t if ".mlp." in n else kept[n] for n, t in tensors.items()}, str(ft / "model.safetensors"),
                  metadata={"format": "pt"})
    changed = {n for n in kept if ".mlp." in n}
    assert changed and changed != set(kept)
    return base, fts, changed


@pytest.mark.parametrize("method", ["test_counted_ties", "ties", "tsv", "dare_ties", "task_arithmetic"])
def test_a_candidate_merges_only_the_changed_tensors_and_equals_its_export(partly_frozen, method):
    base, fts, changed = partly_frozen
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    assert set(merger.names) - merger._unchanged == changed
    calls.clear()
    weights = [0.7, 0.5]
    merger.apply(method, weights)
    if method == "test_counted_ties":
        assert set(calls) == changed  # the unchanged tensors were copied from the base, not merged
    state, original = model.state_dict(), load_file(str(base / "model.safetensors"))
    assert all(torch.equal(state[n], original[n]) for n in merger._unchanged)
    assert not all(torch.equal(state[n], original[n]) for n in changed)
    calls.clear()
    recipe = Recipe.model_validate({
        "merge_method": method, "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(fts, weights)]})
    _, streamed = stream_merge(plan_from_recipe(recipe))
    for name, tensor in streamed:  # the export computes and skips the same tensors: the same bits
        assert torch.equal(state[name], tensor), name
    if method == "test_counted_ties":
        assert set(calls) == changed


def test_a_tensor_one_endpoint_changed_is_merged(partly_frozen, tmp_path):
    """Unchanged means unchanged by every endpoint: one that changed a norm gets it merged."""
    base, fts, changed = partly_frozen
    edited = tmp_path / "edited"
    shutil.copytree(fts[1], edited)
    tensors = load_file(str(edited / "model.safetensors"))
    norm = next(n for n in tensors if n not in changed and "norm" in n)
    tensors[norm] = tensors[norm] + 0.5
    save_file(tensors, str(edited / "model.safetensors"), metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(fts[0]), Checkpoint.open(edited)])
    assert norm not in merger._unchanged
    calls.clear()
    merger.apply("test_counted_ties", [1.0, 1.0])
    assert set(calls) == changed | {norm}


def test_bfloat16_endpoints_kept_as_stored_are_found_unchanged_too(partly_frozen, tmp_path):
    """bfloat16 checkpoints kept in bfloat16 store each endpoint as it is (not its task vector):
    an unchanged one is found by comparing it with the base."""
    from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)

    from evo_merge.merge.pieces import Endpoint

    base, fts, changed = partly_frozen
    base, fts = bf16_copies(base, fts, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts],
                           storage=Storage(torch.bfloat16))
    assert all(isinstance(d, Endpoint) for deltas in merger._deltas.values() for d in deltas)
    assert set(merger.names) - merger._unchanged == changed
    calls.clear()
    merger.apply("test_counted_ties", [0.7, 0.5])
    assert set(calls) == changed
    recipe = Recipe.model_validate({
        "merge_method": "test_counted_ties", "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(fts, [0.7, 0.5])]})
    state = model.state_dict()
    for name, tensor in stream_merge(plan_from_recipe(recipe))[1]:
        assert torch.equal(state[name], tensor), name


def test_an_endpoint_is_compared_with_the_base_over_every_chunk():
    """The comparison runs a chunk at a time: a difference in the last entry of a large tensor counts."""
    from evo_merge.merge.task_vectors import ZERO_CHECK_CHUNK, TaskVector, is_zero

    wide = torch.randn(2 * ZERO_CHECK_CHUNK + 5)
    stored = wide.bfloat16()
    exact = stored.float()
    assert is_zero(TaskVector(stored, exact))
    changed = stored.clone()
    changed[-1] += 1
    assert not is_zero(TaskVector(changed, exact))
    assert not is_zero(TaskVector(stored, wide))  # bfloat16 rounded the values: not the float32 ones
    both_inf = exact.clone()
    both_inf[-1] = float("inf")
    assert not is_zero(TaskVector(both_inf.bfloat16(), both_inf))  # inf - inf: a NaN, changed


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers: -0.0 and 0.0 differ, NaNs compare (torch.equal sees neither)."""
    return tensor.contiguous().view({2: torch.int16, 4: torch.int32}[tensor.element_size()])


@pytest.mark.parametrize("bf16", [False, True])
def test_the_copy_has_the_bits_the_method_computes_even_at_minus_zero_and_inf(partly_frozen, tmp_path, bf16):
    """A base entry of -0.0 became 0.0 through every method (base + 0), and an inf in base and
    endpoints a NaN (inf - inf): the copy gives the same bits, in a candidate and in an export alike.
    (A campaign's in-place merger refuses an input holding an inf, which no candidate of it could be
    scored with: it is compared at -0.0 alone.)"""
    import dataclasses

    from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)

    def odd_inputs(where, inf):
        base, fts, _ = partly_frozen
        folders = [Path(shutil.copytree(f, where / f.name)) for f in (base, *fts)]
        for folder in folders:
            tensors = load_file(str(folder / "model.safetensors"))
            zero, norm = sorted(n for n in tensors if "norm" in n)[:2]  # two tensors no endpoint changed
            tensors[zero][0], tensors[norm][1] = -0.0, float("inf") if inf else 2.0
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return (*(bf16_copies(folders[0], folders[1:], where / "bf16") if bf16 else (folders[0], folders[1:])),
                zero, norm)

    def merged(base, fts):
        recipe = Recipe.model_validate({"merge_method": "ties", "base_model": str(base), "models": [
            {"model": str(f), "parameters": {"weight": 0.5}} for f in fts]})
        plan = plan_from_recipe(recipe)
        exported = dict(stream_merge(plan)[1])
        plan.method = dataclasses.replace(plan.method, keeps_unchanged=False)
        return exported, dict(stream_merge(plan)[1])

    def in_place(base, fts):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if bf16 else torch.float32)
        merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts],
                               storage=Storage(torch.bfloat16 if bf16 else torch.float32))
        merger.apply("ties", [0.5, 0.5])
        return model.state_dict()

    base, fts, zero, norm = odd_inputs(tmp_path / "inf", inf=True)
    exported, computed = merged(base, fts)
    assert bool(computed[norm].isnan().any())  # the inf's NaN: the method's own result
    assert computed[zero][0] == 0 and not torch.signbit(computed[zero][0])  # -0.0 came out as 0.0
    for name, tensor in computed.items():
        assert torch.equal(bits(exported[name]), bits(tensor)), name
    with pytest.raises(UserError, match=f"tensor {norm} holds NaN or Inf"):
        in_place(base, fts)
    base, fts, zero, norm = odd_inputs(tmp_path / "zero", inf=False)
    _, computed = merged(base, fts)
    state = in_place(base, fts)
    assert computed[zero][0] == 0 and not torch.signbit(computed[zero][0])
    for name, tensor in computed.items():
        assert torch.equal(bits(state[name]), bits(tensor)), name


def test_the_merged_tensors_handed_out_are_the_caller_s_own(partly_frozen):
    """`tensors()` gives each merged tensor to keep or edit: an unchanged one is a copy of the base,
    not the merger's stored base, which every later candidate starts from."""
    base, fts, changed = partly_frozen
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    for _, tensor in merger.tensors("ties", [0.5, 0.5]):
        tensor.zero_()
    merger.apply("ties", [0.5, 0.5])
    original = load_file(str(base / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[n], original[n]) for n in merger._unchanged)


@pytest.fixture(scope="module")
def one_norm_edited(partly_frozen, tmp_path_factory):
    """partly_frozen's second endpoint with one norm no other endpoint changed moved by +0.5."""
    base, fts, changed = partly_frozen
    edited = tmp_path_factory.mktemp("one-norm") / "edited"
    shutil.copytree(fts[1], edited)
    tensors = load_file(str(edited / "model.safetensors"))
    norm = next(n for n in sorted(tensors) if n not in changed and "norm" in n)
    tensors[norm] = tensors[norm] + 0.5
    save_file(tensors, str(edited / "model.safetensors"), metadata={"format": "pt"})
    return edited, norm


@pytest.mark.parametrize("edited_first", [False, True])
def test_an_export_merges_a_tensor_one_endpoint_changed(partly_frozen, one_norm_edited, edited_first):
    """The export's own check (stream._combine): unchanged means unchanged by every endpoint, whichever
    place the one that changed it holds. Task arithmetic by hand: base + weight * 0.5 on that norm."""
    base, fts, _ = partly_frozen
    edited, norm = one_norm_edited
    models = [edited, fts[0]] if edited_first else [fts[0], edited]
    weights = [0.7, 0.3]
    expected = load_file(str(base / "model.safetensors"))[norm] + weights[0 if edited_first else 1] * 0.5
    for method in ("task_arithmetic", "ties"):
        recipe = Recipe.model_validate({
            "merge_method": method, "base_model": str(base),
            "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(models, weights)]})
        exported = dict(stream_merge(plan_from_recipe(recipe))[1])[norm]
        assert not torch.equal(exported, load_file(str(base / "model.safetensors"))[norm]), method
        if method == "task_arithmetic":
            torch.testing.assert_close(exported, expected)


def test_a_method_that_does_not_declare_it_is_computed_on_every_tensor(partly_frozen):
    """Without `keeps_unchanged` the base is never copied in its place, in a candidate or an export:
    a method whose result for zero task vectors is not the base (here base + 1) gets every tensor."""
    base, fts, changed = partly_frozen
    seen: list[str] = []

    def plus_one(base, deltas, weights, params, name):
        seen.append(name)
        return base + 1

    register_method("test_plus_one", replace=True)(plus_one)
    original = load_file(str(base / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    assert merger._unchanged  # the frozen tensors are known as such: the method alone decides
    merger.apply("test_plus_one", [0.5, 0.5])
    assert sorted(seen) == sorted(merger.names) == sorted(original)
    state = model.state_dict()
    for name in original:
        assert torch.equal(state[name], original[name] + 1), name
    seen.clear()
    recipe = Recipe.model_validate({
        "merge_method": "test_plus_one", "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": 0.5}} for f in fts]})
    exported = dict(stream_merge(plan_from_recipe(recipe))[1])
    assert sorted(seen) == sorted(exported) == sorted(original)
    for name, tensor in exported.items():
        assert torch.equal(tensor, original[name] + 1), name


def test_an_input_s_finite_check_reads_float16_whose_sum_overflows_as_finite():
    """A float16 tensor's own sum overflows past 65504: summed in float32, a finite tensor is found
    finite at once; an infinity or a NaN is refused naming the model and the tensor."""
    from types import SimpleNamespace

    from evo_merge.merge.inplace import _finite

    model = SimpleNamespace(path="m")
    large = torch.full((1000,), 60000.0, dtype=torch.float16)
    assert torch.isinf(large.sum()) and _finite(large, model, "w") is large
    for bad in (float("inf"), float("nan")):
        broken = large.clone()
        broken[7] = bad
        with pytest.raises(UserError, match="m: tensor w holds NaN or Inf"):
            _finite(broken, model, "w")
