"""Reading checkpoints: HF folders (single, sharded), bare state dicts, pickle opt-in, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evo_merge.errors import UserError
from evo_merge.weights import DTYPES, Checkpoint, open_checkpoints, parse_dtype, write_model_folder


def _state(path: Path) -> dict[str, torch.Tensor]:
    """What transformers itself reads from the folder: the independent expectation."""
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _assert_matches(ckpt: Checkpoint, state: dict[str, torch.Tensor]) -> None:
    for name in ckpt.names:
        expected = state[name]
        assert ckpt.shape(name) == tuple(expected.shape)
        assert ckpt.dtype(name) == expected.dtype
        assert torch.equal(ckpt.tensor(name), expected), name


def test_reads_single_file_folder(family):
    base, _ = family
    with Checkpoint.open(base) as ckpt:
        assert ckpt.folder == base and ckpt.config["model_type"] in ("llama", "gpt2")
        assert len(ckpt) == len(ckpt.names) == len(set(ckpt.names)) > 0
        assert ckpt.names[0] in ckpt and "nope" not in ckpt
        _assert_matches(ckpt, _state(base))
        assert [p.name for p in ckpt.tokenizer_files()] == ["tokenizer.json", "tokenizer_config.json"]
        expected_bytes = sum(t.numel() * 4 for t in (ckpt.tensor(n) for n in ckpt.names))
        assert ckpt.num_bytes() == expected_bytes


@pytest.mark.parametrize("writer", ["transformers", "evo_merge"])
def test_reads_sharded_folder(family, tmp_path, writer):
    base, _ = family
    out = tmp_path / "sharded"
    if writer == "transformers":
        AutoModelForCausalLM.from_pretrained(base).save_pretrained(out, max_shard_size="20KB")
    else:
        with Checkpoint.open(base) as src:
            write_model_folder(out, ((n, src.tensor(n)) for n in src.names), max_shard_bytes=20_000)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
    with Checkpoint.open(out) as ckpt, Checkpoint.open(base) as single:
        assert sorted(ckpt.names) == sorted(single.names)
        for name in single.names:
            assert torch.equal(ckpt.tensor(name), single.tensor(name))
    # The index file itself is an accepted path too.
    assert len(Checkpoint.open(out / "model.safetensors.index.json")) == len(single)


def test_bare_safetensors_state_dict_of_plain_module(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    module.register_buffer("steps", torch.tensor([3, 257], dtype=torch.int64))  # 257 is 256 in bfloat16
    file = tmp_path / "mlp.safetensors"
    save_file(module.state_dict(), str(file))
    ckpt = Checkpoint.open(file)
    assert ckpt.folder is None and ckpt.config is None and ckpt.tokenizer_files() == []
    assert sorted(ckpt.names) == sorted(module.state_dict())
    _assert_matches(ckpt, module.state_dict())
    # dtype casts floating tensors only: integer buffers keep their values and dtype. (torch.equal
    # promotes dtypes, so it cannot see a cast: float16 [3., 257.] equals int64 [3, 257].)
    assert ckpt.tensor("0.weight", torch.bfloat16).dtype == torch.bfloat16
    for dtype in (torch.float16, torch.bfloat16):
        steps = ckpt.tensor("steps", dtype)
        assert steps.dtype == torch.int64 and steps.tolist() == [3, 257], dtype
    restored = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    restored.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    restored.load_state_dict({n: ckpt.tensor(n) for n in ckpt.names})
    x = torch.randn(3, 4)
    assert torch.equal(restored(x), module(x))


def test_floating_dtype_is_the_dtype_of_most_parameters_not_of_most_tensors(tmp_path):
    """"auto" evaluates and exports a model in the dtype most of its parameters are stored in:
    counting tensors instead, many small float32 norms and biases outvoted the large bfloat16
    matrices, and the model was loaded at twice its size."""
    small = {f"layers.{i}.norm.weight": torch.ones(8) for i in range(5)}  # 5 tensors, 40 parameters
    large = {f"layers.{i}.proj.weight": torch.zeros(16, 16, dtype=torch.bfloat16) for i in range(2)}  # 2, 512
    save_file({**small, **large}, str(tmp_path / "mixed.safetensors"))
    assert Checkpoint.open(tmp_path / "mixed.safetensors").floating_dtype == torch.bfloat16
    # integer tensors have no vote (float32 where nothing is floating)
    save_file({"steps": torch.zeros(100, dtype=torch.int64), "w": torch.zeros(3, dtype=torch.float16)},
              str(tmp_path / "ints.safetensors"))
    assert Checkpoint.open(tmp_path / "ints.safetensors").floating_dtype == torch.float16
    save_file({"steps": torch.zeros(100, dtype=torch.int64)}, str(tmp_path / "only-ints.safetensors"))
    assert Checkpoint.open(tmp_path / "only-ints.safetensors").floating_dtype == torch.float32


def test_auto_takes_a_base_in_a_dtype_no_campaign_names_in_float32(tmp_path):
    """A float64 base stopped a campaign at its start on "unknown dtype 'torch.float64'" (audit 118):
    "auto" takes it in float32, the widest dtype a campaign names; a named dtype is as named."""
    from evo_merge.weights.dtypes import model_dtype

    save_file({"w": torch.zeros(4, 4, dtype=torch.float64)}, str(tmp_path / "f64.safetensors"))
    base = Checkpoint.open(tmp_path / "f64.safetensors")
    assert base.floating_dtype == torch.float64
    assert model_dtype("auto", base) == torch.float32 and model_dtype("bf16", base) == torch.bfloat16


def test_a_head_stored_in_another_dtype_than_its_embedding_is_compared_by_value(tmp_path):
    """A tied config storing its head in float32 beside a bfloat16 embedding: a copy of it is the
    same values (tied), other values are a head of its own, whichever dtypes hold them."""
    embedding = torch.randn(6, 4).to(torch.bfloat16)
    save_file({"embed.weight": embedding, "copy.weight": embedding.float(),
               "own.weight": embedding.float() + 0.5, "wide.weight": torch.zeros(6, 5)},
              str(tmp_path / "heads.safetensors"))
    ckpt = Checkpoint.open(tmp_path / "heads.safetensors")
    assert ckpt.same_values("embed.weight", "copy.weight")
    assert not ckpt.same_values("embed.weight", "own.weight")
    assert not ckpt.same_values("embed.weight", "wide.weight")
    from evo_merge.weights.checkpoint import COMPARED_CHUNK

    large = torch.randn(COMPARED_CHUNK * 2 + 3).to(torch.bfloat16)  # compared a chunk at a time
    off = large.float()
    off[-1] += 1
    save_file({"embed.weight": large, "copy.weight": large.float(), "off.weight": off},
              str(tmp_path / "large.safetensors"))
    big = Checkpoint.open(tmp_path / "large.safetensors")
    assert big.same_values("embed.weight", "copy.weight") and not big.same_values("embed.weight", "off.weight")


def test_a_missing_head_is_read_from_the_input_embedding_nearest_its_name(tmp_path):
    """A checkpoint with two input embeddings (an encoder-decoder, a model with a second tower):
    each missing head stands in for the embedding that shares the longest prefix with it, not
    whichever embedding is stored first."""
    from evo_merge.weights.heads import source_name

    save_file({"speech.embed_tokens.weight": torch.zeros(4, 2), "text.embed_tokens.weight": torch.ones(4, 2),
               "text.layers.0.mlp.weight": torch.zeros(2, 2)}, str(tmp_path / "towers.safetensors"))
    ckpt = Checkpoint.open(tmp_path / "towers.safetensors")
    assert source_name(ckpt, "text.lm_head.weight") == "text.embed_tokens.weight"
    assert source_name(ckpt, "speech.lm_head.weight") == "speech.embed_tokens.weight"
    assert source_name(ckpt, "text.layers.0.mlp.weight") == "text.layers.0.mlp.weight"


def test_bare_model_safetensors_inside_hf_folder_finds_its_folder(llama_family):
    base, _ = llama_family
    ckpt = Checkpoint.open(base / "model.safetensors")
    assert ckpt.folder == base and ckpt.config["model_type"] == "llama"


def test_tensor_is_independent_copy(llama_family):
    base, _ = llama_family
    ckpt = Checkpoint.open(base)
    name = ckpt.names[0]
    ckpt.tensor(name).zero_()
    assert ckpt.tensor(name).abs().sum() > 0


def _save_pickle(model_dir: Path, out: Path, name: str = "pytorch_model.bin") -> dict[str, torch.Tensor]:
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    state = {k: v.clone() for k, v in state.items()}
    torch.save(state, out / name)
    return state


def test_pickle_refused_without_opt_in_then_loaded(llama_family, tmp_path):
    base, _ = llama_family
    state = _save_pickle(base, tmp_path / "pkl")
    with pytest.raises(UserError, match=r"pytorch_model\.bin.*--allow-pickle"):
        Checkpoint.open(tmp_path / "pkl")
    with pytest.raises(UserError, match="--allow-pickle"):
        Checkpoint.open(tmp_path / "pkl" / "pytorch_model.bin")
    ckpt = Checkpoint.open(tmp_path / "pkl", allow_pickle=True)
    assert ckpt.config["model_type"] == "llama"
    _assert_matches(ckpt, state)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pickle_plain_state_dict_files(tmp_path, suffix):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)}
    file = tmp_path / f"weights{suffix}"
    torch.save(state, file)
    with pytest.raises(UserError, match="--allow-pickle"):
        Checkpoint.open(file)
    _assert_matches(Checkpoint.open(file, allow_pickle=True), state)
    # Old (non-zip) serialisation cannot be memory-mapped but still loads.
    legacy = tmp_path / f"legacy{suffix}"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    _assert_matches(Checkpoint.open(legacy, allow_pickle=True), state)


class Payload:
    """Stands for arbitrary code in a pickle: weights_only must refuse to build it."""


def test_pickle_with_arbitrary_object_fails_weights_only(tmp_path):
    file = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": Payload()}, file)
    with pytest.raises(UserError, match=r"evil\.pt.*weights-only"):
        Checkpoint.open(file, allow_pickle=True)


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"list\.pt.*not a state dict"):
        Checkpoint.open(tmp_path / "list.pt", allow_pickle=True)
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(UserError, match=r"mixed\.pt.*'step'"):
        Checkpoint.open(tmp_path / "mixed.pt", allow_pickle=True)


def test_sharded_pickle_index(llama_family, tmp_path):
    base, _ = llama_family
    out = tmp_path / "pkl"
    out.mkdir()
    state = {k: v.clone() for k, v in _state(base).items()}
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in halves.items():
        torch.save({k: state[k] for k in keys}, out / file)
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match="--allow-pickle"):
        Checkpoint.open(out)
    _assert_matches(Checkpoint.open(out, allow_pickle=True), state)


def test_safetensors_preferred_over_pickle_in_same_folder(llama_family, tmp_path):
    base, _ = llama_family
    folder = tmp_path / "both"
    shutil.copytree(base, folder)
    torch.save({"x": torch.ones(1)}, folder / "pytorch_model.bin")
    assert sorted(Checkpoint.open(folder).names) == sorted(Checkpoint.open(base).names)


def test_bad_paths_name_the_culprit(llama_family, tmp_path):
    base, _ = llama_family
    with pytest.raises(UserError, match=r"not found: .*missing"):
        Checkpoint.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no weights in .*empty"):
        Checkpoint.open(tmp_path / "empty")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(base / "config.json", config_only)
    with pytest.raises(UserError, match=r"no weights in .*config_only"):
        Checkpoint.open(config_only)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"notes\.txt: not a weights file"):
        Checkpoint.open(tmp_path / "notes.txt")
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.ones(1)}, str(several / name))
    with pytest.raises(UserError, match="several .safetensors"):
        Checkpoint.open(several)


def _corrupt_copy(base: Path, folder: Path, file: str, content: bytes) -> Path:
    shutil.copytree(base, folder)
    (folder / file).write_bytes(content)
    return folder


def test_corrupt_files_name_the_file(llama_family, tmp_path):
    base, _ = llama_family
    bad = _corrupt_copy(base, tmp_path / "a", "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors"):
        Checkpoint.open(bad)
    truncated = (base / "model.safetensors").read_bytes()[:-100]
    bad = _corrupt_copy(base, tmp_path / "b", "model.safetensors", truncated)
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors"):
        Checkpoint.open(bad)
    bad = _corrupt_copy(base, tmp_path / "c", "config.json", b"{oops")
    with pytest.raises(UserError, match=r"config\.json: not valid JSON"):
        Checkpoint.open(bad)
    bad = _corrupt_copy(base, tmp_path / "d", "tokenizer.json", b"{}")
    with pytest.raises(UserError, match=r"tokenizer\.json: not a readable tokenizer"):
        Checkpoint.open(bad).tokenizer_vocab()


def test_broken_index_names_the_culprit(llama_family, tmp_path):
    base, _ = llama_family
    out = tmp_path / "sharded"
    with Checkpoint.open(base) as src:
        write_model_folder(out, ((n, src.tensor(n)) for n in src.names), max_shard_bytes=20_000)
    index_file = out / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    good = index_file.read_text()

    index_file.write_text("[1, 2")
    with pytest.raises(UserError, match=r"index\.json: not valid JSON"):
        Checkpoint.open(out)
    index_file.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(UserError, match="no 'weight_map'"):
        Checkpoint.open(out)
    # a tensor of a shard holding others: the shard stays listed, so only the wrong mapping is left to find
    held = list(index["weight_map"].values())
    name, shard = next((n, f) for n, f in index["weight_map"].items() if held.count(f) > 1)
    other = next(f for f in index["weight_map"].values() if f != shard)
    index_file.write_text(json.dumps({"weight_map": {**index["weight_map"], name: other}}))
    with pytest.raises(UserError, match=f"tensor '{name}'.*does not hold it"):
        Checkpoint.open(out)
    index_file.write_text(good)
    (out / shard).unlink()
    with pytest.raises(UserError, match=f"lists shard {shard}, which is missing"):
        Checkpoint.open(out)


def test_a_tensor_a_shard_holds_outside_its_index_is_read_as_transformers_reads_it(llama_family, tmp_path):
    """A tensor left out of the index was dropped (a merge never mixed it; the scored module had it
    from the shard, as transformers loads every tensor of every listed shard); one in two shards is refused."""
    from transformers import AutoModelForCausalLM

    base, _ = llama_family
    out = tmp_path / "sharded"
    with Checkpoint.open(base) as src:
        write_model_folder(out, ((n, src.tensor(n)) for n in src.names), max_shard_bytes=20_000)
    shutil.copy(base / "config.json", out / "config.json")
    index_file = out / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    left_out = "model.norm.weight"
    shard = index["weight_map"].pop(left_out)
    index_file.write_text(json.dumps(index))
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()[left_out]
    with Checkpoint.open(out) as checkpoint, Checkpoint.open(base) as original:
        assert left_out in checkpoint.names
        assert torch.equal(checkpoint.tensor(left_out), loaded) and torch.equal(loaded, original.tensor(left_out))
    other = next(f for f in index["weight_map"].values() if f != shard)
    weights = load_file(out / other)
    save_file({**weights, left_out: loaded}, out / other, metadata={"format": "pt"})
    with pytest.raises(UserError, match=f"tensor '{left_out}' is stored in two shards, "):
        Checkpoint.open(out)


@pytest.mark.parametrize("where", ["absolute", "parent", "subfolder", "not weights"])
def test_a_shard_name_that_is_not_a_weights_file_beside_the_index_is_refused(llama_family, tmp_path, where):
    """A shard elsewhere would be read although the folder does not hold it (nor its digest cover it)."""
    base, _ = llama_family
    model = tmp_path / "model"
    shutil.copytree(base, model)
    shard = model / "model.safetensors"
    name = {"absolute": str(tmp_path / "elsewhere.safetensors"), "parent": "../elsewhere.safetensors",
            "subfolder": "shards/model.safetensors", "not weights": "model.dat"}[where]
    target = (model / name).resolve()
    target.parent.mkdir(exist_ok=True)
    shard.rename(target)
    with safe_open(target, "pt") as handle:
        names = list(handle.keys())  # noqa: SIM118 (a safetensors handle, not a dict)
    index_file = model / "model.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, name)}))
    with pytest.raises(UserError, match=f"{index_file}: shard {name!r} is not the name of a weights file"):
        Checkpoint.open(model)


def test_unknown_tensor_name(llama_family):
    with pytest.raises(UserError, match=r"tensor 'nope' not found in .*base"):
        Checkpoint.open(llama_family[0]).tensor("nope")


def test_open_checkpoints_keeps_order(llama_family):
    base, (ft,) = llama_family
    assert [c.path for c in open_checkpoints([ft, base])] == [ft, base]


def test_parse_dtype():
    assert parse_dtype(None) is None
    assert parse_dtype("bf16") is parse_dtype("BFloat16") is parse_dtype(torch.bfloat16) is torch.bfloat16
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("torch.float32") is torch.float32
    assert set(DTYPES) == {"float32", "bfloat16", "float16"}
    with pytest.raises(UserError, match=r"unknown dtype 'int8'; choose one of float32, bfloat16, float16"):
        parse_dtype("int8")
    with pytest.raises(UserError, match="unknown dtype"):
        parse_dtype(torch.int64)


def test_a_weights_link_to_a_missing_blob_is_named_as_such(tmp_path):
    """A Hub cache snapshot whose blob was deleted said "no weights … expected model.safetensors",
    beside a model.safetensors that is there, as a broken link."""
    from evo_merge.weights.checkpoint import weight_files

    (tmp_path / "model.safetensors").symlink_to(tmp_path / "blobs" / "0a1b")
    with pytest.raises(UserError, match=r"model.safetensors is a link to a missing file .*blobs/0a1b"):
        weight_files(tmp_path)


class _Smuggled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this object would create the marker folder
        import os

        return (os.mkdir, (str(self.marker),))


def test_a_pickle_smuggling_code_is_refused_naming_what_it_holds_not_suggesting_to_unblock_it(tmp_path):
    """The refusal quoted torch's first paragraph, which says re-running with `weights_only=False` "will
    likely succeed": the advice such a file is made for. What was refused came 1,000 characters later."""
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2), "x": _Smuggled(marker)}, tmp_path / "weights.pt")
    with pytest.raises(UserError) as caught:
        Checkpoint.open(tmp_path / "weights.pt", allow_pickle=True)
    message = str(caught.value)
    assert "cannot load as a weights-only pickle" in message and "GLOBAL posix.mkdir" in message, message
    assert "weights_only" not in message and "\n" not in message and len(message) < 400, message
    assert not marker.exists()


