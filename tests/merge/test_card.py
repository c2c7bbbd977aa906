"""Model cards and results files of exported merges, read back with huggingface_hub and pandas."""

import dataclasses
import json
import math
import shutil

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, GenerationConfig

from evo_merge.cli import cli
from evo_merge.mass.card import mass_card
from evo_merge.mass.routing import RoutingConfig
from evo_merge.merge.card import model_card, model_index
from evo_merge.merge.card_inputs import model_ref
from evo_merge.merge.export import export_merge
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.results import ITEM_SCORES_FILE, RESULTS_FILE, write_results
from evo_merge.tasks.meta import TaskMeta, task_meta
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardzoo")
    base, fts = save_tiny_family(root, "llama", n_finetunes=2)
    return root, base, fts


def recipe_for(base, models, method="ties"):
    return Recipe.model_validate({
        "merge_method": method, "base_model": str(base), "parameters": {"density": 0.5},
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models]})


def with_license(folder, license_id, dest):
    shutil.copytree(folder, dest)
    (dest / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# model\n")
    return dest


def test_local_inputs_are_named_by_folder_and_the_card_parses(zoo, tmp_path):
    root, base, fts = zoo
    text = model_card(recipe_for(base, fts), title="pick", scores={"measured": {"arith": 0.625}})
    assert str(root) not in text and str(base) not in text
    card = ModelCard(text)
    assert card.data.base_model is None  # the Hub accepts only Hub ids there
    assert card.data.merged_models == ["ft1", "ft2"]
    assert set(card.data.tags) == {"merge", "evo-merge", "ties"}
    assert "ft1: a local folder, not a Hub model" in card.text.replace("\\", "")
    (result,) = card.data.eval_results
    assert (result.task_name, result.metric_value, result.verified) == ("arith", 0.625, False)


def test_hub_inputs_become_base_model_with_revisions(tmp_path):
    snapshot = tmp_path / "hub" / "models--org--base-lm" / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    recipe = Recipe.model_validate({"merge_method": "task_arithmetic", "base_model": str(snapshot),
                                    "models": [{"model": "org/chat-ft@v2"}, {"model": "other/code-ft"}]})
    card = ModelCard(model_card(recipe))
    assert card.data.base_model == ["org/base-lm", "org/chat-ft", "other/code-ft"]
    assert card.data.base_model_relation == "merge"
    assert card.data.merged_models == ["org/chat-ft@v2", "other/code-ft"]
    assert "at revision 0123456789abcdef" in card.text and str(tmp_path) not in card.content
    assert "using **task\\_arithmetic** over the base model org/base-lm@0123456789abcdef." in card.text
    assert "names some of its models by the folders" not in card.text  # Hub ids rebuild anywhere
    local = ModelCard(model_card(Recipe.model_validate({"merge_method": "task_arithmetic", "base_model": str(snapshot),
                                                        "models": [{"model": str(tmp_path / "ft")}]})))
    assert "names some of its models (or their LoRA adapters) by the folders they were merged from" in local.text
    # a Hub model with an adapter from a folder of this machine rebuilds only here too (audit 123)
    adapted = ModelCard(model_card(Recipe.model_validate({
        "merge_method": "task_arithmetic", "base_model": str(snapshot),
        "models": [{"model": f"org/chat-ft@v2+{tmp_path / 'adapters' / 'my-lora'}"}]})))
    assert "by the folders they were merged from" in adapted.text
    ref = model_ref("some/path", hub_id="org/x", revision="abc")
    assert (ref.hub_id, ref.revision, ref.display) == ("org/x", "abc", "org/x@abc")
    lora = model_ref(f"org/x@abc+{tmp_path}/adapters/my-lora")
    assert (lora.hub_id, lora.display, lora.adapter_local) == ("org/x", "org/x@abc + LoRA my-lora", True)
    assert not model_ref("org/x@abc+org/my-lora").adapter_local  # an adapter on the Hub rebuilds anywhere
    # a Hub id by huggingface_hub's rule, as recipes read one: `a--b/c` is none, a missing folder named
    assert model_ref("org/name@v1").hub_id == "org/name" and model_ref("a--b/c").hub_id is None


def test_license_is_inherited_only_when_all_inputs_agree(zoo, tmp_path):
    _, base, fts = zoo
    same = [with_license(p, "apache-2.0", tmp_path / f"same-{p.name}") for p in (base, *fts)]
    assert ModelCard(model_card(recipe_for(same[0], same[1:]))).data.license == "apache-2.0"
    mixed = [*same[:2], with_license(fts[1], "mit", tmp_path / "mit-ft2")]
    card = ModelCard(model_card(recipe_for(mixed[0], mixed[1:])))
    assert card.data.license == "other"
    assert "license: mit" in card.text and "license: apache-2.0" in card.text
    assert ModelCard(model_card(recipe_for(base, fts))).data.license is None  # nothing declared
    # a card as an editor on Windows saves it (CRLF, a byte-order mark), read as the Hub reads it
    windows = [with_license(p, "apache-2.0", tmp_path / f"crlf-{p.name}") for p in (base, *fts)]
    for folder in windows:
        (folder / "README.md").write_bytes("\ufeff---\r\nlicense: apache-2.0\r\n---\r\n# model\r\n".encode())
    assert ModelCard(model_card(recipe_for(windows[0], windows[1:]))).data.license == "apache-2.0"
    broken = with_license(fts[0], "mit", tmp_path / "broken")  # not YAML, not UTF-8: unknown, never a traceback
    (broken / "README.md").write_bytes(b"---\nlicense: [mit\n---\n\xff\n")
    assert "license: unknown" in model_card(recipe_for(base, [broken]))


def test_inputs_that_share_a_folder_name_are_named_apart_and_keep_their_own_licenses(zoo, tmp_path):
    """`/ckpt/a/final` and `/ckpt/b/final` were one entry `final` of the license list, the last
    one's license standing for both: a non-commercial input gave a card saying apache-2.0."""
    _, base, fts = zoo
    base = with_license(base, "apache-2.0", tmp_path / "base")
    nc = with_license(fts[0], "cc-by-nc-4.0", tmp_path / "a" / "final")
    free = with_license(fts[1], "apache-2.0", tmp_path / "b" / "final")
    card = ModelCard(model_card(recipe_for(base, [nc, free])))
    assert card.data.license == "other" and card.data.merged_models == ["a/final", "b/final"]
    lines = {line.split(":")[0]: line for line in card.text.replace("\\", "").splitlines() if "/final:" in line}
    assert lines["- a/final"].endswith("license: cc-by-nc-4.0") and lines["- b/final"].endswith("license: apache-2.0")
    assert [m["model"] for m in card.data.merge_parameters["models"]] == ["a/final", "b/final"]


def with_other_license(folder, dest, name="deepseek", link="LICENSE", text="DEEPSEEK LICENSE AGREEMENT\n"):
    shutil.copytree(folder, dest)
    (dest / "README.md").write_text(f"---\nlicense: other\nlicense_name: {name}\nlicense_link: {link}\n---\n# m\n")
    if text is not None:
        (dest / link).write_text(text)
    return dest


def test_an_other_license_keeps_its_name_and_a_link_that_resolves_and_mixed_ones_are_listed(zoo, tmp_path):
    """`license: other` was inherited without `license_name` or `license_link` (the Hub's card spec asks
    for both), and inputs of different licenses gave `other` with no link to what applies."""
    _, base, fts = zoo
    same = [with_other_license(p, tmp_path / f"ds-{p.name}") for p in (base, *fts)]
    out = export_merge(plan_from_recipe(recipe_for(same[0], same[1:])), tmp_path / "merged")
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "deepseek", "LICENSE")
    assert (out / "LICENSE").read_text() == "DEEPSEEK LICENSE AGREEMENT\n"  # the link names a file that is there
    assert "license: other (deepseek)" in card.text.replace("\\", "") and "do not share one license" not in card.text

    # the file is not in the folder, but the input is a Hub model: a URL into its repository at its revision
    snapshot = tmp_path / "hub" / "models--org--ds-base" / "snapshots" / "0123456789abcdef"
    shutil.copytree(with_other_license(base, tmp_path / "nofile", text=None), snapshot)
    card = ModelCard(model_card(Recipe.model_validate({"merge_method": "task_arithmetic", "base_model": str(snapshot),
                                                       "models": [{"model": str(m)} for m in same[1:]]})))
    assert card.data.license_link == "https://huggingface.co/org/ds-base/blob/0123456789abcdef/LICENSE"
    for link, url in ((".github/LICENSE.md", "blob/0123456789abcdef/.github/LICENSE.md"),  # was github/LICENSE.md
                      ("./LICENSE", "blob/0123456789abcdef/LICENSE"), ("../LICENSE", ""),  # out of the repository
                      ("/etc/LICENSE", "")):
        shutil.rmtree(snapshot)
        shutil.copytree(with_other_license(base, tmp_path / f"nofile-{len(link)}", link=link, text=None), snapshot)
        recipe = {"merge_method": "task_arithmetic", "base_model": str(snapshot),
                  "models": [{"model": str(m)} for m in same[1:]]}
        card = ModelCard(model_card(Recipe.model_validate(recipe)))
        assert card.data.license_link == f"https://huggingface.co/org/ds-base/{url}".rstrip("/"), link

    mixed = [same[0], with_license(fts[0], "mit", tmp_path / "mit-ft1"), same[2]]
    out = export_merge(plan_from_recipe(recipe_for(mixed[0], mixed[1:])), tmp_path / "mixed")
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == (
        "other", "mixed-input-licenses", "LICENSE.md")
    listing = (out / "LICENSE.md").read_text().replace("\\", "")
    assert "- ds-base: other (deepseek)" in listing and "- mit-ft1: mit" in listing and not (out / "LICENSE").exists()


