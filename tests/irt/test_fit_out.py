"""`irt fit --out` into a folder fitted before: anchors chosen on the old model do not survive."""

import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from limits import file_size_limit  # tests/ is on sys.path (its conftest)

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.irt import IRTModel, validate_responses
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities


def irt(*args):
    result = CliRunner().invoke(cli, ["irt", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_refit_into_the_same_folder_drops_the_old_anchors(tmp_path):
    for seed, name in ((1, "first.csv"), (4, "second.csv")):  # two different item sets
        gen = make_synthetic_irt(60, dims=1, n_scenarios=1, seed=seed)
        theta, ids = synthetic_abilities(30, dims=1, seed=seed + 1)
        table = gen.sample(theta, ids, seed=seed + 2)
        table["item"] = [f"{name[:-4]}-{item}" for item in table["item"]]
        table.to_csv(tmp_path / name, index=False)
    irt("fit", tmp_path / "first.csv", "--out", tmp_path / "m", "--dims", "1")
    irt("anchors", tmp_path / "m", "--budget", "5")
    assert list((tmp_path / "m" / "anchors").glob("*.json"))
    refused = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "second.csv"), "--out", str(tmp_path / "m")])
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'm'}: holds an IRT model already (--overwrite replaces it and its anchors)")
    assert list((tmp_path / "m" / "anchors").glob("*.json"))  # checked before the fit, nothing touched
    (tmp_path / "m" / "anchors" / "my-notes.txt").write_text("mine")  # the user's, in the folder
    irt("fit", tmp_path / "second.csv", "--out", tmp_path / "m", "--dims", "1", "--overwrite")
    # the anchor sets named items of the first model: gone; the user's file stays (it was deleted too)
    assert [p.name for p in (tmp_path / "m" / "anchors").iterdir()] == ["my-notes.txt"]
    result = CliRunner().invoke(
        cli, ["irt", "estimate", str(tmp_path / "m"), "--responses", str(tmp_path / "second.csv")]
    )
    assert result.exit_code == 2 and "irt anchors" in result.output, result.output


def test_a_refit_that_fails_to_write_leaves_the_old_model_and_its_anchors(tmp_path):
    """The model is written beside the folder's files and renamed over them only once whole: a full
    disk mid-write used to leave params.npz new, model.json old and the anchors deleted. Run as a
    user runs it, on a disk that refuses the write part-way (numpy's writer names no file then)."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    model = tmp_path / "m"
    irt("fit", tmp_path / "r.csv", "--out", model, "--dims", "1")
    irt("anchors", model, "--budget", "5")
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    proc = subprocess.run(
        [sys.executable, "-c", "from evo_merge.cli import main; main()", "irt", "fit", str(tmp_path / "r.csv"),
         "--out", str(model), "--dims", "1", "--seed", "5", "--overwrite"],
        capture_output=True, text=True, timeout=300,
        preexec_fn=file_size_limit((model / "params.npz").stat().st_size // 2))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        f"error: {model}: {os.strerror(errno.EFBIG)}", proc.stderr
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before
    assert list((model / "anchors").glob("*.json")) and not [p for p in model.iterdir() if p.name.startswith(".")]


def test_a_refit_with_overwrite_replaces_a_model_whose_params_were_cut_short(tmp_path):
    """The same fit again (same data, same seed: an identical model.json) over a params.npz cut short
    (a copy stopped half-way) ended in a zipfile.BadZipFile traceback, the fit lost. The damaged model
    is replaced, as any other model is."""
    gen = make_synthetic_irt(20, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(8, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    model = tmp_path / "m"
    irt("fit", tmp_path / "r.csv", "--out", model, "--dims", "1")
    whole = (model / "params.npz").read_bytes()
    (model / "params.npz").write_bytes(whole[: len(whole) // 2])
    result = CliRunner().invoke(
        cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(model), "--dims", "1", "--overwrite"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert set(IRTModel.load(model).subject_ids) == set(ids)
    assert len((model / "params.npz").read_bytes()) == len(whole)  # written whole again


def test_fit_never_writes_into_a_file_or_a_folder_of_other_files(tmp_path):
    """`--out` names the model folder: a file, or a folder holding the user's files and no model, is
    refused with --overwrite too (a fit wrote model.json and params.npz among them), before the fit."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3).to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for out, why in ((tmp_path / "notes", "holds files and no IRT model; refusing to write into it"),
                     (tmp_path / "file", "is a file; give the folder to write the model into")):
        for extra in ([], ["--overwrite"]):
            result = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(out), *extra])
            assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == f"error: --out {out}: {why}"
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    assert (tmp_path / "file").read_text() == "keep"
    result = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and f"responses file {tmp_path} is a folder" in result.output


