"""The one entry point for model folders: HF causal LMs and plain networks, round trips and errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.weights import is_hf_folder, load_model_folder, save_model_folder
from evo_merge.weights.nets import build_net
from evo_merge.zoo.tiny import tie_embeddings

MLP = {"arch": "mlp", "in_dim": 6, "hidden": [5], "classes": 3}


def test_an_hf_folder_opens_like_transformers_and_round_trips(family, tmp_path):
    base, _ = family
    model, tokenizer = load_model_folder(base)
    reference = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.tensor([tokenizer("12+3=")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert is_hf_folder(base) and not model.training

    out = save_model_folder(tmp_path / "copy", model, tokenizer)
    again, tok2 = load_model_folder(out)
    assert tok2("12+3=")["input_ids"] == tokenizer("12+3=")["input_ids"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_dtype_and_device_are_applied_on_load(llama_family):
    model, _ = load_model_folder(llama_family[0], device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_a_plain_network_round_trips_with_its_config(tmp_path):
    torch.manual_seed(3)
    net = build_net(MLP)
    out = save_model_folder(tmp_path / "mlp", net)
    assert json.loads((out / "config.json").read_text()) == MLP
    loaded, tokenizer = load_model_folder(out)
    x = torch.randn(4, 6)
    assert tokenizer is None and not is_hf_folder(out)
    assert torch.equal(loaded(x), net(x))


def test_writing_is_refused_over_an_existing_folder_unless_asked(tmp_path):
    net = build_net(MLP)
    out = tmp_path / "mlp"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    for overwrite in (False, True):  # overwrite replaces only a model folder: not offered for another
        with pytest.raises(UserError, match="not a model folder"):
            save_model_folder(out, net, overwrite=overwrite)
    (out / "model.safetensors").write_bytes(b"an older model")
    with pytest.raises(UserError, match="not a model folder"):  # weights without a config: a user's file
        save_model_folder(out, net, overwrite=True)
    (out / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        save_model_folder(out, net)
    save_model_folder(out, net, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["mlp"]  # no temporary folder left behind


def _plain_folder(root: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    save_file(state, root / "model.safetensors")
    return root


def test_a_tensor_that_does_not_fit_the_architecture_is_named(tmp_path):
    state = dict(build_net(MLP).state_dict())
    state["fcs.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(UserError, match=r"parameter fcs\.0\.weight does not fit"):
        load_model_folder(_plain_folder(tmp_path / "bad", MLP, state))
    del state["fcs.0.weight"]
    with pytest.raises(UserError, match=r"parameter fcs\.0\.weight of the architecture .* is missing"):
        load_model_folder(_plain_folder(tmp_path / "short", MLP, state))


def test_folders_that_are_not_models_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing: no such folder$"):  # ("not a model folder" for a path that is none)
        load_model_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file: not a model folder$"):
        load_model_folder(tmp_path / "file")
    (tmp_path / "weights only").mkdir()
    with pytest.raises(UserError, match="weights only: no config.json"):  # (it said config.json "does not say")
        load_model_folder(tmp_path / "weights only")
    bare = _plain_folder(tmp_path / "bare", {"hidden": 3}, {"w": torch.zeros(2)})
    with pytest.raises(UserError, match="no model_type or arch"):
        load_model_folder(bare)
    (bare / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_model_folder(bare)


def test_a_config_declaring_sizes_its_weights_lack_is_refused_before_anything_is_allocated(tmp_path):
    """A received plain network's config.json declaring two 100,000-wide layers beside a tiny
    checkpoint allocated (and initialised) 40 GB before a weight was read (audit 116): the
    architecture is laid out without memory and checked against the weights' headers first."""
    folder = _plain_folder(tmp_path / "big", {**MLP, "hidden": [100_000, 100_000]}, build_net(MLP).state_dict())
    with pytest.raises(UserError, match=r"parameter fcs\.0\.bias does not fit the architecture in config\.json"):
        load_model_folder(folder)
    (folder / "config.json").write_text(json.dumps({**MLP, "hidden": [-5]}))
    with pytest.raises(UserError, match=rf"^{folder / 'config.json'}: bad sizes for arch mlp: Trying to create tensor "
                                        "with negative"):  # the folder named: one of a campaign's models (audit 117)
        load_model_folder(folder)


