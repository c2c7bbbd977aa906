"""Recipes end to end: the merge command, transformers round trips, bit-for-bit rebuilds, in-place."""

import json
import re
import shutil

import pytest
import torch
import yaml
from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.registry import get_method, list_methods
from evo_merge.merge.stream import stream_merge
from evo_merge.weights import Checkpoint
from evo_merge.zoo.tiny import save_tiny_family

METHOD_PARAMS = {
    "linear": {},
    "task_arithmetic": {"lambda": 0.8},
    "ties": {"density": 0.4},
    "dare_linear": {"density": 0.5, "seed": 3},
    "dare_ties": {"density": 0.6, "seed": 1},
    "tsv": {"alpha": 1.2},
    "tsv_c": {"task": 1},
    "iso_c": {"alpha": 0.9},
    "della": {"density": 0.5, "seed": 2},
    "della_linear": {"density": 0.6, "epsilon": 0.1},
    "breadcrumbs": {"density": 0.8, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.9},
    "sce": {"select_topk": 0.5},
    "model_stock": {},
    "nuslerp": {},
    "multislerp": {},
    "karcher": {},
}
U_HALF = 2.0**-8  # unit roundoff of bfloat16, the coarser of the two half precisions


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    base, fts = save_tiny_family(root, request.param, n_finetunes=2)
    return root, base, fts


def write_recipe(path, method, base, models, weights, params, **extra):
    recipe = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)],
        "parameters": params,
        **extra,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_front_matter(readme):
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def tensors_of(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_merged_folder_loads_generates_and_rebuilds_bit_for_bit(family, tmp_path):
    root, base, fts = family
    recipe = write_recipe(tmp_path / "r.yaml", "ties", base, fts, [0.7, 0.5], {"density": 0.5})
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"(ties of 2 model(s) onto base {base.name}, " in result.output  # the base is no model merged in

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("12+30=", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape == (1, ids.shape[1] + 4)

    card = read_front_matter(out / "README.md")
    assert "base_model" not in card  # local inputs: no Hub id to name, and never a machine path
    assert card["merged_models"] == [m.name for m in fts] and str(base) not in (out / "README.md").read_text()
    assert card["merge_method"] == "ties" and {"merge", "evo-merge"} <= set(card["tags"])

    again = tmp_path / "again"
    result = CliRunner().invoke(cli, ["merge", str(out / "merge_recipe.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    first, second = tensors_of(out), tensors_of(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_rebuild_from_inputs_changed_since_is_said(family, tmp_path):
    """The card says its recipe rebuilds the weights bit for bit; with an input changed since (a
    zoo built again with other settings), `merge` built other weights without a word."""
    root, base, fts = family
    models = [shutil.copytree(m, tmp_path / "in" / m.name) for m in (base, fts[0])]
    recipe = write_recipe(tmp_path / "r.yaml", "task_arithmetic", models[0], models[1:], [0.5], {})
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "m")]).exit_code == 0
    recorded = json.loads((tmp_path / "m" / "merge_inputs.json").read_text())["weights"]
    assert sorted(recorded) == sorted(str(m) for m in models)
    again = CliRunner().invoke(cli, ["merge", str(tmp_path / "m" / "merge_recipe.yaml"),
                                                     "--out", str(tmp_path / "again")])
    assert again.exit_code == 0 and "weights are not those" not in again.stderr, again.stderr
    weights = load_file(models[1] / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, models[1] / "model.safetensors", metadata={"format": "pt"})
    changed = CliRunner().invoke(cli, ["merge", str(tmp_path / "m" / "merge_recipe.yaml"),
                                                       "--out", str(tmp_path / "changed")])
    assert changed.exit_code == 0 and changed.stderr.startswith(
        f"warning: {models[1]}: its weights are not those {tmp_path / 'm' / 'merge_recipe.yaml'} was merged from "
        "(merge_inputs.json beside it): the output will differ from that merge\n"), changed.stderr
    assert str(models[0]) not in changed.stderr  # the base is the one it was
    (tmp_path / "m" / "merge_inputs.json").write_text("[" * 100_000 + "]" * 100_000)  # crafted: a RecursionError
    crafted = CliRunner().invoke(cli, ["merge", str(tmp_path / "m" / "merge_recipe.yaml"), "--out",
                                       str(tmp_path / "crafted")])
    assert crafted.exit_code == 0 and "weights are not those" not in crafted.stderr, crafted.output


def test_merge_differs_from_endpoints_and_matches_hand_formula(family, tmp_path):
    root, base, fts = family
    recipe = write_recipe(tmp_path / "ta.yaml", "task_arithmetic", base, fts, [0.5, 0.25], {"lambda": 2.0})
    out = tmp_path / "ta"
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)]).exit_code == 0
    merged, b = tensors_of(out), tensors_of(base)
    f1, f2 = tensors_of(fts[0]), tensors_of(fts[1])
    for name in b:
        expected = b[name] + 2.0 * (0.5 * (f1[name] - b[name]) + 0.25 * (f2[name] - b[name]))
        assert torch.allclose(merged[name], expected, atol=1e-6), name


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_in_place_candidate_equals_file_path(family, method):
    root, base, fts = family
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    weights = [0.6, 0.9]
    merger.apply(method, weights, METHOD_PARAMS[method])
    recipe = Recipe.model_validate({
        "merge_method": method, "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(fts, weights)],
        "parameters": METHOD_PARAMS[method],
    })
    _, streamed = stream_merge(plan_from_recipe(recipe))
    state = model.state_dict()
    streamed = dict(streamed)
    assert streamed and streamed.keys() <= state.keys()  # the module's tensors (a tied head is one of them)
    for name, tensor in streamed.items():
        assert torch.equal(state[name], tensor), name


