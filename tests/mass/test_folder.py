"""MASS folders (save/load, card), evaluation through lm-eval and the project's tasks, the CLI."""

import json
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evo_merge.cli import cli
from evo_merge.cli.progress import STAGE_LINE
from evo_merge.errors import UserError
from evo_merge.mass import MassModel, load_mass
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.tasks.registry import resolve_task
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.weights import Checkpoint
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def saved(llama_family, tmp_path_factory):
    base, endpoints = llama_family
    mass = MassModel.from_checkpoints(base, endpoints, layer=0, threshold=0.3, max_tasks=2, token="last")
    return mass, mass.save(tmp_path_factory.mktemp("saved") / "mass")


def test_round_trip_keeps_factors_routing_and_outputs(saved):
    mass, folder = saved
    loaded, tokenizer = load_mass(folder)
    assert loaded.tasks == ["ft1", "ft2", "ft3"] and loaded.routing == mass.routing
    for key in [(0,), (1, 2), (0, 1, 2)]:
        a, b = mass.merged_tensors(key), loaded.merged_tensors(key)
        assert all(torch.equal(a[n], b[n]) for n in a)
    ids = tokenizer(["84+1=", "abc", "hello there"], padding=True, return_tensors="pt")
    assert mass.route(**ids)[1] == loaded.route(**ids)[1]
    assert torch.equal(mass(**ids).logits, loaded(**ids).logits)


def test_the_factors_follow_the_model_to_its_device(saved):
    """`load_mass(device=)`, lm-eval and the project's tasks move a MASS model with `.to`; its
    factors are no parameters, and left on the host they made every routing merge run on the CPU.
    `meta` stands in for a GPU: torch moves tensors there on any machine."""
    _, folder = saved
    loaded, _ = load_mass(folder)
    loaded.merged_tensors((0, 1))
    loaded.to(torch.float32)  # a dtype only: nothing moves, the cached task set stays
    assert loaded.factors.stash.device == torch.device("cpu") and len(loaded._cache) == 1
    moved, _ = load_mass(folder, device="meta")
    factors = moved.factors
    tensors = [*factors.base.values(), *(f for ts in factors.lowrank.values() for t in ts for f in t),
               *(d for ds in factors.dense.values() for d in ds)]
    assert factors.stash.device == moved.device == torch.device("meta")
    assert tensors and {t.device.type for t in tensors} == {"meta"}
    assert {t.device.type for t in moved.merged_tensors((0, 1)).values()} == {"meta"}  # merged where the model is


def test_a_cast_model_keeps_its_dtype_through_routing(saved):
    """`.bfloat16()` (and `.half()`, `.cuda()`) do not go through `to`: the next task set swapped
    in pointed every parameter back at float32 tensors cached before the cast."""
    _, folder = saved
    loaded, _ = load_mass(folder)
    ids = {"input_ids": torch.randint(3, 100, (8, 9), generator=torch.Generator().manual_seed(3))}
    assert len(set(loaded.route(**ids)[1])) > 1  # each forward swaps task sets
    expected = loaded(**ids).logits
    loaded.bfloat16()
    assert loaded(**ids).logits.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}
    for key in [(0,), (1, 2)]:
        assert {t.dtype for t in loaded.merged_tensors(key).values()} == {torch.bfloat16}
    loaded.float()
    assert torch.allclose(loaded(**ids).logits, expected, atol=1e-5)  # merged again in float32, not rounded
    assert {p.dtype for p in loaded.module.parameters()} == {torch.float32}