def test_a_config_declaring_more_blocks_than_its_weights_hold_is_refused_before_they_are_laid_out(tmp_path):
    """Laid out on the meta device, a received ResNet config of 100,000 blocks still took 3 GB and
    over a minute before the weights' headers refused it (audit 117): each layer a list names, and
    each block, holds a weight, so more of them than the checkpoint's tensors is refused first."""
    resnet = {"arch": "resnet", "width": 4, "hidden": 4, "blocks": 2, "classes": 3, "side": 4, "norm": None}
    folder = _plain_folder(tmp_path / "deep", {**resnet, "blocks": 100_000}, build_net(resnet).state_dict())
    with pytest.raises(UserError, match=r"config\.json declares 100000 layers and blocks, more than the \d+ tensors"):
        load_model_folder(folder)
    (folder / "config.json").write_text(json.dumps(resnet))
    assert load_model_folder(folder)[0].net_config == resnet  # its own count loads


def test_a_config_nested_past_the_parser_s_depth_is_one_line(tmp_path):
    """JSON nested deeper than the parser recurses was a RecursionError traceback (audit 116)."""
    folder = _plain_folder(tmp_path / "deep", MLP, build_net(MLP).state_dict())
    (folder / "config.json").write_text("[" * 200_000)
    with pytest.raises(UserError, match="config.json: not valid JSON \\(nested too deeply"):
        load_model_folder(folder)


def test_an_hf_folder_with_only_a_pickle_is_refused(llama_family, tmp_path):
    model, _ = load_model_folder(llama_family[0])
    folder = tmp_path / "pickled"
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"pytorch_model\.bin is a pickle checkpoint, which can run code") as err:
        load_model_folder(folder)  # said as a merge says it (it was transformers' "no file named model.safetensors")
    assert "allow_pickle=True" in str(err.value)


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this object creates the marker folder
        return (os.mkdir, (str(self.marker),))


def test_an_allowed_pickle_that_is_not_weights_only_is_one_user_error_and_runs_nothing(llama_family, tmp_path):
    folder = tmp_path / "planted"
    shutil.copytree(llama_family[0], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Planted(marker)}))
    with pytest.raises(UserError, match="cannot load as a weights-only pickle"):
        load_model_folder(folder, allow_pickle=True)
    assert not marker.exists()


