"""Architecture tables: they describe the real models' tensor names, and name-based code reads them."""

from __future__ import annotations

import pytest

from evo_merge.mass.routing import routing_weights
from evo_merge.merge.subspace import is_decomposed
from evo_merge.weights import load_model_folder
from evo_merge.weights.arch import (
    ARCHITECTURES,
    EMBEDDING_NAME,
    GPT2,
    HF_ARCHS,
    LLAMA,
    architecture_of,
    hf_model_type,
    mlp_input_pattern,
)
from evo_merge.weights.nets import build_net


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_tables_match_the_tensor_names_of_real_models(arch, request):
    model, _ = load_model_folder(request.getfixturevalue(f"{arch.name}_family")[0])
    names = list(model.state_dict())
    assert architecture_of(model) is arch and architecture_of(model.config.to_dict()) is arch
    assert hf_model_type(model) == arch.name
    layers = model.config.num_hidden_layers
    assert sum(bool(mlp_input_pattern(arch).match(n)) for n in names) == layers * len(arch.mlp_inputs)
    assert all(any(n.startswith(f"{arch.blocks}.{i}.") for n in names) for i in range(layers))
    assert {n for n in names if EMBEDDING_NAME.search(n)} == {f"{m}.weight" for m in arch.embeddings + arch.head}


def test_embeddings_and_heads_are_kept_out_of_singular_vector_methods():
    import torch

    matrix = torch.zeros(4, 4)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight",
                 "embed_out.weight", "transformer.word_embeddings.weight"):
        assert not is_decomposed(matrix, name, {}), name
        assert is_decomposed(matrix, name, {"embeddings": True}), name
    for name in ("model.layers.0.mlp.up_proj.weight", "transformer.h.0.attn.c_attn.weight"):
        assert is_decomposed(matrix, name, {}), name


@pytest.mark.parametrize("arch", HF_ARCHS, ids=lambda a: a.name)
def test_every_table_s_embeddings_and_head_are_read_alike_by_the_merge(arch):
    """Slices, tied heads and vocabularies read the tables, not lists of their own (OPT's position
    table was missing from the slices' list): every embedding comes before the blocks, a token
    embedding and a head have a row per token, a position table has none, and a block's tensor is
    neither."""
    from evo_merge.merge.layers import is_pre_layer
    from evo_merge.merge.tokens import is_vocabulary
    from evo_merge.weights.heads import is_head

    for module in arch.embeddings:
        name = f"{module}.weight"
        assert is_pre_layer(name) and is_vocabulary(name) == (module not in arch.positions), name
    for module in arch.before_blocks:  # BLOOM's embedding norm: before the blocks, no row per token
        name = f"{module}.weight"
        assert is_pre_layer(name) and not (is_vocabulary(name) or is_head(name)), name
    for module in arch.head:
        name = f"{module}.weight"
        assert is_head(name) and is_vocabulary(name) and not is_pre_layer(name), name
    block = f"{arch.blocks}.0.{arch.mlp + '.' if arch.mlp else ''}{arch.mlp_inputs[0]}.weight"
    assert not (is_pre_layer(block) or is_vocabulary(block) or is_head(block)), block


def test_the_derived_name_sets_are_the_families_module_names():
    """Pinned literally (the test above reads its expectation from the tables it checks): a table
    that lost its `positions` would make GPT-2's `wpe` a vocabulary a tokenizer union permutes."""
    from evo_merge.merge.tokens import is_vocabulary
    from evo_merge.weights.arch import BEFORE_BLOCKS, OUTPUT_HEADS, POSITION_EMBEDDINGS, TOKEN_EMBEDDINGS

    assert TOKEN_EMBEDDINGS == {"embed_tokens", "wte", "embed_in", "word_embeddings"}
    assert POSITION_EMBEDDINGS == {"wpe", "embed_positions"} and OUTPUT_HEADS == {"lm_head", "embed_out"}
    assert BEFORE_BLOCKS == {"word_embeddings_layernorm", "project_in"}
    assert not is_vocabulary("transformer.wpe.weight") and not is_vocabulary("model.decoder.embed_positions.weight")
    # a module's own name, not a part of one
    for name in ("model.xlm_head.weight", "model.mywte.weight", "model.embed_tokens_extra.weight"):
        assert not EMBEDDING_NAME.search(name), name
    assert EMBEDDING_NAME.search("base_model.model.model.embed_tokens.weight")


def test_routing_reads_each_architectures_mlp_input():
    phi = [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("fc2", "fc1")]
    assert routing_weights(phi) == {0: "model.layers.0.mlp.fc1.weight", 1: "model.layers.1.mlp.fc1.weight"}
    neox = [f"gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight" for i in range(3)]
    assert list(routing_weights(neox)) == [0, 1, 2]
    opt = [f"model.decoder.layers.{i}.{p}.weight" for i in range(2) for p in ("fc1", "fc2")]  # no MLP module
    assert routing_weights(opt) == {0: "model.decoder.layers.0.fc1.weight", 1: "model.decoder.layers.1.fc1.weight"}
    assert routing_weights(["model.layers.0.self_attn.q_proj.weight"]) == {}


def test_plain_networks_are_recognised_by_their_config():
    net = build_net({"arch": "cnn", "channels": [4], "classes": 2, "side": 4})
    assert architecture_of(net).name == "cnn" and hf_model_type(net) is None
    assert architecture_of({"arch": "resnet"}).name == "resnet"
    assert architecture_of({"model_type": "mamba"}) is None and architecture_of({}) is None
    assert len({a.name for a in ARCHITECTURES}) == len(ARCHITECTURES)


def test_mass_routes_phi3_on_its_fused_gate_up_projection(tmp_path):
    """Phi-3's MLP input weight is the fused gate_up_proj: MASS builds on it, and with every task
    selected it answers as the TSV-M merge does."""
    import torch
    from transformers import AutoModelForCausalLM, Phi3Config

    from evo_merge.mass import MassModel
    from evo_merge.merge.inplace import InPlaceMerger
    from evo_merge.weights import Checkpoint

    config = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "base")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name in ("ft0", "ft1", "ft2"):
        model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in state.items()})
        model.save_pretrained(tmp_path / name)
    base, endpoints = tmp_path / "base", [tmp_path / f"ft{i}" for i in range(3)]

    names = Checkpoint.open(base).names
    assert routing_weights(names) == {i: f"model.layers.{i}.mlp.gate_up_proj.weight" for i in range(2)}
    mass = MassModel.from_checkpoints(base, endpoints, threshold=0.0, max_tasks=3)  # every task passes
    reference = AutoModelForCausalLM.from_pretrained(base).eval()
    InPlaceMerger(reference, Checkpoint.open(base), [Checkpoint.open(e) for e in endpoints]).apply("tsv", [1.0] * 3)
    ids = torch.randint(1, 64, (3, 7), generator=gen)
    assert mass.route(ids)[1] == [(0, 1, 2)] * 3
    assert torch.equal(mass(ids).logits, reference(ids).logits)