def test_an_out_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """`irt fit --out /proc/x` fitted for minutes, then said "/proc/x: No such file or directory"
    without naming --out; `irt estimate` and `eval` write their CSV the same way."""
    import evo_merge.irt.model

    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3).to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "file").write_text("keep")
    fitted = []
    monkeypatch.setattr(evo_merge.irt.model.IRTModel, "fit", lambda *a, **k: fitted.append(1))
    for out, why in (("/proc/evo-merge-test", "cannot write there"),
                     (tmp_path / "file" / "m", f"{tmp_path / 'file'} is a file, not a folder")):
        result = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(out)])
        assert result.exit_code == 2 and result.output.strip().startswith(f"error: --out {out}: {why}"), result.output
        result = CliRunner().invoke(cli, ["irt", "estimate", str(tmp_path), "--responses", str(tmp_path / "r.csv"),
                                          "--out", f"{out}.csv"])
        assert result.exit_code == 2 and result.output.strip().startswith(f"error: --out {out}.csv: {why}")
    assert fitted == []


def test_an_adaptive_estimate_from_the_cli(tmp_path):
    """`irt estimate --estimator adaptive` crashed: the estimate's `.items` hid the dict method."""
    gen = make_synthetic_irt(60, dims=1, n_scenarios=2, seed=1)
    theta, ids = synthetic_abilities(30, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    new = gen.sample(synthetic_abilities(2, dims=1, seed=9)[0], ["n0", "n1"], seed=4)
    new.to_csv(tmp_path / "new.csv", index=False)
    irt("fit", tmp_path / "r.csv", "--out", tmp_path / "m", "--dims", "1")
    out = irt("estimate", tmp_path / "m", "--responses", tmp_path / "new.csv", "--estimator", "adaptive")
    assert "n0" in out and "n1" in out


def test_an_explicit_d_above_the_subjects_cap_is_fitted_with_a_warning(caplog):
    from evo_merge.irt import IRTModel, validate_responses

    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(8, dims=1, seed=2)
    with caplog.at_level("WARNING", logger="evo_merge.irt"):
        model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=3)), dims=3)
    assert model.dims == 3 and "D=3 with 8 subjects: 'auto' would allow at most 1" in caplog.text
    # `irt fit --dims 100000` on 9 subjects ran for minutes: refused
    with pytest.raises(UserError, match=re.escape("dims 9 is more than the 8 subjects it is fitted on; at most 8 "
                                                  "(`auto` tries up to 1 with this many)")):
        IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=3)), dims=9)


