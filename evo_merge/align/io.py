"""Reading models and data for alignment, and writing aligned models.

Three kinds of model folder: a Hugging Face causal LM (config.json with `model_type`), a
reference network of `evo_merge.align.nets` (config.json with `arch` + model.safetensors), or a
bare `model.safetensors` (weight-only methods). `write_endpoint` is the single place that
writes a folder, so it can be switched to `evo_merge.weights` without touching anything else.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from evo_merge.align.nets import build_net
from evo_merge.align.spec import State
from evo_merge.errors import UserError

SEQ_LEN = 32


@dataclass
class Endpoint:
    path: Path
    state: State
    module: nn.Module | None = None
    tokenizer: Any | None = None


def _read_state(path: Path) -> State:
    file = path / "model.safetensors"
    if not file.exists():
        raise UserError(f"{path}: no model.safetensors")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from None


def load_endpoint(path: str | Path) -> Endpoint:
    """Load one model folder (never runs remote code)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a model folder")
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if "model_type" in config:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer.json").exists() else None
        return Endpoint(path, model.state_dict(), model, tokenizer)
    state = _read_state(path)
    if "arch" not in config:
        return Endpoint(path, state)
    net = build_net(config)
    expected = net.state_dict()
    for name, tensor in state.items():
        if name not in expected or expected[name].shape != tensor.shape:
            raise UserError(f"{path}: parameter {name} does not fit the architecture in config.json")
    net.load_state_dict(state)
    return Endpoint(path, net.state_dict(), net)


def write_endpoint(endpoint: Endpoint, state: State, out: Path) -> None:
    """Write `state` as a model folder of the same kind as `endpoint` (HF: save_pretrained)."""
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(getattr(endpoint.module, "config", None), "model_type"):
        endpoint.module.load_state_dict(state)
        endpoint.module.save_pretrained(out)
        if endpoint.tokenizer is not None:
            endpoint.tokenizer.save_pretrained(out)
        return
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    if (endpoint.path / "config.json").exists():
        shutil.copyfile(endpoint.path / "config.json", out / "config.json")


def load_data(path: str | Path, endpoint: Endpoint) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs for activation statistics: a .safetensors file with `x` (and optional labels `y`),
    or for language models a text file, tokenized and cut into sequences of SEQ_LEN tokens."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--data {path}: no such file")
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        if "x" not in tensors:
            raise UserError(f"--data {path}: needs a tensor named 'x'")
        return tensors["x"], tensors.get("y")
    if endpoint.tokenizer is None:
        raise UserError(f"--data {path}: text data needs a model folder with a tokenizer")
    ids = endpoint.tokenizer(path.read_text())["input_ids"]
    n = len(ids) // SEQ_LEN
    if n == 0:
        raise UserError(f"--data {path}: fewer than {SEQ_LEN} tokens")
    return torch.tensor(ids[: n * SEQ_LEN]).view(n, SEQ_LEN), None
