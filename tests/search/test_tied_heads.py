"""Campaigns over models with tied embeddings (Llama-3.2-1B/3B, Qwen2.5 up to 3B, Gemma) mixed with
models that store a head: a tied model's head is its embedding, a stored copy of it is not a head of
its own, and an endpoint's own head next to a tied base makes the evaluated model untied."""

import json
import shutil

import pytest
import torch
from campaigns import run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evo_merge.cli import cli
from evo_merge.search.candidate import Candidate
from evo_merge.search.kinds import candidate_kind
from evo_merge.search.store import EXPORTED_META, CampaignStore
from evo_merge.search.workbench import Workbench
from evo_merge.zoo.tiny import save_tiny_family, tie_embeddings

HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"
WEIGHTS = (0.6, 0.3)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("tied")
    base, (ft1, ft2) = save_tiny_family(root / "untied", "llama", n_finetunes=2)  # close enough for MASS
    return {
        "base": base, "ft1": ft1, "ft2": ft2,
        "tied base": tie_embeddings(base, root / "tied-base"),
        "tied base with a copy": tie_embeddings(base, root / "tied-base-copy", store_head=True),
        "tied ft1": tie_embeddings(ft1, root / "tied-ft1"),
        "tied ft1 with a copy": tie_embeddings(ft1, root / "tied-ft1-copy", store_head=True),
        "tied ft2": tie_embeddings(ft2, root / "tied-ft2"),
        "base tying a head of its own": tied_config(base, root / "base-own-head"),
        "ft1 tying a head of its own": tied_config(ft1, root / "ft1-own-head"),
    }


def tied_config(folder, out):
    """A copy whose config ties its embeddings while it stores a head of its own (other values):
    transformers warns and leaves the two untied, scoring the stored head."""
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return out


def head_of(folder) -> torch.Tensor:
    """The head transformers computes with: the stored one, or the embedding a tied model uses
    (one storing no head, or a copy of its embedding)."""
    weights = load_file(folder / "model.safetensors")
    tied = json.loads((folder / "config.json").read_text()).get("tie_word_embeddings") is True
    own = HEAD in weights and not torch.equal(weights[HEAD], weights[EMBEDDING])
    return weights[HEAD] if own or not tied else weights[EMBEDDING]


@pytest.mark.parametrize("name", ["tied base", "tied base with a copy", "base", "ft1 tying a head of its own"])
def test_head_of_reads_the_head_transformers_loads(family, name):
    module = AutoModelForCausalLM.from_pretrained(family[name], dtype=torch.float32)
    assert torch.equal(module.get_output_embeddings().weight, head_of(family[name]))


