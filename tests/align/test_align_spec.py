"""The specs are right: a random spec permutation leaves every network's outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_helpers import CONFIGS, trained_like

from evo_merge.align.builders import spec_for
from evo_merge.align.spec import apply_permutation, random_permutation
from evo_merge.zoo.tiny import make_tiny_causal_lm


def _permuted_copy(arch, model, seed):
    spec = spec_for(arch, model)
    state = model.state_dict()
    sizes = spec.sizes(spec.split(state))
    perms = random_permutation(spec, sizes, np.random.default_rng(seed))
    assert any((p != np.arange(len(p))).any() for p in perms.values())
    return apply_permutation(spec, state, perms), perms


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plain_net_invariance(name):
    net = trained_like(CONFIGS[name], seed=0)
    arch = CONFIGS[name]["arch"]
    state, _ = _permuted_copy(arch, net, seed=1)
    other = trained_like(CONFIGS[name], seed=5)
    other.load_state_dict(state)
    x = torch.randn(16, CONFIGS[name].get("in_dim", 64))
    with torch.no_grad():
        want, got = net(x), other(x)
    assert not torch.equal(net.state_dict()[next(iter(state))], state[next(iter(state))])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_lm_invariance(arch):
    model = make_tiny_causal_lm(arch, vocab_size=40, hidden=32, layers=2, heads=4, seed=0)
    state, perms = _permuted_copy(arch, model, seed=2)
    assert any((perms[g] != np.arange(len(perms[g]))).any() for g in perms if g.endswith(".qk"))
    other = make_tiny_causal_lm(arch, vocab_size=40, hidden=32, layers=2, heads=4, seed=9)
    other.load_state_dict(state)
    ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, other(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_first_input_and_head_classes_never_permuted():
    net = trained_like(CONFIGS["mlp"], seed=0)
    spec = spec_for("mlp", net)
    assert spec.axes["fcs.0.weight"][1] is None and spec.axes["fcs.3.weight"][0] is None
    lm = make_tiny_causal_lm("gpt2", vocab_size=40, seed=0)
    gspec = spec_for("gpt2", lm)
    assert gspec.axes["lm_head.weight"][0] is None and gspec.axes["transformer.wte.weight"][0] is None


def test_the_mean_of_aligned_folders_is_the_one_a_run_folder_recorded(tmp_path):
    """A campaign's `universe-mean` reference, built again where a run folder's `aligned/` was removed
    (its error's advice): it must equal the mean the folder recorded the digest of, the models summed
    in their own dtype; a float32 sum rounded once gave other bfloat16 bytes with three models, and
    the folder was refused for good (audit 108). An integer buffer is the first folder's."""
    from safetensors.torch import load_file

    from evo_merge.align.api import average_folders
    from evo_merge.weights import write_model_folder

    gen = torch.Generator().manual_seed(0)
    states = [{"w": (1 + 0.01 * torch.randn(64, 64, generator=gen)).to(torch.bfloat16),
               "steps": torch.tensor([i, 7])} for i in range(3)]
    folders = [write_model_folder(tmp_path / f"m{i}", iter(s.items())) for i, s in enumerate(states)]
    mean = load_file(average_folders(folders, tmp_path / "mean") / "model.safetensors")
    recorded = (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3  # as every earlier version built it
    assert mean["w"].dtype == torch.bfloat16 and torch.equal(mean["w"], recorded)
    assert not torch.equal(recorded, (sum(s["w"].float() for s in states) / 3).to(torch.bfloat16))
    assert torch.equal(mean["steps"], torch.tensor([0, 7]))


def _llama_with_biases(seed, **extra):
    """A tiny seeded Llama with `attention_bias`/`mlp_bias`; biases and norms made non-zero (HF starts
    them at 0/1, where a bias left unpermuted would go unnoticed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, attention_bias=True, mlp_bias=True, **extra,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize(
    "extra", [{}, {"tie_word_embeddings": True}, {"head_dim": 16}], ids=["untied", "tied", "head_dim16"]
)
def test_llama_with_biases_keeps_its_function_when_permuted_or_aligned(extra):
    """Llama with `attention_bias` and `mlp_bias` (also tied embeddings, head_dim != hidden/heads): a
    random spec permutation and weight matching to another init leave the logits as they were; an
    `o_proj.bias` (or any bias) left out of the residual permutation changes them (audit 134, F7)."""
    from evo_merge.align.api import align_models, aligned_states

    a, b = _llama_with_biases(0, **extra), _llama_with_biases(1, **extra)
    assert a.model.layers[0].self_attn.o_proj.bias is not None and a.model.layers[0].mlp.down_proj.bias is not None
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    state, _ = _permuted_copy("llama", a, seed=3)
    other = _llama_with_biases(7, **extra)
    other.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, a(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    spec = spec_for("llama", a)
    states = [a.state_dict(), b.state_dict()]
    aligned = aligned_states(spec, states, align_models(spec, states, "weight"))[1]
    other.load_state_dict(aligned)
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, b(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    o_bias = "model.layers.0.self_attn.o_proj.bias"
    assert not torch.equal(aligned[o_bias], states[1][o_bias])  # the residual stream did move
