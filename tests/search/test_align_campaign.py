"""A campaign over models trained from different seeds: aligned once, then searched like any endpoints."""

import json

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evo_merge.cli import cli
from evo_merge.weights import load_model_folder
from evo_merge.zoo.mnist import build_mnist_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.set_num_threads(1)
    return build_mnist_zoo(tmp_path_factory.mktemp("mnist"), mlp_hidden=(48, 48), cnn_channels=(2, 2, 2),
                           n_seeds=2, epochs=2)


@pytest.mark.parametrize("reference", ["first", "mean"])
def test_aligned_endpoints_become_ordinary_candidates(tmp_path, zoo, reference, caplog):
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "models": [str(zoo / "mlp-s0"), str(zoo / "mlp-s1")],
        "align": {"method": "weight", "arch": "mlp", "reference": reference},
        "tasks": [{"task": "evo_merge.zoo.mnist:mnist_task", "name": "digits", "options": {"zoo": str(zoo)}},
                  {"task": "evo_merge.zoo.mnist:mnist_task", "name": "digits_train",
                   "options": {"zoo": str(zoo), "split": "train", "name": "digits_train"}}],
        "methods": {"linear": {}, "task_arithmetic": {}},
        "estimator": {"kind": "full"},
        "algorithm": {"population": 6, "generations": 2, "seed": 0},
        "final": {"evaluate_top": 2},
    }))
    # an aligned campaign builds its own base: a `base_model` beside `align` is not read, by the plan
    # either, and the plan says so
    with_base = tmp_path / "with-base.yaml"
    with_base.write_text(config.read_text() + f"base_model: {zoo / 'mlp-s0'}\n")
    with caplog.at_level("WARNING", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["plan", str(with_base)])
    assert result.exit_code == 0 and "fits" in result.output, result.output
    assert "base_model: not used (align builds the base from the aligned models" in caplog.text
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output

    record = json.loads((run / "aligned" / "permutations.json").read_text())
    assert list(record["perms"]) == ["mlp-s0", "mlp-s1"]
    # alignment permutes hidden units only: the aligned model computes the same function
    x = load_file(zoo / "data" / "test.safetensors")["x"][:64]
    original, aligned = load_model_folder(zoo / "mlp-s1")[0], load_model_folder(run / "aligned" / "mlp-s1")[0]
    assert torch.allclose(original(x), aligned(x), atol=1e-5)
    assert not torch.equal(load_file(zoo / "mlp-s1" / "model.safetensors")["fcs.0.weight"],
                           load_file(run / "aligned" / "mlp-s1" / "model.safetensors")["fcs.0.weight"])
    if reference == "mean":  # the base is the mean of every aligned model, not of some
        mean = load_file(run / "aligned" / "universe-mean" / "model.safetensors")
        copies = [load_file(run / "aligned" / name / "model.safetensors") for name in ("mlp-s0", "mlp-s1")]
        assert mean.keys() == copies[0].keys()
        assert all(torch.equal(mean[n], (copies[0][n] + copies[1][n]) / 2) for n in mean)
    # the summary says what the base of an aligned campaign is (with `first`, a row repeating an endpoint)
    base = {"first": "base (= endpoint mlp-s0)", "mean": "base (mean of the endpoints)"}[reference]
    assert f"│ {base} " in result.output, result.output

    exported = sorted((run / "models").iterdir())
    assert exported and load_model_folder(exported[0])[0](x).shape == (64, 10)
    # the base (evaluation 1) is an input with `first`; with `mean`, the aligned endpoints' mean the run built
    base_export = CliRunner().invoke(cli, ["export", str(run), "--pick", "1", "--out", str(tmp_path / "base")])
    if reference == "first":
        assert base_export.exit_code == 2 and "the base model itself" in base_export.output, base_export.output
    else:
        assert base_export.exit_code == 0, base_export.output
        mean = load_file(run / "aligned" / "universe-mean" / "model.safetensors")
        written = load_file(tmp_path / "base" / "model.safetensors")
        assert all(torch.equal(written[n], mean[n]) for n in mean)
    if reference == "first":  # the aligned copies are what picks are merged from: checked as the models are
        from safetensors.torch import save_file

        copy = run / "aligned" / "mlp-s1" / "model.safetensors"
        weights = load_file(copy)
        save_file({name: tensor * 1.5 for name, tensor in weights.items()}, copy)
        merge = str(pd.read_csv(run / "pareto.csv").id.iloc[0])  # an evaluation export takes (not an input)
        export = ["export", str(run), "--pick", merge, "--out", str(tmp_path / "again")]
        refused = CliRunner().invoke(cli, export)
        assert refused.exit_code == 2 and refused.output.strip().endswith(
            "its weights changed since this run folder was started; remove the run folder's aligned/ (it is built "
            "again from the models as it was), then go on"), refused.output
        import shutil

        shutil.rmtree(run / "aligned")
        rebuilt = CliRunner().invoke(cli, export)
        assert rebuilt.exit_code == 0, rebuilt.output
        assert torch.equal(load_file(copy)["fcs.0.weight"], weights["fcs.0.weight"])  # the same alignment again
        # a record cut short (written in place, a kill mid-write left it so): every resume raised JSONDecodeError
        record_file = run / "aligned" / "permutations.json"
        record_file.write_text(record_file.read_text()[:40])
        cut = CliRunner().invoke(cli, ["resume", str(run)])
        assert cut.exit_code == 2 and cut.output.strip().splitlines()[-1] == (
            f"error: {record_file}: unreadable (JSONDecodeError); remove the run folder's aligned/ (it is built "
            "again from the models as it was), then go on"), cut.output
        # a received record naming folders outside aligned/ as the aligned endpoints (audit 116)
        for outside in ("../..", str(tmp_path)):
            record_file.write_text(json.dumps({"perms": {outside: {}, "mlp-s1": {}}}))
            refused = CliRunner().invoke(cli, ["resume", str(run)])
            assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
                f"error: {record_file}: unreadable (ValueError); remove the run folder's aligned/ (it is built "
                "again from the models as it was), then go on"), refused.output