def test_folder_is_self_contained_and_says_it_needs_evo_merge(saved, tmp_path):
    mass, folder = saved
    assert not (folder / "config.json").exists()  # transformers must not mistake it for a plain model
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(folder)
    assert (folder / "base" / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    card = (folder / "README.md").read_text()
    assert "library_name: evo-merge" in card and "needs evo-merge to run" in card
    linked = mass.save(tmp_path / "linked", copy_base=False)
    assert not (linked / "base").exists()
    assert json.loads((linked / "mass.json").read_text())["base"] == str(mass.base_path)
    assert load_mass(linked)[0].route(torch.tensor([[5, 6, 7]]))[1] == mass.route(torch.tensor([[5, 6, 7]]))[1]
    with pytest.raises(UserError, match="already exists"):
        mass.save(linked)


def test_missing_factor_is_named(saved, tmp_path):
    _, folder = saved
    broken = tmp_path / "broken"
    mass_json = json.loads((folder / "mass.json").read_text())
    mass_json["base"] = str(folder / "base")
    broken.mkdir()
    (broken / "mass.json").write_text(json.dumps(mass_json))
    tensors = load_file(folder / "model.safetensors")
    del tensors["task1::model.layers.1.mlp.up_proj.weight::vt"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(UserError, match=r"MASS tensor 'task1::model.layers.1.mlp.up_proj.weight::vt' is missing"):
        load_mass(broken)
    with pytest.raises(UserError, match="not a MASS folder"):
        load_mass(folder / "base")


def test_a_linked_base_replaced_since_is_refused(llama_family, tmp_path):
    """`--link-base` kept the base's path alone: a base replaced since (a zoo built again in place)
    was served with the old factors, logits off by 6.8, exit 0; one of other shapes ended in a
    traceback (audit 134). The base's identity is recorded and checked; a folder written before
    that record is checked on the shapes."""
    base, endpoints = llama_family
    linked_base = shutil.copytree(base, tmp_path / "base")
    mass = MassModel.from_checkpoints(linked_base, endpoints, layer=0)
    folder = mass.save(tmp_path / "linked", copy_base=False)
    load_mass(folder)
    shutil.copy(endpoints[0] / "model.safetensors", linked_base / "model.safetensors")  # same shapes, other weights
    with pytest.raises(UserError, match=r"mass.json: the linked base .* is not the model this folder was built on"):
        load_mass(folder)
    meta = json.loads((folder / "mass.json").read_text())
    del meta["base_digest"]  # as a folder written before the record
    (folder / "mass.json").write_text(json.dumps(meta))
    load_mass(folder)  # other weights of the same shapes: nothing left to tell them by
    weights = load_file(linked_base / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name] = torch.zeros(weights[name].shape[0] + 2, weights[name].shape[1])
    save_file(weights, linked_base / "model.safetensors")
    with pytest.raises(UserError, match=rf"MASS tensor {name}'s factors are of shape .* not the base it was built on"):
        load_mass(folder)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: {**m, "tasks": m["tasks"][:-1]}, "'tasks' names 2 tasks, and the folder stores the factors of 3"),
    (lambda m: {**m, "lowrank": m["lowrank"][1:]}, "tensor '.*' is stored but not listed"),
    (lambda m: {**m, "routing": {**m["routing"], "layer": 1}}, "'routing' names block 1 and weight"),
    (lambda m: {**m, "lowrank": 5}, "'lowrank' is not a list of names"),
    (lambda m: {**m, "tasks": "arith"}, "'tasks' is not a list of names"),
    (lambda m: {**m, "base": None}, "'base' is None: 'base' .the base copied in. or the absolute path"),
    (lambda m: {**m, "base": "../elsewhere"}, "'base' is '../elsewhere'"),
])
def test_a_mass_json_that_disagrees_with_what_the_folder_stores_is_refused(saved, tmp_path, edit, message):
    """An edited or damaged mass.json served another model with exit 0 (a task dropped, a tensor left
    at the base's weights, routing reported at one block and done at another) or ended in a
    traceback (audit 134)."""
    _, folder = saved
    copy = shutil.copytree(folder, tmp_path / "copy")
    meta = json.loads((copy / "mass.json").read_text())
    (copy / "mass.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(UserError, match=message):
        load_mass(copy)


def test_pinned_mass_scores_items_like_the_tsv_c_model_and_routed_like_lm_eval(zoo, zoo_mass, tmp_path):
    from lm_eval import simple_evaluate

    import evo_merge.mass.lmeval  # noqa: F401  (registers evo-merge-mass)

    tok = AutoTokenizer.from_pretrained(zoo / "base")
    task = resolve_task("arith", batch_size=16)
    items = task.item_ids[::75]  # 16 items over the scenarios
    reference = AutoModelForCausalLM.from_pretrained(zoo / "base").eval()
    merger = InPlaceMerger(reference, Checkpoint.open(zoo / "base"), [Checkpoint.open(zoo / f) for f in FAMILIES])
    merger.apply("tsv_c", [1.0] * 3, {"task": 0})
    zoo_mass.pin(["arith"])
    try:
        pinned = task.evaluate(zoo_mass, tok, items)
    finally:
        zoo_mass.pin(None)
    assert pinned.tolist() == task.evaluate(reference, tok, items).tolist()

    routed = task.evaluate(zoo_mass, tok, items)
    folder = zoo_mass.save(tmp_path / "mass")
    positions = [task.item_ids.index(i) for i in items]
    result = simple_evaluate(
        model="evo-merge-mass", model_args=f"path={folder}", batch_size=16,
        tasks=[task.tasks[task.name]], samples={task.name: positions}, bootstrap_iters=0, log_samples=True,
    )
    theirs = {s["doc_id"]: s["acc"] for s in result["samples"][task.name]}
    assert [theirs[p] for p in positions] == routed.tolist()


def test_a_folder_that_appears_at_out_meanwhile_is_kept_without_overwrite(zoo, tmp_path, monkeypatch):
    """A model folder put at OUT while `mass build` wrote was replaced without --overwrite (audit 112;
    `mass build` passes the user's word on, audit 115)."""
    import evo_merge.mass.model

    out = tmp_path / "mass"
    real = evo_merge.mass.model.write_model_folder

    def written_while_another_arrives(*args, **kwargs):
        if not out.exists():
            shutil.copytree(zoo / "base", out)
        return real(*args, **kwargs)

    monkeypatch.setattr(evo_merge.mass.model, "write_model_folder", written_while_another_arrives)
    result = CliRunner().invoke(cli, ["mass", "build", "--base", str(zoo / "base"), "--models",
                                      *(str(zoo / f) for f in FAMILIES), "--out", str(out), "--layer", "0"])
    assert result.exit_code == 2 and "appeared while this one was written" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (zoo / "base").iterdir())


