"""`evo-merge align` end to end, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from align_helpers import CONFIGS, trained_like
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evo_merge.cli import cli
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer


def _save_plain(folder, config, seed):
    net = trained_like(config, seed)
    folder.mkdir(parents=True)
    save_file(net.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return net


def _run(*args):
    return CliRunner().invoke(cli, ["align", *map(str, args)])


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    # a warning said before it (`--arch` unchecked without --data) is a line of its own, marked
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]


def test_plain_models_aligned_and_idempotent(tmp_path):
    cfg = CONFIGS["mlp"]
    nets = [_save_plain(tmp_path / n, cfg, s) for n, s in (("a", 0), ("b", 1), ("c", 2))]
    result = _run(
        "--models",
        tmp_path / "a",
        tmp_path / "b",
        tmp_path / "c",
        "--arch",
        "mlp",
        "--method",
        "c2m3",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    perms = json.loads((tmp_path / "out" / "permutations.json").read_text())
    assert perms["method"] == "c2m3" and set(perms["perms"]) == {"a", "b", "c"}
    x = torch.randn(8, 20)
    for name, net in zip("abc", nets):
        state = load_file(tmp_path / "out" / name / "model.safetensors")
        clone = trained_like(cfg, 9)
        clone.load_state_dict(state)
        torch.testing.assert_close(clone(x), net(x), rtol=1e-4, atol=1e-5)  # same function
    moved = load_file(tmp_path / "out" / "b" / "model.safetensors")
    assert not torch.equal(moved["fcs.0.weight"], nets[1].state_dict()["fcs.0.weight"])
    once = _run("--models", tmp_path / "a", tmp_path / "b", "--arch", "mlp", "--out", tmp_path / "once")
    again = _run(
        "--models", tmp_path / "once" / "a", tmp_path / "once" / "b", "--arch", "mlp", "--out", tmp_path / "again"
    )
    assert once.exit_code == 0 and again.exit_code == 0, again.output
    assert "model 1: 0 units moved" in again.output
    for name in ("a", "b"):
        first = load_file(tmp_path / "once" / name / "model.safetensors")
        second = load_file(tmp_path / "again" / name / "model.safetensors")
        assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("arch,method", [("gpt2", "weight"), ("llama", "mudsc")])
def test_hf_models_written_with_tokenizer(tmp_path, arch, method):
    tok = build_char_tokenizer()
    models = []
    for name, seed in (("m0", 0), ("m1", 1)):
        model = make_tiny_causal_lm(arch, vocab_size=len(tok), hidden=16, layers=1, heads=2, seed=seed)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        models.append(model)
    (tmp_path / "data.txt").write_text("the quick brown fox jumps over the lazy dog. " * 8)
    result = _run(
        "--models",
        tmp_path / "m0",
        tmp_path / "m1",
        "--arch",
        arch,
        "--method",
        method,
        "--data",
        tmp_path / "data.txt",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 4)  # was a UnicodeDecodeError's traceback
    _one_line_error(_run("--models", tmp_path / "m0", tmp_path / "m1", "--arch", arch, "--method", method, "--data",
                         tmp_path / "data.bin", "--out", tmp_path / "bin"), "data.bin: not UTF-8 text (byte 128)")
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "m1").eval()
    assert (tmp_path / "out" / "m1" / "tokenizer.json").exists()
    ids = torch.randint(0, len(tok), (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(out(input_ids=ids).logits, models[1](input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_different_widths_named(tmp_path):
    _save_plain(tmp_path / "a", CONFIGS["mlp"], 0)
    _save_plain(tmp_path / "b", {**CONFIGS["mlp"], "hidden": [16, 10, 8]}, 0)
    _one_line_error(
        _run("--models", tmp_path / "a", tmp_path / "b", "--arch", "mlp", "--out", tmp_path / "o"), "fcs.1.weight"
    )


def test_different_architectures_named(tmp_path):
    _save_plain(tmp_path / "a", CONFIGS["mlp"], 0)
    _save_plain(tmp_path / "b", CONFIGS["cnn_bn"], 0)
    _one_line_error(
        _run("--models", tmp_path / "a", tmp_path / "b", "--arch", "mlp", "--out", tmp_path / "o"), "parameter"
    )
    _one_line_error(_run("--models", tmp_path / "b", tmp_path / "a", "--arch", "mlp", "--out", tmp_path / "o"), "cnn")


def test_a_mistyped_architecture_is_named_with_the_built_in_ones(tmp_path):
    """`--arch lama` said "lama: cannot read permutation spec ([Errno 2] ...)"."""
    _save_plain(tmp_path / "a", CONFIGS["mlp"], 0)
    _save_plain(tmp_path / "b", CONFIGS["mlp"], 1)
    _one_line_error(_run("--models", tmp_path / "a", tmp_path / "b", "--arch", "mpl", "--out", tmp_path / "o"),
                    "--arch 'mpl' is not one of mlp, cnn, resnet, llama, gpt2 or a .yaml spec (did you mean 'mlp'?)")


def _yaml_spec(tmp_path, params):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    return path


def _mlp_params():
    return {
        "fcs.0.weight": ["h0", None],
        "fcs.0.bias": ["h0"],
        "fcs.1.weight": ["h1", "h0"],
        "fcs.1.bias": ["h1"],
        "fcs.2.weight": ["h2", "h1"],
        "fcs.2.bias": ["h2"],
        "fcs.3.weight": [None, "h2"],
        "fcs.3.bias": [None],
    }


def test_yaml_spec_aligns_bare_state_dicts(tmp_path):
    a = trained_like(CONFIGS["mlp"], 0)
    b_net = trained_like(CONFIGS["mlp"], 1)
    for name, net in (("a", a), ("b", b_net)):
        (tmp_path / name).mkdir()
        save_file(net.state_dict(), tmp_path / name / "model.safetensors")  # no config.json
    spec = _yaml_spec(tmp_path, _mlp_params())
    result = _run(
        "--models", tmp_path / "a", tmp_path / "b", "--arch", spec, "--method", "weight", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, result.output
    clone = trained_like(CONFIGS["mlp"], 5)
    clone.load_state_dict(load_file(tmp_path / "o" / "b" / "model.safetensors"))
    x = torch.randn(4, 20)
    torch.testing.assert_close(clone(x), b_net(x), rtol=1e-4, atol=1e-5)
    _one_line_error(
        _run("--models", tmp_path / "a", tmp_path / "b", "--arch", spec, "--method", "mudsc", "--out", tmp_path / "o2"),
        "mudsc",
    )


def test_spec_missing_a_parameter_named(tmp_path):
    _save_plain(tmp_path / "a", CONFIGS["mlp"], 0)
    _save_plain(tmp_path / "b", CONFIGS["mlp"], 1)
    params = _mlp_params()
    del params["fcs.2.bias"]
    spec = _yaml_spec(tmp_path, params)
    _one_line_error(
        _run("--models", tmp_path / "a", tmp_path / "b", "--arch", spec, "--out", tmp_path / "o"), "fcs.2.bias"
    )


def test_spec_axis_sizes_disagree_named(tmp_path):
    _save_plain(tmp_path / "a", CONFIGS["mlp"], 0)
    _save_plain(tmp_path / "b", CONFIGS["mlp"], 1)
    params = _mlp_params()
    params["fcs.2.weight"] = ["h2", "h0"]  # h0 has 16 units, this axis has 12
    spec = _yaml_spec(tmp_path, params)
    _one_line_error(
        _run("--models", tmp_path / "a", tmp_path / "b", "--arch", spec, "--out", tmp_path / "o"), "fcs.2.weight"
    )


def test_the_schema_the_library_and_the_cli_accept_the_same_methods():
    from pydantic import ValidationError

    from evo_merge.align.methods import METHODS
    from evo_merge.cli.align import align
    from evo_merge.config import AlignSpec

    cli_choices = next(p for p in align.params if p.name == "method").type.choices
    assert tuple(cli_choices) == METHODS == ("weight", "activation", "mudsc", "c2m3")
    for method in METHODS:
        assert AlignSpec(method=method, arch="mlp", data="sample.safetensors").method == method
    with pytest.raises(ValidationError):
        AlignSpec(method="zip", arch="mlp")


def test_out_never_replaces_an_input_and_replaces_an_earlier_alignment_only_with_overwrite(tmp_path):
    """`--out` holding the inputs wrote the aligned copies over the originals; an earlier output was
    written into, so a 3-model alignment's third model stayed beside a 2-model one's files."""
    cfg = CONFIGS["mlp"]
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        _save_plain(tmp_path / "zoo" / name, cfg, seed)
    zoo = tmp_path / "zoo"
    original = (zoo / "b" / "model.safetensors").read_bytes()
    _one_line_error(_run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", zoo), "holds the input")
    assert (zoo / "b" / "model.safetensors").read_bytes() == original
    out = tmp_path / "out"
    assert _run("--models", zoo / "a", zoo / "b", zoo / "c", "--arch", "mlp", "--out", out).exit_code == 0
    _one_line_error(_run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", out), "--overwrite replaces it")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "permutations.json"]
    failed = _run("--models", zoo / "a", zoo / "b", "--arch", "gpt2", "--out", out, "--overwrite")
    assert failed.exit_code == 2 and sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "permutations.json"]
    assert _run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", out, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "permutations.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    _one_line_error(_run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", tmp_path / "other",
                         "--overwrite"), "not an alignment's output")
    (tmp_path / "file").write_text("mine")
    _one_line_error(_run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", tmp_path / "file"), "is a file")


def test_an_alignment_that_appears_at_out_meanwhile_is_kept_without_overwrite(tmp_path, monkeypatch):
    """Another alignment written to OUT while this one worked was replaced without --overwrite, both
    commands saying "wrote" (audit 112; `align` passes the user's word on, audit 115)."""
    import shutil

    import evo_merge.align.api

    cfg = CONFIGS["mlp"]
    for name, seed in (("a", 0), ("b", 1)):
        _save_plain(tmp_path / "zoo" / name, cfg, seed)
    zoo, out, theirs = tmp_path / "zoo", tmp_path / "out", tmp_path / "theirs"
    assert _run("--models", zoo / "a", zoo / "b", "--arch", "mlp", "--out", theirs).exit_code == 0
    real = evo_merge.align.api.align_folders

    def aligned_while_another_writes(*args, **kwargs):
        shutil.copytree(theirs, out)
        return real(*args, **kwargs)

    monkeypatch.setattr(evo_merge.align.api, "align_folders", aligned_while_another_writes)
    _one_line_error(_run("--models", zoo / "b", zoo / "a", "--arch", "mlp", "--out", out),
                    "appeared while this one was written", "--overwrite")
    assert (out / "permutations.json").read_bytes() == (theirs / "permutations.json").read_bytes()


def test_a_sample_the_models_cannot_take_is_one_line_naming_it(tmp_path):
    """x of another width, a file that is no safetensors and a folder were tracebacks (exit 1)."""
    cfg = CONFIGS["mlp"]
    for name, seed in (("a", 0), ("b", 1)):
        _save_plain(tmp_path / name, cfg, seed)
    save_file({"x": torch.randn(6, 21)}, tmp_path / "wide.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00")
    # a row matched nothing ("0 units moved", exit 0); labels not one per row were a traceback
    save_file({"x": torch.randn(1, 21)}, tmp_path / "one.safetensors")
    save_file({"x": torch.randn(0, 21)}, tmp_path / "empty.safetensors")
    save_file({"x": torch.randn(6, 21), "y": torch.zeros(4, dtype=torch.long)}, tmp_path / "short.safetensors")
    save_file({"x": torch.randn(6, 21), "y": torch.zeros(6)}, tmp_path / "floats.safetensors")
    models = ("--models", tmp_path / "a", tmp_path / "b", "--arch", "mlp", "--method", "activation")
    cases = [(tmp_path / "wide.safetensors", "the models cannot take its x (shape [6, 21]"),
             (tmp_path / "junk.safetensors", "not a readable safetensors file"),
             (tmp_path, "a folder; give a .safetensors file"),
             (tmp_path / "one.safetensors", "x holds 1 input(s); activation statistics need at least 2"),
             (tmp_path / "empty.safetensors", "x holds 0 input(s)"),
             (tmp_path / "short.safetensors", "y must be one whole-number label per row of x (6), not torch.int64"),
             (tmp_path / "floats.safetensors", "y must be one whole-number label per row of x (6), not torch.float32")]
    for data, expected in cases:
        _one_line_error(_run(*models, "--data", data, "--out", tmp_path / "out"), f"--data {data}", expected)
    assert not (tmp_path / "out").exists()


def test_the_balance_factor_is_refused_by_a_method_without_one(tmp_path):
    """`--f` with `--method weight` was ignored without a word: only MuDSC balances."""
    for name, seed in (("a", 0), ("b", 1)):
        _save_plain(tmp_path / name, CONFIGS["mlp"], seed)
    result = _run("--models", tmp_path / "a", tmp_path / "b", "--arch", "mlp", "--f", "0.3", "--out", tmp_path / "o")
    _one_line_error(result, "--f is MuDSC's balance factor; --method weight does not use it")
    assert not (tmp_path / "o").exists()


def _plain_pair_with_data(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        _save_plain(tmp_path / name, CONFIGS["mlp"], seed)
    save_file({"x": torch.randn(8, 20, generator=torch.Generator().manual_seed(0))}, tmp_path / "x.safetensors")
    return tmp_path / "a", tmp_path / "b", tmp_path / "x.safetensors"


def test_a_spec_that_misses_an_axis_is_refused_before_anything_is_written(tmp_path, caplog):
    """`fcs.1.weight: [h1, null]` leaves its input axis out of h0: the aligned copy computed
    another function (34% of argmax predictions kept) and the command exited 0."""
    a, b, x = _plain_pair_with_data(tmp_path)
    params = _mlp_params()
    params["fcs.1.weight"] = ["h1", None]
    broken = _yaml_spec(tmp_path, params)
    _one_line_error(_run("--models", a, b, "--arch", broken, "--method", "weight", "--data", x,
                         "--out", tmp_path / "o"), "does not keep the model's function")
    assert not (tmp_path / "o").exists()
    sound = tmp_path / "sound.yaml"
    sound.write_text(yaml.safe_dump({"params": _mlp_params()}))
    assert _run("--models", a, b, "--arch", sound, "--method", "weight", "--data", x,
                "--out", tmp_path / "o").exit_code == 0
    with caplog.at_level("WARNING", logger="evo_merge"):  # nothing to run the check on: said
        assert _run("--models", a, b, "--arch", sound, "--out", tmp_path / "o2").exit_code == 0
    assert "not checked against the model (give --data)" in caplog.text


def test_a_language_model_s_spec_is_checked_on_random_tokens():
    from evo_merge.align.api import check_keeps_function
    from evo_merge.align.builders import spec_for
    from evo_merge.align.io import Endpoint
    from evo_merge.align.spec import PermSpec
    from evo_merge.errors import UserError

    model = make_tiny_causal_lm("llama", vocab_size=40, hidden=32, layers=2, heads=4, seed=0)
    endpoint = Endpoint(Path("."), model.state_dict(), model)
    spec = spec_for("llama", model)
    check_keeps_function(spec, endpoint, None, "--arch spec.yaml")  # the built-in spec keeps it
    name = next(n for n, axes in spec.axes.items() if "down_proj" in n and axes[1] is not None)
    broken = PermSpec(axes={**spec.axes, name: (spec.axes[name][0], None)}, groups=spec.groups, fused=spec.fused,
                      in_axis=spec.in_axis)
    with pytest.raises(UserError, match="does not keep the model's function"):
        check_keeps_function(broken, endpoint, None, "--arch spec.yaml")


@pytest.mark.parametrize("groups,needle", [
    ({"h0": {"blocks": 0}}, "groups.h0.blocks"),
    ({"h0": {"blocks": "two"}}, "groups.h0.blocks"),
    ({"h0": {"block": 2}}, "groups.h0.block"),
])
def test_a_spec_s_group_settings_are_checked_when_it_is_read(tmp_path, groups, needle):
    """`blocks: 0` was a ZeroDivisionError, `blocks: -1` a ValueError, each with a traceback."""
    a, b, _ = _plain_pair_with_data(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"params": _mlp_params(), "groups": groups}))
    _one_line_error(_run("--models", a, b, "--arch", spec, "--out", tmp_path / "o"), needle)


