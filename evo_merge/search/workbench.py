"""What candidates are built on in one process: the resident model, the in-place merger, the
endpoints' paths, and whatever a candidate kind keeps between candidates (e.g. MASS factors).

The evaluator scores the module a kind builds here; export reads the same paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.storage import Storage
from evo_merge.weights import heads, load_model_folder
from evo_merge.weights.devices import resolve_device
from evo_merge.weights.dtypes import model_dtype
from evo_merge.weights.references import open_reference, resolve_reference


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

    adapters: bool = False  # a LoRA adapter is folded into some input: only the merger sees it
    model_names: list[str] = field(default_factory=list)  # the models as recipes name them (Hub id@commit)

    @classmethod
    def open(cls, base: str | Path, models: list[str | Path], *, device: str = "auto", dtype: str = "auto",
             storage: Storage = Storage(), root: Path | None = None) -> Workbench:
        """Load the base as the resident module and the task vectors into the in-place merger.
        `base` and `models` are folders or references as recipes write them (Hub id@commit,
        `+adapter`), resolved here so that every process (a dask worker too) resolves them alike:
        as a run stores them (`root` None: a relative name is a Hub id, whatever the working
        directory holds), or relative paths against `root`.
        `dtype` "auto": the module in the base's own dtype."""
        where = resolve_device(device)
        refs = [resolve_reference(str(m), root, key) for m, key in
                zip([base, *models], ["base_model", *(f"models.{i}" for i in range(len(models)))])]
        checkpoints = [open_reference(ref) for ref in refs]
        precision = model_dtype(dtype, checkpoints[0])
        # an endpoint's own head where the base ties its head to its embedding: the module holds both
        untie = bool(heads.heads_to_untie(checkpoints[0], checkpoints[1:]))
        # loaded in its dtype as transformers loads it, as a user loads a pick: `.to(dtype)` would also
        # narrow float32 buffers transformers keeps (RoPE's inv_freq), and score another model
        module, tokenizer = load_model_folder(refs[0].path, dtype=precision, untie=untie)
        module.to(device=where)
        merger = InPlaceMerger(module, checkpoints[0], checkpoints[1:], device=where, storage=storage)
        return cls(refs[0].path, [r.path for r in refs[1:]], where, precision, module, tokenizer, merger,
                   storage=storage, adapters=any(r.lora is not None for r in refs),
                   model_names=[r.name for r in refs[1:]])