def test_cli_builds_and_evaluates_a_mass_folder(zoo, tmp_path):
    runner = CliRunner()
    out = tmp_path / "mass"
    models = [str(zoo / f) for f in FAMILIES]
    built = runner.invoke(cli, ["mass", "build", "--base", str(zoo / "base"), "--models", *models,
                                "--out", str(out), "--layer", "0", "--max-tasks", "2"])
    assert built.exit_code == 0, built.output
    assert "routing at block 0" in built.output
    assert json.loads((out / "mass.json").read_text())["routing"]["max_tasks"] == 2
    again = ["mass", "build", "--base", str(zoo / "base"), "--models", *models, "--out", str(out), "--layer", "1"]
    refused = runner.invoke(cli, again)
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    assert runner.invoke(cli, [*again, "--overwrite"]).exit_code == 0
    assert json.loads((out / "mass.json").read_text())["routing"]["layer"] == 1
    # onto one of its inputs with --overwrite: the endpoint was replaced by its own MASS folder
    copies = [shutil.copytree(zoo / f, tmp_path / f) for f in FAMILIES]
    before = sorted(p.name for p in copies[0].iterdir())
    onto = runner.invoke(cli, ["mass", "build", "--base", str(zoo / "base"), "--models", *map(str, copies),
                               "--out", str(copies[0]), "--overwrite"])
    assert onto.exit_code == 2 and f"output folder {copies[0]} is {copies[0]}, which this command reads" in onto.output
    assert sorted(p.name for p in copies[0].iterdir()) == before
    # a Hub id or a model+adapter is no folder: named by its option, with the way (audit 123)
    for option, given in (("--base", "org/base"), ("--models", f"{models[1]}+{tmp_path / 'lora'}")):
        args = ["mass", "build", "--base", str(zoo / "base"), "--models", models[0], models[1], "--out",
                str(tmp_path / "m2")]
        args[args.index(option) + 1 + (option == "--models")] = given
        result = runner.invoke(cli, args)
        assert result.exit_code == 2 and result.output.startswith(
            f"error: {option} {given}: no such folder; mass build reads model folders (a Hub model: the folder "
            "`hf download` prints; a LoRA adapter: merge it into its model first)"), result.output
    items = tmp_path / "items.txt"
    items.write_text("\n".join(resolve_task("seq").item_ids[:8]))
    scored = runner.invoke(cli, ["eval", "--model", str(out), "--task", "seq", "--items", str(items),
                                 "--out", str(tmp_path / "scores.csv")])
    assert scored.exit_code == 0, scored.output
    table = pd.read_csv(tmp_path / "scores.csv")
    assert len(table) == 8 and set(table["score"]) <= {0.0, 1.0} and table["subject"].iloc[0] == "mass"


