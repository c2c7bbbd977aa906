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
    special = {n for n in names if EMBEDDING_NAME.search(n)}
    expected = {n for n in names if n.rsplit(".", 2)[-2] in arch.embeddings + arch.head}
    assert special == expected and special


def test_embeddings_and_heads_are_kept_out_of_singular_vector_methods():
    import torch

    matrix = torch.zeros(4, 4)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight",
                 "embed_out.weight", "transformer.word_embeddings.weight"):
        assert not is_decomposed(matrix, name, {}), name
        assert is_decomposed(matrix, name, {"embeddings": True}), name
    for name in ("model.layers.0.mlp.up_proj.weight", "transformer.h.0.attn.c_attn.weight"):
        assert is_decomposed(matrix, name, {}), name


def test_routing_reads_each_architectures_mlp_input():
    phi = [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("fc2", "fc1")]
    assert routing_weights(phi) == {0: "model.layers.0.mlp.fc1.weight", 1: "model.layers.1.mlp.fc1.weight"}
    neox = [f"gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight" for i in range(3)]
    assert list(routing_weights(neox)) == [0, 1, 2]
    assert routing_weights(["model.layers.0.self_attn.q_proj.weight"]) == {}


def test_plain_networks_are_recognised_by_their_config():
    net = build_net({"arch": "cnn", "channels": [4], "classes": 2, "side": 4})
    assert architecture_of(net).name == "cnn" and hf_model_type(net) is None
    assert architecture_of({"arch": "resnet"}).name == "resnet"
    assert architecture_of({"model_type": "mamba"}) is None and architecture_of({}) is None
    assert len({a.name for a in ARCHITECTURES}) == len(ARCHITECTURES)
