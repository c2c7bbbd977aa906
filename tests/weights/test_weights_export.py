"""Exporting HF folders: loadable round trips, HF shard layout, shared storage, dtype, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_layout import save_to_hub_cache  # tests/ is on sys.path (its conftest)
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from evo_merge.errors import UserError
from evo_merge.weights import Checkpoint, load_model_folder, save_model_folder, write_model_folder


def _stream(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with Checkpoint.open(path) as ckpt:
        for name in ckpt.names:
            yield name, ckpt.tensor(name)


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 20_000], ids=["single", "sharded"])
def test_round_trip_loads_generates_and_matches(family, tmp_path, max_shard_bytes):
    base, _ = family
    out = write_model_folder(tmp_path / "merged", _stream(base), copy_from=base, max_shard_bytes=max_shard_bytes)
    assert _siblings(out) == ["merged"]  # no temporary folder left behind
    sharded = max_shard_bytes < 5 * 2**30
    assert (out / "model.safetensors.index.json").is_file() == sharded
    assert (out / "model.safetensors").is_file() != sharded

    original = AutoModelForCausalLM.from_pretrained(base)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded) is type(original)
    expected, got = original.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    ids = tokenizer("hello", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    generated = loaded.generate(ids, **kwargs)
    assert generated.shape == (1, ids.shape[1] + 6)
    assert torch.equal(generated, original.generate(ids, **kwargs))
    assert (out / "generation_config.json").is_file()


def test_shard_layout_and_index(llama_family, tmp_path):
    base, _ = llama_family
    limit = 20_000
    out = write_model_folder(tmp_path / "m", _stream(base), max_shard_bytes=limit)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert [s.name for s in shards] == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    with Checkpoint.open(base) as src:
        assert sorted(index["weight_map"]) == sorted(src.names)
        assert index["metadata"]["total_size"] == src.num_bytes()
        sizes = {name: torch.Size(src.shape(name)).numel() * 4 for name in src.names}
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            keys = list(f.keys())
            assert f.metadata() == {"format": "pt"}
        assert all(index["weight_map"][k] == shard.name for k in keys)
        # A shard exceeds the limit only when it holds one tensor larger than the limit.
        assert sum(sizes[k] for k in keys) <= limit or len(keys) == 1


def test_shared_storage_is_written(tmp_path):
    big = torch.arange(12.0)
    shared = torch.nn.Linear(3, 3).weight.detach()
    tensors = [("a", big[:6]), ("b", big[6:].view(2, 3)), ("tied1", shared), ("tied2", shared)]
    tensors.append(("t", big.view(3, 4).t()))  # non-contiguous view
    out = write_model_folder(tmp_path / "m", iter(tensors))
    with Checkpoint.open(out) as ckpt:
        for name, tensor in tensors:
            assert torch.equal(ckpt.tensor(name), tensor), name


def test_dtype_cast_on_write_and_config(llama_family, tmp_path):
    base, _ = llama_family
    ints = ("counts", torch.arange(4, dtype=torch.int64))

    def stream():
        yield from _stream(base)
        yield ints

    out = write_model_folder(tmp_path / "m", stream(), copy_from=base, dtype=torch.bfloat16)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "torch_dtype" not in config
    with Checkpoint.open(out) as ckpt, Checkpoint.open(base) as src:
        assert ckpt.dtype("counts") == torch.int64 and torch.equal(ckpt.tensor("counts"), ints[1])
        for name in src.names:
            assert ckpt.dtype(name) == torch.bfloat16
            assert torch.equal(ckpt.tensor(name), src.tensor(name).to(torch.bfloat16))
    model = AutoModelForCausalLM.from_pretrained(out.parent / "m", dtype="auto")
    assert model.dtype == torch.bfloat16


def test_a_folder_of_two_dtypes_keeps_the_config_s_own(llama_family, tmp_path):
    """Tensors written in two dtypes (norms kept in float32 beside bfloat16 matrices): no one dtype
    is the folder's, so the copied config's stays; naming one of them made `dtype="auto"` load the
    whole model in it."""
    base, _ = llama_family
    mixed = ((name, t if "norm" in name else t.bfloat16()) for name, t in _stream(base))
    out = write_model_folder(tmp_path / "m", mixed, copy_from=base, config={"torch_dtype": "bfloat16"})
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config.get("dtype") == json.loads(
        (base / "config.json").read_text()).get("dtype")


def test_config_overrides_and_legacy_torch_dtype_key(llama_family, tmp_path):
    base, _ = llama_family
    out = write_model_folder(
        tmp_path / "m", _stream(base), copy_from=base, config={"torch_dtype": "float32", "note": "x"},
        dtype=torch.float16,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["note"] == "x" and config["model_type"] == "llama"
    assert config["dtype"] == config["torch_dtype"] == "float16"


def test_config_records_dtype_actually_written(llama_family, tmp_path):
    base, _ = llama_family
    half = ((name, t.half()) for name, t in _stream(base))
    out = write_model_folder(tmp_path / "m", half, copy_from=base)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_extra_files(tmp_path):
    out = write_model_folder(
        tmp_path / "m", iter([("w", torch.ones(2))]), extra_files={"README.md": "# hi\n", "sub/blob.bin": b"\x00\x01"}
    )
    assert (out / "README.md").read_text() == "# hi\n" and (out / "sub" / "blob.bin").read_bytes() == b"\x00\x01"
    assert not (out / "config.json").exists()
    with pytest.raises(ValueError, match="relative path"):
        write_model_folder(tmp_path / "n", iter([("w", torch.ones(2))]), extra_files={"../escape": "x"})
    assert _siblings(out) == ["m"]


def _failing(path: Path, after: int) -> Iterator[tuple[str, torch.Tensor]]:
    for i, item in enumerate(_stream(path)):
        if i == after:
            raise RuntimeError("merge blew up")
        yield item


def test_failing_iterator_leaves_nothing(llama_family, tmp_path):
    base, _ = llama_family
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="merge blew up"):
        # Small shards: several are already on disk when the iterator fails.
        write_model_folder(out, _failing(base, after=15), copy_from=base, max_shard_bytes=10_000)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_mid_way_closes_its_tensor_generator(tmp_path):
    """What runs inside the generator (a progress bar) ends with the failed write, not at garbage
    collection: a rich Live display left open breaks the next merge in the same process."""
    closed = []

    def tensors():
        try:
            yield "w", torch.tensor([1.0, float("nan")])
            yield "v", torch.ones(2)
        finally:
            closed.append(True)

    stream = tensors()
    with pytest.raises(UserError, match="NaN or Inf"):
        write_model_folder(tmp_path / "m", stream)
    assert closed == [True]


WRITER = """
import sys, time
from pathlib import Path
import torch
from evo_merge.weights import write_model_folder