def test_cli_routes_on_the_last_token_and_links_the_base_when_asked(llama_family, saved, tmp_path):
    """`mass build --token last --link-base`: the folder routes as a model built with token="last"
    in Python (the saved fixture), and names the base's absolute path instead of holding a copy of
    it; moved elsewhere it still loads, from the base where it was."""
    base, endpoints = llama_family
    out = tmp_path / "linked"
    built = CliRunner().invoke(cli, ["mass", "build", "--base", str(base), "--models", *map(str, endpoints),
                                     "--out", str(out), "--layer", "0", "--threshold", "0.3", "--max-tasks", "2",
                                     "--token", "last", "--link-base"])
    assert built.exit_code == 0, built.output
    meta = json.loads((out / "mass.json").read_text())
    assert meta["routing"]["token"] == "last" and meta["base"] == str(base.resolve())
    assert not (out / "base").exists()
    moved = shutil.move(out, tmp_path / "moved")
    loaded, tokenizer = load_mass(moved)
    reference, _ = saved
    assert loaded.routing == reference.routing
    ids = tokenizer(["84+1=", "abc", "hello there"], padding=True, return_tensors="pt")
    assert torch.equal(loaded.routed_state(**ids), reference.routed_state(**ids))
    assert loaded.route(**ids)[1] == reference.route(**ids)[1]
    mean = MassModel.from_checkpoints(base, endpoints, layer=0, threshold=0.3, max_tasks=2)
    assert not torch.equal(mean.routed_state(**ids), loaded.routed_state(**ids))  # the option reached routing


def test_a_model_trained_apart_is_refused_at_its_first_matrix_before_any_svd(llama_family, tmp_path, monkeypatch):
    """Said after the last SVD, a separately trained endpoint cost the whole decomposition (an hour
    or more of a 7B model's on a CPU): refused at the first matrix read, naming it and its cosine."""
    import evo_merge.mass.factors as factors

    base, endpoints = llama_family
    other, _ = save_tiny_family(tmp_path / "other", "llama", n_finetunes=0, seed=5)  # same names, apart
    first = Checkpoint.open(base)
    names = [n for n in factors.heads.merge_targets(first, [Checkpoint.open(other)])
             if factors.is_decomposed(first.tensor(n, torch.float32), n, factors._NO_EMBEDDINGS)]
    a, b = first.tensor(names[0], torch.float32), Checkpoint.open(other).tensor(names[0], torch.float32)
    cosine = float((a * b).sum() / (a.norm() * b.norm()))  # by hand: independent inits are near 0
    assert abs(cosine) < 0.2
    svds = []
    monkeypatch.setattr(factors, "top_k_svd", lambda d, k: svds.append(d) or torch.linalg.svd(d)[:k])
    with pytest.raises(UserError) as refused:
        factors.MassFactors.build(first, [Checkpoint.open(endpoints[0]), Checkpoint.open(other)])
    assert str(refused.value) == (
        f"{other} does not look fine-tuned from base {base}: the cosine of their {names[0]} is {cosine:.2f} "
        "(fine-tunes of a base are near 1, separately trained models near 0)")
    assert svds == []


