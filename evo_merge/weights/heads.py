"""Tied embeddings: which stored tensor an output head is read from, in every input of a merge.

A model with tied embeddings computes its logits with its input embedding. Its checkpoint usually
stores no head (Llama-3.2-1B/3B, Qwen2.5 up to 3B, Gemma), sometimes a copy of the embedding
(some trainers save one although the config ties it), and a fine-tune of it may have untied and
stored a head of its own (the "3.6B" Llama-3.2-3B fine-tunes). The file merge, the campaign's
in-place merger and MASS read heads by these rules, kept here once:

- a head a model does not store is its input embedding (as transformers and mergekit read it);
- a head stored by a model whose config ties it is a copy of that embedding, not a head of its own,
  where it holds the embedding's values; one that differs is the model's own head (transformers
  5 then warns and leaves the two untied, and scores that head);
- a merge needs a head of its own (an untied output) when an input has one and the base does not.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

from evo_merge.weights.arch import OUTPUT_HEADS, TOKEN_EMBEDDINGS
from evo_merge.weights.checkpoint import Checkpoint

HEADS = tuple(f"{m}.weight" for m in sorted(OUTPUT_HEADS))  # output heads a tied model leaves out
INPUT_EMBEDDINGS = tuple(f"{m}.weight" for m in sorted(TOKEN_EMBEDDINGS))
# stored by checkpoints of older transformers versions, computed from the config on load (non-persistent)
BUFFERS = ("rotary_emb.inv_freq",)
_IN_BLOCK = re.compile(r"\.\d+\.")  # `model.layers.3.…`: a block's tensor, never a model's head


def _outside_blocks(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.endswith(suffixes) and not _IN_BLOCK.search(name)


def is_head(name: str) -> bool:
    return _outside_blocks(name, HEADS)


def ties_embeddings(checkpoint: Checkpoint) -> bool:
    """Whether the model's head is its input embedding, as transformers loads it: its config says
    so (`tie_word_embeddings`, or where the config leaves it out, as the Hub's GPT-2 and Gemma
    configs do, the default of its model type's config class: GPT-2, Gemma, T5 tied; Llama,
    Qwen2 not), and a head it stores holds the embedding's values."""
    config = checkpoint.config or {}
    if "tie_word_embeddings" in config:
        tied = config["tie_word_embeddings"] is True
    else:
        model_type = config.get("model_type")
        tied = isinstance(model_type, str) and _tied_by_default(model_type)
    stored = ((n, embedding) for n in checkpoint.names if is_head(n) and (embedding := _embedding(checkpoint, n)))
    return tied and all(checkpoint.same_values(head, embedding) for head, embedding in stored)


@functools.cache
def _tied_by_default(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]().tie_word_embeddings is True
    except (KeyError, TypeError, ValueError):  # a type this transformers does not know: its code decides, unread
        return False


def is_own_head(checkpoint: Checkpoint, name: str) -> bool:
    """Whether `name` is an output head the model stores as its own (not a tied copy)."""
    return is_head(name) and name in checkpoint and not ties_embeddings(checkpoint)


def is_buffer(name: str) -> bool:
    """A buffer some checkpoints store and a model computes when it loads (`BUFFERS`): no weight."""
    return name.endswith(BUFFERS)


def merged_names(checkpoint: Checkpoint) -> list[str]:
    """The model's tensors, without a head it stores as a copy of its tied embedding, nor a buffer
    (`is_buffer`: one endpoint storing RoPE's `inv_freq` and another not is no mismatch)."""
    return [n for n in checkpoint.names if not (is_head(n) and ties_embeddings(checkpoint)) and not is_buffer(n)]


def source_name(checkpoint: Checkpoint, name: str) -> str:
    """The stored tensor to read for `name`: itself, or for a head the model does not store, the
    input embedding that stands in for it (the one nearest the head's own prefix)."""
    if name in checkpoint or not is_head(name):
        return name
    return _embedding(checkpoint, name) or name


def _embedding(checkpoint: Checkpoint, head: str) -> str | None:
    """The input embedding that stands in for `head` (the one nearest its prefix); None if none."""
    tied = [n for n in checkpoint.names if _outside_blocks(n, INPUT_EMBEDDINGS)]
    return max(tied, key=lambda n: len(os.path.commonprefix([n, head]))) if tied else None


def heads_to_untie(base: Checkpoint, endpoints: Sequence[Checkpoint]) -> list[str]:
    """Heads that endpoints have of their own where the base has none: merging them needs an
    untied output, whose head starts from the base's embedding."""
    names = set(merged_names(base))
    return list(dict.fromkeys(n for ep in endpoints for n in ep.names if n not in names and is_own_head(ep, n)))


def merge_targets(base: Checkpoint, endpoints: Sequence[Checkpoint]) -> list[str]:
    """The tensors a merge of `endpoints` into `base` writes, in the base's order: the base's own,
    then the heads to untie. Read each from checkpoint c as `source_name(c, name)`."""
    return [*merged_names(base), *heads_to_untie(base, endpoints)]
