"""Write an HF model folder from a stream of tensors, atomically.

Tensors are consumed one at a time and flushed into safetensors shards, so at most one shard is
held in memory. Everything is written into a hidden temporary sibling of the output folder,
which is renamed into place only once complete: an exception or interrupt mid-stream leaves
neither a half-written model under the final name nor the temporary folder (a hard kill can
leave the hidden temporary folder, never a partial model; the CLI turns SIGTERM into an
exception for that reason). The writer holds an flock on its temporary folder, so the next write
to the same output removes what a killed one left (shards: gigabytes at size) and leaves a live
writer's alone. Only a model folder (or an empty one) is ever replaced, a tensor
holding NaN or Inf is never written, and the folder gets the umask's modes like any other.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from evo_merge.errors import UserError
from evo_merge.files import check_writable, held_temporary_folder, parse_json, sync_folder, sync_tree
from evo_merge.user_paths import expand_home
from evo_merge.weights.arch import hf_model_type
from evo_merge.weights.checkpoint import (
    PICKLE_SUFFIXES,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    copied_tokenizer_files,
    model_file,
)
from evo_merge.weights.dtypes import all_finite, dtype_name

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
COPIED_FILES = ("config.json", "generation_config.json")


ExtraFile = str | bytes | Callable[[], str | bytes]  # a file written beside the weights, or what gives it


def write_model_folder(
    out: str | Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    copy_from: str | Path | None = None,
    config: dict | None = None,
    extra_files: Mapping[str, ExtraFile] = {},
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    copy_tokenizer: bool = True,
    overwrite: bool = False,
) -> Path:
    """Stream `tensors` into `out` as HF safetensors shards, with config and tokenizer files.

    `copy_from` is a model folder whose config.json, generation_config.json and tokenizer files
    are copied; `config` keys override its config; `extra_files` (relative path -> text or
    bytes, e.g. README.md, or a function giving them) are written last: a function is called once
    the tensors are written (a card that says how they were merged). `dtype` casts floating tensors on write; the
    written config's `dtype` (and `torch_dtype`, if present) records the floating dtype actually
    written. An existing `out` is refused unless `overwrite`, and then replaced only once the
    new folder is complete, and only if it is a model folder (weights beside a config.json or mass.json)
    or empty. `copy_tokenizer=False`
    copies only the config files (the caller writes a tokenizer of its own through `extra_files`).
    """
    out = expand_home(out)
    check_output_folder(out, overwrite)
    source = expand_home(copy_from) if copy_from is not None else None
    if source is not None and not source.is_dir():
        raise UserError(f"model folder to copy config and tokenizer from not found: {source}")
    copied = _copied_files(source, copy_tokenizer) if source is not None else []  # refused before any work
    _check_extra_names(extra_files, {file.name for file in copied})
    try:
        with staged_folder(out, overwrite=overwrite) as tmp:
            tmp.mkdir()
            try:
                written_dtypes = _write_shards(tmp, tensors, dtype, max_shard_bytes)
            finally:  # a generator left mid-way (a full disk) stops now: a progress bar in it ends with it
                if isinstance(tensors, Generator):
                    tensors.close()
            for file in copied:
                shutil.copy2(file, tmp / file.name)
            _write_config(tmp, config, written_dtypes)
            for name, content in extra_files.items():
                _write_extra(tmp, name, content() if callable(content) else content)
    except OSError as exc:
        if exc.strerror:  # name the output, not the hidden file that is gone; and a file in its way
            blocked = next((p for p in Path(out).parents if p.exists() and not p.is_dir()), None)
            raise UserError(f"cannot write {out}: " + (f"{blocked} is a file, not a folder" if blocked
                                                        else exc.strerror)) from exc
        raise
    return out


class NonFiniteTensor(UserError):
    """A tensor holding NaN or Inf, refused before it is written; `name` lets the caller, who knows
    the inputs, say which of them holds it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _copied_files(source: Path, copy_tokenizer: bool) -> list[Path]:
    """The config (and tokenizer) files of `source` to copy, and the code files its config's
    `auto_map` names; a link out of the model is refused."""
    configs = [file for name in COPIED_FILES if (file := model_file(source, name)) is not None]
    named_by = ("config.json", "tokenizer_config.json") if copy_tokenizer else ("config.json",)
    code = [file for name in auto_map_files(source, named_by) if (file := model_file(source, name)) is not None]
    return configs + code + (copied_tokenizer_files(source) if copy_tokenizer else [])


