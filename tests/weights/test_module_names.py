"""A module's tensors by checkpoint name: transformers renames (GPT-NeoX's head) and fuses
(a mixture of experts' experts) tensors as it loads them; what is written under a checkpoint name
must land where transformers' own save_pretrained reads that name back from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPTNeoXConfig, MixtralConfig

from evo_merge.errors import UserError
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.weights import Checkpoint, load_model_folder
from evo_merge.weights.module_names import module_tensors

GPT_NEOX = GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, tie_word_embeddings=False)
MIXTRAL = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2)


def family(tmp_path, config, n=2):
    """A base and `n` endpoints (the base plus seeded noise), saved as transformers saves them."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "base")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for i in range(n):
        model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in state.items()})
        model.save_pretrained(tmp_path / f"ft{i}")
    return tmp_path / "base", [tmp_path / f"ft{i}" for i in range(n)]


@pytest.mark.parametrize("config", [GPT_NEOX, MIXTRAL], ids=["gpt_neox", "mixtral"])
def test_what_is_written_under_a_checkpoint_name_is_saved_under_it(tmp_path, config):
    base, _ = family(tmp_path, config, n=0)
    module, _ = load_model_folder(base)
    tensors = module_tensors(module)
    stored = set(load_file(base / "model.safetensors"))
    assert set(tensors.writable) | tensors.fused == stored
    if config is GPT_NEOX:  # renamed as loaded: the head is `lm_head` in the module, `embed_out` on disk
        assert not tensors.fused and "lm_head.weight" in module.state_dict()
        assert tensors.writable["embed_out.weight"].data_ptr() == module.lm_head.weight.data_ptr()
    else:  # each expert's w2 is a slice of the fused down_proj; w1 and w3 are joined into gate_up_proj
        assert tensors.fused == {f"model.layers.{i}.block_sparse_moe.experts.{e}.w{w}.weight"
                                 for i in range(2) for e in range(3) for w in (1, 3)}
        assert "model.layers.1.block_sparse_moe.experts.2.w2.weight" in tensors.writable
    gen = torch.Generator().manual_seed(2)
    written = {name: torch.randn(t.shape, generator=gen) for name, t in tensors.writable.items()}
    with torch.no_grad():
        for name, values in written.items():
            tensors.writable[name].copy_(values)
    module.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    for name, values in written.items():
        assert torch.equal(saved[name], values), name


def test_a_campaign_merges_into_a_gpt_neox_module_as_the_files_add_up(tmp_path):
    """Pythia's head is `embed_out` on disk and `lm_head` in transformers 5's module: the in-place
    merger found no counterpart for it and every GPT-NeoX campaign stopped at its start."""
    base, endpoints = family(tmp_path, GPT_NEOX)
    module, _ = load_model_folder(base)
    InPlaceMerger(module, Checkpoint.open(base), [Checkpoint.open(e) for e in endpoints]).apply(
        "task_arithmetic", [0.5, 0.7])
    module.save_pretrained(tmp_path / "merged")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    theta0, (first, second) = load_file(base / "model.safetensors"), [load_file(e / "model.safetensors")
                                                                     for e in endpoints]
    for name, tensor in theta0.items():
        if not tensor.is_floating_point():
            continue
        expected = tensor + 0.5 * (first[name] - tensor) + 0.7 * (second[name] - tensor)
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(merged["embed_out.weight"], theta0["embed_out.weight"])


def test_a_mixture_of_experts_module_is_refused_naming_a_fused_tensor(tmp_path):
    base, endpoints = family(tmp_path, MIXTRAL)
    module, _ = load_model_folder(base)
    with pytest.raises(UserError, match=r"tensor model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight is held "
                                        r"by the MixtralForCausalLM module only fused with others"):
        InPlaceMerger(module, Checkpoint.open(base), [Checkpoint.open(e) for e in endpoints])


def test_plan_finds_the_fused_tensors_before_loading_any_weight(tmp_path):
    """`plan` (and `run` before it loads a model) builds the model on the meta device: the same
    tensors as the loaded module's, without reading a weight."""
    from evo_merge.search.preflight import _check_writable_in_place
    from evo_merge.weights.module_names import fused_tensors

    base, _ = family(tmp_path / "moe", MIXTRAL, n=0)
    names = list(load_file(base / "model.safetensors"))
    assert fused_tensors(base, names) == module_tensors(load_model_folder(base)[0]).fused != set()
    with pytest.raises(UserError, match=r"experts\.0\.w1\.weight is held by a transformers model of it only fused"):
        _check_writable_in_place(base)
    neox, _ = family(tmp_path / "neox", GPT_NEOX, n=0)
    assert fused_tensors(neox, load_file(neox / "model.safetensors")) == set()
    _check_writable_in_place(neox)
