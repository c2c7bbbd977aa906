"""The floating dtypes a user may choose for merge computation and for written weights."""

from __future__ import annotations

from typing import Any

import torch

from evo_merge.dtype_names import ALIASES, NAMES
from evo_merge.errors import UserError

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in NAMES}
AUTO = "auto"  # a model's own dtype


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype for a user-given name (or dtype); None stays None ("keep as stored")."""
    if name is None or isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    if key not in DTYPES:
        choices = ", ".join([*DTYPES, *ALIASES])
        raise UserError(f"unknown dtype {str(name)!r}; choose one of {choices}")
    return DTYPES[key]


def model_dtype(name: str, base: Any) -> torch.dtype:
    """A campaign's evaluation dtype: `name`, or for "auto" the dtype most of the base's floating
    parameters are stored in (`Checkpoint.floating_dtype`): bfloat16 for a bfloat16 model, which
    float32 would hold (and export) at twice the size."""
    return base.floating_dtype if name == AUTO else parse_dtype(name)


def dtype_name(dtype: torch.dtype) -> str:
    """The name HF configs use for a dtype (`torch.bfloat16` -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")