def test_a_folder_with_its_own_model_code_is_refused_without_asking(llama_family, tmp_path):
    """transformers asks on the terminal whether to run a folder's `auto_map` code unless told; a
    run must neither ask mid-campaign nor run it."""
    folder = tmp_path / "custom"
    shutil.copytree(llama_family[0], folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_custom.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="customllama", auto_map={"AutoConfig": "modeling_custom.Config",
                                                      "AutoModelForCausalLM": "modeling_custom.Model"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="custom code"):
        load_model_folder(folder)
    assert not marker.exists()


def test_own_code_for_a_known_model_type_is_not_run_and_the_log_names_the_class_loaded(llama_family, tmp_path,
                                                                                      caplog):
    """Phi-3 folders name their own code beside a model type transformers knows: the built-in class
    is loaded (every stored tensor fits it), never the folder's Python, and the log says so, where
    the folder was scored as that class without a word."""
    folder = tmp_path / "own-code"
    shutil.copytree(llama_family[0], folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_x.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="evo_merge.weights.folder"):
        module, _ = load_model_folder(folder)
    assert type(module).__name__ == "LlamaForCausalLM" and not marker.exists()
    assert "names its own code (modeling_x.XForCausalLM); it is not run" in caplog.text
    assert "LlamaForCausalLM is loaded instead" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge.weights.folder"):
        load_model_folder(llama_family[0])
    assert "own code" not in caplog.text


def _broken(base: Path, out: Path, edit) -> Path:
    """A copy of `base` whose weights `edit` changed (it edits the name -> tensor dict in place)."""
    shutil.copytree(base, out)
    tensors = load_file(out / "model.safetensors")
    edit(tensors)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


HEAD, BLOCK = "lm_head.weight", "model.layers.0.mlp.down_proj.weight"
BROKEN_WEIGHTS = {  # what transformers itself loads with a traceback, or silently with random or cast weights
    "short-head": (lambda t: t.update({HEAD: t[HEAD][:-1].clone()}), rf"tensor '{HEAD}' has shape \[\d+, 32\] where "
                   r"config.json gives \[\d+, 32\]"),
    "missing": (lambda t: t.pop(BLOCK), rf"tensor '{BLOCK}' of the model in config.json is missing from its weights"),
    "int-head": (lambda t: t.update({HEAD: t[HEAD].to(torch.int32)}),
                 rf"tensor '{HEAD}' has dtype int32 where the model has float32; only floating dtypes can be cast"),
}


@pytest.mark.parametrize("case", BROKEN_WEIGHTS)
def test_hf_weights_that_do_not_fit_the_config_are_named(llama_family, tmp_path, case):
    edit, message = BROKEN_WEIGHTS[case]
    folder = _broken(llama_family[0], tmp_path / case, edit)
    with pytest.raises(UserError, match=f"^{folder}: {message}$"):
        load_model_folder(folder)


def test_a_config_that_does_not_fit_the_weights_names_the_first_tensor(gpt2_family, tmp_path):
    folder = tmp_path / "wider"
    shutil.copytree(gpt2_family[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 2 * config["n_embd"]}))
    with pytest.raises(UserError, match=r"tensor 'transformer\.wte\.weight' has shape \[\d+, 32\] where config\.json "
                                        r"gives \[\d+, 64\]"):
        load_model_folder(folder)


def test_eval_of_a_broken_hf_folder_is_one_line_exit_2(llama_family, tmp_path):
    folder = _broken(llama_family[0], tmp_path / "short", BROKEN_WEIGHTS["short-head"][0])
    args = ["eval", "--model", str(folder), "--task", "seq", "--out", str(tmp_path / "e.csv")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{folder}: tensor '{HEAD}' has shape" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e.csv").exists()


def test_valid_hf_folders_still_load_tied_sharded_and_in_bfloat16(llama_family, tmp_path):
    base = llama_family[0]
    tied = tie_embeddings(base, tmp_path / "tied")  # no lm_head.weight stored: the head is the embedding
    model, _ = load_model_folder(tied)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    untied, _ = load_model_folder(tied, untie=True)
    assert torch.equal(untied.get_output_embeddings().weight, model.get_input_embeddings().weight)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight

    reference, tokenizer = load_model_folder(base)
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    sharded, _ = load_model_folder(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert {p.dtype for p in sharded.parameters()} == {torch.bfloat16}
    for name, tensor in reference.state_dict().items():
        assert torch.equal(sharded.state_dict()[name], tensor), name


def test_a_sharded_index_without_metadata_is_one_line_saying_what_to_add(llama_family, tmp_path):
    """Indexes written by hand or by converters often hold the weight map alone: merged fine, then
    the campaign's or `eval`'s load was a KeyError traceback from transformers."""
    from evo_merge.weights import Checkpoint
    from evo_merge.weights.export import write_model_folder

    out = tmp_path / "sharded"
    with Checkpoint.open(llama_family[0]) as src:
        write_model_folder(out, ((n, src.tensor(n)) for n in src.names), max_shard_bytes=20_000)
    shutil.copy(llama_family[0] / "config.json", out / "config.json")
    index_file = out / "model.safetensors.index.json"
    index_file.write_text(json.dumps({"weight_map": json.loads(index_file.read_text())["weight_map"]}))
    with pytest.raises(UserError, match=r'sharded: cannot load the model \(its weights index has no "metadata" '
                                        r'entry, which transformers needs \(add "metadata": \{\}\)\)$'):
        load_model_folder(out)
