"""Write merge candidates straight into one resident torch module, without disk I/O.

The search builds thousands of candidates from the same endpoints. This holds the base and the
task vectors once (on the evaluation device), caches coefficient-free pieces (TSV-M's
orthogonalised factors are computed once per model, not per candidate), and overwrites the
module's parameters in place. It runs exactly the per-tensor code of the file path, so a
candidate written here equals the model `evo-merge merge` writes from its recipe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from evo_merge.errors import UserError
from evo_merge.merge.plan import merge_tensor
from evo_merge.merge.registry import combine_pieces, get_method
from evo_merge.weights import Checkpoint, check_compatible


class InPlaceMerger:
    def __init__(
        self,
        module: nn.Module,
        base: Checkpoint,
        endpoints: Sequence[Checkpoint],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        check_compatible([base, *endpoints])
        self.module = module
        self.dtype = dtype
        self.n_models = len(endpoints)
        targets = module.state_dict(keep_vars=True)
        device = torch.device(device) if device is not None else next(module.parameters()).device
        self._targets: dict[str, torch.Tensor] = {}
        self._base: dict[str, torch.Tensor] = {}
        self._deltas: dict[str, list[torch.Tensor]] = {}
        for name in base.names:
            if name not in targets:
                raise UserError(f"{base.path}: tensor {name} has no counterpart in the {type(module).__name__} module")
            if targets[name].shape != torch.Size(base.shape(name)):
                raise UserError(f"tensor {name}: checkpoint shape {tuple(base.shape(name))} "
                                f"!= module shape {tuple(targets[name].shape)}")
            if not base.dtype(name).is_floating_point:
                with torch.no_grad():
                    targets[name].copy_(base.tensor(name))
                continue
            theta0 = base.tensor(name, dtype).to(device)
            self._targets[name] = targets[name]
            self._base[name] = theta0
            self._deltas[name] = [ep.tensor(name, dtype).to(device) - theta0 for ep in endpoints]
        self._pieces: dict[tuple, dict[str, list[torch.Tensor]]] = {}

    def _pieces_for(self, method, params: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        key = (method.name, *(repr(params[k]) for k in method.piece_params))
        if key not in self._pieces:  # pieces that are the task vectors themselves share their storage
            self._pieces[key] = {
                name: method.pieces(self._base[name], self._deltas[name], params, name) for name in self._base
            }
        return self._pieces[key]

    def _merged(
        self, method: str, weights: Sequence[float], params: Mapping[str, Any] | None, into_module: bool
    ) -> Iterator[tuple[str, torch.Tensor]]:
        m = get_method(method)
        resolved = m.resolve(params, self.n_models)
        weights = [float(w) for w in weights]
        if len(weights) != self.n_models:
            raise UserError(f"expected {self.n_models} weights, got {len(weights)}")
        pieces = self._pieces_for(m, resolved) if m.pieces is not None else None
        for name, theta0 in self._base.items():
            if pieces is None:
                yield name, merge_tensor(m, theta0, self._deltas[name], weights, resolved, name)
                continue
            target = self._targets[name]
            direct = into_module and target.dtype == self.dtype and target.device == theta0.device
            yield name, combine_pieces(theta0, pieces[name], weights, m.scale(weights, resolved),
                                       out=target if direct else None)

    def tensors(
        self, method: str, weights: Sequence[float], params: Mapping[str, Any] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The candidate's merged tensors (compute dtype), one at a time, without touching the module."""
        return self._merged(method, weights, params, into_module=False)

    @torch.no_grad()
    def apply(self, method: str, weights: Sequence[float], params: Mapping[str, Any] | None = None) -> nn.Module:
        """Write the candidate into the module's parameters and return the module."""
        for name, merged in self._merged(method, weights, params, into_module=True):
            target = self._targets[name]
            if merged is not target:
                target.copy_(merged)
        return self.module

    def clear_cache(self) -> None:
        """Drop cached pieces (e.g. between search phases that use different methods)."""
        self._pieces.clear()