def test_tied_groups_with_different_block_counts_are_named(tmp_path):
    a, b, _ = _plain_pair_with_data(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"params": _mlp_params(), "groups": {
        "h0": {"blocks": 2, "tie": "t"}, "h1": {"blocks": 4, "tie": "t"}}}))
    _one_line_error(_run("--models", a, b, "--arch", spec, "--out", tmp_path / "o"),
                    "split into different numbers of blocks (h0: 2, h1: 4)")


def test_cheap_mistakes_are_said_before_the_models_load(tmp_path):
    """A missing --data was said only after every model was loaded in float32."""
    missing = tmp_path / "nowhere"
    _one_line_error(_run("--models", missing, missing, "--arch", "mlp", "--data", tmp_path / "x.safetensors",
                         "--out", tmp_path / "o"), "--data", "no such file")
    _one_line_error(_run("--models", missing, missing, "--arch", "mlp", "--method", "activation",
                         "--out", tmp_path / "o"), "needs runnable models and --data")


def test_a_bfloat16_model_is_aligned_into_bfloat16_exactly(tmp_path):
    """The aligned copies were written in float32 (twice the size, and a campaign then merged
    float32 copies); a permutation moves values, so each tensor is the original's, moved."""
    from safetensors import safe_open

    tok = build_char_tokenizer()
    models = []
    for name, seed in (("m0", 0), ("m1", 1)):
        model = make_tiny_causal_lm("llama", vocab_size=len(tok), hidden=16, layers=1, heads=2, seed=seed)
        model.to(torch.bfloat16).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        models.append(model)
    result = _run("--models", tmp_path / "m0", tmp_path / "m1", "--arch", "llama", "--method", "weight",
                  "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    with safe_open(tmp_path / "out" / "m1" / "model.safetensors", "pt") as aligned, \
            safe_open(tmp_path / "m1" / "model.safetensors", "pt") as original:
        assert set(aligned.keys()) == set(original.keys())
        for name in original.keys():
            a, o = aligned.get_tensor(name), original.get_tensor(name)
            assert a.dtype == o.dtype == torch.bfloat16, name
            assert torch.equal(a.flatten().sort().values, o.flatten().sort().values), name  # moved, not rounded
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "m1").eval().float()
    ids = torch.randint(0, len(tok), (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(out(input_ids=ids).logits, models[1].float()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_the_seed_reaches_the_matching(tmp_path):
    """`--seed` orders weight matching's coordinate descent, which can end in another local optimum:
    the command's permutations are the library's for the same seed, and another seed's differ here."""
    from evo_merge.align.api import align_folders

    cfg = CONFIGS["mlp"]
    models = [tmp_path / n for n in "abc"]
    for folder, seed in zip(models, range(3)):
        _save_plain(folder, cfg, seed)
    result = _run("--models", *models, "--arch", "mlp", "--seed", 1, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "permutations.json").read_text())["perms"]

    def library(seed):
        out = tmp_path / f"library-{seed}"
        out.mkdir()
        align_folders(models, "mlp", "weight", out, seed=seed)
        return json.loads((out / "permutations.json").read_text())["perms"]

    assert written == library(1) and written != library(0)


def test_a_write_the_disk_refuses_is_one_line_naming_the_output(tmp_path):
    """`align` writes Hugging Face models with `save_pretrained`, whose safetensors writer raises its
    own error on a full disk or a file-size limit: a traceback and exit 1 (audit 111; `zoo build`
    saves the same way). Run as a user runs it, under a file-size limit below one model's weights."""
    import errno
    import os
    import subprocess
    import sys

    from limits import file_size_limit  # tests/ is on sys.path (its conftest)

    tok = build_char_tokenizer()
    models = []
    for seed in (0, 1):
        model = make_tiny_causal_lm("llama", vocab_size=len(tok), hidden=64, layers=2, heads=2, seed=seed)
        model.save_pretrained(tmp_path / f"m{seed}")
        tok.save_pretrained(tmp_path / f"m{seed}")
        models.append(tmp_path / f"m{seed}")
    out = tmp_path / "out"
    size = (models[0] / "model.safetensors").stat().st_size
    proc = subprocess.run(
        [sys.executable, "-c", "from evo_merge.cli import main; main()", "align", "--models", *map(str, models),
         "--arch", "llama", "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(size // 2))
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(("warning: ", "Loading"))]
    assert proc.returncode == 2 and lines[-1:] == [f"error: {out / 'm0'}: {os.strerror(errno.EFBIG)}"], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0", "m1"]  # no staged folder left either


def test_an_out_that_is_a_link_to_an_empty_folder_is_replaced_by_the_alignment(tmp_path):
    """`--out` a link to an empty folder is accepted without --overwrite (an empty folder is), and the
    link was replaced by the alignment; the no-replace rename then refused it after the work as an
    output "that appeared" (audit 113). The link is replaced itself; its folder stays empty."""
    cfg = CONFIGS["mlp"]
    models = [tmp_path / n for n in "ab"]
    for folder, seed in zip(models, range(2)):
        _save_plain(folder, cfg, seed)
    (tmp_path / "empty").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "empty")
    result = _run("--models", *models, "--arch", "mlp", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "permutations.json").is_file()
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("model_type", ["qwen3", "gemma2"])
def test_a_model_type_the_llama_spec_does_not_cover_is_refused_naming_it(tmp_path, model_type):
    """`--arch llama` took qwen3, gemma2, olmo and olmo2 (the llama table's types) and then refused
    them with "permutation spec does not cover parameter ...q_norm.weight", which read as a bug in a
    spec the user never wrote (audit 134)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=40, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    for seed, name in enumerate("ab"):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
    _one_line_error(_run("--models", tmp_path / "a", tmp_path / "b", "--arch", "llama", "--out", tmp_path / "o"),
                    f"--arch llama: its permutation spec covers model types llama, mistral, qwen2, gemma, smollm3, not "
                    f"'{model_type}'")


def test_labels_given_to_a_language_model_are_refused_naming_the_data(tmp_path):
    """A language model predicts a token per position: mudsc's search for --f compared those with
    one label per row and ended in a traceback, exit 1 (audit 134)."""
    for name, seed in (("a", 0), ("b", 1)):
        make_tiny_causal_lm("llama", vocab_size=40, hidden=16, layers=1, heads=2, seed=seed).save_pretrained(
            tmp_path / name)
    data = tmp_path / "lm.safetensors"
    save_file({"x": torch.randint(0, 40, (8, 16)), "y": torch.zeros(8, dtype=torch.long)}, data)
    result = _run("--models", tmp_path / "a", tmp_path / "b", "--arch", "llama", "--method", "mudsc", "--data", data,
                  "--out", tmp_path / "o")
    _one_line_error(result, f"--data {data}: y gives one label per row of x, and a language model predicts a token")
    assert not (tmp_path / "o").exists()


def test_the_llama_spec_takes_the_model_types_it_covers():
    """smollm3 is one of them: the old check aligned it (logits within 9e-8), and a run folder aligning
    smollm3 models must resume (audit 136)."""
    from evo_merge.align.builders import check_arch

    for model_type in ("llama", "mistral", "qwen2", "gemma", "smollm3"):
        check_arch("llama", {"model_type": model_type})