def test_in_place_merger_reuses_cached_tsv_pieces_across_candidates(family):
    root, base, fts = family
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    merger.apply("tsv", [1.0, 1.0])
    cached = merger._pieces
    merger.apply("tsv", [0.3, 2.0], {"alpha": 0.5})
    assert merger._pieces is cached and len(cached) == 1


def test_a_tsv_candidate_failing_partway_keeps_the_decompositions_it_made(family, monkeypatch):
    """TSV-M's pieces are computed as the merge reaches each tensor (minutes per tensor at 7B): a
    candidate that fails partway (out of memory) leaves those done, and the next computes the rest
    only, to the same model as a merge that never failed."""
    root, base, fts = family
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    computed, original = [], merger._compute_pieces

    def compute(method, name, params):
        if len(computed) == 3:
            raise torch.OutOfMemoryError("the fourth tensor's SVD")
        computed.append(name)
        return original(method, name, params)

    monkeypatch.setattr(merger, "_compute_pieces", compute)
    with pytest.raises(torch.OutOfMemoryError):
        merger.apply("tsv", [1.0, 1.0])
    monkeypatch.setattr(merger, "_compute_pieces", lambda m, n, p: computed.append(n) or original(m, n, p))
    merger.apply("tsv", [1.0, 1.0])
    assert len(computed) == len(set(computed)) == len(merger._base)  # each tensor decomposed once
    fresh = AutoModelForCausalLM.from_pretrained(base)
    InPlaceMerger(fresh, Checkpoint.open(base), [Checkpoint.open(f) for f in fts]).apply("tsv", [1.0, 1.0])
    assert all(torch.equal(t, fresh.state_dict()[k]) for k, t in model.state_dict().items())


def test_bfloat16_output_and_linear_without_base(family, tmp_path):
    root, base, fts = family
    recipe = tmp_path / "soup.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in fts],
    }))
    out = tmp_path / "soup"
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    merged, f1, f2 = tensors_of(out), tensors_of(fts[0]), tensors_of(fts[1])
    for name in merged:
        assert merged[name].dtype == torch.bfloat16
        assert torch.allclose(merged[name].float(), ((f1[name] + f2[name]) / 2).bfloat16().float(), atol=1e-2)