def test_a_shared_license_s_files_go_with_the_weights_and_none_from_outside_the_model(zoo, tmp_path):
    """Inputs under apache-2.0 or llama3 gave a card naming the license and no LICENSE (Apache's 4a,
    Llama's 1.b.i ask for the text to go with the weights); `license_link: ./LICENSE` was dropped; a
    license file linking out of its model folder was copied (its target published); a non-commercial
    input among mixed ones was only listed."""
    from evo_merge.errors import UserError

    _, base, fts = zoo
    llama = [with_license(p, "llama3", tmp_path / f"llama-{p.name}") for p in (base, *fts)]
    (llama[0] / "LICENSE").write_text("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n")
    (llama[0] / "USE_POLICY.md").write_text("# Meta Llama 3 Acceptable Use Policy\n")
    out = export_merge(plan_from_recipe(recipe_for(llama[0], llama[1:])), tmp_path / "llama-merge")
    assert ModelCard.load(out / "README.md").data.license == "llama3"
    assert (out / "LICENSE").read_text() == "META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n"
    assert (out / "USE_POLICY.md").read_text() == "# Meta Llama 3 Acceptable Use Policy\n"

    dotted = [with_other_license(p, tmp_path / f"dot-{p.name}", link="./LICENSE") for p in (base, *fts)]
    out = export_merge(plan_from_recipe(recipe_for(dotted[0], dotted[1:])), tmp_path / "dotted")
    card = ModelCard.load(out / "README.md")
    assert card.data.license_link == "LICENSE" and (out / "LICENSE").read_text() == "DEEPSEEK LICENSE AGREEMENT\n"
    shouting = [with_other_license(p, tmp_path / f"md-{p.name}", link="LICENSE.MD") for p in (base, *fts)]
    out = export_merge(plan_from_recipe(recipe_for(shouting[0], shouting[1:])), tmp_path / "shouting")
    assert (out / "LICENSE.MD").read_text() == "DEEPSEEK LICENSE AGREEMENT\n"  # a text's suffix in any case

    secret = tmp_path / "secret.txt"
    secret.write_text("api_key=hunter2")
    (llama[0] / "LICENSE").unlink()
    (llama[0] / "LICENSE").symlink_to(secret)
    with pytest.raises(UserError, match=f"LICENSE: links to {secret}, outside the model folder"):
        export_merge(plan_from_recipe(recipe_for(llama[0], llama[1:])), tmp_path / "leak")
    assert not (tmp_path / "leak").exists()

    mixed = [with_license(base, "apache-2.0", tmp_path / "free"), with_license(fts[0], "cc-by-nc-4.0", tmp_path / "nc"),
             with_license(fts[1], "apache-2.0", tmp_path / "free2")]
    out = export_merge(plan_from_recipe(recipe_for(mixed[0], mixed[1:])), tmp_path / "mixed")
    assert "licensed for non-commercial use only: so are these weights" in (out / "LICENSE.md").read_text()