def tensors():
    for i in range(3):
        yield f"w{i}", torch.ones(1000)
    Path(sys.argv[2]).touch()  # two shards are on disk
    time.sleep(600)
    yield "late", torch.ones(1)

write_model_folder(Path(sys.argv[1]), tensors(), max_shard_bytes=5000)
"""


def test_what_a_killed_write_left_is_removed_by_the_next_write_to_that_output_not_before(tmp_path):
    """A hard kill leaves the hidden temporary folder with the shards written so far (gigabytes at
    size); nothing else could remove it. A live writer's folder is left alone."""
    import subprocess
    import sys
    import time

    out, ready = tmp_path / "m", tmp_path.parent / f"{tmp_path.name}-ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
        assert len(partial) == 1 and len(list(partial[0].rglob("*.part"))) == 2

        write_model_folder(out, [("w", torch.zeros(2))], config={})  # beside a live writer: its folder stays
        assert partial[0].is_dir() and _siblings(out) == sorted(["m", partial[0].name])
    finally:
        writer.kill()
        writer.wait()
    write_model_folder(out, [("w", torch.ones(2))], config={}, overwrite=True)
    assert _siblings(out) == ["m"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("w"), torch.ones(2))


def test_existing_output_refused_without_overwrite(llama_family, tmp_path):
    base, _ = llama_family
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    consumed = []

    def tracked():
        for item in _stream(base):
            consumed.append(item[0])
            yield item

    # a folder of other files: --overwrite would not replace it either, so the error does not offer it
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"output folder .*m is not a model folder .*refusing to replace it"):
            write_model_folder(out, tracked(), overwrite=overwrite)
    assert consumed == [] and _siblings(out) == ["m"] and (out / "keep.txt").read_text() == "mine"
    model = write_model_folder(tmp_path / "model", _stream(base), copy_from=base)
    with pytest.raises(UserError, match=r"output folder .*model already exists \(--overwrite replaces it\)"):
        write_model_folder(model, tracked())
    assert consumed == []


