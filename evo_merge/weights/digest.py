"""A cheap identity for the weights behind a model reference, so a run folder notices when the
models it started with were replaced (a folder overwritten, two endpoints' files swapped).

Whole files would take minutes to hash at 7B, so the digest takes each weight file's name and size
and SAMPLES evenly spaced blocks of it. Checkpoints of one architecture share names, sizes and the
safetensors header, but a fine-tune changes its tensors throughout: even one that changed only an
eighth of its weights escapes all 63 data samples with probability (7/8)^63 ≈ 0.02%.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from evo_merge.weights.checkpoint import PICKLE_SUFFIXES, weight_files
from evo_merge.weights.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from evo_merge.weights.references import ModelRef

SAMPLES = 64
SAMPLE_BYTES = 4096
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def weights_digest(ref: ModelRef) -> str:
    """Hex digest of the files a checkpoint of the reference reads: its weight files (an index's
    shards included), and its LoRA adapter's weights and config (lora_alpha and r scale the update)."""
    files = sorted(weight_files(ref.path))
    if ref.lora is not None:
        files += [f for f in (ref.lora / ADAPTER_WEIGHTS, ref.lora / ADAPTER_CONFIG) if f.is_file()]
    return _digest(files)


def legacy_weights_digest(ref: ModelRef) -> str:
    """The digest run folders recorded before `weights_digest` covered exactly the files read: the
    weight files at the top of the reference's folder and its adapter's (an index given as the path:
    the index alone), no adapter config. Such a record is checked against it, then replaced."""
    return _digest(_top_weight_files(ref.path) + (_top_weight_files(ref.lora) if ref.lora is not None else []))


def _top_weight_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())


def _digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as fh:
            for k in range(SAMPLES):
                fh.seek(size * k // SAMPLES)
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]