def test_the_written_recipe_spells_out_a_weight_the_source_left_to_its_default(family, tmp_path):
    """A model given no weight merges at weight 1, which mergekit requires to be written: the
    explicit recipe wrote global defaults only, so its models had none (audit 93). The per-model
    defaults go at the top, where a model's lookup falls through, and the recipe rebuilds the same."""
    root, base, fts = family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(base),
                                      "models": [{"model": str(fts[0]), "parameters": {"weight": 0.7}},
                                                 {"model": str(fts[1])}]}))
    out, again = tmp_path / "merged", tmp_path / "again"
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)]).exit_code == 0
    written = yaml.safe_load((out / "merge_recipe.yaml").read_text())
    assert written["parameters"]["weight"] == 1.0 and written["parameters"]["density"] == 1.0
    assert written["models"][0]["parameters"] == {"weight": 0.7}  # a model's own value stays its own
    assert CliRunner().invoke(cli, ["merge", str(out / "merge_recipe.yaml"), "--out", str(again)]).exit_code == 0
    first, second = tensors_of(out), tensors_of(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # a recipe of slices: its sources are models too (audit 97: untested)
    config = json.loads((base / "config.json").read_text())
    layers = config.get("num_hidden_layers") or config["n_layer"]
    sliced = Recipe.model_validate({"merge_method": "ties", "base_model": str(base), "slices": [{"sources": [
        {"model": str(base), "layer_range": [0, layers]},
        {"model": str(fts[0]), "layer_range": [0, layers], "parameters": {"weight": 0.7}},
        {"model": str(fts[1]), "layer_range": [0, layers]}]}]})
    written = plan_from_recipe(sliced, tmp_path).recipe().model_dump(exclude_none=True, mode="json")
    assert written["parameters"]["weight"] == 1.0 and written["parameters"]["density"] == 1.0

@pytest.fixture(scope="module")
def bf16_family(family, tmp_path_factory):
    root, base, fts = family
    return bf16_copies(base, fts, tmp_path_factory.mktemp("bf16"))


def test_bfloat16_inputs_without_a_dtype_stay_bfloat16_and_their_recipe_rebuilds_them(bf16_family, tmp_path):
    """No `dtype`: computed in float32, each tensor written in its stored dtype. The written recipe
    must say the same, so it leaves the dtypes out (a `dtype: float32` in it rebuilt a float32 model)."""
    base, fts = bf16_family
    out, again = tmp_path / "merged", tmp_path / "again"
    recipe = write_recipe(tmp_path / "r.yaml", "task_arithmetic", base, fts, [0.7, 0.5], {"lambda": 1.0})
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)]).exit_code == 0
    written = yaml.safe_load((out / "merge_recipe.yaml").read_text())
    assert "dtype" not in written and "out_dtype" not in written
    result = CliRunner().invoke(cli, ["merge", str(out / "merge_recipe.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    first, second = tensors_of(out), tensors_of(again)
    assert {t.dtype for t in first.values()} == {torch.bfloat16}
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    b, f1, f2 = tensors_of(base), tensors_of(fts[0]), tensors_of(fts[1])
    name = next(iter(first))
    b0 = b[name].float()
    expected = b0 + (0.7 * (f1[name].float() - b0) + 0.5 * (f2[name].float() - b0))
    assert torch.allclose(first[name].float(), expected, rtol=2 * U_HALF, atol=0)  # one rounding (sum order)


def test_methods_on_the_models_round_once_in_bfloat16(bf16_family, tmp_path):
    """A bfloat16 recipe formed each model as base + (model - base), both steps rounded: slerp at
    t 1 missed its endpoint by a bfloat16 step in a fifth of the entries, and an average of two
    models was off the rounded float32 one in a third. Methods on the models compute in float32."""
    base, fts = bf16_family
    endpoint = tensors_of(fts[0])
    recipe = write_recipe(tmp_path / "s.yaml", "slerp", base, fts[:1], [1.0], {"t": 1.0}, dtype="bfloat16")
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "slerp")])
    assert result.exit_code == 0, result.output
    merged = tensors_of(tmp_path / "slerp")
    assert merged and all(torch.equal(merged[k], endpoint[k]) for k in merged)

    soup = tmp_path / "soup.yaml"
    soup.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "bfloat16", "models": [
        {"model": str(m), "parameters": {"weight": w}} for m, w in zip(fts, (0.6, 0.4))]}))
    result = CliRunner().invoke(cli, ["merge", str(soup), "--out", str(tmp_path / "soup")])
    assert result.exit_code == 0, result.output
    other, moved, entries = tensors_of(fts[1]), 0, 0
    for name, tensor in tensors_of(tmp_path / "soup").items():
        rounded = (0.6 * endpoint[name].double() + 0.4 * other[name].double()).bfloat16()  # rounded once
        moved, entries = moved + int((tensor != rounded).sum()), entries + tensor.numel()
    assert moved < 0.01 * entries  # float32's own rounding moves a few to the next bfloat16 value


