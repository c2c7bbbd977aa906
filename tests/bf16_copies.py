"""A model family with its weights stored in bfloat16, as most published LMs are: copies of
float32 test folders (configs, tokenizers) whose safetensors files hold the rounded tensors."""

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def bf16_copies(base: Path, models: list[Path], out: Path) -> tuple[Path, list[Path]]:
    """(base, models) copied under `out`, each folder's tensors in bfloat16."""
    copies = []
    for folder in (base, *models):
        copy = Path(shutil.copytree(folder, out / folder.name))
        for file in copy.glob("*.safetensors"):
            save_file({k: v.bfloat16() for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
        copies.append(copy)
    return copies[0], copies[1:]
