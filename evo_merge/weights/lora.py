"""A checkpoint with a PEFT LoRA adapter folded in: W + (alpha / r) B A, one tensor at a time.

The adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`). Folding in directly keeps
the streaming merge lazy (peft would build the whole model) and needs no peft at run time.
Every adapter matrix and whole tensor is checked against the model's tensor shape when the
checkpoint opens.

Besides A/B matrices an adapter may hold whole tensors, which replace the model's before the
update is added (what peft's load and merge_and_unload give): `X.base_layer.weight`, saved for an
adapted embedding layer (save_embedding_layers), and `X.weight` of a `modules_to_save` module.
An adapter trained with `lora_bias` holds `X.lora_B.bias`, added to the layer's bias times the
same alpha / r (peft's merge; a layer without a bias is refused, as peft refuses it).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from typing import ClassVar

import regex
import torch

from evo_merge.errors import UserError
from evo_merge.weights import heads
from evo_merge.weights.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Checkpoint,
    SafetensorsFile,
    read_json_object,
)

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.(?!weight$|bias$)[^.]+)?(?:\.(?P<kind>weight|bias))?$")  # adapter name, then weight or bias


PATTERN_SECONDS = 1.0  # the most one module pattern of an adapter may take to match one module name
PEFT_LORA_ALPHA = 8  # peft's LoraConfig default, for a config that leaves lora_alpha out


def _number(value: object, where: str) -> float:
    """A config value that must be a number: a string or a boolean would fail in the arithmetic."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: expected a number, got {value!r}")
    return float(value)


@functools.cache
def _warn_once(line: str) -> None:
    """A campaign opens an adapter more than once (its plan, its models, each export): one line."""
    log.warning(line)


def _pattern_value(patterns: object, module: str, default: float, where: str) -> float:
    """peft's alpha_pattern: the value of the first key (a regular expression, as peft reads it)
    matching the end of the module name. The key is the adapter's, maybe a downloaded one's: a
    pattern that backtracks without end (`(.*.*.*)*Z`) would hang the merge, so each match has
    `PATTERN_SECONDS` (a real pattern takes microseconds)."""
    if not isinstance(patterns, dict):
        raise UserError(f"{where}: expected a mapping of module patterns to numbers, got {patterns!r}")
    for key, value in patterns.items():
        try:  # peft groups the key: `q|v` is one alternation
            matched = regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_SECONDS)
        except regex.error as exc:
            raise UserError(f"{where}: {key!r} is not a regular expression ({exc})") from None
        except TimeoutError:
            raise UserError(f"{where}: {key!r} took over {PATTERN_SECONDS:g} s to match module {module!r}: a "
                            "pattern that backtracks without end, refused") from None
        if matched:
            return _number(value, f"{where}.{key}")
    return default