@pytest.mark.parametrize("method", ["tsv", "tsv_c", "iso_c"])
def test_svd_methods_compute_in_half_precision(family, tmp_path, method):
    """torch has no SVD for bfloat16 or float16: a recipe computing in them (mergekit's usual
    `dtype: bfloat16`) decomposes in float32 and matches the float32 merge to bfloat16's precision."""
    root, base, fts = family
    recipe = write_recipe(tmp_path / "r.yaml", method, base, fts, [0.7, 0.5], METHOD_PARAMS[method])
    merged = {}
    for dtype in ("float32", "bfloat16", "float16"):
        result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / dtype), "--dtype", dtype])
        assert result.exit_code == 0, result.output
        merged[dtype] = tensors_of(tmp_path / dtype)
    b = tensors_of(base)
    for name, exact in merged["float32"].items():
        delta = exact - b[name]
        for dtype in ("bfloat16", "float16"):
            assert merged[dtype][name].dtype == getattr(torch, dtype)
            error = (merged[dtype][name].float() - exact).norm()
            assert error <= 0.05 * delta.norm() + 4 * U_HALF * exact.norm(), (dtype, name)


def test_int8_mask_is_accepted_by_every_method_changes_nothing_and_is_not_searched(tmp_path):
    """mergekit's int8_mask only picks the dtype of its intermediate sign masks: every method takes
    it (README), the tensors are those of the same recipe without it, and the search leaves it be."""
    base, fts = save_tiny_family(tmp_path, "llama", n_finetunes=2)
    for name in list_methods():
        method = get_method(name)
        count = method.n_models[1] if method.n_models[1] is not None else 2
        recipe = {"merge_method": name, "base_model": str(base),
                  "models": [{"model": str(m)} for m in [base, *fts][-count:] if count] or [{"model": str(base)}],
                  "parameters": {"t": 0.3} if method.hyperparameter("t") else {}}
        plain = dict(stream_merge(plan_from_recipe(Recipe.model_validate(recipe)))[1])
        recipe["parameters"] = {**recipe["parameters"], "int8_mask": True}
        masked = dict(stream_merge(plan_from_recipe(Recipe.model_validate(recipe)))[1])
        assert plain.keys() == masked.keys() and all(torch.equal(plain[k], masked[k]) for k in plain), name
        assert all(h.name != "int8_mask" for h in method.hyperparameters if h.searchable), name
    recipe = {"merge_method": "slerp", "base_model": str(base), "models": [{"model": str(fts[0])}],
              "parameters": {"int8_mask": "yes"}}
    with pytest.raises(UserError, match=r"^parameters\.int8_mask: expected true or false, got 'yes'$"):
        plan_from_recipe(Recipe.model_validate(recipe))


