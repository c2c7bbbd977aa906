"""The weights digest a run folder records: it covers what a checkpoint of the reference reads."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from evo_merge.weights import Checkpoint, write_model_folder
from evo_merge.weights.digest import weights_digest
from evo_merge.weights.references import ModelRef


def test_the_digest_covers_the_shards_of_an_index_given_as_the_path(llama_family, tmp_path):
    base, _ = llama_family
    with Checkpoint.open(base) as src:
        write_model_folder(tmp_path / "m", ((n, src.tensor(n)) for n in src.names), max_shard_bytes=20_000)
    ref = ModelRef("m", tmp_path / "m" / "model.safetensors.index.json")
    before = weights_digest(ref)
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    tensors = load_file(shard)
    save_file({k: -v for k, v in tensors.items()}, shard)  # same names and sizes, other weights
    assert weights_digest(ref) != before


def test_the_digest_covers_a_lora_adapters_config(llama_family, tmp_path):
    base, _ = llama_family
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    torch.manual_seed(0)
    module = "base_model.model.model.layers.0.mlp.up_proj"
    save_file({f"{module}.lora_A.weight": torch.randn(2, 8), f"{module}.lora_B.weight": torch.randn(16, 2)},
              adapter / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["up_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    ref = ModelRef("m+a", base, adapter)
    before = weights_digest(ref)
    shutil.copy(adapter / "adapter_config.json", tmp_path / "saved.json")
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 40}))
    assert weights_digest(ref) != before
    shutil.copy(tmp_path / "saved.json", adapter / "adapter_config.json")
    assert weights_digest(ref) == before


def test_the_digest_sees_one_small_tensor_edited_where_the_samples_miss_it(tmp_path):
    """A norm scaled by hand in a file of 16 MB: the 64 evenly spaced samples miss its 256 bytes
    (the former digest stays the same), every tensor's ends do not."""
    from evo_merge.weights.digest import former_weights_digests

    torch.manual_seed(0)
    weights = {"model.embed.weight": torch.randn(2048, 2048), "model.norm.weight": torch.ones(64)}
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(weights, folder / "model.safetensors")
    ref = ModelRef("m", folder)
    before, former = weights_digest(ref), former_weights_digests(ref)[0]
    save_file({**weights, "model.norm.weight": weights["model.norm.weight"] * 1.5}, folder / "model.safetensors")
    assert former_weights_digests(ref)[0] == former  # what run folders recorded until now could not tell
    assert weights_digest(ref) != before


def test_the_digest_sees_a_tensor_edited_only_at_its_end(tmp_path):
    """Each tensor's first and last bytes are read: an edit of a tensor's last entries alone,
    where the evenly spaced samples miss it, changes the digest (reading only the first bytes
    passed every test, audit 147)."""
    from evo_merge.weights.digest import TENSOR_BYTES, former_weights_digests

    torch.manual_seed(0)
    tail = torch.randn(1024)  # 4 KiB: its last 16 bytes lie past its first TENSOR_BYTES
    assert tail.numel() * 4 > TENSOR_BYTES + 16
    weights = {"model.embed.weight": torch.randn(2048, 2048), "model.tail.weight": tail}
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(weights, folder / "model.safetensors")
    ref = ModelRef("m", folder)
    before, former = weights_digest(ref), former_weights_digests(ref)[0]
    edited = tail.clone()
    edited[-4:] += 1.0
    save_file({**weights, "model.tail.weight": edited}, folder / "model.safetensors")
    assert former_weights_digests(ref)[0] == former  # the samples miss it
    assert weights_digest(ref) != before