@pytest.mark.parametrize("link", ["tokenizer_config.json", "merges.txt", "modeling_evil.py",
                                  "model.safetensors.index.json", "chat_template.jinja"])
def test_a_license_link_naming_a_model_file_copies_nothing_over_the_merge_s_own(zoo, tmp_path, link):
    """An input's card with `license: other` and `license_link: tokenizer_config.json` had that input's
    file copied over the merge's own tokenizer config, its chat template and `auto_map` with it (audit
    95); the same for any file a model folder holds (a weights index, code). A license is a text."""
    _, base, fts = zoo
    evil = '{"chat_template": "{{ evil }}", "auto_map": {"AutoTokenizer": "evil.Tok"}}'
    inputs = [with_other_license(p, tmp_path / f"x-{p.name}", link=link, text=None if p == base else evil)
              for p in (base, *fts)]
    out = export_merge(plan_from_recipe(recipe_for(inputs[0], inputs[1:])), tmp_path / "merged")
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "deepseek", None)
    assert "evil" not in "".join(f.read_text(errors="replace") for f in out.iterdir() if f.suffix != ".safetensors")
    assert (out / "tokenizer_config.json").read_text() == (base / "tokenizer_config.json").read_text()


def test_an_extra_file_never_replaces_a_file_the_model_folder_is_written_with(zoo, tmp_path):
    """The writer's own guard, before any tensor is written: a card or license file under a copied
    file's name, the weights' or their index's."""
    from evo_merge.weights.export import write_model_folder

    _, base, _ = zoo

    def tensors():  # minutes of merging at size: refused before the first is asked for (audit 100)
        raise AssertionError("a tensor was merged before the refusal")
        yield

    for name in ("tokenizer_config.json", "config.json", "generation_config.json", "model.safetensors",
                 "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        with pytest.raises(ValueError, match=f"extra file '{name}' would replace a file"):
            write_model_folder(tmp_path / "out", tensors(), copy_from=base,
                               extra_files={"README.md": "card", name: "text"})
        assert not (tmp_path / "out").exists()


def test_a_mass_card_inherits_the_license_as_a_merged_models_card_does(zoo, tmp_path):
    _, base, fts = zoo
    routing = RoutingConfig(layer=0, weight="model.layers.0.mlp.gate_proj.weight")

    def card(folders):
        return ModelCard(mass_card(["a", "b"], [str(f) for f in folders[1:]], str(folders[0]), routing))

    same = [with_license(p, "mit", tmp_path / f"same-{p.name}") for p in (base, *fts)]
    assert card(same).data.license == "mit"
    mixed = card([*same[:2], with_license(fts[1], "apache-2.0", tmp_path / "apache-ft2")])
    assert mixed.data.license == "other" and "do not share one license" in mixed.text


def test_estimates_stay_out_of_model_index(zoo):
    _, base, fts = zoo
    meta = {"arith": TaskMeta(name="arith", dataset="evo_arith", split="test", metric="acc", n_items=40)}
    estimated_only = ModelCard(model_card(recipe_for(base, fts), scores={"estimated": {"arith": 0.9}}, tasks=meta))
    assert estimated_only.data.eval_results is None and "0.9000" in estimated_only.text
    both = ModelCard(model_card(recipe_for(base, fts), tasks=meta,
                                scores={"estimated": {"arith": 0.9}, "measured": {"arith": 0.55}}))
    (result,) = both.data.eval_results
    assert (result.dataset_name, result.dataset_split, result.metric_type, result.metric_value) == \
        ("evo_arith", "test", "acc", 0.55)


def test_a_mass_card_names_no_model_index_it_does_not_have(zoo):
    """A MASS folder has no `model-index` (the Hub cannot run it): its card's sentences under the
    scores said the measured ones were "in the `model-index` metadata" and "the one published"."""
    _, base, fts = zoo
    routing = RoutingConfig(layer=0, weight="model.layers.0.mlp.gate_proj.weight")
    scores = {"estimated": {"a": 0.5}, "measured_search_items": {"a": 0.6}, "measured": {"a": 0.55}}
    card = ModelCard(mass_card(["a", "b"], [str(f) for f in fts], str(base), routing, scores))
    assert "model-index" not in card.text and "model-index" not in card.data.to_dict()
    assert ("Estimated scores come from part of each task's items (anchor items, or those an adaptive test chose) "
            "and an IRT model.") in card.text
    assert "their score is the one to quote" in card.text
    merged = ModelCard(model_card(recipe_for(base, fts), scores=scores))
    assert "only measured scores are in the `model-index` metadata" in merged.text
    assert "their score is the one published (`model-index`" in merged.text


def test_user_strings_cannot_inject_markup_or_end_the_front_matter(zoo, tmp_path):
    _, base, fts = zoo
    evil = tmp_path / "x`<script>alert(1)</script>\n---\n## Scores"
    shutil.copytree(fts[0], evil)
    text = model_card(recipe_for(base, [evil, fts[1]]), title="t <img src=x>\n# H",
                      scores={"measured": {"task`\n## Fake": 0.5}})
    card = ModelCard(text)  # parses: the name did not close the front matter
    assert card.data.merged_models[0] == evil.name
    body = card.text
    assert "<script>" not in body and "<img" not in body
    assert [line for line in body.splitlines() if line.startswith("#")] == \
        ["# t &lt;img src=x&gt; \\# H", "## Merged models", "## Scores", "## Reproduce"]


def test_control_characters_of_a_folder_name_show_as_text_in_the_card(zoo, tmp_path):
    """A terminal escape sequence in a model folder's name reached the card raw, to recolour or
    retitle the terminal that prints it (audit 116): it shows as `\\x1b` now."""
    _, base, fts = zoo
    named = tmp_path / "m\x1b]0;TITLE\x07\x1b[31mRED"
    shutil.copytree(fts[0], named)
    body = ModelCard(model_card(recipe_for(base, [named, fts[1]]))).text
    assert "\x1b" not in body and "\x07" not in body
    assert "m\\\\x1b\\]0;TITLE\\\\x07\\\\x1b\\[31mRED" in body  # renders as m\x1b]0;TITLE\x07\x1b[31mRED


def test_export_carries_chat_template_generation_config_and_results(zoo, tmp_path, monkeypatch):
    import evo_merge.merge.licenses as licenses

    read = []
    monkeypatch.setattr(licenses, "read_license", lambda folder, real=licenses.read_license: read.append(folder) or
                        real(folder))
    _, base, fts = zoo
    templated = tmp_path / "templated-base"
    shutil.copytree(base, templated)
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    (templated / "chat_template.jinja").write_text(template)
    GenerationConfig(max_new_tokens=7, do_sample=False).save_pretrained(templated)
    items = {"arith": {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0}}
    meta = {"arith": TaskMeta(name="arith", dataset="evo_arith", metric="acc", version="1.0", n_items=4, limit=None)}
    out = export_merge(plan_from_recipe(recipe_for(templated, fts)), tmp_path / "out", tasks=meta, item_scores=items,
                       scores={"measured": {"arith": 0.75}})
    assert AutoTokenizer.from_pretrained(out).chat_template == template
    assert GenerationConfig.from_pretrained(out).max_new_tokens == 7
    results = json.loads((out / RESULTS_FILE).read_text())
    # hand-computed: mean 3/4, sample variance 0.25, stderr sqrt(0.25 / 4)
    assert results["results"]["arith"]["acc,none"] == 0.75
    assert math.isclose(results["results"]["arith"]["acc_stderr,none"], 0.25)
    # as lm-eval writes them: a version number, a limit one number (or null)
    assert results["versions"]["arith"] == 1.0 and results["n-samples"]["arith"] == {"original": 4, "effective": 4}
    assert results["config"]["limit"] is None
    table = pd.read_parquet(out / ITEM_SCORES_FILE)
    assert table.set_index("item")["score"].to_dict() == items["arith"]
    assert "0.7500 ± 0.2500" in (out / "README.md").read_text()
    assert len(read) == 3  # each input's license read once, for the card and the files its link names


def test_write_results_and_task_meta_of_a_shipped_benchmark(tmp_path):
    from evo_merge.tasks.registry import resolve_task

    task = resolve_task("arith", limit=30)
    meta = task_meta("arith", task)
    assert (meta.dataset, meta.split, meta.metric, meta.version, meta.limit, meta.n_items, meta.dataset_items) == \
        ("evo_arith", "test", "acc", "1.0", 30, 30, 1200)
    scores = {"arith": {i: float(k % 3 == 0) for k, i in enumerate(task.item_ids)}}
    write_results(tmp_path, scores, {"arith": meta})
    text = (tmp_path / RESULTS_FILE).read_text()
    # lm-eval's: the data's items, and those scored: a card said "all 30 items" of a 1,200-item task
    assert json.loads(text)["n-samples"]["arith"] == {"original": 1200, "effective": 30}
    (result,) = model_index("m", {"arith": 0.5}, {"arith": meta})[0]["results"]
    assert result["metrics"][0]["name"] == "acc (the first 30 of 1200 items, its limit)"
    held = dataclasses.replace(meta, held_out=6)
    (result,) = model_index("m", {"arith": 0.5}, {"arith": held})[0]["results"]
    assert result["metrics"][0]["name"] == "acc (6 held-out items of the first 30 of 1200 items, its limit)"
    assert "/" + tmp_path.parts[1] not in text  # the task's data file is named, not located
    results = json.loads(text)
    assert results["results"]["arith"]["acc,none"] == pytest.approx(10 / 30)
    assert results["configs"]["arith"]["dataset_kwargs"]["data_files"]["test"] == "test.jsonl"
    assert yaml.safe_dump(results)  # plain data all the way down
    assert len(pd.read_parquet(tmp_path / ITEM_SCORES_FILE)) == 30


def test_merge_command_card_has_no_machine_path(zoo, tmp_path):
    root, base, fts = zoo
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_for(base, fts).to_yaml())
    out = tmp_path / "merged"
    assert CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)]).exit_code == 0
    assert str(root) not in (out / "README.md").read_text()


