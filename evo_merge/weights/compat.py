"""Check that endpoints can be merged tensor by tensor, before any merge work starts.

Each checkpoint is compared with the first one; the first mismatch found is reported with both
paths, in an order that puts the root cause first (an architecture or vocabulary mismatch
explains the shape mismatches that follow from it). A model with tied embeddings is compared
through its embedding where another stores a head (`heads`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evo_merge.errors import UserError
from evo_merge.weights import heads
from evo_merge.weights.checkpoint import Checkpoint

ARCHITECTURE_KEYS = ("model_type", "architectures")
CONFIG_KEYS = (*ARCHITECTURE_KEYS, "vocab_size")


def check_compatible(checkpoints: Sequence[Checkpoint]) -> None:
    """Raise UserError naming the first mismatch between checkpoints[0] and any other."""
    reference = checkpoints[0]
    for other in checkpoints[1:]:
        _check_pair(reference, other)


def castable(first: torch.dtype, other: torch.dtype) -> bool:
    """Whether one tensor stored in these two dtypes in two inputs can be merged: floating dtypes
    may differ (bfloat16 and float32 inputs are normal, each cast to the computation dtype); an
    integer tensor must be the same in both (merging would cast it, or copy the first input's)."""
    return first == other or (first.is_floating_point and other.is_floating_point)


def check_architectures(checkpoints: Sequence[Checkpoint]) -> None:
    """Raise UserError if two configs name different architectures (vocabularies and depths may
    differ: recipes with slices or a tokenizer section handle those tensor by tensor)."""
    for other in checkpoints[1:]:
        _check_config(checkpoints[0], other, ARCHITECTURE_KEYS)


def _check_config(a: Checkpoint, b: Checkpoint, keys: Sequence[str]) -> None:
    if a.config is None or b.config is None:
        return
    for key in keys:
        if a.config.get(key) != b.config.get(key):
            raise UserError(f"config.json '{key}' differs between {a.path} and {b.path}: "
                            f"{a.config.get(key)!r} vs {b.config.get(key)!r}")


def _check_pair(a: Checkpoint, b: Checkpoint) -> None:
    pair = f"{a.path} and {b.path}"
    _check_config(a, b, CONFIG_KEYS)
    _check_vocab(a, b, pair)
    for first, second in ((a, b), (b, a)):  # a tied model's head is its embedding (`heads`)
        missing = next((n for n in heads.merged_names(first) if heads.source_name(second, n) not in second), None)
        if missing is not None:
            raise UserError(f"tensor {missing!r} is in {first.path} but missing from {second.path}")
    for name in heads.merged_names(a):
        in_a, in_b = heads.source_name(a, name), heads.source_name(b, name)
        if a.shape(in_a) != b.shape(in_b):
            raise UserError(f"tensor {name!r} has shape {list(a.shape(in_a))} vs {list(b.shape(in_b))} in {pair}")
        dtypes = a.dtype(in_a), b.dtype(in_b)
        if not castable(*dtypes):
            raise UserError(
                f"tensor {name!r} has dtype {dtypes[0]} vs {dtypes[1]} in {pair}; only floating dtypes can be cast"
            )


def check_vocabularies(checkpoints: Sequence[Checkpoint], hint: str = "") -> None:
    """Raise UserError where a checkpoint's tokenizer maps tokens to other ids than the first's
    (`hint` appended): their embedding rows are other tokens, which merging row by row averages."""
    for other in checkpoints[1:]:
        _check_vocab(checkpoints[0], other, f"{checkpoints[0].path} and {other.path}", hint)


def _check_vocab(a: Checkpoint, b: Checkpoint, pair: str, hint: str = "") -> None:
    vocab_a, vocab_b = a.tokenizer_vocab(), b.tokenizer_vocab()
    if vocab_a is None or vocab_b is None or vocab_a == vocab_b:
        return
    if len(vocab_a) != len(vocab_b):
        raise UserError(f"tokenizer vocabulary size differs between {pair}: {len(vocab_a)} vs {len(vocab_b)}{hint}")
    token = next(t for t in sorted(vocab_a, key=vocab_a.__getitem__) if vocab_b.get(t) != vocab_a[t])
    raise UserError(
        f"tokenizers differ between {pair}: token {token!r} has id {vocab_a[token]} vs {vocab_b.get(token)}{hint}"
    )