# (base, endpoints, whether the evaluated model and the exported pick need a head of their own)
CASES = {
    "tied base, an endpoint storing a head copy": ("tied base", ["tied ft1 with a copy", "tied ft2"], False),
    "a base storing a copy, tied endpoints": ("tied base with a copy", ["tied ft1", "tied ft2"], False),
    "untied base, a tied endpoint": ("base", ["tied ft1", "ft2"], True),
    "tied base, an endpoint with a head of its own": ("tied base", ["ft1", "tied ft2"], True),
    "tied base, an endpoint whose config ties a head of its own": ("tied base", ["ft1 tying a head of its own",
                                                                                 "tied ft2"], True),
    "a base whose config ties a head of its own": ("base tying a head of its own", ["ft1", "tied ft2"], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_in_place_merge_computes_with_each_model_s_own_head(family, case):
    base_key, endpoint_keys, untied = CASES[case]
    base, endpoints = family[base_key], [family[k] for k in endpoint_keys]
    bench = Workbench.open(base, endpoints, device="cpu")
    module = bench.merger.apply("task_arithmetic", WEIGHTS)
    expected = head_of(base) + sum(w * (head_of(e) - head_of(base)) for w, e in zip(WEIGHTS, endpoints))
    assert torch.allclose(module.get_output_embeddings().weight, expected, atol=1e-6)
    shared = module.get_output_embeddings().weight is module.get_input_embeddings().weight
    assert shared is not untied


@pytest.mark.parametrize("case", ["tied base, an endpoint with a head of its own",
                                  "tied base, an endpoint whose config ties a head of its own",
                                  "a base whose config ties a head of its own"])
def test_a_campaign_with_a_head_of_its_own_next_to_a_tied_model_exports_what_it_evaluated(family, case, tmp_path):
    """The pick is written untied, with the head the campaign scored (the campaign was refused:
    'tensor lm_head.weight is in ft1 but missing from the base'; and a head stored under a config
    that ties it was taken for a copy of the embedding: scored with the base's stored head, which
    the merge never wrote, and exported with none)."""
    base_key, endpoint_keys, _ = CASES[case]
    base, endpoints = family[base_key], [family[k] for k in endpoint_keys]
    run = run_campaign(write_campaign(tmp_path / "campaign.yaml", base, endpoints), tmp_path / "run")
    store = CampaignStore(run)
    exported = store.get_meta(EXPORTED_META)
    keys = {e.id: e.key for e in store.evaluations()}
    store.close()
    bench = Workbench.open(base, endpoints, device="cpu")
    assert exported  # picks to compare
    for eid, folder in exported.values():
        pick = run / folder
        assert json.loads((pick / "config.json").read_text())["tie_word_embeddings"] is False
        saved = load_file(pick / "model.safetensors")
        candidate = Candidate.from_key(keys[eid])
        evaluated = candidate_kind(candidate.method).build(bench, candidate).state_dict()
        assert saved.keys() == evaluated.keys()
        assert all(torch.equal(saved[n], evaluated[n]) for n in saved), folder
        loaded = AutoModelForCausalLM.from_pretrained(pick).eval()
        ids = torch.tensor([[1, 20, 33, 7]])
        assert torch.equal(loaded(ids).logits, bench.module(ids).logits)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mass_builds_where_the_base_s_tied_model_holds_the_merge_and_refuses_an_endpoint_s_own_head(
        family, case, tmp_path):
    base_key, endpoint_keys, untied = CASES[case]
    args = ["mass", "build", "--base", str(family[base_key]), "--models",
            *(str(family[k]) for k in endpoint_keys), "--out", str(tmp_path / "mass")]
    result = CliRunner().invoke(cli, args)
    refused = base_key.startswith("tied") and untied
    assert result.exit_code == (2 if refused else 0), result.output
    if refused:
        assert "has an output head of its own (lm_head.weight)" in result.output.splitlines()[-1]


def test_a_block_group_candidate_merges_the_head_an_endpoint_has_of_its_own_as_its_recipe_does(family, tmp_path):
    """The per-tensor weights were laid out over the tied base's tensors only: every block-group
    candidate failed with KeyError 'lm_head.weight'."""
    from evo_merge.merge import layers
    from evo_merge.merge.export import export_merge
    from evo_merge.merge.plan import plan_from_recipe
    from evo_merge.search.kinds import candidate_recipe, tensor_names

    base, endpoints = family["tied base"], [family["ft1"], family["tied ft2"]]
    bench = Workbench.open(base, endpoints, device="cpu")
    blocks = layers.count_layers(tensor_names(base))
    weights = (0.6, *(0.5 + 0.1 * i for i in range(blocks)), 0.3, *[0.2] * blocks)
    candidate = Candidate("task_arithmetic", weights, (), "blocks:1")
    evaluated = candidate_kind(candidate.method).build(bench, candidate).state_dict()
    recipe = candidate_recipe(candidate, str(base), [str(e) for e in endpoints], "float32")
    saved = load_file(export_merge(plan_from_recipe(recipe), tmp_path / "pick", title="pick") / "model.safetensors")
    assert HEAD in saved and all(torch.equal(saved[n], evaluated[n]) for n in saved)


def test_an_in_place_merger_over_a_tied_module_refuses_a_head_to_untie(family):
    """Writing an endpoint's own head into a module that ties it would overwrite its embedding."""
    from evo_merge.errors import UserError
    from evo_merge.merge.inplace import InPlaceMerger
    from evo_merge.weights import Checkpoint, load_model_folder

    module, _ = load_model_folder(family["tied base"])  # tied, as the base's config says
    checkpoints = [Checkpoint.open(family[k]) for k in ("tied base", "ft1", "tied ft2")]
    with pytest.raises(UserError, match="the module ties it to model.embed_tokens.weight; load the base untied"):
        InPlaceMerger(module, checkpoints[0], checkpoints[1:], device="cpu")


def _tied_by_its_type(folder, out, store_head: bool):
    """A GPT-2 folder as the Hub's GPT-2 (and Gemma) configs are: no `tie_word_embeddings` key, the
    model type's default ties; no head stored, or a copy of the embedding under its name."""
    import shutil

    from evo_merge.weights.export import save_safetensors

    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    (out / "config.json").write_text(json.dumps(config))
    weights = load_file(out / "model.safetensors")
    weights.pop(HEAD, None)
    if store_head:
        weights[HEAD] = weights["transformer.wte.weight"].clone()
    save_safetensors(weights, out / "model.safetensors")
    assert AutoModelForCausalLM.from_pretrained(out).config.tie_word_embeddings  # transformers reads it tied
    return out


def test_models_tied_by_their_config_class_s_default_are_read_as_tied(tmp_path):
    """Only an explicit `tie_word_embeddings: true` was read as tied: the campaign refused the base
    ('lm_head.weight ... missing from its weights') and DARE drew the endpoint's stored copy apart
    from the embedding, so two tied inputs gave an untied output."""
    from evo_merge.merge.export import export_merge
    from evo_merge.merge.plan import plan_from_recipe
    from evo_merge.merge.recipe import Recipe

    untied_base, (untied_ft,) = save_tiny_family(tmp_path / "gpt2", "gpt2", n_finetunes=1)
    base = _tied_by_its_type(untied_base, tmp_path / "base", store_head=False)
    ft = _tied_by_its_type(untied_ft, tmp_path / "ft", store_head=True)
    bench = Workbench.open(base, [ft], device="cpu")
    module = bench.merger.apply("task_arithmetic", (0.5,))
    assert module.get_output_embeddings().weight is module.get_input_embeddings().weight
    recipe = Recipe.model_validate({"merge_method": "dare_ties", "base_model": str(base), "dtype": "float32",
                                    "parameters": {"density": 0.5}, "models": [{"model": str(ft)}]})
    out = export_merge(plan_from_recipe(recipe), tmp_path / "out", title="out")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight)
    assert HEAD not in load_file(out / "model.safetensors")