def test_a_card_names_every_pick_its_model_is(zoo, tmp_path):
    """Picks that chose one candidate share one exported folder: its card says so, and the report
    shows the card once, under every pick."""
    from evo_merge.report.html import write_html_report

    _, base, fts = zoo
    routing = RoutingConfig(layer=0, weight="model.layers.0.mlp.gate_proj.weight")
    merged = ModelCard(model_card(recipe_for(base, fts), title="best-arith", chosen_as=["best-arith", "balanced"]))
    assert "Chosen by its evo-merge campaign as best-arith and balanced." in merged.text
    assert "Chosen by" not in model_card(recipe_for(base, fts))  # a merge outside a campaign
    three = mass_card(["a", "b"], [str(f) for f in fts], str(base), routing, chosen_as=["x", "y", "z_w"])
    assert r"Chosen by its evo-merge campaign as x, y and z\_w." in three
    folder = tmp_path / "models" / "best-arith"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(str(merged))
    (tmp_path / "models" / "lonely").mkdir()
    from evo_merge.report.campaign import evaluation_table

    html = write_html_report(tmp_path, evaluation_table([], ["arith"]), pd.DataFrame(), ["arith"],
                             "", {"best-arith": (3, folder), "balanced": (3, folder),
                                  "best-lang": (4, tmp_path / "models" / "lonely")}).read_text()
    assert html.count('<div class="card"') == 2
    assert "<h3>best-arith, balanced (<code>best-arith</code>)</h3>" in html


