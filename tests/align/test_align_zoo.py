"""The mnist zoo: seeded, cached, rebuildable folders and an accuracy table (tiny sizes)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from evo_merge.align.builders import spec_for
from evo_merge.weights import load_model_folder
from evo_merge.zoo.mnist import build_mnist_zoo

TINY = {"mlp_hidden": (16,), "cnn_channels": (4,), "n_seeds": 2, "epochs": 1}


def test_tiny_zoo_trains_caches_and_rebuilds(tmp_path):
    out = build_mnist_zoo(tmp_path / "zoo", seed=0, **TINY)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"]["mlp"] == ["mlp-s0", "mlp-s1"] and manifest["disjoint"]["cnn"] == ["cnn-lo", "cnn-hi"]
    table = pd.read_csv(out / "accuracy.csv").set_index("model")
    assert table.loc["mlp-s0", "test_acc"] > 0.5  # far above chance (0.1) after one epoch
    assert table.loc["mlp-lo", "test_acc_own_classes"] > table.loc["mlp-lo", "test_acc"]
    s0, s1 = load_model_folder(out / "mlp-s0")[0], load_model_folder(out / "mlp-s1")[0]
    assert not torch.equal(s0.fcs[0].weight, s1.fcs[0].weight)  # different seeds
    spec_for("mlp", s0).sizes(s0.state_dict())  # config.json rebuilds a spec-compatible net
    stamp = (out / "mlp-s0" / "model.safetensors").stat().st_mtime_ns
    said = []  # its models one by one, as `zoo build` shows them
    build_mnist_zoo(tmp_path / "zoo", seed=0, progress=lambda *count: said.append(count), **TINY)
    assert (out / "mlp-s0" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    assert said == [("mnist zoo", done, 8) for done in range(9)]  # 2 kinds x (2 seeds + 2 disjoint halves)
    # a record cut short by a kill (written in place before): a JSONDecodeError traceback, now trained again
    (out / "mlp-s1" / "train.json").write_text('{\n  "config": {')
    stamp1 = (out / "mlp-s1" / "model.safetensors").stat().st_mtime_ns
    build_mnist_zoo(tmp_path / "zoo", seed=0, **TINY)
    assert (out / "mlp-s1" / "model.safetensors").stat().st_mtime_ns != stamp1
    assert (out / "mlp-s0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test.safetensors", "train.safetensors"]
    # a build killed at a rename leaves its hidden sibling: the next build refused the folder (audit 136)
    (out / ".manifest.json.0123abcd.tmp").write_text("{")
    build_mnist_zoo(tmp_path / "zoo", seed=0, **TINY)
    assert not (out / ".manifest.json.0123abcd.tmp").exists()
    build_mnist_zoo(tmp_path / "zoo", seed=0, force=True, **TINY)  # `zoo build --force` was ignored here
    assert (out / "mlp-s0" / "model.safetensors").stat().st_mtime_ns != stamp


def test_a_relative_zoo_option_that_is_not_there_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A campaign passes task options as written: `zoo: zoo/mnist` is the working directory's, and
    the error only said to build the zoo, which was there beside the campaign file."""
    from evo_merge.errors import UserError
    from evo_merge.zoo.mnist import mnist_task

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(f"(a relative zoo is the working directory's: {tmp_path})")):
        mnist_task("zoo/mnist")
    with pytest.raises(UserError) as caught:
        mnist_task(tmp_path / "zoo")
    assert "working directory" not in str(caught.value)


def test_a_zoo_of_another_seed_is_not_rebuilt_in_place_without_force_and_fewer_seeds_reuse_it(tmp_path):
    """Seed 1 into a seed-0 zoo rewrote its test split first: items mnist-00000... of the runs
    started on it named other digits. A rebuild with fewer seeds called the zoo's own `mlp-s1`
    "no part of an mnist zoo"."""
    from evo_merge.errors import UserError

    out = build_mnist_zoo(tmp_path / "zoo", seed=0, **TINY)
    test = (out / "data" / "test.safetensors").read_bytes()
    with pytest.raises(UserError, match="built with seed 0; seed 1 splits the digits otherwise.*--force"):
        build_mnist_zoo(out, seed=1, **TINY)
    assert (out / "data" / "test.safetensors").read_bytes() == test
    build_mnist_zoo(out, seed=0, **{**TINY, "n_seeds": 1})  # an earlier build's mlp-s1 is the zoo's own
    assert json.loads((out / "manifest.json").read_text())["seeds"]["mlp"] == ["mlp-s0"]
    build_mnist_zoo(out, seed=1, force=True, **{**TINY, "n_seeds": 1})
    assert (out / "data" / "test.safetensors").read_bytes() != test


def test_a_misspelt_mnist_task_option_is_refused(tmp_path):
    """`spilt: train` was taken by **settings and the test split scored."""
    from evo_merge.errors import UserError
    from evo_merge.tasks.registry import resolve_task

    out = build_mnist_zoo(tmp_path / "zoo", seed=0, **{**TINY, "n_seeds": 1})
    with pytest.raises(UserError, match="no option 'spilt'"):
        resolve_task("evo_merge.zoo.mnist:mnist_task", zoo=str(out), spilt="train", batch_size=7)
    train = resolve_task("evo_merge.zoo.mnist:mnist_task", zoo=str(out), split="train", batch_size=7)
    test = resolve_task("evo_merge.zoo.mnist:mnist_task", zoo=str(out), batch_size=7)
    assert len(train.item_ids) > len(test.item_ids)  # an 80/20 split