@pytest.mark.parametrize("appears", ["a model folder", "a file"])
def test_an_output_that_appears_while_it_is_written_is_left_as_it_is(llama_family, tmp_path, appears):
    """The output was free when the write began, and someone put their own model folder there while
    it ran (minutes at size: a copy, a second merge to the same path): without --overwrite it was
    replaced all the same, the user's weights deleted (audit 112). The rename that puts the output in
    place now replaces nothing without --overwrite; with it, what was asked for is replaced."""
    base, (ft,) = llama_family
    out = tmp_path / "m"

    def theirs_arriving():
        for k, item in enumerate(_stream(base)):
            if k == 3:
                if appears == "a file":
                    out.write_text("notes")
                else:
                    shutil.copytree(ft, out)
            yield item

    said = ("is a file, not a model folder" if appears == "a file"
            else "appeared while this one was written .*--overwrite")
    with pytest.raises(UserError, match=rf"output (folder )?.*m {said}"):
        write_model_folder(out, theirs_arriving(), copy_from=base)
    assert _siblings(out) == ["m"]
    if appears == "a file":
        assert out.read_text() == "notes"
    else:
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ft.iterdir())
        assert (out / "model.safetensors").read_bytes() == (ft / "model.safetensors").read_bytes()
        shutil.rmtree(out)
        write_model_folder(out, theirs_arriving(), copy_from=base, overwrite=True)  # asked: replaced
        with Checkpoint.open(out) as got, Checkpoint.open(base) as want:
            assert all(torch.equal(got.tensor(n), want.tensor(n)) for n in want.names)


def test_overwrite_replaces_only_when_complete(llama_family, tmp_path):
    base, (ft,) = llama_family
    out = write_model_folder(tmp_path / "m", _stream(base), copy_from=base)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="merge blew up"):
        write_model_folder(out, _failing(ft, after=5), copy_from=ft, overwrite=True)
    assert _siblings(out) == ["m"] and (out / "model.safetensors").read_bytes() == before

    (out / "stale.txt").write_text("old")
    write_model_folder(out, _stream(ft), copy_from=ft, overwrite=True, max_shard_bytes=20_000)
    assert _siblings(out) == ["m"] and not (out / "stale.txt").exists() and not (out / "model.safetensors").exists()
    with Checkpoint.open(out) as got, Checkpoint.open(ft) as want:
        assert all(torch.equal(got.tensor(n), want.tensor(n)) for n in want.names)


def test_an_output_that_is_a_link_to_a_model_folder_is_replaced_and_the_link_alone_removed(llama_family, tmp_path):
    """The link was renamed aside (`.m.old-*`) and left there, pointing out of the folder, since
    removing a tree refuses a link; what it points at stays as it was."""
    base, (ft,) = llama_family
    outside = write_model_folder(tmp_path / "outside" / "m", _stream(base), copy_from=base)
    before = (outside / "model.safetensors").read_bytes()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "m").symlink_to(outside, target_is_directory=True)
    out = write_model_folder(tmp_path / "run" / "m", _stream(ft), copy_from=ft, overwrite=True)
    assert _siblings(out) == ["m"] and not out.is_symlink()
    assert (outside / "model.safetensors").read_bytes() == before


