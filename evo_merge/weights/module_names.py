"""A loaded module's tensors under the names its checkpoint files give them.

transformers 5 renames some tensors as it loads a checkpoint (GPT-NeoX's `embed_out` is
`lm_head` in the module) and fuses others (a Mixtral layer's per-expert `w1`/`w3` become one 3-D
`experts.gate_up_proj`). What writes merged checkpoint tensors into a resident module (the
campaign's in-place merger, MASS) needs the module's tensor for each checkpoint name, as memory
it can write: transformers' own save-time mapping (`revert_weight_conversion`, the inverse of the
conversions the model was loaded with) is replayed on data-free meta copies, so it costs no
memory, and each name it yields is traced back to a module tensor or a view of one.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from evo_merge.errors import UserError

log = logging.getLogger(__name__)

EXPERT_TENSOR = re.compile(r"\.experts\.\d+\.")  # a mixture of experts stored one expert at a time


@dataclass
class ModuleTensors:
    """`writable`: checkpoint name -> the module's tensor (or a view of it) holding exactly that
    tensor; `fused`: checkpoint names the module holds only inside a tensor it built from several
    (transformers' converters), which no in-place write of one checkpoint tensor can reach."""

    writable: dict[str, torch.Tensor]
    fused: set[str] = field(default_factory=set)

    def whole(self) -> dict[str, torch.Tensor]:
        """The writable names the module holds as whole tensors of their own (not slices of one):
        what can be swapped rather than written into (`tensor.data = ...`)."""
        return {name: tensor for name, tensor in self.writable.items() if tensor._base is None}


def module_tensors(module: nn.Module) -> ModuleTensors:
    """The module's tensors by checkpoint name (`ModuleTensors`). A module that is not a
    transformers model, or whose conversions cannot be replayed, is named as its state dict names it."""
    own = module.state_dict(keep_vars=True)
    reverted = _checkpoint_layout(module, own)
    if reverted is None:
        return ModuleTensors(dict(own))
    meta, by_meta = reverted
    writable: dict[str, torch.Tensor] = {}
    fused: set[str] = set()
    for name, shadow in meta.items():
        if id(shadow) in by_meta:  # the module's tensor itself, renamed or not
            writable[name] = own[by_meta[id(shadow)]]
        elif shadow._base is not None and id(shadow._base) in by_meta:  # a slice of one: the same slice of it
            whole = own[by_meta[id(shadow._base)]]
            offset = whole.storage_offset() + shadow.storage_offset() - shadow._base.storage_offset()
            writable[name] = whole.as_strided(shadow.size(), shadow.stride(), offset)
        else:
            fused.add(name)
    return ModuleTensors(writable, fused)


def _checkpoint_layout(module: nn.Module,
                       own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[int, str]] | None:
    """(checkpoint name -> meta tensor, id of each meta tensor that stands for a module tensor ->
    that tensor's state-dict name), or None where transformers has nothing to revert."""
    transformers = sys.modules.get("transformers")  # a plain network: never imports it
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return None
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without load-time conversions: names are the checkpoint's
        return None
    shadows: dict[int, torch.Tensor] = {}  # one meta copy per distinct tensor: a tied head stays its embedding
    by_meta: dict[int, str] = {}
    meta: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if id(tensor) not in shadows:
            shadows[id(tensor)] = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype,
                                                      device="meta")
            by_meta[id(shadows[id(tensor)])] = name
        meta[name] = shadows[id(tensor)]
    try:
        with torch.no_grad():
            return revert_weight_conversion(module, meta), by_meta
    except Exception as exc:  # noqa: BLE001 (a conversion that cannot run on meta tensors): the module's own names
        log.debug("transformers' checkpoint names could not be derived for %s: %s", type(module).__name__, exc)
        return None


def fused_tensors(folder: Path, names: Iterable[str]) -> set[str]:
    """The checkpoint names (`names`, of the model in `folder`) that transformers holds only fused
    with others once loaded (`ModuleTensors.fused`), found on a model built from config.json on the
    meta device: before any weight is read (`plan`). Looked for only where experts are stored one
    at a time, the layout transformers fuses."""
    names = list(names)
    if not any(EXPERT_TENSOR.search(name) for name in names):
        return set()
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with torch.device("meta"):
            module = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 (a config transformers cannot build): the loading itself says why
        log.debug("no meta model for %s: %s", folder, exc)
        return set()
    return module_tensors(module).fused & set(names)


def fused_error(folder: Path, name: str, holder: str) -> UserError:
    """Why a campaign cannot search these models (`holder`: the module, as its class names it)."""
    return UserError(f"{folder}: tensor {name} is held by {holder} only fused with others (transformers joins "
                     "them as it loads the model, as it does a mixture of experts' experts), where a campaign "
                     "cannot write it in place; `evo-merge merge` merges these models file to file")