def test_flags_saved_as_numbers_and_keys_mergekit_ignores_merge_as_mergekit_merges_them(family, tmp_path, caplog):
    """Published recipes carry `int8_mask: 1.0` (older mergekit saved every parameter as a number)
    and keys the method does not use (`normalize` on model_stock, a per-model `lambda` on
    della_linear): mergekit merges them, and so does this tool, naming what it ignored; a name
    no method declares is still refused."""
    root, base, fts = family
    recipe = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in fts],
              "parameters": {"normalize": 1.0, "int8_mask": 0.0}}
    as_flags = {**recipe, "parameters": {"normalize": True, "int8_mask": False}}
    numbers = dict(stream_merge(plan_from_recipe(Recipe.model_validate(recipe)))[1])
    flags = dict(stream_merge(plan_from_recipe(Recipe.model_validate(as_flags)))[1])
    assert all(torch.equal(numbers[k], flags[k]) for k in flags)
    with pytest.raises(UserError, match=r"^parameters\.normalize: expected true or false, got 0\.5$"):
        plan_from_recipe(Recipe.model_validate({**recipe, "parameters": {"normalize": 0.5}}))

    stock = {"merge_method": "model_stock", "base_model": str(base), "models": [{"model": str(m)} for m in fts]}
    plain = plain_stock = dict(stream_merge(plan_from_recipe(Recipe.model_validate(stock)))[1])
    caplog.clear()
    extra = dict(stream_merge(plan_from_recipe(Recipe.model_validate({**stock, "parameters": {"normalize": True}})))[1])
    assert all(torch.equal(plain[k], extra[k]) for k in plain)
    assert [r.getMessage() for r in caplog.records] == [
        "parameters.normalize: ignored, method model_stock does not use it (as mergekit does)"]
    della = {"merge_method": "della_linear", "base_model": str(base), "parameters": {"lambda": 1.0},
             "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5, "epsilon": 0.1}} for m in fts]}
    plain = dict(stream_merge(plan_from_recipe(Recipe.model_validate(della)))[1])
    della["models"][0]["parameters"]["lambda"] = 0.25
    caplog.clear()
    extra = dict(stream_merge(plan_from_recipe(Recipe.model_validate(della)))[1])
    assert all(torch.equal(plain[k], extra[k]) for k in plain)
    assert [r.getMessage() for r in caplog.records] == [
        "models.0.parameters.lambda: ignored, not a per-model parameter of method della_linear (as mergekit does)"]
    della["models"][0]["parameters"]["lambada"] = 0.25
    with pytest.raises(UserError, match=r"^models\.0\.parameters\.lambada: not a per-model parameter"):
        plan_from_recipe(Recipe.model_validate(della))
    # a bare `parameters:` line (YAML's null; mergekit's own examples/ties.yml has one) is none given
    bare = yaml.safe_load(f"merge_method: model_stock\nbase_model: {base}\nparameters:\n"
                          f"models:\n  - model: {fts[0]}\n    parameters:\n  - model: {fts[1]}\n")
    assert bare["parameters"] is None and bare["models"][0]["parameters"] is None
    rebuilt = dict(stream_merge(plan_from_recipe(Recipe.model_validate(bare)))[1])
    assert all(torch.equal(plain_stock[k], rebuilt[k]) for k in plain_stock)


BAD_RECIPES = {
    "unknown method": (
        "merge_method: frankenmerge\nbase_model: {base}\nmodels: [{{model: {ft}}}]\n",
        "unknown merge method",
    ),
    "unknown parameter": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}}}]\nparameters: {{densty: 0.5}}\n",
        "parameters.densty: unknown parameter",
    ),
    "missing model": ("merge_method: ties\nbase_model: {base}\nmodels: [{{model: /nope/model}}]\n", "models.0.model"),
    "malformed yaml": ("merge_method: ties\nmodels: [{{model: {ft}\n", "malformed YAML"),
    "unknown key": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}}}]\nmodles: {{}}\n",
        "modles: unknown key",
    ),
    "mergekit's modules": (  # was "modules: unknown key (did you mean 'models'?)", as if a typo
        "merge_method: ties\nbase_model: {base}\nmodules: {{text: {{slices: []}}}}\n",
        "modules: mergekit's recipes per module (of a model made of several) are not supported",
    ),
    "mergekit-moe config": (  # was "gate_mode: unknown key (did you mean 'base_model'?)" (audit 137)
        "base_model: {base}\ngate_mode: hidden\nexperts: [{{source_model: {ft}, positive_prompts: [math]}}]\n",
        "a mergekit-moe config (it has `experts`), which builds a mixture of experts: evo-merge merges mergekit-yaml "
        "recipes (merge_method, models or slices); use mergekit-moe",
    ),
    "two documents": (  # a mergekit-mega file: was "malformed YAML: but found another document"
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}}}]\n---\nmerge_method: linear\n",
        "bad.yaml:4:1: a second YAML document (after `---`): a file holds one campaign or recipe; split them into "
        "a file each",
    ),
    "wrong type": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}, parameters: {{weight: heavy}}}}]\n",
        "models.0.parameters.weight",
    ),
    # anchors no layer of a 2-layer model reaches were merged without a word and kept in the output's recipe
    "gradient anchor not a number": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}, parameters: {{weight: [0.0, zzz, 1.0]}}}}]\n",
        "models.0.parameters.weight.1: expected a finite number, got 'zzz'",
    ),
    "gradient anchor out of range": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}}}]\n"
        "parameters: {{density: [{{filter: mlp, value: [0.5, 1.5, 0.5]}}, {{value: 0.5}}]}}\n",
        "parameters.density.0.value.1: 1.5 is outside [0.0, 1.0]",
    ),
    # which of the two dtype keys: neither was named (audit 123)
    "unknown dtype": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}}}]\ndtype: bf16\nout_dtype: float8\n",
        "out_dtype: unknown dtype 'float8'; choose one of float32, bfloat16, float16, fp32, bf16, fp16, half",
    ),
    # was "parameters.density: ...", a key the recipe does not have (audit 123)
    "per-model value out of range": (
        "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {ft}, parameters: {{weight: 0.5, density: 0.5}}}}, "
        "{{model: {ft}, parameters: {{weight: 0.5, density: -0.2}}}}]\n",
        "models.1.parameters.density: -0.2 is outside [0.0, 1.0]",
    ),
    # was "needs exactly 0 model(s) besides the base, got 1" for two models and no base
    "two models to copy": (
        "merge_method: passthrough\nmodels: [{{model: {base}}}, {{model: {ft}}}]\n",
        "method passthrough copies one model's tensors: give that one model (as `base_model` or the only entry "
        "of `models`), not 2",
    ),
}