def test_estimate_method_auto_finds_the_set_anchors_method_auto_stored(tmp_path):
    """`irt anchors --method auto` stores the set under the method it resolved to (stratified with
    20 subjects): `irt estimate --method auto` compared the literal 'auto' and never matched it."""
    gen = make_synthetic_irt(60, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    irt("fit", tmp_path / "r.csv", "--out", tmp_path / "m", "--dims", "1")
    irt("anchors", tmp_path / "m", "--budget", "5", "--method", "auto")
    irt("anchors", tmp_path / "m", "--budget", "5", "--method", "random", "--seed", "1")
    assert sorted(p.name for p in (tmp_path / "m" / "anchors").iterdir()) == ["random-5.json", "stratified-5.json"]
    estimate = ("estimate", tmp_path / "m", "--responses", tmp_path / "r.csv", "--budget", "5", "--method")
    auto = irt(*estimate, "auto")
    assert auto == irt(*estimate, "stratified") and auto != irt(*estimate, "random")


def test_estimate_and_validate_keep_an_existing_output_file_and_refuse_before_working(tmp_path):
    """`irt estimate --out` replaced any file silently (eval and responses build refuse without
    --overwrite), an --out or --csv that is a folder failed only after the work, naming a temporary
    file, and `validate --test-frac` with `--folds` was ignored without a word."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    irt("fit", tmp_path / "r.csv", "--out", tmp_path / "m", "--dims", "1")
    irt("anchors", tmp_path / "m", "--budget", "5")
    mine, folder = tmp_path / "mine.csv", tmp_path / "folder"
    mine.write_text("mine\n")
    folder.mkdir()
    estimate = ("estimate", tmp_path / "m", "--responses", tmp_path / "r.csv", "--out")
    validate = ("validate", tmp_path / "r.csv", "--budgets", "5", "--methods", "random", "--repeats", "1")
    for args, expected in (
        ((*estimate, mine), f"--out {mine}: already exists (--overwrite replaces it)"),
        ((*estimate, folder), f"--out {folder}: is a folder"),
        ((*validate, "--csv", mine), f"--csv {mine}: already exists (--overwrite replaces it)"),
        ((*validate, "--csv", folder), f"--csv {folder}: is a folder"),
        ((*validate, "--folds", "4", "--test-frac", "0.5"), "--test-frac and --folds 4 do not go together"),
    ):
        result = CliRunner().invoke(cli, ["irt", *map(str, args)])
        assert result.exit_code == 2 and expected in result.output and "fitting" not in result.output, result.output
    assert mine.read_text() == "mine\n" and not any(folder.iterdir())
    irt(*estimate, mine, "--overwrite")
    assert mine.read_text().startswith("subject,scenario,estimator,estimate,se")


def test_the_pyirt_backend_s_epochs_and_rate_reach_fit_and_validate_from_the_command_line(tmp_path):
    """`--backend pyirt --epochs N --lr R` on `irt fit` and `irt validate` (only the library call was
    tested): the model records what it was fitted with; the flags without py-irt are refused before
    any work, naming the flag."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=5)
    theta, ids = synthetic_abilities(12, dims=1, seed=6)
    gen.sample(theta, ids, seed=7).to_csv(tmp_path / "r.csv", index=False)
    out = irt("fit", tmp_path / "r.csv", "--out", tmp_path / "m", "--dims", "1", "--backend", "pyirt",
              "--epochs", "30", "--lr", "0.1")
    model = IRTModel.load(tmp_path / "m")
    assert model.backend == "pyirt" and (model.settings["epochs"], model.settings["lr"]) == (30, 0.1), out
    out = irt("validate", tmp_path / "r.csv", "--dims", "1", "--budgets", "5", "--methods", "random", "--folds", "1",
              "--repeats", "1", "--backend", "pyirt", "--epochs", "30", "--lr", "0.1")
    assert "IRT validation" in out
    for flag in ("--epochs", "--lr"):
        refused = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(tmp_path / "t"),
                                           flag, "30" if flag == "--epochs" else "0.1"])
        assert refused.exit_code == 2 and refused.output.strip() == f"error: {flag} applies to --backend pyirt only"
        assert not (tmp_path / "t").exists()


def _fitted_elsewhere_while(tmp_path, out, monkeypatch):
    """`IRTModel.fit` as the CLI calls it, another fit saved into `out` while it runs (a second
    `irt fit` into the same new folder, finishing first); returns that model's files' bytes."""
    real_fit = IRTModel.fit.__func__
    theirs = {}

    def fit_while_another_saves(cls, *args, **kwargs):
        model = real_fit(cls, *args, **kwargs)
        other = real_fit(cls, *args, **{**kwargs, "seed": 7})
        other.save(out)
        theirs.update({p.name: p.read_bytes() for p in out.iterdir() if p.is_file()})
        return model

    monkeypatch.setattr(IRTModel, "fit", classmethod(fit_while_another_saves))
    return theirs


