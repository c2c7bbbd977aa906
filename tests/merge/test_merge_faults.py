"""`evo-merge merge` when things go wrong: a full disk, SIGTERM, NaN weights, an --out that is not ours."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner
from limits import file_size_limit  # tests/ is on sys.path (its conftest)
from safetensors.torch import load_file, save_file

from evo_merge.cli import cli
from evo_merge.cli.progress import STAGE_LINE
from evo_merge.zoo.tiny import save_tiny_family

# a linear merge that takes a while per tensor, run through the real entry point
SLOW_MERGE = '''
import sys, time
from evo_merge.cli import main
from evo_merge.merge import register_method

@register_method("test_slow", replace=True)
def slow(base, deltas, weights, params, name):
    """Linear, with time to be terminated mid-write: 21 s for the 21 tensors, so a loaded machine
    (the signal comes 0.3 s after the writing starts) cannot let it finish first; SIGTERM ends
    the sleep at once."""
    time.sleep(1.0)
    return base + sum(w * d for w, d in zip(weights, deltas))

sys.argv = ["evo-merge", *sys.argv[1:]]
main()
'''


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("llama"), "llama", n_finetunes=1)


def recipe(path, method, base, model):
    path.write_text(yaml.safe_dump({"merge_method": method, "base_model": str(base),
                                    "models": [{"model": str(model), "parameters": {"weight": 0.5}}]}))
    return path


def merge(*args):
    result = CliRunner().invoke(cli, ["merge", *map(str, args)])
    return result.exit_code, result.output


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_write_the_disk_refuses_is_one_line_and_leaves_nothing(family, tmp_path):
    """Through safetensors' own writer (it raises its own error type for an I/O failure), run
    as a user runs it."""
    base, (ft,) = family
    out = tmp_path / "out"
    shard = (ft / "model.safetensors").stat().st_size
    proc = subprocess.run(
        [sys.executable, "-c", "from evo_merge.cli import main; main()", "merge",
         str(recipe(tmp_path / "r.yaml", "linear", base, ft)), "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(shard // 2))
    lines = [line for line in proc.stderr.strip().splitlines() if not STAGE_LINE.match(line)]
    assert proc.returncode == 2 and lines == [f"error: cannot write {out}: {os.strerror(errno.EFBIG)}"], proc.stderr
    assert not out.exists() and hidden(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_a_model_folder(family, tmp_path):
    base, (ft,) = family
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, output = merge(recipe(tmp_path / "r.yaml", "linear", base, ft), "--out", out, "--overwrite")
    assert code == 2 and f"{out} is not a model folder" in output, output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and hidden(tmp_path) == []


def test_a_nan_in_an_input_is_an_error_naming_the_merged_tensor_and_the_input(family, tmp_path):
    """The tensor was named, the input not: with several inputs of many GB, the user scanned them all."""
    base, (ft,) = family
    flipped = tmp_path / "flipped"
    shutil.copytree(ft, flipped)
    tensors = load_file(flipped / "model.safetensors")
    name = min(n for n, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
    tensors[name].view(-1)[3] = float("nan")  # as a flipped exponent bit would
    save_file(tensors, flipped / "model.safetensors", metadata={"format": "pt"})
    code, output = merge(recipe(tmp_path / "r.yaml", "linear", base, flipped), "--out", tmp_path / "out")
    assert code == 2 and f"tensor {name}: holds NaN or Inf" in output, output
    assert f"; it is not finite in {flipped}" in output and f"{base}," not in output, output
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []
    overflow = tmp_path / "overflow.yaml"  # finite inputs, a result float16 cannot hold
    overflow.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(base),
                                        "out_dtype": "float16", "parameters": {"lambda": 1e9},
                                        "models": [{"model": str(ft)}]}))
    code, output = merge(overflow, "--out", tmp_path / "out")
    assert code == 2 and "every input is finite there: the merge made it (a result out of the output dtype's range" \
        in output, output


@pytest.mark.parametrize("method", ["tsv", "iso_c"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_in_an_input_a_method_decomposes_is_the_same_error(family, tmp_path, method, value):
    """The SVD of TSV-M or Iso-C raised torch's LinAlgError on a NaN: a RuntimeError traceback,
    neither the input nor a way out named (audit 96). (An Inf may pass the SVD as NaNs, which the
    written tensor's check names as any method's.)"""
    base, (ft,) = family
    flipped = tmp_path / "flipped"
    shutil.copytree(ft, flipped)
    tensors = load_file(flipped / "model.safetensors")
    name = min(n for n in tensors if ".mlp." in n and tensors[n].dim() == 2)  # decomposed, unlike embeddings
    tensors[name].view(-1)[3] = value
    save_file(tensors, flipped / "model.safetensors", metadata={"format": "pt"})
    code, output = merge(recipe(tmp_path / "r.yaml", method, base, flipped), "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in output, output
    assert (f"tensor {name}: an input holds NaN or Inf, which {method} cannot merge" in output
            or f"tensor {name}: holds NaN or Inf, not written" in output), output
    assert f"; it is not finite in {flipped}" in output and not (tmp_path / "out").exists()


def test_a_nan_in_a_sliced_layer_names_the_input_tensor_it_came_from(family, tmp_path):
    """A slice renumbers layers: the output's layer 0 is an input's layer 1. The input was looked
    up under the output's name, so the check read another layer and said every input was finite."""
    base, (ft,) = family
    flipped = tmp_path / "flipped"
    shutil.copytree(ft, flipped)
    tensors = load_file(flipped / "model.safetensors")
    name = min(n for n in tensors if n.startswith("model.layers.1.") and tensors[n].dim() == 2)
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, flipped / "model.safetensors", metadata={"format": "pt"})
    sliced = tmp_path / "slice.yaml"
    sliced.write_text(yaml.safe_dump({"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(flipped), "layer_range": [1, 2]}]}]}))
    code, output = merge(sliced, "--out", tmp_path / "out")
    renamed = name.replace("model.layers.1.", "model.layers.0.")
    assert code == 2 and f"tensor {renamed}: holds NaN or Inf" in output, output
    assert f"it is not finite in {flipped} (its {name})" in output, output


def test_sigterm_mid_write_leaves_the_old_folder_and_no_temporary_one(family, tmp_path):
    base, (ft,) = family
    out = tmp_path / "out"
    assert merge(recipe(tmp_path / "fast.yaml", "linear", base, ft), "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    slow = recipe(tmp_path / "slow.yaml", "test_slow", base, ft)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, "merge", str(slow), "--out", str(out), "--overwrite"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not hidden(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert hidden(tmp_path), "the merge never started writing"
    time.sleep(0.3)  # some tensors merged
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert err.decode().strip().splitlines()[-1] == "error: terminated"  # said, as Ctrl-C is
    assert hidden(tmp_path) == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before