PLUGIN_METHOD = '''
import torch
from evo_merge.merge import Hyperparameter, register_method


@register_method("test_plugin_max_abs", hyperparameters=[Hyperparameter("gain", 1.0, 0.0, 2.0)])
def max_abs(base, deltas, weights, params, name):
    stacked = torch.stack([w * d for w, d in zip(weights, deltas)])
    return base + params["gain"] * stacked.gather(0, stacked.abs().argmax(0, keepdim=True))[0]
'''


def install_plugin(root):
    """A method of your own, installed as pip installs a package: its module, and a dist-info
    folder whose entry point names the module (found by importlib.metadata, nothing patched)."""
    (root / "evo_test_merges").mkdir(parents=True)
    (root / "evo_test_merges" / "__init__.py").write_text("from evo_test_merges import methods  # noqa: F401\n")
    (root / "evo_test_merges" / "methods.py").write_text(PLUGIN_METHOD)
    info = root / "evo_test_merges-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evo-test-merges\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[evo_merge.merge_methods]\nmax_abs = evo_test_merges\n")


def test_a_plugin_methods_merge_names_the_package_it_needs(zoo, tmp_path, monkeypatch):
    """`merge_recipe.yaml` rebuilds a merge only where its method is installed: without the
    plugin the command says where methods of one's own come from, and the card of a merge built
    with it names the package and version to install."""
    from safetensors.torch import load_file

    from evo_merge.merge import registry

    _, base, fts = zoo
    recipe = tmp_path / "r.yaml"
    plugin_recipe = recipe_for(base, fts, method="test_plugin_max_abs").to_yaml()
    recipe.write_text(plugin_recipe.replace("density: 0.5", "gain: 2.0"))
    out = tmp_path / "merged"
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    missing = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)])
    assert missing.exit_code == 2 and "unknown merge method 'test_plugin_max_abs'" in missing.output
    assert "installed package's entry point in the group evo_merge.merge_methods" in missing.output

    install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    done = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)])
    assert done.exit_code == 0, done.output
    card = (out / "README.md").read_text()
    assert ("`test_plugin_max_abs` is not one of evo-merge's methods: it comes from the package "
            "evo-test-merges 0.3") in card
    name = "model.layers.0.mlp.up_proj.weight"
    theta0, tau = load_file(base / "model.safetensors")[name], [load_file(f / "model.safetensors")[name] for f in fts]
    deltas = torch.stack([0.5 * (t - theta0) for t in tau])
    expected = theta0 + 2.0 * deltas.gather(0, deltas.abs().argmax(0, keepdim=True))[0]
    assert torch.allclose(load_file(out / "model.safetensors")[name], expected)
    assert "evo-merge's methods" not in model_card(recipe_for(base, fts))  # a built-in method's card