def test_an_output_below_a_file_names_the_file(tmp_path):
    """`--out afile/sub` said "cannot write afile/sub: File exists"."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, "
                                        "not a folder$"):
        write_model_folder(tmp_path / "afile" / "sub", iter([("w", torch.ones(1))]))


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match=r"copy config and tokenizer from not found: .*nowhere"):
        write_model_folder(tmp_path / "m", iter([("w", torch.ones(1))]), copy_from=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no tensors"):
        write_model_folder(tmp_path / "m", iter([]))
    with pytest.raises(ValueError, match="'w' yielded twice"):
        write_model_folder(tmp_path / "m", iter([("w", torch.ones(1)), ("w", torch.ones(1))]))
    assert list(tmp_path.iterdir()) == []


def test_written_folder_and_files_take_the_umask_modes(llama_family, tmp_path):
    base, _ = llama_family
    old = os.umask(0o022)
    try:
        out = write_model_folder(tmp_path / "m", _stream(base), copy_from=base, max_shard_bytes=20_000)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700: others can read the export
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}


def test_a_saved_hf_model_folder_takes_the_umask_modes(tmp_path):
    from evo_merge.weights.folder import save_model_folder
    from evo_merge.zoo.tiny import make_tiny_causal_lm

    old = os.umask(0o022)
    try:
        out = save_model_folder(tmp_path / "m", make_tiny_causal_lm("llama", vocab_size=16, hidden=8, layers=1, seed=0))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}


def test_overwrite_replaces_only_a_model_folder_or_an_empty_one(llama_family, tmp_path):
    base, _ = llama_family
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match=f"output folder {mine} is not a model folder"):
        write_model_folder(mine, _stream(base), overwrite=True)
    file = tmp_path / "file"
    file.write_text("keep")
    with pytest.raises(UserError, match=f"output {file} is a file"):
        write_model_folder(file, _stream(base), overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep" and file.read_text() == "keep"
    assert _siblings(mine) == ["file", "mine"]  # no temporary folder left
    # weights-like files without a model's config are a user's files: a dataset.bin, an index.json
    for name in ("dataset.bin", "shards.index.json", "embeddings.safetensors"):
        (mine / name).write_bytes(b"data")
        with pytest.raises(UserError, match=f"output folder {mine} is not a model folder"):
            write_model_folder(mine, _stream(base), overwrite=True)
        assert (mine / name).read_bytes() == b"data" and (mine / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_model_folder(empty, _stream(base), overwrite=True) / "model.safetensors").is_file()


@pytest.mark.parametrize(("value", "dtype"), [(float("nan"), None), (float("inf"), None), (1e6, torch.float16)],
                         ids=["nan", "inf", "float16-overflow"])
def test_a_tensor_with_nan_or_inf_is_refused_by_name(tmp_path, value, dtype):
    tensors = [("fine", torch.ones(3)), ("layers.1.bad", torch.tensor([1.0, value]))]
    with pytest.raises(UserError, match=r"tensor layers\.1\.bad: holds NaN or Inf"):
        write_model_folder(tmp_path / "m", iter(tensors), dtype=dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["merges.txt", "config.json"])
def test_a_copied_file_linking_out_of_the_model_folder_is_refused(llama_family, tmp_path, name):
    base, _ = llama_family
    secret = tmp_path / "secret.txt"
    secret.write_text("api_key=hunter2")
    secret.chmod(0o600)
    model = tmp_path / "model"
    model.mkdir()
    for file in base.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(Path("..") / "secret.txt")
    with pytest.raises(UserError, match=f"{model / name}: links to {secret}, outside the model folder"):
        write_model_folder(tmp_path / "out", _stream(base), copy_from=model)
    assert _siblings(tmp_path / "out") == ["model", "secret.txt"]  # nothing written, not even a hidden folder


def test_a_fine_tune_whose_tokenizer_links_to_its_base_s_loads_but_is_not_copied(llama_family, tmp_path):
    """Reading a linked file leaks nothing: only copying it into an output is refused. The check sat
    in the shared file lister, so such a fine-tune could not even be loaded as a campaign's base."""
    base, _ = llama_family
    model = tmp_path / "model"
    shutil.copytree(base, model)
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(base / "tokenizer.json")
    module, tokenizer = load_model_folder(model)
    assert tokenizer is not None and module is not None
    with pytest.raises(UserError, match="tokenizer.json: links to .*outside the model folder"):
        write_model_folder(tmp_path / "out", _stream(base), copy_from=model)


def test_a_hub_cache_snapshot_linking_into_its_blobs_is_copied(llama_family, tmp_path):
    base, _ = llama_family
    save_to_hub_cache(tmp_path / "hub", base, "org/tiny", "c" * 40, linked=True)
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("c" * 40)
    assert (snapshot / "tokenizer.json").is_symlink()
    out = write_model_folder(tmp_path / "out", _stream(base), copy_from=snapshot)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert not (out / name).is_symlink() and (out / name).read_bytes() == (base / name).read_bytes()

    secret = tmp_path / "hub" / "secret.txt"  # inside the cache, outside this repo's folder
    secret.write_text("api_key=hunter2")
    (snapshot / "merges.txt").symlink_to(Path("../../..") / "secret.txt")
    with pytest.raises(UserError, match=f"merges.txt: links to {secret}, outside the model folder"):
        write_model_folder(tmp_path / "out2", _stream(base), copy_from=snapshot)