def test_a_plain_pickle_is_refused_without_torch_s_protocol_warning_above_the_line(tmp_path):
    """A file written by `pickle.dumps` (protocol 4, not torch's 2): torch warned with its own source
    line above the one-line refusal."""
    import pickle
    import warnings

    marker = tmp_path / "code-ran"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Smuggled(marker)}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="weights-only pickle"):
        warnings.simplefilter("always")
        Checkpoint.open(tmp_path / "pytorch_model.bin", allow_pickle=True)
    assert not [w for w in caught if "pickle protocol" in str(w.message)] and not marker.exists()


def test_a_folder_with_model_safetensors_and_an_index_is_read_as_transformers_reads_it(llama_family, tmp_path):
    """transformers leaves the former model.safetensors when a model is saved again in shards into its
    folder, and reads that file: the merger read the shards, so it merged weights nobody scored."""
    base, (ft,) = llama_family
    folder = tmp_path / "both"
    shutil.copytree(base, folder)  # model.safetensors: the base
    sharded = AutoModelForCausalLM.from_pretrained(ft)
    sharded.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    for file in (tmp_path / "shards").glob("model-*.safetensors"):
        shutil.copy(file, folder / file.name)
    shutil.copy(tmp_path / "shards" / "model.safetensors.index.json", folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    checkpoint = Checkpoint.open(folder)
    assert checkpoint.names and all(torch.equal(checkpoint.tensor(n), loaded[n]) for n in checkpoint.names)
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        name = checkpoint.names[-1]
        assert torch.equal(checkpoint.tensor(name), f.get_tensor(name))


@pytest.mark.parametrize("quantized", ["gptq", "fp8 codes", "unknown dtype"])
def test_a_quantized_checkpoint_is_refused_not_merged_as_weights(llama_family, tmp_path, quantized):
    """GPTQ's packed integers and FP8 codes (their scales kept apart) were merged as if they were
    weights (FP8 up_proj at 448 where the weights are 0.17), exit 0."""
    base, _ = llama_family
    folder = shutil.copytree(base, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        state = {n: f.get_tensor(n) for n in f.keys()}
    if quantized == "gptq":
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
        match = r"q: a quantized checkpoint \(gptq in its config.json\)"
    elif quantized == "fp8 codes":  # as FP8 releases store them, without the config here
        name = next(n for n in state if n.endswith("up_proj.weight"))
        state[name] = state[name].to(torch.float8_e4m3fn)
        match = rf"tensor '{name}' is float8_e4m3fn, a quantized format"
    else:
        name = next(n for n in state if n.endswith("up_proj.weight"))
        state[name] = state[name].to(torch.float8_e4m3fn)
        match = "tensor .* is stored as F8_E8M0"
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors")
    if quantized == "unknown dtype":  # a dtype code torch's reader does not know (MXFP4 scales)
        raw = (folder / "model.safetensors").read_bytes().replace(b'"F8_E4M3"', b'"F8_E8M0"')
        (folder / "model.safetensors").write_bytes(raw)
    with pytest.raises(UserError, match=match):
        Checkpoint.open(folder)


def test_the_tokenizer_vocabulary_is_read_once_per_checkpoint(llama_family, tmp_path):
    """Every endpoint is compared with the reference's vocabulary: a 7 MB tokenizer.json (152k
    tokens) was parsed again for each, about 0.5 s an endpoint."""
    base, _ = llama_family
    copy = shutil.copytree(base, tmp_path / "base")
    checkpoint = Checkpoint.open(copy)
    vocab = checkpoint.tokenizer_vocab()
    assert vocab and checkpoint.tokenizer_vocab() is vocab
    (copy / "tokenizer.json").write_text("{not json")  # read again, it would be an error
    assert checkpoint.tokenizer_vocab() is vocab