def test_a_lora_input_is_named_with_its_adapter_whose_license_counts(zoo, tmp_path):
    """The prose named `base+lora` as the bare base ("base" twice), and the license ignored the adapter."""
    _, base, fts = zoo
    same = [with_license(p, "apache-2.0", tmp_path / f"same-{p.name}") for p in (base, fts[0])]
    unlicensed = tmp_path / "my-lora"
    unlicensed.mkdir()
    licensed = with_license(unlicensed, "apache-2.0", tmp_path / "licensed-lora")
    card = ModelCard(model_card(recipe_for(same[0], [f"{same[1]}+{licensed}"], "task_arithmetic")))
    assert card.data.license == "apache-2.0"
    assert "with LoRA adapter licensed-lora (its license: apache-2.0)" in card.text.replace("\\", "")
    card = ModelCard(model_card(recipe_for(same[0], [f"{same[1]}+{unlicensed}"], "task_arithmetic")))
    assert card.data.license == "other" and "with LoRA adapter my-lora (its license: unknown)" in card.text


def test_a_results_file_cuts_this_machine_s_paths_but_no_other_string_starting_with_a_slash(tmp_path):
    """Every string starting with "/" was read as a path and cut to its last part: a stop sequence
    `//` became "", a regex `/(\\d+)/` became `d+)`, a `/no_think` prompt prefix lost its slash."""
    from evo_merge.tasks.meta import portable

    data = tmp_path / "data" / "test.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    config = {"doc_to_text": "/no_think Q: {{question}}\nA:", "generation_kwargs": {"until": ["//", "/"]},
              "filter": "/(\\d+)/", "dataset_kwargs": {"data_files": {"test": str(data)}}, "dataset_path": "json"}
    assert portable(config) == {**config, "dataset_kwargs": {"data_files": {"test": "test.jsonl"}}}