def auto_map_files(folder: Path, configs: Sequence[str] = ("config.json",)) -> list[str]:
    """The module files the `auto_map` of each of `configs` names in the folder itself
    (`modeling_x.XModel` -> `modeling_x.py`; a tokenizer's `[tokenization_x.XTokenizer, null]`; a
    class in another repository, `repo--module.Class`, is not a file here). The output keeps those
    configs' `auto_map`, so it keeps the code: without it a load that opts in with
    `trust_remote_code` failed. The files are copied, never imported."""
    values: list[object] = []
    for name in configs:
        try:
            auto_map = parse_json((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        values += auto_map.values() if isinstance(auto_map, dict) else []
    refs = [r for v in values for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    names = {f"{r.rsplit('.', 1)[0]}.py" for r in refs if "." in r and "--" not in r}
    return sorted(n for n in names if re.fullmatch(r"[\w.-]+\.py", n) and ".." not in n)


def _write_shards(
    folder: Path, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None, max_shard_bytes: int
) -> set[torch.dtype]:
    """Write shards as they fill; name them like HF at the end. Returns the floating dtypes written."""
    shards: list[dict[str, int]] = []  # per shard: name -> bytes, in write order
    current: dict[str, torch.Tensor] = {}
    current_bytes = 0
    storages: set[int] = set()
    seen: set[str] = set()
    floating: set[torch.dtype] = set()

    def flush() -> None:
        save_safetensors(current, folder / f"shard-{len(shards)}.part")
        shards.append({name: t.numel() * t.element_size() for name, t in current.items()})
        current.clear()
        storages.clear()

    for name, tensor in tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} yielded twice")
        seen.add(name)
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if tensor.is_floating_point():
            floating.add(tensor.dtype)
            if not all_finite(tensor):  # after the cast: float16 overflows to Inf
                raise NonFiniteTensor(name, f"tensor {name}: holds NaN or Inf, not written (a corrupt input, or out "
                                            f"of range for {dtype_name(tensor.dtype)})")
        tensor = _owning(tensor.contiguous(), storages)
        size = tensor.numel() * tensor.element_size()
        if current and current_bytes + size > max_shard_bytes:
            flush()
            current_bytes = 0
        current[name] = tensor
        current_bytes += size
    if not seen:
        raise ValueError("no tensors to write")
    if current:
        flush()
    _name_shards(folder, shards)
    return floating


_OS_ERROR = re.compile(r"os error (\d+)")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' `save_file`, with its I/O failures raised as the OSError they are."""
    with safetensors_io(path):
        save_file(tensors, str(path), metadata={"format": "pt"})


@contextmanager
def safetensors_io(path: Path) -> Iterator[None]:
    """safetensors' I/O failures inside, raised as the OSError they are, naming `path`: the library
    raises its own error for a full disk or a file-size limit, which names neither the file nor the
    fault a user can act on (and which a command then showed as a traceback)."""
    try:
        yield
    except SafetensorError as exc:
        code = _OS_ERROR.search(str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from exc


def _owning(tensor: torch.Tensor, storages: set[int]) -> torch.Tensor:
    """The tensor, or a copy if its storage is shared (safetensors refuses shared storage)."""
    storage = tensor.untyped_storage()
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes and (storage.data_ptr() in storages or storage.nbytes() != nbytes):
        tensor = tensor.clone()
        storage = tensor.untyped_storage()
    if nbytes:
        storages.add(storage.data_ptr())
    return tensor


def _name_shards(folder: Path, shards: list[dict[str, int]]) -> None:
    """`model.safetensors`, or `model-0000k-of-0000n.safetensors` plus the index, as HF names them."""
    if len(shards) == 1:
        (folder / "shard-0.part").rename(folder / SAFETENSORS_SINGLE)
        return
    weight_map, total = {}, 0
    for k, sizes in enumerate(shards):
        file_name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / f"shard-{k}.part").rename(folder / file_name)
        weight_map.update(dict.fromkeys(sizes, file_name))
        total += sum(sizes.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _write_config(folder: Path, overrides: dict | None, written: set[torch.dtype]) -> None:
    file = folder / "config.json"
    if not file.is_file() and overrides is None:
        return
    config = parse_json(file.read_text(encoding="utf-8")) if file.is_file() else {}
    config.update(overrides or {})
    if len(written) == 1 and hf_model_type(config) is not None:  # a plain network's config stays as is
        name = dtype_name(next(iter(written)))
        config["dtype"] = name
        if "torch_dtype" in config:
            config["torch_dtype"] = name
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_extra_names(extra_files: Mapping[str, ExtraFile], copied: set[str]) -> None:
    """Before any work: an extra file (a card, a license an input's card links) never takes the
    place of a file the folder gets otherwise: a copied config, tokenizer or code file, the weights
    or their index. Written last, it replaced them (audit 95: an input's license_link naming
    tokenizer_config.json gave the merge that input's chat template)."""
    taken = copied | set(COPIED_FILES) | {SAFETENSORS_INDEX}
    if clash := next((n for n in extra_files if n in taken or n.endswith(".safetensors")), None):
        raise ValueError(f"extra file {clash!r} would replace a file the model folder is written with")


def _write_extra(folder: Path, name: str, content: str | bytes) -> None:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"extra file name {name!r} must be a relative path inside the model folder")
    target = folder / relative
    if target.exists():  # none of the above, nor another extra file's folder
        raise ValueError(f"extra file {name!r} would replace a file the model folder is written with")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content, encoding="utf-8")


MASS_JSON = "mass.json"  # a MASS folder's description (`mass.model` writes and reads it)
# what says a folder holds a model: an HF model's config, a MASS folder's description
MODEL_FOLDER_FILES = ("config.json", MASS_JSON)


def is_model_folder(folder: Path) -> bool:
    """Holds weights (safetensors, an index, pickle checkpoints) beside a model's config.json or a
    MASS folder's mass.json: weights alone are no model (a `dataset.bin` among a user's notes made
    --overwrite delete the folder)."""
    files = [f for f in folder.iterdir() if f.is_file()]
    return any(f.name in MODEL_FOLDER_FILES for f in files) and any(
        f.suffix == ".safetensors" or f.suffix in PICKLE_SUFFIXES or f.name.endswith(".index.json") for f in files)


def refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing output folder is replaced only when asked: the error says how to ask."""
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists (--overwrite replaces it)")


def check_output_folder(out: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output folder that exists (unless `overwrite`), that is not a model folder or empty,
    or that is, or holds, one of the `inputs` the merge reads, or whose folder cannot be written:
    checked before the work, not after.
    What --overwrite would not replace either (a file, a folder of other files) is refused first,
    so the error does not offer it."""
    check_replaceable(out)
    refuse_existing(out, overwrite)
    refuse_inputs(out, inputs)
    check_writable(out)


def refuse_inputs(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, or holds, one of the `inputs` the command reads: with
    --overwrite it would be replaced by what was made from it."""
    target = out.resolve()
    for source in inputs:
        if source.resolve().is_relative_to(target):
            where = "is" if source.resolve() == target else "holds"
            raise UserError(f"output folder {out} {where} {source}, which this command reads; write it somewhere else")


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a model folder or an empty folder: an overwrite must never
    delete a user's other files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output {out} is a file, not a model folder; give a folder to write the model into")
    if any(out.iterdir()) and not is_model_folder(out):
        link = f" (a link to {os.readlink(out)})" if out.is_symlink() else ""
        raise UserError(f"output folder {out}{link} is not a model folder (no weights beside a config.json); "
                        "refusing to replace it")


def sweep_partial_folders(folder: Path) -> list[Path]:
    """Remove the hidden folders a killed writer left in `folder` (a model half-written, or one
    replaced half-way): a shard each, gigabytes at size. Only under a lock that keeps every other
    writer out of `folder`, such as a run folder's."""
    swept = [p for p in folder.glob(".*.*-*") if p.is_dir() and not p.is_symlink()
             and re.fullmatch(r"\..+\.(tmp|old)-[0-9a-z_]+", p.name)]
    for path in swept:
        shutil.rmtree(path)
    return swept


def sweep_stale_siblings(out: Path) -> list[Path]:
    """Remove the hidden folders a killed write to `out` left beside it (`.NAME.tmp-*`, and
    `.NAME.old-*` from a replace cut short), unless a writer of `out` is alive: each holds an flock
    on its temporary folder, which the kernel drops when the writer dies (kill -9 included)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[0-9a-z_]+")
    found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    locks: dict[Path, int] = {}
    try:
        for path in found:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:  # a writer finished meanwhile, or not ours to open
                continue
            locks[path] = fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer of `out`: its replace may need its .old folder
                return []
        for path in locks:  # under the locks: a writer whose new folder this is waits, then takes another
            shutil.rmtree(path, ignore_errors=True)
    finally:
        for fd in locks.values():
            os.close(fd)
    return list(locks)


def umask_modes(folder: Path) -> None:
    """Give the files the mode a new file gets under the umask (as `folder` got): safetensors
    writes 0600 and copies keep their source's mode."""
    mode = stat.S_IMODE(folder.stat().st_mode) & 0o666
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(mode)


@contextmanager
def staged_folder(out: Path, *, overwrite: bool, check: Callable[[Path], None] = check_replaceable) -> Iterator[Path]:
    """A new folder to write `out` in, in a hidden sibling of it, moved onto `out` whole when the
    block succeeds (`replace_folder`: replacing only what `check` lets through, and nothing unless
    `overwrite`); a failed block leaves `out` as it was. The sibling is held under an flock while it
    is written, so a later writer sweeps it (`sweep_stale_siblings`) only if this one died, kill -9
    included. The folder yielded does not exist yet: writers that create their folder
    (`save_pretrained`, `write_model_folder`) take it as they take a new `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(out)
    with held_temporary_folder(out.parent, f".{out.name}.tmp-") as tmp:
        staged = tmp / "staged"
        try:
            yield staged
        except OSError as exc:  # a full disk said of the output asked for, not of its hidden staged copy
            if not isinstance(exc.filename, str) or not Path(exc.filename).is_relative_to(staged):
                raise
            named = out / Path(exc.filename).relative_to(staged)
            raise OSError(exc.errno, exc.strerror, str(named), None, exc.filename2) from exc
        except UserError as exc:  # a writer's own words about its folder (`write_model_folder` into it)
            if str(staged) not in str(exc):
                raise
            raise UserError(str(exc).replace(str(staged), str(out))) from exc
        umask_modes(staged)  # safetensors writes 0600, and copies keep their source's mode
        replace_folder(staged, out, check, overwrite=overwrite)


def replace_folder(tmp: Path, out: Path, check: Callable[[Path], None] = check_replaceable, *,
                   overwrite: bool) -> None:
    """Move the complete folder into place; an old `out` is removed only after the swap, and only
    what `check` lets through is replaced (a model folder, by default). Without `overwrite` nothing
    is: the output was free when the command began, and a folder put there since (a user's model
    copied in while a merge ran for minutes, another command's output) is left as it is, by the
    rename itself, which fails onto a folder that holds anything. The folder's files reach the disk
    before the rename, and the rename before the return: a power loss just after `wrote` could
    otherwise leave a complete-looking folder whose shard is short (audit 126)."""
    check(out)
    sync_tree(tmp)
    try:
        _replace(tmp, out, overwrite)
    finally:
        sync_folder(out.parent)


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    if not overwrite and not out.is_symlink():  # a link the checks let through is replaced itself, as below
        try:
            tmp.rename(out)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise UserError(f"output folder {out} appeared while this one was written (another command, or a copy?); "
                            "it is left as it is and this output was not kept (--overwrite replaces it)") from None
        return
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    if old.is_symlink():  # a link replaced: removed itself, never what it points at (rmtree refuses links)
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