@pytest.mark.parametrize(("align", "models", "expected"), [
    ({"method": "activation", "arch": "mlp"}, 2, "align: method activation matches the models' activations"),
    ({"method": "weight", "arch": "mlp"}, 1, "models: align needs at least two models"),
    ({"method": "activation", "arch": "mlp", "data": "nope.safetensors"}, 2, "align.data: data file"),
])
def test_an_align_section_run_would_refuse_is_refused_by_plan_naming_its_key(tmp_path, zoo, align, models, expected):
    """`plan` said "fits" and `run` refused after loading the models, naming `--data` (an option
    campaigns do not have) or no key at all, and calling a data file a "model path"."""
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "models": [str(zoo / f"mlp-s{i}") for i in range(models)], "align": align,
        "tasks": [{"task": "evo_merge.zoo.mnist:mnist_task", "name": "digits", "options": {"zoo": str(zoo)}}],
        "methods": {"task_arithmetic": {}}, "estimator": {"kind": "full"},
    }))
    for args in (["plan", str(config)], ["run", str(config), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_an_aligned_campaign_s_settings_are_checked_for_every_aligned_model():
    """Every aligned model is an endpoint: TSV-C's `task: 2` of three aligned models was refused as
    if there were two (audit 98), and `task: 3` is refused naming the three."""
    from evo_merge.config import Campaign

    config = {"models": ["a", "b", "c"], "align": {"arch": "mlp"}, "tasks": [{"task": "arith"}]}
    assert Campaign.model_validate({**config, "methods": {"tsv_c": {"task": 2}}}).methods == {"tsv_c": {"task": 2}}
    with pytest.raises(ValueError, match=r"tsv_c: task 3 is not a model index \(0..2\)"):
        Campaign.model_validate({**config, "methods": {"tsv_c": {"task": 3}}})
    # refused after the alignment and the calibration (audit 99)
    with pytest.raises(ValueError, match="slerp: merges exactly 1 model.s. besides the base; the campaign has 3"):
        Campaign.model_validate({**config, "methods": {"slerp": {}}})