def test_inputs_told_apart_only_by_their_whole_paths_are_numbered_not_named_by_them():
    """One input's path the tail of another's: the label grew to the root (`//tmp/.../final`), a
    machine path in a published card, which the push check's pattern missed."""
    from evo_merge.merge.card_inputs import model_refs

    refs = model_refs(["/tmp/w/m/final", "/data/tmp/w/m/final", "/ckpt/a/other", "/ckpt/b/other"])
    assert [r.label for r in refs.values()] == ["final (1)", "final (2)", "a/other", "b/other"]



def test_one_folder_named_as_the_base_and_under_a_lora_adapter_is_one_name(tmp_path):
    """The base, and the base with a LoRA adapter folded in, were told apart as two folders of one
    name: `base (1)` and `base (2)`, which a reader takes for two models (audit 137)."""
    from evo_merge.merge.card_inputs import model_refs

    for folder in ("base", "lora", "other/base"):
        (tmp_path / folder).mkdir(parents=True)
    base, other = str(tmp_path / "base"), str(tmp_path / "other" / "base")
    refs = model_refs([base, f"{base}+{tmp_path / 'lora'}"])
    assert [r.display for r in refs.values()] == ["base", "base + LoRA lora"]
    refs = model_refs([base, f"{base}+{tmp_path / 'lora'}", other])  # another folder of that name: told apart
    assert [r.display for r in refs.values()] == [f"{tmp_path.name}/base", f"{tmp_path.name}/base + LoRA lora",
                                                  "other/base"]

