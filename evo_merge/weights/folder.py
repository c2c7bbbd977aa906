"""Open and write a whole model folder as a runnable module: the one entry point for both kinds.

A model folder is either a Hugging Face causal LM (config.json with `model_type`, loaded with
transformers, never with remote code) or a plain network of `weights.nets` (config.json with
`arch` + model.safetensors). Evaluation, alignment, MASS, the zoos and the CLI all open and
write folders here, so what counts as a model folder, and the errors for one that is not, are
decided once. (Streaming tensor access without building a module is `Checkpoint`.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evo_merge.errors import UserError, first_line
from evo_merge.user_paths import expand_home
from evo_merge.weights import heads
from evo_merge.weights.arch import hf_model_type
from evo_merge.weights.checkpoint import Checkpoint, read_config, tokenizer_files
from evo_merge.weights.compat import castable
from evo_merge.weights.dtypes import dtype_name, parse_dtype
from evo_merge.weights.export import check_output_folder, safetensors_io, staged_folder, write_model_folder
from evo_merge.weights.nets import build_net, declared_layers

log = logging.getLogger(__name__)


def is_hf_folder(path: str | Path) -> bool:
    """Whether the folder holds a Hugging Face model (its config.json names a `model_type`)."""
    return hf_model_type(read_config(Path(path)) or {}) is not None


def load_model_folder(
    path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
    *, allow_pickle: bool = False, untie: bool = False,
) -> tuple[nn.Module, Any | None]:
    """(module in eval mode, tokenizer or None) from a model folder.

    `dtype` None keeps the stored floating dtype; `device` None leaves the module on the CPU.
    The tokenizer is loaded when the folder has tokenizer files (a task that needs one says so).
    HF pickle weights (.bin) are read only with `allow_pickle` (transformers then loads them
    with `weights_only`). `untie` gives a model with tied embeddings a head of its own, equal to
    its embedding: merging in another model's own head needs one."""
    path = expand_home(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a model folder" if path.exists() else f"{path}: no such folder")
    config = read_config(path)
    if config is None:
        raise UserError(f"{path}: no config.json (a model folder's config says how to build the model)")
    torch_dtype = parse_dtype(dtype)
    if hf_model_type(config) is not None:
        module, tokenizer = _load_hf(path, torch_dtype, allow_pickle, untie)
        _say_own_code_not_run(path, config, module)
    elif "arch" in config:
        module, tokenizer = _load_plain(path, config), None
        if torch_dtype is not None:
            module.to(dtype=torch_dtype)
    else:
        raise UserError(f"{path}: config.json does not say how to build the model (no model_type or arch)")
    if device is not None:
        module.to(device)
    return module.eval(), tokenizer


def _load_hf(path: Path, dtype: torch.dtype | None, allow_pickle: bool,
             untie: bool) -> tuple[nn.Module, Any | None]:
    # safetensors unless allowed: a pickle checkpoint can run code when loaded; and never a model
    # folder's own Python (`auto_map`): transformers would otherwise ask on the terminal, mid-run.
    # The weights are first opened as a merge opens them (headers only), so a folder a merge
    # refuses (pickle, shards, quantized) is refused here with the same line
    with Checkpoint.open(path, allow_pickle=allow_pickle) as checkpoint:
        module, loading, tokenizer = _from_pretrained(path, dtype, allow_pickle, untie)
        _check_fits(path, module, loading, checkpoint, untie)
    if untie:
        with torch.no_grad():
            module.get_output_embeddings().weight.copy_(module.get_input_embeddings().weight)
    return module, tokenizer


def _from_pretrained(path: Path, dtype: torch.dtype | None, allow_pickle: bool,
                     untie: bool) -> tuple[nn.Module, dict[str, Any], Any | None]:
    """(module, transformers' loading info, tokenizer or None), its errors as one line each."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        untied = {"tie_word_embeddings": False} if untie else {}
        with _quiet_transformers(untie):
            module, loading = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype or "auto", trust_remote_code=False, use_safetensors=None if allow_pickle else True,
                output_loading_info=True, ignore_mismatched_sizes=True, **untied)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False) if tokenizer_files(path) else None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load the model ({first_line(err)})") from None
    except KeyError as err:  # an entry transformers needs in a file it reads
        hint = ("its weights index has no \"metadata\" entry, which transformers needs (add \"metadata\": {})"
                if err.args == ("metadata",) else f"transformers found no {err} in its files")
        raise UserError(f"{path}: cannot load the model ({hint})") from None
    return module, loading, tokenizer


def _say_own_code_not_run(path: Path, config: dict[str, Any], module: nn.Module) -> None:
    """A config naming its own code (`auto_map`) for a model type transformers knows (Phi-3 folders
    do) is loaded with the built-in class, never with the folder's Python: every stored tensor fits
    it (`_check_fits`), but the folder's code could compute otherwise, so the log says which class is
    scored (an unknown model type with `auto_map` is refused by transformers itself)."""
    auto_map = config.get("auto_map")
    own = auto_map.get("AutoModelForCausalLM") if isinstance(auto_map, dict) else None
    if own:
        log.warning("%s: config.json names its own code (%s); it is not run (trust_remote_code=False): "
                    "transformers' %s is loaded instead", path, own, type(module).__name__)


def _check_fits(path: Path, module: nn.Module, loading: dict[str, Any], checkpoint: Checkpoint, untie: bool) -> None:
    """Raise UserError naming the first stored tensor that does not fit the model config.json describes.

    transformers loads such a folder anyway, and it would be scored as if nothing were wrong: a tensor
    missing from the weights is initialised at random, one of another shape is reinitialised (asked for
    with `ignore_mismatched_sizes`: the default is a traceback), an integer tensor is cast into a
    floating parameter. Its loading info names the first two; dtypes follow the rule a merge applies
    (`castable`). With `untie`, the head a tied model does not store is filled from its embedding."""
    state = module.state_dict()  # in the model's order: a mismatched embedding is named first
    mismatched = {name: (stored, expected) for name, stored, expected in loading["mismatched_keys"]}
    if name := next((n for n in state if n in mismatched), None):
        stored, expected = mismatched[name]
        raise UserError(f"{path}: tensor {name!r} has shape {list(stored)} where config.json gives {list(expected)}")
    filled = untie and heads.ties_embeddings(checkpoint)
    missing = (n for n in state if n in loading["missing_keys"] and not (filled and heads.is_head(n)))
    if name := next(missing, None):
        raise UserError(f"{path}: tensor {name!r} of the model in config.json is missing from its weights")
    for name in checkpoint.names:
        if name in state and not castable(dtype := checkpoint.dtype(name), state[name].dtype):
            raise UserError(f"{path}: tensor {name!r} has dtype {dtype_name(dtype)} where the model has "
                            f"{dtype_name(state[name].dtype)}; only floating dtypes can be cast")


@contextmanager
def _quiet_transformers(untie: bool) -> Iterator[None]:
    """transformers' loading and saving bars (a run shows its own progress, and a bar in a log
    file is a line of carriage returns), and with `untie` its warning that the untied head was newly
    initialised: it is set right after."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if untie:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_plain(path: Path, config: dict[str, Any]) -> nn.Module:
    """The network its config describes, with the folder's weights; a tensor that does not fit
    the architecture is named. The architecture is laid out without memory and checked against
    the weights' headers first: a received config.json declaring `hidden: [100000, 100000]` beside
    a tiny checkpoint allocated 40 GB before a weight was read (audit 116)."""
    with Checkpoint.open(path) as checkpoint:
        stored = set(checkpoint.names)
        if (layers := declared_layers(config)) > len(stored):
            raise UserError(f"{path}: config.json declares {layers} layers and blocks, more than the {len(stored)} "
                            "tensors of its weights hold")
        with torch.device("meta"):
            net = build_net(config, str(path / "config.json"))
        expected = net.state_dict()
        for name in checkpoint.names:
            if name not in expected or expected[name].shape != checkpoint.shape(name):
                raise UserError(f"{path}: parameter {name} does not fit the architecture in config.json")
        missing = next((name for name in expected if name not in stored), None)
        if missing is not None:
            raise UserError(f"{path}: parameter {missing} of the architecture in config.json is missing")
        state = {name: checkpoint.tensor(name) for name in checkpoint.names}
    net.to_empty(device="cpu").load_state_dict(state)  # every entry of the state dict is the checkpoint's
    return net


def save_model_folder(
    out: str | Path, module: nn.Module, tokenizer: Any | None = None, *, overwrite: bool = False
) -> Path:
    """Write `module` (and its tokenizer) as a model folder `load_model_folder` opens again,
    atomically: the folder appears complete or not at all. An HF model goes through
    `save_pretrained` (tied weights, generation config); a plain network is its safetensors
    state dict plus the config it was built from."""
    if hf_model_type(module) is None and getattr(module, "net_config", None) is None:
        raise ValueError(f"{type(module).__name__} is neither an HF model nor a network of evo_merge.weights.nets")
    out = expand_home(out)
    with _staged(out, overwrite) as tmp:
        if hf_model_type(module) is not None:
            # a full disk is one line naming OUT (`align`, `zoo build`), not safetensors' traceback
            with safetensors_io(out), _quiet_transformers(untie=False):
                module.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        else:
            write_model_folder(tmp, module.state_dict().items(), config=dict(module.net_config))
    return out


@contextmanager
def _staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A folder to write the model into, moved onto `out` when the block succeeds."""
    check_output_folder(out, overwrite)
    with staged_folder(out, overwrite=overwrite) as folder:
        yield folder
