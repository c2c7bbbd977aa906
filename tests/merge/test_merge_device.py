"""Where a file merge combines its tensors: `evo-merge merge --device`, the fallback to the host
for a tensor the device has no memory for, and what the card says about rebuilding."""

import logging

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evo_merge.cli import cli
from evo_merge.merge import register_method
from evo_merge.merge.card import model_card
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.stream import stream_merge
from evo_merge.weights.devices import available_device
from evo_merge.zoo.tiny import save_tiny_family

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU is told")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("llama"), "llama", n_finetunes=2)


def recipe_file(path, method, family):
    base, fts = family
    path.write_text(yaml.safe_dump({"merge_method": method, "base_model": str(base),
                                    "models": [{"model": str(f), "parameters": {"weight": 0.7}} for f in fts]}))
    return path


def test_merge_on_a_named_device_writes_the_host_s_merge_and_its_card_says_how_to_rebuild(family, tmp_path):
    recipe = recipe_file(tmp_path / "r.yaml", "tsv", family)
    for args in ([], ["--device", "cpu"]):
        out = tmp_path / f"out{len(args)}"
        result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out), *args])
        assert result.exit_code == 0, result.output
    plain, named = (load_file(tmp_path / out / "model.safetensors") for out in ("out0", "out2"))
    assert plain.keys() == named.keys() and all(torch.equal(plain[k], named[k]) for k in plain)
    card = (tmp_path / "out2" / "README.md").read_text()
    assert "evo-merge merge merge_recipe.yaml --out merged\n" in card and "--device" not in card


@pytest.mark.parametrize(("device", "says"), [
    pytest.param("cuda", "--device: cuda asked for, but torch sees 0 CUDA device(s)", marks=NO_GPU),
    ("tpu", "--device: 'tpu' is not a device")])
def test_a_device_that_is_not_there_is_one_line_before_any_work(family, tmp_path, device, says):
    recipe = recipe_file(tmp_path / "r.yaml", "task_arithmetic", family)
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(f"error: {says}")
    assert not (tmp_path / "out").exists()


def test_a_tensor_the_device_has_no_memory_for_is_merged_on_the_host(family, tmp_path, caplog):
    """The device here is `meta` (tensors without storage), which torch moves tensors to on any
    machine; the method runs out of memory wherever it is not on the host, as a full GPU would."""
    @register_method("test_device_oom", replace=True)
    def device_oom(base, deltas, weights, params, name):
        """Task arithmetic that has no memory off the host."""
        if base.device.type != "cpu":
            raise torch.OutOfMemoryError(f"simulated: no memory on {base.device}")
        return base + sum(w * d for w, d in zip(weights, deltas))

    plan = plan_from_recipe(Recipe.load(recipe_file(tmp_path / "r.yaml", "test_device_oom", family)))
    on_host = dict(stream_merge(plan)[1])
    with caplog.at_level(logging.WARNING, logger="evo_merge.merge.plan"):
        fell_back = dict(stream_merge(plan, device="meta")[1])
    assert on_host.keys() == fell_back.keys()
    assert all(t.device.type == "cpu" and torch.equal(t, on_host[k]) for k, t in fell_back.items())
    floating = [k for k, t in on_host.items() if t.is_floating_point()]
    assert [r.getMessage() for r in caplog.records] == [
        f"tensor {k}: out of memory on meta; merged on the CPU (equal to rounding; DARE and DELLA draw other drops "
        "there)" for k in floating]

    # its card said the folder rebuilds bit for bit on a meta device, where no tensor was merged
    from evo_merge.markup import md
    from evo_merge.merge.export import export_merge

    out = export_merge(plan, tmp_path / "fell-back", device="meta", title="fell back")
    card = (out / "README.md").read_text()
    assert "rebuilds these weights bit for bit" not in card
    assert (f"they were merged on a meta device, except {len(floating)} tensors it had no memory for "
            f"({md(floating[0])}, ...), merged on the CPU, so no one device rebuilds them bit for bit") in card
    assert "bit for bit on a meta device" in model_card(plan.recipe(), device="meta")  # none sent to the host

    @register_method("test_host_oom_merge", replace=True)
    def host_oom(base, deltas, weights, params, name):
        """Has no memory anywhere."""
        raise torch.OutOfMemoryError("simulated")

    plan = plan_from_recipe(Recipe.load(recipe_file(tmp_path / "r.yaml", "test_host_oom_merge", family)))
    with pytest.raises(torch.OutOfMemoryError):  # on the host there is nowhere else to go: not a method's bug
        dict(stream_merge(plan)[1])


def test_a_card_built_on_a_gpu_names_the_device_its_rebuild_needs(family, tmp_path):
    recipe = Recipe.load(recipe_file(tmp_path / "r.yaml", "dare_ties", family))
    card = model_card(recipe, device="cuda")
    assert "evo-merge merge merge_recipe.yaml --out merged --device cuda" in card
    assert "bit for bit on a cuda device of the kind they were merged on" in card and "DARE and DELLA" in card


@NO_GPU
def test_exports_merge_on_the_campaign_s_device_where_this_machine_has_it():
    assert available_device("cpu") == available_device("auto") == torch.device("cpu")
    assert available_device("cuda:1") == torch.device("cpu")  # a run folder copied off its GPU machine


def test_a_stash_names_a_bare_cuda_as_its_tensors_do_so_mass_factors_are_kept_once(monkeypatch):
    """MASS kept its factors in a stash on a bare cuda and compared that with its module's cuda:0:
    always different, so every factor was kept a second time (twice the pinned memory or files).
    Checked without a GPU: which device the stash names, no CUDA work."""
    from evo_merge.merge.storage import Stash, Storage

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert Stash(Storage(placement="device"), torch.device("cuda")).device == torch.device("cuda", 0)
    assert Stash(Storage(placement="host"), torch.device("cpu")).device == torch.device("cpu")


def test_the_in_place_merger_names_a_bare_cuda_as_its_tensors_do(monkeypatch):
    """`auto` and `cuda` resolve to a bare cuda, which never equals a parameter's device (cuda:0):
    the in-place merger's direct write into the module (`target.device == self.device`) was
    never taken on a GPU. Checked without a GPU: which device is meant, no CUDA work."""
    from evo_merge.weights.devices import indexed

    assert torch.device("cuda") != torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert indexed(torch.device("cuda")) == torch.device("cuda", 1)
    assert indexed(torch.device("cuda:0")) == torch.device("cuda", 0)
    assert indexed(torch.device("cpu")) == torch.device("cpu")