def test_a_decomposing_method_s_card_names_the_thread_count_its_bits_need(zoo, tmp_path):
    """TSV-M's SVDs sum in another order on another CPU thread count (751k of 786k entries of a
    1024 x 768 tensor moved, by up to 4e-6, between 1 and 2 threads): the card promised bit for bit
    of a rebuild that, on most machines, would not be. Elementwise methods keep the plain promise."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    root, base, fts = zoo
    threads = torch.get_num_threads()
    cards = {}
    for method in ("tsv", "ties"):
        recipe = tmp_path / f"{method}.yaml"
        recipe.write_text(recipe_for(base, fts, method).to_yaml())
        result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / method)])
        assert result.exit_code == 0, result.output
        cards[method] = (tmp_path / method / "README.md").read_text()
    command = f"OMP_NUM_THREADS={threads} evo-merge merge merge_recipe.yaml --out merged"
    assert f"bit for bit with {threads} CPU thread" in cards["tsv"] and command in cards["tsv"]
    assert "OMP_NUM_THREADS" not in cards["ties"] and "rebuilds these weights bit for bit:" in cards["ties"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
    rebuilt = tmp_path / "rebuilt"
    subprocess.run([sys.executable, "-m", "evo_merge", "merge", str(tmp_path / "tsv" / "merge_recipe.yaml"),
                    "--out", str(rebuilt)], check=True, env=env, capture_output=True)
    ours, again = load_file(tmp_path / "tsv" / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)


def test_cards_link_to_no_pypi_project(zoo):
    """pypi.org/project/evo-merge does not exist: a link to it pointed readers at a name anyone
    could register. The cards name evo-merge without a link, and keep the command that rebuilds."""
    _, base, fts = zoo
    merged = model_card(recipe_for(base, fts))
    mass = mass_card(["a", "b"], [str(f) for f in fts], str(base),
                     RoutingConfig(layer=0, weight="model.layers.0.mlp.gate_proj.weight"))
    for text in (merged, mass):
        assert "pypi.org" not in text and "](http" not in ModelCard(text).text
    assert f"Built with evo-merge using **ties** over a local base model ({base.name})." in merged
    assert "evo-merge merge merge_recipe.yaml" in merged
    assert "evo-merge routes the hidden state entering block" in mass


def test_a_method_defined_in_a_notebook_is_said_to_be_so_in_its_card():
    """A method registered by a notebook or script: the card told readers to install "the module
    __main__" (audit 135)."""
    from evo_merge.merge.card import plugin_lines
    from evo_merge.merge.registry import register_method

    def notebook(base, deltas, weights, params, name):
        return base + sum(w * d for w, d in zip(weights, deltas))

    notebook.__module__ = "__main__"
    register_method("test_notebook_method", replace=True)(notebook)
    line = plugin_lines("test_notebook_method")[0]
    assert "defined in the Python session that built this merge (a notebook or a script), in no package" in line
    assert "__main__" not in line