class LoraCheckpoint(Checkpoint):
    """`Checkpoint` whose tensors include a LoRA adapter's update."""

    _updates: ClassVar[dict[str, tuple]] = {}  # none until an adapter is loaded
    _bias_updates: ClassVar[dict[str, torch.Tensor]] = {}

    @classmethod
    def open_with_adapter(cls, path: Path, adapter: Path, *, allow_pickle: bool = False) -> LoraCheckpoint:
        checkpoint = cls.open(path, allow_pickle=allow_pickle)
        checkpoint._load_adapter(adapter)
        return checkpoint

    def _load_adapter(self, adapter: Path) -> None:
        config_file, weights_file = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
        if not config_file.is_file() or not weights_file.is_file():
            raise UserError(f"{adapter}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (a PEFT LoRA adapter)")
        config = read_json_object(config_file, "a JSON object (a PEFT adapter config)")
        if config.get("peft_type", "LORA") != "LORA":
            raise UserError(f"{config_file}: peft_type {config.get('peft_type')!r} is not LORA")
        if config.get("use_dora"):
            raise UserError(f"{config_file}: a DoRA adapter (use_dora), which is not supported; only plain LoRA")
        self._check_trained_on(config.get("base_model_name_or_path"), config_file)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        whole: dict[str, str] = {}  # model tensor -> adapter key of the tensor replacing it
        weights = SafetensorsFile(weights_file)  # a corrupt file is one line naming it
        for key in weights.names():
            match = _KEY.match(key)
            if match is None:
                name = self._replaced(key, weights_file)
                if (shape := weights.meta(key)[0]) != self.shape(name):  # peft's load would refuse it too
                    raise UserError(f"{weights_file}: {key} has shape {list(shape)} but the model's {name} is "
                                    f"{list(self.shape(name))}")
                whole[name] = key
                continue
            parts = pairs.setdefault(match["module"], {})
            if match["kind"] == "bias" and match["part"] != "lora_B":  # peft's lora_bias is lora_B's alone
                raise UserError(f"{weights_file}: {key} is a bias of a LoRA matrix other than lora_B, which peft "
                                "never writes")
            parts["bias" if match["kind"] == "bias" else match["part"][-1]] = weights.load(key)
            parts["embedding"] = "embedding" in match["part"]
        if whole:
            replacements = _Replacements(weights, whole, {name: self.dtype(name) for name in whole})
            self._readers.update(dict.fromkeys(whole, replacements))
        if not pairs and not whole:  # merged, it would be the model itself, as if the adapter were applied
            raise UserError(f"{weights_file}: holds no LoRA matrices (lora_A/lora_B) and no tensors: an empty adapter")
        self._updates, self._bias_updates = {}, {}
        for module, parts in pairs.items():
            self._updates[f"{module}.weight"] = self._update(config, module, parts, weights_file)
            if "bias" in parts:
                self._bias_updates[f"{module}.bias"] = self._bias_update(module, parts, weights_file)

    def _check_trained_on(self, trained_on: object, config_file: Path) -> None:
        """Say so when the adapter names, as the model it was trained on, another folder on this
        machine: shapes shared by a family fold in without a word. A Hub id, or a path that is not
        here (the training machine's), cannot be compared, and says nothing."""
        if not isinstance(trained_on, str) or not trained_on or not Path(trained_on).is_dir():
            return
        folder = self.path if self.path.is_dir() else self.path.parent
        if Path(trained_on).resolve() != folder.resolve():
            _warn_once(f"{config_file}: the adapter was trained on {trained_on} (base_model_name_or_path) and "
                       f"is applied to {folder}")

    def _replaced(self, key: str, source: Path) -> str:
        """The model tensor a whole tensor of the adapter replaces (peft's names, less its prefixes)."""
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if name not in self and heads.is_head(name) and heads.ties_embeddings(self):
            raise UserError(f"{source}: {key} replaces the output head of {self.path}, whose head is its input "
                            "embedding (tied): peft unties them when it merges, which evo-merge does not; merge the "
                            "adapter with peft's merge_and_unload and give the merged folder")
        if name not in self:
            raise UserError(f"{source}: {key} is neither a LoRA A/B matrix nor a tensor of {self.path}")
        return name

    def _update(self, config: dict, module: str, parts: dict, source: Path) -> tuple:
        name = f"{module}.weight"
        if "A" not in parts or "B" not in parts:
            raise UserError(f"{source}: module {module} lacks its lora_A or lora_B matrix")
        if name not in self:
            raise UserError(f"{source}: adapts {name}, which {self.path} does not have")
        a, b = parts["A"], parts["B"]
        rank = a.shape[0]
        config_file = source.parent / ADAPTER_CONFIG
        alpha = _number(config.get("lora_alpha", PEFT_LORA_ALPHA), f"{config_file}: lora_alpha")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha, f"{config_file}: alpha_pattern")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        transpose = parts["embedding"] or bool(config.get("fan_in_fan_out"))  # peft's layouts
        shape = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        if b.shape[1] != rank or tuple(shape) != tuple(self.shape(name)):
            raise UserError(
                f"{source}: adapter for {name} has shape {list(shape)} (B {list(b.shape)} x A "
                f"{list(a.shape)}) but the model's tensor is {list(self.shape(name))}"
            )
        return a, b, scale, transpose

    def _bias_update(self, module: str, parts: dict, source: Path) -> torch.Tensor:
        """`lora_B.bias` times the module's scale, checked against the layer's bias."""
        name, scale = f"{module}.bias", self._updates[f"{module}.weight"][2]
        if name not in self:
            raise UserError(f"{source}: adds a bias to {module} (lora_bias), whose layer in {self.path} has none")
        if tuple(parts["bias"].shape) != tuple(self.shape(name)):
            raise UserError(f"{source}: lora_B bias of {module} has shape {list(parts['bias'].shape)} but the "
                            f"model's {name} is {list(self.shape(name))}")
        return parts["bias"].float() * scale

    def computed(self, name: str) -> bool:
        """A tensor the adapter updates: the update is added in float32, which the model's dtype
        does not hold (read in float32, the sum is not the model's dtype widened)."""
        return name in self._updates or name in self._bias_updates

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        weight = super().tensor(name, dtype)
        if name in self._bias_updates:
            return (weight.float() + self._bias_updates[name]).to(weight.dtype)
        if name not in self._updates:
            return weight
        a, b, scale, transpose = self._updates[name]
        update = (b.float() @ a.float()) * scale
        return (weight.float() + (update.T if transpose else update)).to(weight.dtype)


class _Replacements:
    """The adapter's whole tensors, read lazily under the model's names and in the model's dtypes
    (peft loads them into the model's parameters, which keep theirs)."""

    def __init__(self, file: SafetensorsFile, keys: dict[str, str], dtypes: dict[str, torch.dtype]):
        self._file = file
        self._keys, self._dtypes = keys, dtypes

    def names(self) -> list[str]:
        return list(self._keys)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._file.meta(self._keys[name])[0], self._dtypes[name]

    def load(self, name: str) -> torch.Tensor:
        view = self._file.load(self._keys[name])
        tensor = view.to(self._dtypes[name], copy=True)
        self._file.release(view)
        return tensor

    def release(self, view: torch.Tensor) -> None:
        """`load` hands out a copy, its mapped pages already dropped: nothing to release."""
