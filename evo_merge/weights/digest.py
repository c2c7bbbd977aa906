"""A cheap identity for the weights behind a model reference, so a run folder notices when the
models it started with were replaced (a folder overwritten, two endpoints' files swapped).

Whole files would take minutes to hash at 7B, so the digest takes each weight file's name and size
and SAMPLES evenly spaced blocks of it. Checkpoints of one architecture share names, sizes and the
safetensors header, but a fine-tune changes its tensors throughout: even one that changed only an
eighth of its weights escapes all 63 data samples with probability (7/8)^63 ≈ 0.02%. A hand edit
of one small tensor (a norm scaled) escapes them all, so a safetensors file also gives the first
and last TENSOR_BYTES of every tensor (a 7B checkpoint's 291 tensors: 0.3 MB more to read); an
edit of a few entries inside a large tensor still escapes.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import BinaryIO

from evo_merge.files import parse_json
from evo_merge.weights.checkpoint import PICKLE_SUFFIXES, TOKENIZER_FILES, weight_files
from evo_merge.weights.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from evo_merge.weights.references import ModelRef

SAMPLES = 64
SAMPLE_BYTES = 4096
TENSOR_BYTES = 512
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# what a model is built and scored with beside its weights: its architecture, its generation settings (a
# generated answer stops at its eos) and its tokenizer
MODEL_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def weights_digest(ref: ModelRef) -> str:
    """Hex digest of the files a checkpoint of the reference reads: its weight files (an index's
    shards included), and its LoRA adapter's weights and config (lora_alpha and r scale the update),
    with the ends of every tensor of a safetensors file."""
    return _digest(_read_files(ref), every_tensor=True)


def model_files_digests(ref: ModelRef) -> dict[str, str | None]:
    """Hex digest of each of the reference's `MODEL_FILES`, read whole (a few MB at most), None for
    one the folder lacks: an activation edited in config.json, another tokenizer, or an eos added
    in a generation config scores another model from the same weights. One entry per file, so a
    refusal names the file and a name added to `MODEL_FILES` later is checked from then on instead
    of refusing every folder recorded before."""
    folder = ref.path if ref.path.is_dir() else ref.path.parent
    return {name: (hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
                   if (folder / name).is_file() else None) for name in MODEL_FILES}


def former_model_files_digests(ref: ModelRef) -> tuple[str, ...]:
    """The one combined digest of the model files run folders recorded before the per-file record, for
    each list of names it covered (the first without the generation config and chat_template.json)."""
    folder = ref.path if ref.path.is_dir() else ref.path.parent
    return tuple(_combined_digest(folder, names) for names in _FORMER_MODEL_FILES)


# the names, in their order, that the combined digest covered (a sentencepiece or WordPiece
# vocabulary came later, checked file by file)
_COMBINED_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
_FORMER_MODEL_FILES = (_COMBINED_NAMES, tuple(n for n in _COMBINED_NAMES if n not in ("generation_config.json",
                                                                                     "chat_template.json")))


def _combined_digest(folder: Path, names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        if (file := folder / name).is_file():
            digest.update(name.encode() + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def model_file_paths(ref: ModelRef) -> list[Path]:
    """Every file a model is built and scored from: its weight files (an index's shards), its LoRA
    adapter's weights and config, and the `MODEL_FILES` its folder holds."""
    folder = ref.path if ref.path.is_dir() else ref.path.parent
    return _read_files(ref) + [folder / name for name in MODEL_FILES if (folder / name).is_file()]


def former_weights_digests(ref: ModelRef) -> tuple[str, str]:
    """The digests run folders recorded before, each checked as it was made, then replaced:
    the evenly spaced samples alone (before every tensor's ends), and before that the weight files
    at the top of the reference's folder and its adapter's (an index given as the path: the index
    alone), no adapter config."""
    top = _top_weight_files(ref.path) + (_top_weight_files(ref.lora) if ref.lora is not None else [])
    return _digest(_read_files(ref), every_tensor=False), _digest(top, every_tensor=False)


def _read_files(ref: ModelRef) -> list[Path]:
    files = sorted(weight_files(ref.path))
    if ref.lora is not None:
        files += [f for f in (ref.lora / ADAPTER_WEIGHTS, ref.lora / ADAPTER_CONFIG) if f.is_file()]
    return files


def _top_weight_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())


def _digest(files: list[Path], every_tensor: bool) -> str:
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as fh:
            for k in range(SAMPLES):
                fh.seek(size * k // SAMPLES)
                digest.update(fh.read(SAMPLE_BYTES))
            if every_tensor and file.suffix == ".safetensors":
                for start, end in _tensor_spans(fh, size):
                    for at in dict.fromkeys((start, max(start, end - TENSOR_BYTES))):
                        fh.seek(at)
                        digest.update(fh.read(min(TENSOR_BYTES, end - at)))
    return digest.hexdigest()[:16]


def _tensor_spans(fh: BinaryIO, size: int) -> list[tuple[int, int]]:
    """(start, end) in the file of each tensor's bytes, from the safetensors header; none from a
    file whose header does not parse (loading it names the fault, not its digest)."""
    fh.seek(0)
    try:
        length = struct.unpack("<Q", fh.read(8))[0]
        header = parse_json(fh.read(length)) if 8 + length <= size else {}
        spans = [(8 + length + int(t["data_offsets"][0]), 8 + length + int(t["data_offsets"][1]))
                 for name, t in sorted(header.items()) if name != "__metadata__"]
    except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return []
    return [(start, end) for start, end in spans if 0 <= start <= end <= size]