def test_a_recipe_s_dtypes_are_read_as_merge_reads_them(family, tmp_path):
    """Any case, `torch.` or not, the short names, spaces around: the recipe's own check takes every
    name `merge` reads (audit 124), and writes the dtype it names."""
    root, base, fts = family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {fts[0]}}}, {{model: {fts[1]}}}]\n"
                      "dtype: ' torch.Float32 '\nout_dtype: BF16\n")
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in load_file(tmp_path / "o" / "model.safetensors").values()} == {torch.bfloat16}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_give_one_line_errors_and_exit_2(family, tmp_path, case):
    root, base, fts = family
    text, expected = BAD_RECIPES[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text.format(base=base, ft=fts[0]))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert expected in result.output and "bad.yaml" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_tensor_integer_in_one_model_and_floating_in_another_is_refused(tmp_path):
    base, (ft,) = save_tiny_family(tmp_path, "llama", n_finetunes=1, seed=4)
    weights = load_file(ft / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("mlp.up_proj.weight"))
    weights[name] = weights[name].to(torch.int32)
    save_file(weights, ft / "model.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(m), "parameters": {"weight": 0.5}} for m in (base, ft)]}))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line, = result.output.strip().splitlines()
    assert f"tensor {name} is int32 in {ft}" in line and f"is float32 in {base}" in line
    assert not (tmp_path / "o").exists()

    weights[name] = load_file(base / "model.safetensors")[name].to(torch.bfloat16)  # floats may differ
    save_file(weights, ft / "model.safetensors")
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    expected = load_file(base / "model.safetensors")[name] * 0.5 + weights[name].float() * 0.5
    assert torch.allclose(tensors_of(tmp_path / "o")[name], expected, atol=1e-6)

    # integers of two widths: refused as campaigns refuse them (the file merge let them through)
    weights[name] = weights[name].to(torch.int32)
    save_file(weights, ft / "model.safetensors")
    base_weights = load_file(base / "model.safetensors")
    save_file({**base_weights, name: base_weights[name].to(torch.int64)}, base / "model.safetensors")
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and f"tensor {name} is int32 in {ft}" in result.output, result.output


def test_a_merge_the_disk_has_no_room_for_is_refused_before_it_merges(tmp_path, monkeypatch):
    """A full disk was found only once the whole merge had run (audit 126: 20 minutes of TSV-M at
    1B on a CPU would be lost so): the output's bytes, known from the headers, are compared first."""
    from collections import namedtuple

    from evo_merge.merge import stream

    base, fts = save_tiny_family(tmp_path / "a", "llama", n_finetunes=1)
    recipe = write_recipe(tmp_path / "ta.yaml", "task_arithmetic", base, fts, [1.0], {})
    merged = []
    monkeypatch.setattr(stream, "_run_job", lambda *a: merged.append(1))  # nothing may be merged
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))  # 1 MiB free
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.strip().startswith(f"error: cannot write {tmp_path / 'o'}: "
                                                                      "the merged weights take "), result.output
    assert "GiB free; free some space there" in result.output and not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ta.yaml"]  # no output, nothing staged
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")]).exit_code == 0
    narrowed = tmp_path / "narrow.yaml"  # written in bfloat16 from float32 inputs: counted so
    narrowed.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "out_dtype": "bfloat16"}))
    assert CliRunner().invoke(cli, ["merge", str(narrowed), "--out", str(tmp_path / "n")]).exit_code == 0
    for made, out in ((recipe, "o"), (narrowed, "n")):
        plan = plan_from_recipe(Recipe.model_validate(yaml.safe_load(made.read_text())), tmp_path)
        checkpoints = plan.open()
        written = sum(t.numel() * t.element_size() for t in tensors_of(tmp_path / out).values())
        assert stream.output_bytes(plan, checkpoints) == written
        for checkpoint in checkpoints:
            checkpoint.close()


