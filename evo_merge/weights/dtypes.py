"""The floating dtypes a user may choose for merge computation and for written weights."""

from __future__ import annotations

from typing import Any

import torch

from evo_merge.dtype_names import NAMES, dtype_key, unknown_dtype
from evo_merge.errors import UserError

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in NAMES}
AUTO = "auto"  # a model's own dtype
SUMMED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what `isfinite` reads


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or Inf. A sum is non-finite whenever one of its terms
    is, and one pass of it is 3-4x cheaper than `isfinite` per entry (bf16); summed in float32 (a
    float16 tensor's own sum overflows past 65504), and read entry by entry only where the sum is
    not finite (a NaN, an infinity, or a sum of finite entries that overflowed). A float8 tensor is
    widened first: `isfinite` does not read float8_e4m3fn (writing one raised NotImplementedError)."""
    if tensor.dtype not in SUMMED:
        tensor = tensor.float()
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all())


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype for a user-given name (or dtype); None stays None ("keep as stored")."""
    if name is None or isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if (key := dtype_key(name)) is None:
        raise UserError(unknown_dtype(name))
    return DTYPES[key]


def model_dtype(name: str, base: Any) -> torch.dtype:
    """A campaign's evaluation dtype: `name`, or for "auto" the dtype most of the base's floating
    parameters are stored in (`Checkpoint.floating_dtype`): bfloat16 for a bfloat16 model, which
    float32 would hold (and export) at twice the size. A base in a floating dtype no campaign names
    (float64) is evaluated in float32, the widest one it names: a float64 base stopped a run at its
    start on "unknown dtype 'torch.float64'" (audit 118). Storage keeps it as it is (`storage_dtype`)."""
    dtype = storage_dtype(name, base)
    return dtype if dtype in DTYPES.values() else torch.float32


def storage_dtype(name: str, base: Any) -> torch.dtype:
    """The dtype `storage.dtype` keeps a base's tensors in, as a run records it: `name`, or for
    "auto" the base's own, float64 included (storage keeps each tensor in its checkpoints' widest
    dtype, `merge.storage.Storage`; only the evaluation module falls back to float32, `model_dtype`)."""
    return base.floating_dtype if name == AUTO else parse_dtype(name)


def dtype_name(dtype: torch.dtype) -> str:
    """The name HF configs use for a dtype (`torch.bfloat16` -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")
