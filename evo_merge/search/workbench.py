"""What candidates are built on in one process: the resident model, the in-place merger, the
endpoints' paths, and whatever a candidate kind keeps between candidates (e.g. MASS factors).

The evaluator scores the module a kind builds here; export reads the same paths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evo_merge.errors import UserError
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.storage import Storage
from evo_merge.weights import Checkpoint, parse_dtype


def load_model(folder: Path) -> tuple[torch.nn.Module, object | None]:
    """(module, tokenizer or None): an HF causal LM, or a plain network described by its config.json."""
    from evo_merge.tasks.scoring import load_causal_lm

    config = folder / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        return load_causal_lm(folder)
    from evo_merge.align.io import load_endpoint

    endpoint = load_endpoint(folder)
    if endpoint.module is None:
        raise UserError(f"{folder}: config.json does not say how to build the model (no model_type or arch)")
    return endpoint.module.eval(), None


def resolve_device(device: str) -> torch.device:
    """auto (cuda when available) | cpu | cuda | cuda:N; a GPU that is not there is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise UserError(f"device: {device} asked for, but torch sees {count} CUDA device(s)")
    return resolved


@dataclass
class Workbench:
    base: Path
    models: list[Path]
    device: torch.device
    dtype: torch.dtype
    module: torch.nn.Module
    tokenizer: Any
    merger: InPlaceMerger
    kept: dict[str, Any] = field(default_factory=dict)  # per-kind state, built on first use
    storage: Storage = Storage()  # how the merger and other kinds (MASS) keep what they hold

    @classmethod
    def open(cls, base: Path, models: list[Path], *, device: str = "auto", dtype: str = "float32",
             storage: Storage = Storage()) -> Workbench:
        """Load the base as the resident module and the task vectors into the in-place merger."""
        where, precision = resolve_device(device), parse_dtype(dtype)
        module, tokenizer = load_model(base)
        module.to(device=where, dtype=precision)
        merger = InPlaceMerger(module, Checkpoint.open(base), [Checkpoint.open(m) for m in models], device=where,
                               storage=storage)
        return cls(Path(base), [Path(m) for m in models], where, precision, module, tokenizer, merger,
                   storage=storage)