def test_mismatched_shapes_and_pickle_checkpoints_are_refused(tmp_path):
    base, fts = save_tiny_family(tmp_path / "a", "llama", n_finetunes=1)
    other, _ = save_tiny_family(tmp_path / "b", "gpt2", n_finetunes=0)
    recipe = write_recipe(tmp_path / "mix.yaml", "task_arithmetic", base, [other], [1.0], {})
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output

    model = AutoModelForCausalLM.from_pretrained(fts[0])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    model.config.save_pretrained(pickled)
    recipe = write_recipe(tmp_path / "pk.yaml", "task_arithmetic", base, [pickled], [1.0], {})
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--allow-pickle" in result.output
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o"), "--allow-pickle"])
    assert result.exit_code == 0, result.output
    merged, expected = tensors_of(tmp_path / "o"), tensors_of(fts[0])
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)
    # the card's command rebuilds it (it lacked the flag, and was refused: audit 126); a safetensors merge's has none
    card = (tmp_path / "o" / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("evo-merge merge "))
    assert command == "evo-merge merge merge_recipe.yaml --out merged --allow-pickle" and "for inputs you trust" in card
    again = CliRunner().invoke(cli, ["merge", str(tmp_path / "o" / "merge_recipe.yaml"), "--out",
                                     str(tmp_path / "again"), "--allow-pickle"])
    assert again.exit_code == 0 and tensors_of(tmp_path / "again").keys() == merged.keys(), again.output
    plain = write_recipe(tmp_path / "plain.yaml", "task_arithmetic", base, [fts[0]], [1.0], {})
    assert CliRunner().invoke(cli, ["merge", str(plain), "--out", str(tmp_path / "p"), "--allow-pickle"]).exit_code == 0
    assert "--allow-pickle" not in (tmp_path / "p" / "README.md").read_text()


@pytest.mark.parametrize(("fn", "expected"), [
    (lambda base, deltas: (_ for _ in ()).throw(ValueError("boom from my plugin")),
     r"test_slip failed on tensor \S+: ValueError: boom from my plugin"),
    (lambda base, deltas: base.flatten(), r"test_slip returned shape \[\d+\] for tensor \S+, not a tensor of shape"),
    (lambda base, deltas: (base + deltas[0]).int(), r"test_slip returned torch.int32 values for tensor \S+, not"),
    (lambda base, deltas: base.add_(deltas[0]), r"test_slip changed its inputs in place on tensor \S+ \(the base"),
])
def test_merge_of_a_method_that_raises_or_breaks_its_contract_is_one_line(family, tmp_path, fn, expected):
    """`evo-merge merge` with a plugin that raised or returned another shape ended in a traceback
    (exit 1), and one returning whole numbers wrote zeros with exit 0 (audit 135)."""
    from evo_merge.merge.registry import register_method

    @register_method("test_slip", replace=True)
    def slip(base, deltas, weights, params, name):
        """A plugin's slip."""
        return fn(base, deltas)

    root, base, fts = family
    recipe = write_recipe(tmp_path / "r.yaml", "test_slip", base, fts[:1], [1.0], {})
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and not (tmp_path / "m").exists(), result.output
    line, = result.output.strip().splitlines()
    assert re.match(f"error: merge method {expected}", line), line


def test_a_streamed_method_writing_into_a_stored_task_vector_fails_and_inference_tensors_are_no_fault(family):
    """A `streams=True` method gets TaskVectors whose `whole()` may be the stored tensor itself: one
    writing into it changed every later candidate's task vector unseen. Tensors made under
    `torch.inference_mode()` keep no version counter: reading it was a RuntimeError (audit 136)."""
    from evo_merge.merge.apply import MethodFailed, merge_tensor
    from evo_merge.merge.registry import register_method
    from evo_merge.merge.task_vectors import whole

    @register_method("test_streamed_slip", streams=True, replace=True)
    def slip(base, deltas, weights, params, name):
        """Writes into its task vectors."""
        return base + sum(w * whole(d).mul_(1.0) for w, d in zip(weights, deltas))

    root, base, fts = family
    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(model, Checkpoint.open(base), [Checkpoint.open(f) for f in fts])
    with pytest.raises(MethodFailed, match="test_streamed_slip changed its inputs in place on tensor"):
        merger.apply("test_streamed_slip", [0.5, 0.5])
    with torch.inference_mode():
        merged = merge_tensor(get_method("linear"), torch.ones(3), [torch.ones(3)], [1.0],
                              get_method("linear").resolve({}, 1), "x")
    assert torch.equal(merged, torch.full((3,), 2.0))