def test_a_matrix_of_zeros_is_not_judged_on_its_own_and_the_whole_model_still_is(tmp_path):
    """A base matrix of zeros that a fine-tune trained (a zero-initialised projection) has no cosine of
    its own: it is not refused alone, and the cosine over every matrix decides. By hand, with an
    identity matrix the fine-tune left: <theta, theta0> = 2, |theta0|^2 = 2, |theta|^2 = 2 + 4 c^2 for
    the zeros trained to c: 2 / sqrt(2 * 6) = 0.58 at c = 1 (kept), 2 / sqrt(2 * 38) = 0.23 at c = 3."""
    from types import SimpleNamespace

    from evo_merge.mass.factors import _Similarity

    base, endpoint = SimpleNamespace(path=tmp_path / "base"), SimpleNamespace(path=tmp_path / "ft")
    for c in (1.0, 3.0):
        similarity = _Similarity(base, [endpoint])
        similarity.add("model.zero_init.weight", torch.zeros(2, 2), [torch.full((2, 2), c)])
        similarity.add("model.kept.weight", torch.eye(2), [torch.zeros(2, 2)])
        if c == 1.0:
            similarity.check()
        else:
            with pytest.raises(UserError, match="the cosine of their 2-D weights is 0.23"):
                similarity.check()


@pytest.mark.parametrize("case", ["layer", "base", "factors", "threshold", "base again", "twice", "nan"])
def test_cli_bad_input_is_one_line_exit_2(case, zoo, llama_family, saved, tmp_path):
    base, endpoints = llama_family
    args = ["mass", "build", "--base", str(base), "--models", *map(str, endpoints), "--out", str(tmp_path / "m")]
    if case == "layer":
        args += ["--layer", "7"]
        expected = "layer 7 is out of range"
    elif case == "base":
        other, _ = save_tiny_family(tmp_path / "other", "llama", n_finetunes=0, seed=5)
        args[3] = str(other)  # same names and shapes, but initialised apart from the fine-tunes
        expected = "does not look fine-tuned from base"
    elif case == "threshold":
        args += ["--threshold", "1.5"]
        expected = "threshold"
    elif case == "base again":  # a routed task of zeros, built without a word (a campaign refuses it)
        args.insert(args.index("--out"), str(base))
        expected = f"model 4 ({base}): the base model; list each endpoint once, and not the base"
    elif case == "twice":
        args.insert(args.index("--out"), str(endpoints[0]))
        expected = f"model 4 ({endpoints[0]}): the same model as model 1"
    elif case == "nan":  # the SVD's LinAlgError traceback (audit 96)
        corrupt = shutil.copytree(endpoints[1], tmp_path / "corrupt")
        tensors = load_file(corrupt / "model.safetensors")
        name = min(n for n in tensors if ".mlp." in n and tensors[n].dim() == 2)
        tensors[name].view(-1)[0] = float("nan")
        save_file(tensors, corrupt / "model.safetensors", metadata={"format": "pt"})
        args[args.index(str(endpoints[1]))] = str(corrupt)
        expected = f"MASS: tensor {name} of {corrupt} holds NaN or Inf (a corrupt model); not decomposed"
    else:
        shutil.copytree(saved[1], tmp_path / "copy")
        (tmp_path / "copy" / "model.safetensors").unlink()  # the factors file
        args = ["eval", "--model", str(tmp_path / "copy"), "--task", "arith", "--out", str(tmp_path / "s.csv")]
        expected = "no weights in"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    # stages that ended before it are lines of their own where stderr is not a terminal (cli.progress)
    lines = [line for line in result.output.strip().splitlines() if not STAGE_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_a_mass_folder_of_inputs_under_different_licenses_lists_them_as_its_card_links(llama_family, tmp_path):
    """The card's `license_link` named a LICENSE.md the MASS folder did not have."""
    from huggingface_hub import ModelCard

    base, endpoints = llama_family
    copies = []
    for folder, license_id in zip([base, *endpoints[:2]], ["mit", "mit", "apache-2.0"]):
        copy = shutil.copytree(folder, tmp_path / folder.name)
        (copy / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# model\n")
        copies.append(copy)
    out = MassModel.from_checkpoints(copies[0], copies[1:], layer=0).save(tmp_path / "mass")
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.license_link) == ("other", "LICENSE.md")
    listing = (out / "LICENSE.md").read_text()
    assert "mit" in listing and "apache-2.0" in listing


@pytest.fixture(scope="module")
def bf16_llama(llama_family, tmp_path_factory):
    from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)

    return bf16_copies(*llama_family, tmp_path_factory.mktemp("bf16_llama"))


