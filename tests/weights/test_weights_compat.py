"""Endpoint compatibility: every kind of mismatch is named, with both paths; castable ones pass."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evo_merge.errors import UserError
from evo_merge.weights import Checkpoint, check_compatible, open_checkpoints, write_model_folder
from evo_merge.zoo.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer


def _edited_copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _expect(paths: list[Path], pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as info:
        check_compatible(open_checkpoints(paths))
    message = str(info.value)
    assert "\n" not in message
    assert all(str(p) in message for p in paths[-2:] if p != paths[0]) and str(paths[0]) in message


def test_family_is_compatible(family):
    base, fts = family
    check_compatible(open_checkpoints([base, *fts]))


def test_floating_dtypes_may_differ(llama_family, tmp_path):
    base, (ft,) = llama_family
    with Checkpoint.open(ft) as src:
        tensors = ((n, src.tensor(n)) for n in src.names)
        write_model_folder(tmp_path / "bf16", tensors, copy_from=ft, dtype=torch.bfloat16)
    check_compatible(open_checkpoints([base, tmp_path / "bf16"]))


def test_model_type_mismatch(llama_family, gpt2_family):
    _expect([llama_family[0], gpt2_family[0]], r"config\.json 'model_type' differs .*'llama' vs 'gpt2'")


def test_architectures_mismatch(llama_family, tmp_path):
    base, _ = llama_family
    other = _edited_copy(base, tmp_path / "cls", architectures=["LlamaForSequenceClassification"])
    _expect([base, other], r"'architectures' differs")


def test_config_vocab_size_mismatch(llama_family, tmp_path):
    base, _ = llama_family
    other = _edited_copy(base, tmp_path / "v", vocab_size=123)
    _expect([base, other], r"'vocab_size' differs .*100 vs 123")


def test_tokenizer_vocab_size_mismatch(llama_family, tmp_path):
    base, _ = llama_family
    other = _edited_copy(base, tmp_path / "tok")
    build_char_tokenizer(DEFAULT_ALPHABET + "é").save_pretrained(other)
    _expect([base, other], r"tokenizer vocabulary size differs .*: 100 vs 101")


def test_tokenizer_same_size_other_tokens(llama_family, tmp_path):
    base, _ = llama_family
    other = _edited_copy(base, tmp_path / "tok")
    swapped = DEFAULT_ALPHABET.translate(str.maketrans("ab", "ba"))
    build_char_tokenizer(swapped).save_pretrained(other)
    # ids 0-3 are specials, then the alphabet: 'a' is id 4 in the base tokenizer, 5 in the other.
    _expect([base, other], r"tokenizers differ .*token 'a' has id 4 vs 5")


def test_tokenizer_check_skipped_when_one_side_has_none(llama_family, tmp_path):
    base, _ = llama_family
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(base / "config.json", bare)
    shutil.copy(base / "model.safetensors", bare)
    check_compatible(open_checkpoints([base, bare]))


def test_missing_tensor_either_way(llama_family, tmp_path):
    base, _ = llama_family
    with Checkpoint.open(base) as src:
        dropped = src.names[3]
        kept = [n for n in src.names if n != dropped]
        write_model_folder(tmp_path / "less", ((n, src.tensor(n)) for n in kept), copy_from=base)
    less = tmp_path / "less"
    _expect([base, less], rf"tensor '{re.escape(dropped)}' is in {re.escape(str(base))} but missing from")
    _expect([less, base], rf"tensor '{re.escape(dropped)}' is in {re.escape(str(base))} but missing from")


def _plain(path: Path, **tensors: torch.Tensor) -> Path:
    save_file(tensors, str(path))
    return path


def test_first_shape_mismatch_is_named(tmp_path):
    a = _plain(tmp_path / "a.safetensors", x=torch.zeros(2, 3), y=torch.zeros(4), z=torch.zeros(5))
    b = _plain(tmp_path / "b.safetensors", x=torch.zeros(2, 3), y=torch.zeros(5), z=torch.zeros(6))
    _expect([a, b], r"tensor 'y' has shape \[4\] vs \[5\]")


def test_non_float_dtype_mismatch(tmp_path):
    a = _plain(tmp_path / "a.safetensors", w=torch.zeros(2), ids=torch.zeros(3, dtype=torch.int64))
    b = _plain(tmp_path / "b.safetensors", w=torch.zeros(2, dtype=torch.float16), ids=torch.zeros(3, dtype=torch.int32))
    _expect([a, b], r"tensor 'ids' has dtype torch\.int64 vs torch\.int32")
    c = _plain(tmp_path / "c.safetensors", w=torch.zeros(2, dtype=torch.int64), ids=torch.zeros(3, dtype=torch.int64))
    _expect([a, c], r"tensor 'w' has dtype torch\.float32 vs torch\.int64")


def test_mismatch_in_a_later_endpoint_names_it(tmp_path):
    a = _plain(tmp_path / "a.safetensors", x=torch.zeros(2))
    b = _plain(tmp_path / "b.safetensors", x=torch.ones(2))
    c = _plain(tmp_path / "c.safetensors", x=torch.ones(3))
    with pytest.raises(UserError, match=r"a\.safetensors and .*c\.safetensors"):
        check_compatible(open_checkpoints([a, b, c]))
