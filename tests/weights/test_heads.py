"""Tied heads on families other than Llama, read by the names the architecture tables give
(`weights.heads` reads `OUTPUT_HEADS` and `TOKEN_EMBEDDINGS`): GPT-2's head stands in for its
`wte`, GPT-NeoX's `embed_out` for its `embed_in`, and a stored copy of the embedding is no head of
its own."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evo_merge.weights import Checkpoint
from evo_merge.weights.heads import is_own_head, merged_names, source_name, ties_embeddings


def _gpt2(tied):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                      tie_word_embeddings=tied))


def _neox(tied):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32, tie_word_embeddings=tied))


@pytest.mark.parametrize(("build", "head", "embedding"), [
    (_gpt2, "lm_head.weight", "transformer.wte.weight"),
    (_neox, "embed_out.weight", "gpt_neox.embed_in.weight"),
], ids=["gpt2", "gpt_neox"])
def test_a_tied_head_reads_its_embedding_and_a_stored_copy_is_no_head_of_its_own(tmp_path, build, head, embedding):
    torch.manual_seed(0)
    build(True).save_pretrained(tmp_path / "tied")  # transformers stores no head for a tied model
    assert head not in load_file(tmp_path / "tied" / "model.safetensors")
    with Checkpoint.open(tmp_path / "tied") as tied:
        assert ties_embeddings(tied) and source_name(tied, head) == embedding

    copy = tmp_path / "copy"  # a tied model that stores its head anyway, as a copy of the embedding
    build(True).save_pretrained(copy)
    weights = load_file(copy / "model.safetensors")
    save_file({**weights, head: weights[embedding].clone()}, copy / "model.safetensors", metadata={"format": "pt"})
    with Checkpoint.open(copy) as stored:
        assert ties_embeddings(stored) and not is_own_head(stored, head) and head not in merged_names(stored)

    own = tmp_path / "own"  # untied: a head of its own, merged as any tensor
    build(False).save_pretrained(own)
    assert json.loads((own / "config.json").read_text())["tie_word_embeddings"] is False
    with Checkpoint.open(own) as untied:
        assert not ties_embeddings(untied) and is_own_head(untied, head) and head in merged_names(untied)


def test_a_tied_head_reads_the_embedding_nearest_its_own_prefix():
    """A model of two stacks (a multimodal one: its vision tower's text embedding first by name): the
    head of `language_model` reads `language_model`'s embedding, not the first one listed."""
    from evo_merge.weights.heads import source_name

    names = ["a_tower.embed_tokens.weight", "language_model.model.embed_tokens.weight",
             "language_model.model.norm.weight"]
    checkpoint = type("Stored", (), {"names": names, "__contains__": lambda self, n: n in names})()
    assert source_name(checkpoint, "language_model.lm_head.weight") == "language_model.model.embed_tokens.weight"