def test_a_model_saved_into_the_folder_while_fitting_is_kept_without_overwrite(tmp_path, monkeypatch):
    """Two `irt fit` into one new folder both said "fitted ... -> OUT", the later one's model
    silently in place (audit 112): without --overwrite the one saved first is kept, the other told."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "m"
    theirs = _fitted_elsewhere_while(tmp_path, out, monkeypatch)
    result = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(out), "--dims", "1"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        f"error: --out {out}: an IRT model was saved there while this one was fitted (another command?); it is "
        "left as it is and this fit was not saved (--overwrite replaces it)"), result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == theirs  # whole, nothing of ours, no temporary
    assert IRTModel.load(out).seed == 7
    again = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(out), "--dims", "1",
                                     "--overwrite"])
    assert again.exit_code == 0 and IRTModel.load(out).seed == 0, again.output  # asked: replaced


def test_an_estimates_file_written_there_while_estimating_is_kept_without_overwrite(tmp_path, monkeypatch):
    """`irt estimate --out` (as `eval`, `responses build|export` and `irt validate --csv`): a file put at
    OUT after the command checked it (another command's output) was replaced, both commands saying
    "wrote"; it is kept now without --overwrite, and replaced with it."""
    import evo_merge.irt

    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    irt("fit", tmp_path / "r.csv", "--out", tmp_path / "m", "--dims", "1")
    irt("anchors", tmp_path / "m", "--budget", "5")
    out = tmp_path / "estimates.csv"
    real = evo_merge.irt.estimate_table

    def estimated_while_another_writes(*args, **kwargs):
        out.write_text("another command's estimates")
        return real(*args, **kwargs)

    monkeypatch.setattr(evo_merge.irt, "estimate_table", estimated_while_another_writes)
    args = ["irt", "estimate", str(tmp_path / "m"), "--responses", str(tmp_path / "r.csv"), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        f"error: --out {out}: appeared while this command worked (another command's output?); it is left as it "
        "is and this output was not written (--overwrite replaces it)"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimates.csv", "m", "r.csv"]
    assert out.read_text() == "another command's estimates"
    replaced = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert replaced.exit_code == 0 and out.read_text().startswith("subject,scenario,estimator"), replaced.output


def test_irt_anchors_prints_a_received_model_s_names_as_text(tmp_path):
    """A model fitted on someone's responses names its scenarios as they did: `irt anchors` printed
    an escape sequence in one to the terminal, and a newline forged a line (audit 119)."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    table = gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3)
    table["scenario"] = np.where(table["item"].str[-1].isin(list("01234")), "low\x1b]0;TITLE\x07", "high\nFORGED")
    IRTModel.fit(table, dims=1, seed=0).save(tmp_path / "m")
    result = CliRunner().invoke(cli, ["irt", "anchors", str(tmp_path / "m"), "--budget", "2"])
    assert result.exit_code == 0 and "\x1b" not in result.output and "\x07" not in result.output, result.output
    assert "low\\x1b]0;TITLE\\x07: " in result.output and not any(
        line.startswith("FORGED") for line in result.output.splitlines()), result.output


def test_a_save_refused_without_overwrite_leaves_the_model_and_its_anchor_sets(tmp_path):
    """`IRTModel.save(overwrite=False)` over a model refuses, and leaves that model whole: its anchor
    sets are removed only when it is replaced (audit 115)."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    data = validate_responses(gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3))
    first = IRTModel.fit(data, dims=1, seed=0).save(tmp_path / "m")
    (first / "anchors").mkdir()
    (first / "anchors" / "random-5.json").write_text("{}")  # stands for a stored anchor set
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        IRTModel.fit(data, dims=1, seed=5).save(first, overwrite=False)
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_a_save_killed_half_way_leaves_no_folder_a_refit_refuses(tmp_path):
    """`irt fit` killed as it saved left its staged files in a hidden `.saving-*` folder inside --out:
    `ls` showed it empty, and every later `irt fit` into it, --overwrite or not, said "holds files
    and no IRT model" (audit 111). The next save sweeps what a dead save left (its lock gone with it)
    and leaves a live save's folder alone."""
    from evo_merge.files import held_temporary_folder

    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    gen.sample(theta, ids, seed=3).to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "m"
    (out / ".saving-killed").mkdir(parents=True)  # as kill -9 leaves it: nobody holds it
    (out / ".saving-killed" / "params.npz").write_bytes(b"PK\x03\x04 half")
    with held_temporary_folder(out, ".saving-") as live:  # another process's save, under way
        irt("fit", tmp_path / "r.csv", "--out", out, "--dims", "1")
        assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", "params.npz", live.name])
    assert IRTModel.load(out).dims == 1


def test_parameters_of_another_save_beside_a_model_json_are_refused(tmp_path):
    """The two files are replaced one after the other; killed between, a refit left its parameters
    beside the former fit's model.json, which loaded as one model where the shapes agreed (audit 111).
    model.json records a digest of the parameters it was saved with."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    data = validate_responses(gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3))
    first = IRTModel.fit(data, dims=1, seed=0).save(tmp_path / "first")
    second = IRTModel.fit(data, dims=1, seed=5).save(tmp_path / "second")
    (first / "params.npz").write_bytes((second / "params.npz").read_bytes())
    with pytest.raises(UserError, match=re.escape(f"{first}: model.json and params.npz are of two different saves "
                                                  "(a save cut short, or an edit)")):
        IRTModel.load(first)
    assert IRTModel.load(second).seed == 5  # a model as saved loads


def test_an_out_that_is_a_dangling_link_is_said_as_it_is(tmp_path):
    """`irt fit --out` a dangling link: the folder cannot be made there, which was said as "an IRT model
    was saved there while this one was fitted ... (--overwrite replaces it)", with --overwrite too
    (audit 113): the file system's own words, naming the path."""
    gen = make_synthetic_irt(40, dims=1, n_scenarios=1, seed=1)
    gen.sample(*synthetic_abilities(20, dims=1, seed=2), seed=3).to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "m"
    out.symlink_to(tmp_path / "nowhere")
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(cli, ["irt", "fit", str(tmp_path / "r.csv"), "--out", str(out), "--dims", "1",
                                          *extra])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == f"error: {out}: File exists", \
            result.output
