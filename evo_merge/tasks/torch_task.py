"""A classification task on tensors: per-item correctness of a torch module's argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from evo_merge.errors import UserError
from evo_merge.tasks.base import ItemTable, score_series


class TorchClassificationTask(ItemTable):
    """Inputs `x` (N, ...) and integer labels `y` (N,); item i scores 1 if argmax(model(x_i)) == y_i."""

    def __init__(
        self,
        name: str,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        item_ids: Sequence[str] | None = None,
        scenarios: Sequence[str] | None = None,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(x) != len(y):
            raise UserError(f"task {name!r}: {len(x)} inputs but {len(y)} labels")
        ids = [str(i) for i in (item_ids if item_ids is not None else range(len(y)))]
        if len(ids) != len(y) or len(set(ids)) != len(ids):
            raise UserError(f"task {name!r}: item ids must be unique, one per input")
        self.name, self.x, self.y = name, x, y.long()
        self.batch_size, self.device = batch_size, torch.device(device)
        self._set_items(ids, scenarios)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, tokenizer: Any = None, item_ids: Sequence[str] | None = None
    ) -> pd.Series:
        """Correctness (0/1) per item; `tokenizer` is ignored (the protocol is shared with LMs)."""
        pos = torch.tensor(self._positions(item_ids), dtype=torch.long)
        param = next(model.parameters(), None)  # inputs follow the model (a GPU, bf16 evaluation)
        device = param.device if param is not None else self.device
        dtype = param.dtype if param is not None and self.x.is_floating_point() else None
        was_training = model.training
        model.eval()
        correct = []
        try:
            for chunk in pos.split(self.batch_size):
                logits = model(self.x[chunk].to(device=device, dtype=dtype))
                correct.append((logits.argmax(-1).cpu() == self.y[chunk]).float())
        finally:  # a model that failed on a batch is handed back as it came (training mode)
            model.train(was_training)
        hits = torch.cat(correct) if correct else torch.empty(0)
        return score_series(self.name, [self._ids[i] for i in pos.tolist()], hits.tolist())
