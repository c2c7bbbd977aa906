"""Reading models and data for alignment, and writing aligned models.

Three kinds of model folder: the two `evo_merge.weights.load_model_folder` opens (a Hugging
Face causal LM, a reference network of `evo_merge.weights.nets`), or a bare `model.safetensors`
(weight-only methods with a YAML spec), which alignment reads as a state dict only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from evo_merge.align.spec import State
from evo_merge.errors import UserError, first_line
from evo_merge.weights import save_model_folder, write_model_folder
from evo_merge.weights.arch import hf_model_type
from evo_merge.weights.checkpoint import read_config
from evo_merge.weights.folder import load_model_folder

SEQ_LEN = 32


@dataclass
class Endpoint:
    path: Path
    state: State
    module: nn.Module | None = None
    tokenizer: Any | None = None
    stored: dict[str, torch.dtype] = field(default_factory=dict)  # the module's tensors, as the folder keeps them


def _read_state(path: Path) -> State:
    file = path / "model.safetensors"
    if not file.exists():
        raise UserError(f"{path}: no model.safetensors")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from None


def load_endpoint(path: str | Path) -> Endpoint:
    """Load one model folder (never runs remote code); a runnable one in float32, as the matchers
    compute, remembering the dtypes it is stored in (`write_endpoint` writes them again)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a model folder")
    config = read_config(path) or {}
    if hf_model_type(config) is None and "arch" not in config:
        return Endpoint(path, _read_state(path))
    module, tokenizer = load_model_folder(path)
    stored = {name: t.dtype for name, t in module.state_dict().items()}
    module.float()
    return Endpoint(path, module.state_dict(), module, tokenizer, stored)


def write_endpoint(endpoint: Endpoint, state: State, out: Path) -> None:
    """Write `state` as a model folder of the same kind as `endpoint`, replacing `out`, each tensor
    in the dtype its folder stored it in: a permutation moves values without rounding them, and a
    bfloat16 model was written in float32, twice its size. The module is left in those dtypes."""
    if endpoint.module is None:
        write_model_folder(out, state.items(), copy_from=endpoint.path, overwrite=True)
        return
    endpoint.module.load_state_dict(state)
    for name, tensor in endpoint.module.state_dict(keep_vars=True).items():
        tensor.data = tensor.data.to(endpoint.stored.get(name, tensor.dtype))
    save_model_folder(out, endpoint.module, endpoint.tokenizer, overwrite=True)


MIN_ROWS = 2  # inputs an activation statistic is computed over, at the least


def check_data_path(path: str | Path, key: str = "--data") -> Path:
    """The data file a command names, there and not a folder: said before any model is loaded."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{key} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{key} {path}: a folder; give a .safetensors file (x[,y]) or a text file")
    return path


def load_data(path: str | Path, endpoint: Endpoint, key: str = "--data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs for activation statistics: a .safetensors file with `x` (and optional labels `y`),
    or for language models a text file, tokenized and cut into sequences of SEQ_LEN tokens.
    Errors name `key`, the option or campaign key the file came from."""
    path = check_data_path(path, key)
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{key} {path}: not a readable safetensors file ({exc})") from None
        if "x" not in tensors:
            raise UserError(f"{key} {path}: needs a tensor named 'x'")
        x, y = tensors["x"], tensors.get("y")
        x = x.float() if x.is_floating_point() else x  # the models run in float32, whatever they are stored in
        if x.ndim == 0 or len(x) < MIN_ROWS:  # statistics of one row match nothing: "0 units moved", exit 0
            raise UserError(f"{key} {path}: x holds {0 if x.ndim == 0 else len(x)} input(s); activation statistics "
                            f"need at least {MIN_ROWS}")
        if y is not None and (y.ndim != 1 or len(y) != len(x) or y.is_floating_point()):
            raise UserError(f"{key} {path}: y must be one whole-number label per row of x ({len(x)}), not "
                            f"{y.dtype} of shape {list(y.shape)}")
        if y is not None and endpoint.module is not None and hf_model_type(endpoint.module) is not None:
            raise UserError(f"{key} {path}: y gives one label per row of x, and a language model predicts a token at "
                            "every position; leave y out (mudsc then searches --f on the models' agreement)")
        _check_fits(x, endpoint, f"{key} {path}")
        return x, y
    if endpoint.tokenizer is None:
        raise UserError(f"{key} {path}: text data needs a model folder with a tokenizer")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{key} {path}: not UTF-8 text (byte {exc.start}); give a text file, or a .safetensors "
                        "file with a tensor x") from None
    ids = endpoint.tokenizer(text)["input_ids"]
    n = len(ids) // SEQ_LEN
    if n == 0:
        raise UserError(f"{key} {path}: fewer than {SEQ_LEN} tokens")
    return torch.tensor(ids[: n * SEQ_LEN]).view(n, SEQ_LEN), None


def _check_fits(x: torch.Tensor, endpoint: Endpoint, where: str) -> None:
    """The model runs on two of the inputs: one of another width, or images given to a language
    model, failed deep in the matching with a traceback."""
    if endpoint.module is None or x.ndim == 0 or len(x) == 0:
        return
    try:
        with torch.no_grad():
            endpoint.module.eval()(x[:2])
    except (RuntimeError, IndexError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: the models cannot take its x (shape {list(x.shape)}, {x.dtype}): "
                        f"{first_line(exc)}") from None