@pytest.mark.parametrize("weights, storage_dtype, exact", [
    (torch.float32, None, True), (torch.float32, torch.bfloat16, False),
    (torch.bfloat16, None, True), (torch.bfloat16, torch.float32, False)])
def test_a_mass_folder_is_the_search_s_mass_exactly_where_the_run_says_so(tmp_path, llama_family, bf16_llama,
                                                                          weights, storage_dtype, exact):
    """A campaign keeps MASS's base and factors in its storage dtype, and a MASS folder keeps them in
    the base checkpoint's. Where the two agree (bf16 checkpoints under `auto`) the folder serves the
    very weights the search scored, and no note may say otherwise; where they differ (float32 storage
    over bf16 checkpoints rounds the factors as the folder is written; bf16 storage over float32
    checkpoints rounds the search's base) it does not, and `rounds` must say so. It said the first
    case rounded and the second did not."""
    from evo_merge.merge.storage import Stash, Storage, keeping
    from evo_merge.search.mass_kind import MassKind

    base, endpoints = llama_family if weights == torch.float32 else bf16_llama
    storage = Storage(dtype=storage_dtype)
    searched = MassModel.from_checkpoints(base, endpoints, stash=Stash(storage, torch.device("cpu")))
    folder, _ = load_mass(searched.save(tmp_path / "mass"))
    differing = 0
    for tasks in ([0], [1, 2], [0, 1, 2]):
        ours, theirs = dict(searched.factors.merged(tasks)), dict(folder.factors.merged(tasks))
        differing += sum(int((ours[name] != theirs[name]).sum()) for name in ours)
    checkpoints = [Checkpoint.open(p) for p in (base, *endpoints)]
    kept = keeping(storage, checkpoints, adapters=False, dtype=storage_dtype or weights)
    assert (differing == 0) == exact, differing
    assert MassKind().rounds("mass", kept) == (not exact)


def test_a_mass_folder_of_a_base_without_tokenizer_loads_without_one(saved, tmp_path):
    """A base saved without its tokenizer (`save_pretrained` of the model alone): `load_mass` failed in
    transformers, blaming sentencepiece, where `load_model_folder` gives no tokenizer."""
    from evo_merge.weights.checkpoint import tokenizer_files

    _, folder = saved
    bare = shutil.copytree(folder, tmp_path / "bare")
    for file in tokenizer_files(bare):
        file.unlink()
    model, tokenizer = load_mass(bare)
    assert tokenizer is None and model.tasks == ["ft1", "ft2", "ft3"]


def test_a_write_the_disk_refuses_names_the_mass_folder_asked_for(llama_family, tmp_path):
    """Under a full disk `mass build` said `cannot write .m.tmp-93810918/staged: File too large`, a
    hidden folder already removed, where `merge` names its --out (audit 111)."""
    import errno
    import os
    import subprocess
    import sys

    from limits import file_size_limit  # tests/ is on sys.path (its conftest)

    base, endpoints = llama_family
    out = tmp_path / "m"
    proc = subprocess.run(
        [sys.executable, "-c", "from evo_merge.cli import main; main()", "mass", "build", "--base", str(base),
         "--models", *map(str, endpoints), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        preexec_fn=file_size_limit((base / "model.safetensors").stat().st_size // 4))
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and lines == [f"error: cannot write {out}: {os.strerror(errno.EFBIG)}"], proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == []
