"""Lazy, read-only access to a model's tensors, one tensor at a time.

A checkpoint is an HF model folder (config.json, `model.safetensors` or shards listed in
`model.safetensors.index.json`, tokenizer files) or a bare weights file (a plain state dict of
any torch module). Safetensors files are opened with `safe_open`, which reads only the header:
a tensor is materialised when asked for, so streaming a merge keeps about one tensor per
endpoint in memory. Pickle checkpoints can run arbitrary code when loaded, so they are refused
unless the caller opts in, and then loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import mmap
import os
import sys
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from evo_merge.errors import UserError, first_line
from evo_merge.files import parse_json
from evo_merge.user_paths import expand_home

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT LoRA adapter's folder (`weights.lora` reads it)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)

# Dtype codes of the safetensors header (format spec), for shape/dtype without reading data.
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
COMPARED_CHUNK = 1 << 20  # entries of two tensors of different dtypes compared at a time (`same_values`)


class _WeightsFile(Protocol):
    """One weights file: its tensor names, their metadata, and one tensor on demand.

    `load` may return a view of a memory map shared between calls; Checkpoint copies it.
    """

    def names(self) -> list[str]: ...
    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]: ...
    def load(self, name: str) -> torch.Tensor: ...
    def release(self, view: torch.Tensor) -> None: ...


class SafetensorsFile:
    """One safetensors file, read lazily by name: shapes and dtypes from its header, a tensor when
    asked (memory-mapped), its pages dropped when released. Also reads a LoRA adapter's file."""

    def __init__(self, path: Path):
        try:
            self._handle = safe_open(str(path), framework="pt")
            self._meta = {}
            for name in self._handle.keys():
                view = self._handle.get_slice(name)
                if (dtype := _SAFETENSORS_DTYPES.get(view.get_dtype())) is None:
                    raise UserError(f"{path}: tensor {name!r} is stored as {view.get_dtype()}, a format of quantized "
                                    "checkpoints evo-merge does not merge; give the model in bfloat16, float16 or "
                                    "float32")
                self._meta[name] = (tuple(view.get_shape()), dtype)
        except UserError:
            raise
        except Exception as err:  # the Rust reader raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({err})") from err

    def names(self) -> list[str]:
        return list(self._meta)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._meta[name]

    def load(self, name: str) -> torch.Tensor:
        return self._handle.get_tensor(name)

    def release(self, view: torch.Tensor) -> None:
        drop_mapped_pages(view.data_ptr(), view.numel() * view.element_size())


def _unpickling_reason(err: Exception) -> str:
    """What torch's weights-only loader refused, on one line: its message opens with a paragraph
    suggesting `weights_only=False`, the advice a file that smuggles code in is written for, and
    names what it refused (`unsupported GLOBAL posix.system`) only further down."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), first_line(err))


class _PickleFile:
    def __init__(self, path: Path):
        # mmap keeps the file on disk until a tensor is asked for; old (non-zip) files cannot.
        try:
            with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": torch's source line above our error
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:
            raise UserError(
                f"{path}: cannot load as a weights-only pickle (it may hold objects other than "
                f"tensors, or be corrupt): {_unpickling_reason(err)}"
            ) from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # Lightning-style wrapper
        if not isinstance(state, dict):
            raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict (name -> tensor)")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise UserError(f"{path}: entry {key!r} is not a named tensor; expected a plain state dict")
        self._state: dict[str, torch.Tensor] = state

    def names(self) -> list[str]:
        return list(self._state)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self._state[name]
        return tuple(tensor.shape), tensor.dtype

    def load(self, name: str) -> torch.Tensor:
        return self._state[name]

    def release(self, view: torch.Tensor) -> None:
        """Pickle tensors are views of torch's own mapping: left alone."""


class Checkpoint:
    """Lazy, read-only access to one model's tensors, one tensor at a time."""

    def __init__(self, path: Path, folder: Path | None, files: list[Path], index: dict[str, str] | None):
        self.path = path
        self.folder = folder
        self.config: dict | None = read_config(folder) if folder is not None else None
        self._readers: dict[str, _WeightsFile] = {}
        readers = {file: _open_weights_file(file) for file in files}
        if index is None:
            for reader in readers.values():
                self._readers.update(dict.fromkeys(reader.names(), reader))
        else:
            stored_in = _shard_of_each(path, readers)
            for name, file_name in index.items():
                if stored_in.get(name) != files[0].parent / file_name:
                    raise UserError(f"{path}: the index maps tensor {name!r} to {file_name}, which does not hold it")
            # in the index's order, then what the shards hold beside it, as transformers reads them: every tensor
            # of every listed shard
            for name in [*index, *(n for n in stored_in if n not in index)]:
                self._readers[name] = readers[stored_in[name]]
        self.names: list[str] = list(self._readers)
        self._same: dict[tuple[str, str], bool] = {}
        self._refuse_quantized()

    def _refuse_quantized(self) -> None:
        """A quantized checkpoint stores codes and scales (GPTQ's packed integers, FP8 weights with a
        scale apart): merged as weights, they gave a model that is neither input, without a word."""
        quantization = (self.config or {}).get("quantization_config")
        if quantization:
            method = quantization.get("quant_method") if isinstance(quantization, dict) else None
            raise UserError(f"{self.folder}: a quantized checkpoint ({method or 'quantization_config'} in its "
                            "config.json): its tensors are codes and scales, which a merge would mix as weights; "
                            "give the full-precision model it was quantized from")
        if coded := next((n for n in self.names if self.dtype(n) in FLOAT8), None):
            raise UserError(f"{self.path}: tensor {coded!r} is {str(self.dtype(coded)).removeprefix('torch.')}, a "
                            "quantized format whose scale is kept apart; give the full-precision model")

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
        """Open a model folder, an index file or a single weights file (headers only)."""
        path = expand_home(path)
        folder, files, index = _locate(path)
        pickles = [f for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise UserError(
                f"{pickles[0]} is a pickle checkpoint, which can run code when loaded; convert it to "
                "safetensors (a campaign reads safetensors only; `merge --allow-pickle`, or allow_pickle=True "
                "from Python, loads it with torch.load(weights_only=True))"
            )
        return cls(path, folder, files, index)

    def _reader(self, name: str) -> _WeightsFile:
        if name not in self._readers:
            raise UserError(f"tensor {name!r} not found in {self.path}")
        return self._readers[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._reader(name).meta(name)[0]

    def dtype(self, name: str) -> torch.dtype:
        return self._reader(name).meta(name)[1]

    def computed(self, name: str) -> bool:
        """Whether the tensor is computed as it is read, not stored: its `dtype` is then the model's,
        and a wider read holds more than the stored dtype does (a LoRA adapter's sum, `weights.lora`)."""
        return False

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Load only this tensor, as a copy the caller owns (in-place edits are safe).

        `dtype` casts floating tensors; integer buffers stay as stored.
        """
        reader = self._reader(name)
        view = reader.load(name)
        if dtype is not None and view.is_floating_point() and view.dtype != dtype:
            tensor = view.to(dtype)
        else:  # both readers hand out views of a private file mapping, shared between calls
            tensor = view.clone()
        reader.release(view)
        return tensor

    def same_values(self, first: str, second: str) -> bool:
        """Whether two tensors are stored with the same values (a tied head stored as a copy of its
        embedding), as transformers compares them when it loads: on the file mapping, without a
        copy of either, once. An adapter's update is not part of it (peft adds it to the model as
        loaded, ties included)."""
        if (first, second) not in self._same:
            self._same[first, second] = self.shape(first) == self.shape(second) and self._equal(first, second)
        return self._same[first, second]

    def _equal(self, first: str, second: str) -> bool:
        """Equal values; across dtypes compared in float32 a chunk at a time (no float32 copy of a
        152k-row embedding), stopping at the first chunk that differs."""
        views = []
        try:
            for name in (first, second):
                reader = self._reader(name)
                views.append((reader, reader.load(name)))
            a, b = (view.reshape(-1) for _, view in views)
            if a.dtype == b.dtype:
                return torch.equal(a, b)
            return all(torch.equal(a[i:i + COMPARED_CHUNK].float(), b[i:i + COMPARED_CHUNK].float())
                       for i in range(0, a.numel(), COMPARED_CHUNK))
        finally:
            for reader, view in views:
                reader.release(view)

    @property
    def floating_dtype(self) -> torch.dtype:
        """The floating dtype most of the model's parameters are stored in (float32 where none is
        floating), read from the headers: what a model loaded with transformers' `dtype="auto"` is in."""
        entries: dict[torch.dtype, int] = {}
        for name in self.names:
            if (dtype := self.dtype(name)).is_floating_point:
                entries[dtype] = entries.get(dtype, 0) + math.prod(self.shape(name))
        return max(entries, key=entries.__getitem__) if entries else torch.float32

    def tokenizer_files(self) -> list[Path]:
        return tokenizer_files(self.folder) if self.folder is not None else []

    def tokenizer_vocab(self) -> dict[str, int] | None:
        """Token -> id, with added tokens, from tokenizer.json or vocab.json; None if neither. Read
        once: every endpoint is compared with the reference's (a 7 MB tokenizer.json at 152k tokens)."""
        return self._vocab

    @functools.cached_property
    def _vocab(self) -> dict[str, int] | None:
        if self.folder is None:
            return None
        if (file := self.folder / "tokenizer.json").is_file():
            try:
                return Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)
            except Exception as err:
                raise UserError(f"{file}: not a readable tokenizer ({err})") from err
        if (file := self.folder / "vocab.json").is_file():
            vocab = dict(_read_json(file))
            if (added := self.folder / "added_tokens.json").is_file():
                vocab.update(_read_json(added))
            return vocab
        return None

    def num_bytes(self) -> int:
        """Total size of the stored tensors (what a full load in stored dtypes costs)."""
        total = 0
        for name in self.names:
            shape, dtype = self._reader(name).meta(name)
            total += torch.Size(shape).numel() * dtype.itemsize
        return total

    def __contains__(self, name: object) -> bool:
        return name in self._readers

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self)} tensors)"

    def close(self) -> None:
        """Drop the file handles (memory maps); the checkpoint cannot be read afterwards."""
        self._readers = {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _shard_of_each(path: Path, readers: dict[Path, _WeightsFile]) -> dict[str, Path]:
    """Tensor name -> the shard holding it (90k names at DeepSeek-V3's size). A tensor in two
    shards is refused: transformers takes the last one read, whatever the index says."""
    stored_in: dict[str, Path] = {}
    for file, reader in readers.items():
        for name in reader.names():
            if name in stored_in:
                raise UserError(f"{path}: tensor {name!r} is stored in two shards, {stored_in[name].name} and "
                                f"{file.name}; keep it in the one its index names")
            stored_in[name] = file
    return stored_in


def drop_mapped_pages(address: int, length: int) -> None:
    """Let the kernel unmap the file pages of a tensor that has just been copied out.

    Reading a checkpoint tensor by tensor otherwise leaves every page read resident in the
    process (counted in its RSS) until the file is closed: a streamed read of T endpoints would
    look like T models in memory. Only whole pages inside the tensor are dropped; they are
    re-read from the file if touched again, since nothing ever writes to the mapping."""
    start = -(-address // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (address + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if _LIBC is not None and end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def open_checkpoints(paths: Iterable[str | Path], *, allow_pickle: bool = False) -> list[Checkpoint]:
    return [Checkpoint.open(path, allow_pickle=allow_pickle) for path in paths]


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in a model folder, in a fixed order, for reading (a fine-tune's
    `tokenizer.json` may well link to its base's)."""
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def copied_tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files, for copying into an output folder: a link out of the model is refused
    (`model_file`)."""
    return [file for name in TOKENIZER_FILES if (file := model_file(folder, name)) is not None]


def model_file(folder: Path, name: str) -> Path | None:
    """`folder/name` if it is a file (None if not), for copying into an output folder.

    A link whose target is neither in the model folder nor a Hub cache blob (see `is_model_own`) is
    refused, naming it: copied, the target (`merges.txt -> ~/.ssh/id_rsa`) would land in a
    world-readable output that export uploads.
    """
    file = folder / name
    if not file.is_file():
        return None
    target = file.resolve()
    if not is_model_own(folder, file):
        raise UserError(f"{file}: links to {target}, outside the model folder; refusing to copy it into the output "
                        "(copy the file into the model folder if it belongs to the model)")
    return file


def is_model_own(folder: Path, file: Path) -> bool:
    """Whether a model folder's `file` may resolve where it does: into the folder itself, or to a
    blob of a Hugging Face Hub cache repo (`<repo>/blobs/<hash>`) reached through that repo's
    `snapshots/` (a snapshot, a subfolder of one, or a folder of links to one: `ln -s
    …/snapshots/<commit>/* .`), under any repo folder name or disk. A link straight into some
    repo's blobs (another model's file, whose hash names it) is none of the model's."""
    target = file.resolve()
    if target.is_relative_to(folder.resolve()):
        return True
    blobs = target.parent
    if blobs.name != "blobs" or not (blobs.parent / "snapshots").is_dir():
        return False
    snapshots = (blobs.parent / "snapshots").resolve()
    return any(hop.is_relative_to(snapshots) for hop in _link_hops(file))


def _link_hops(file: Path, limit: int = 40) -> Iterator[Path]:
    """`file` and each path its links lead through, each with its folder resolved (not itself)."""
    path = Path(os.path.abspath(file))
    for _ in range(limit):
        yield path.parent.resolve() / path.name
        if not path.is_symlink():
            return
        path = Path(os.path.normpath(path.parent / path.readlink()))


def _locate(path: Path) -> tuple[Path | None, list[Path], dict[str, str] | None]:
    """(model folder, weights files, index name -> file name or None) for a user-given path."""
    if not path.exists():
        raise UserError(f"model path not found: {path}")
    if path.is_dir():
        folder = path
        # transformers' order: model.safetensors before an index (a folder saved again with shards keeps the
        # former file, which transformers, and so a scored model, reads)
        candidates = [folder / SAFETENSORS_SINGLE, folder / SAFETENSORS_INDEX]
        candidates += sorted(folder.glob("*.safetensors"))
        candidates += [folder / PICKLE_SINGLE, folder / PICKLE_INDEX]
        candidates += sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        found = next((f for f in candidates if f.is_file()), None)
        if found is None and (broken := next((f for f in candidates if f.is_symlink()), None)):
            # a Hub cache snapshot links to blobs: one deleted, or a download cut short, leaves the link
            raise UserError(f"{broken} is a link to a missing file ({broken.readlink()}): an incomplete "
                            "download, or a cache entry removed; fetch the model again")
        if found is None:
            raise UserError(
                f"no weights in {folder}: expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or a "
                "single .safetensors file (pickle files with `merge --allow-pickle`)"
            )
        if (folder / ADAPTER_CONFIG).is_file() and found.name.startswith("adapter_model."):
            raise UserError(f"{folder} is a LoRA adapter ({ADAPTER_CONFIG}), not a model: give it after the model "
                            f"it was trained on, as MODEL+ADAPTER")
        if found.suffix == ".safetensors" and found.name != SAFETENSORS_SINGLE:
            others = sorted(folder.glob("*.safetensors"))
            if len(others) > 1:
                raise UserError(f"{folder} holds several .safetensors files but no {SAFETENSORS_INDEX}")
        path = found
    elif path.name.endswith(".index.json") or path.suffix == ".safetensors" or path.suffix in PICKLE_SUFFIXES:
        folder = path.parent if (path.parent / "config.json").is_file() or path.name.endswith(".index.json") else None
    else:
        raise UserError(f"{path}: not a weights file (expected .safetensors, an .index.json, or a pickle)")
    if not path.name.endswith(".index.json"):
        return folder, [path], None
    index = _read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{path}: no 'weight_map' mapping tensor names to files")
    shards = list(dict.fromkeys(weight_map.values()))  # a few files, named once per tensor
    for name in shards:
        _check_shard_name(path, name)
    files = [path.parent / name for name in shards]
    for file in files:
        if not file.is_file():
            raise UserError(f"{path}: lists shard {file.name}, which is missing")
    return path.parent, files, weight_map


def _check_shard_name(index: Path, name: object) -> None:
    """A shard is a weights file beside its index, named plainly: a path (`/elsewhere/x.safetensors`,
    `../x`, `shards/x`) would read weights from outside the model folder, which its digest does not
    cover, and a name without a weights suffix would be read as a pickle without --allow-pickle."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
    if not plain or not (name.endswith(".safetensors") or Path(name).suffix in PICKLE_SUFFIXES):
        raise UserError(f"{index}: shard {name!r} is not the name of a weights file beside the index "
                        "(no folders; .safetensors, or a pickle)")


def weight_files(path: Path) -> list[Path]:
    """The weights files that a checkpoint of `path` (a folder, index or file) reads."""
    return _locate(expand_home(path))[1]


def _open_weights_file(path: Path) -> _WeightsFile:
    return SafetensorsFile(path) if path.suffix == ".safetensors" else _PickleFile(path)


def read_config(folder: Path) -> dict | None:
    """config.json of a model folder as a dict (None when it has none)."""
    file = folder / "config.json"
    return read_json_object(file) if file.is_file() else None


def read_json_object(file: Path, what: str = "a JSON object") -> dict:
    """A JSON file holding an object (a config); unreadable or anything else is one line naming it."""
    value = _read_json(file)
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected {what}")
    return value


def _read_json(file: Path) -> Any:
    try:
        return parse_json(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{file}: not valid JSON ({err})") from err