@pytest.mark.parametrize("layout", ["folder of links", "renamed repo folder on another disk"])
def test_links_to_a_hub_cache_s_blobs_are_copied_whatever_folder_points_to_them(llama_family, tmp_path, layout):
    """A folder of links into a snapshot (`ln -s …/snapshots/<commit>/* mymodel/`), or a repo
    folder kept elsewhere under another name: the files are a Hub repo's blobs, the model's own."""
    base, _ = llama_family
    save_to_hub_cache(tmp_path / "hub", base, "org/tiny", "c" * 40, linked=True)
    repo = tmp_path / "hub" / "models--org--tiny"
    if layout == "folder of links":
        model = tmp_path / "mymodel"
        model.mkdir()
        for file in (repo / "snapshots" / ("c" * 40)).iterdir():
            (model / file.name).symlink_to(file)
    else:
        store = tmp_path / "bigdisk" / "tiny-store"
        store.parent.mkdir()
        repo.rename(store)
        repo.symlink_to(store)
        model = repo / "snapshots" / ("c" * 40)
    out = write_model_folder(tmp_path / "out", _stream(base), copy_from=model)
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_a_link_straight_into_another_repo_s_blobs_is_refused(llama_family, tmp_path):
    """Any `blobs/` folder beside a `snapshots/` one was taken for the model's own: a file of
    another cache repo (its hash names it) was copied into the output."""
    base, _ = llama_family
    save_to_hub_cache(tmp_path / "hub", base, "org/tiny", "c" * 40, linked=True)
    other = tmp_path / "hub" / "models--org--other"
    (other / "snapshots").mkdir(parents=True)
    (other / "blobs").mkdir()
    (other / "blobs" / "deadbeef").write_text("secret-from-another-repo")
    for model in (tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("c" * 40), tmp_path / "plain"):
        if not model.exists():
            shutil.copytree(base, model)
        (model / "merges.txt").unlink(missing_ok=True)
        (model / "merges.txt").symlink_to(other / "blobs" / "deadbeef")
        with pytest.raises(UserError, match=f"merges.txt: links to {other / 'blobs' / 'deadbeef'}, outside the model"):
            write_model_folder(tmp_path / "out", _stream(base), copy_from=model)


@pytest.mark.parametrize("untie", [False, True])
def test_loading_a_model_folder_draws_no_transformers_bar_and_leaves_its_setting(llama_family, capfd, untie):
    """transformers 5 draws a "Loading weights" bar per model; a run shows its own progress, and in
    a log file that bar is a line of carriage returns."""
    from transformers.utils import logging as hf_logging

    base, _ = llama_family
    hf_logging.enable_progress_bar()
    load_model_folder(base, untie=untie)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting, restored


def test_saving_a_model_folder_draws_no_transformers_bar(llama_family, tmp_path, capfd):
    """Nor its "Writing model shards" bar: a zoo build's log held one per model saved."""
    from transformers.utils import logging as hf_logging

    base, _ = llama_family
    model, tokenizer = load_model_folder(base)
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    save_model_folder(tmp_path / "copy", model, tokenizer)
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


def test_an_output_that_is_a_file_is_refused_without_offering_overwrite(tmp_path):
    """`merge`/`export --out FILE` said "already exists (--overwrite ... replaces it)", and with
    --overwrite that it is a file: the first answer is the one that holds."""
    from evo_merge.weights.export import check_output_folder

    out = tmp_path / "notes.txt"
    out.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError) as refused:
            check_output_folder(out, overwrite)
        assert str(refused.value) == (f"output {out} is a file, not a model folder; "
                                      "give a folder to write the model into")
    assert out.read_text() == "mine"


def test_code_files_the_config_s_auto_map_names_are_copied_so_an_opted_in_load_works(tmp_path):
    """The output kept the donor's `auto_map` but not its code: `from_pretrained(..., trust_remote_code=True)`
    failed with 'does not appear to have a file named configuration_x.py'. The files are copied, not run."""
    from evo_merge.zoo.tiny import save_tiny_family

    base, _ = save_tiny_family(tmp_path / "family", "llama", n_finetunes=0)
    (base / "configuration_x.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass XConfig(LlamaConfig):\n    model_type = 'llama'\n")
    (base / "modeling_x.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_x import XConfig\n\n\n"
        "class XForCausalLM(LlamaForCausalLM):\n    config_class = XConfig\n")
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                          "AutoTokenizer": ["other/repo--tokenization_y.YTokenizer", None]}  # another repo's: no file
    (base / "config.json").write_text(json.dumps(config))
    checkpoint = Checkpoint.open(base)
    out = write_model_folder(tmp_path / "out", ((n, checkpoint.tensor(n)) for n in checkpoint.names), copy_from=base)
    assert (out / "configuration_x.py").is_file() and (out / "modeling_x.py").is_file()
    assert not list(out.glob("tokenization_y*"))
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "XForCausalLM"
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names a descriptor's file through Linux /proc")
def test_a_model_folder_s_files_reach_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """Renamed into place unsynced, a power loss just after `wrote` could leave a complete-looking
    folder with a short shard (audit 126): each file is synced, then the folders, then the rename."""
    synced, real = [], os.fsync

    def fsync(descriptor):
        synced.append((Path(os.readlink(f"/proc/self/fd/{descriptor}")), (tmp_path / "out").exists()))
        return real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    out = write_model_folder(tmp_path / "out", [("w", torch.ones(4))], config={"model_type": "llama"},
                             extra_files={"README.md": "card"})
    written = {p.name for p in out.iterdir()}
    before = {path.name for path, named in synced if not named}
    assert written <= before, (written, synced)  # every file, while the output had no name yet
    assert synced[-1] == (tmp_path, True)  # the rename itself, into the parent


def test_the_code_file_a_tokenizer_config_s_auto_map_names_is_copied_with_the_tokenizer(tmp_path):
    """A merge kept the base's tokenizer_config.json, whose `auto_map` names `tokenization_x.py`,
    without that file (audit 127): it comes with the tokenizer files, and not without them."""
    from evo_merge.zoo.tiny import save_tiny_family

    base, _ = save_tiny_family(tmp_path / "family", "llama", n_finetunes=0)
    tokenizer_config = base / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    tokenizer_config.write_text(json.dumps(settings))
    (base / "tokenization_x.py").write_text("raise SystemExit('never imported')\n")
    checkpoint = Checkpoint.open(base)
    for copy_tokenizer in (True, False):
        tensors = ((n, checkpoint.tensor(n)) for n in checkpoint.names)
        out = write_model_folder(tmp_path / f"out-{copy_tokenizer}", tensors, copy_from=base,
                                 copy_tokenizer=copy_tokenizer)
        assert (out / "tokenization_x.py").is_file() == copy_tokenizer
        assert (out / "tokenizer_config.json").is_file() == copy_tokenizer


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e5m2])
def test_all_finite_reads_a_sum_that_overflows_and_each_kind_of_non_finite_entry(dtype):
    """The one finite check of inputs, candidates and written weights: a sum is its fast path, so a
    finite tensor whose own sum overflows (float16 past 65504) must still be finite, and a NaN, an
    infinity, or two infinities that cancel to NaN must not (float8_e5m2 here: e4m3fn has no
    infinity, and `isfinite` does not read it, so it is widened: writing it raised NotImplementedError)."""
    from evo_merge.weights.dtypes import all_finite

    large = torch.full((1000,), 400.0).to(dtype)  # 400 000 in all: past float16's range
    assert all_finite(large)
    if dtype in (torch.bfloat16, torch.float32, torch.float64):  # a sum past float32's range, where it is summed
        assert all_finite(torch.full((4,), 3e38).to(dtype))  # read entry by entry: finite (audit 100)
    for bad in ([float("nan")], [float("inf")], [float("inf"), float("-inf")]):
        broken = large.float()
        broken[: len(bad)] = torch.tensor(bad)
        assert not all_finite(broken.to(dtype)), bad


def test_a_float8_e4m3fn_tensor_is_checked_and_written(tmp_path):
    from safetensors.torch import load_file

    from evo_merge.weights.dtypes import all_finite

    tensor = torch.tensor([1.0, 448.0, -2.0]).to(torch.float8_e4m3fn)
    assert all_finite(tensor) and not all_finite(torch.tensor([float("nan"), 1.0]).to(torch.float8_e4m3fn))
    out = write_model_folder(tmp_path / "m", [("w", tensor)])
    assert torch.equal(load_file(out / "model.safetensors")["w"].float(), tensor.float())
