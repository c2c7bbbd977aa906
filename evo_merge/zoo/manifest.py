"""`zoo.json`: what a built zoo holds, read and written in one place.

A zoo folder holds `base/`, one model folder per endpoint and `zoo.json` naming them with the
settings they were built from (their hash decides whether a rebuild can reuse the folder). The
CLI, the demo and the benchmark scripts only need the model names, the zoo builders the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from evo_merge.errors import UserError
from evo_merge.files import atomic_write, parse_json

ZOO_JSON = "zoo.json"
BASE = "base"


class ZooManifest(BaseModel):
    """The contents of `zoo.json`."""

    kind: str = Field(description="which builder made the zoo (tiny-lm, smollm2)")
    models: list[str] = Field(description="model folder names, the base first")
    key: str | None = Field(None, description="hash of the settings: a zoo with the same key is reused")
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def endpoints(self) -> list[str]:
        """The fine-tuned models (every model but the base)."""
        return [m for m in self.models if m != BASE]


def has_zoo(folder: str | Path) -> bool:
    return (Path(folder) / ZOO_JSON).is_file()


def read_zoo(folder: str | Path) -> ZooManifest:
    """The manifest of a zoo folder; a missing or malformed one is a one-line user error."""
    file = Path(folder) / ZOO_JSON
    if not file.is_file():
        if (Path(folder) / "manifest.json").is_file():  # the mnist zoo: classifiers, no language-model tasks
            raise UserError(f"{folder}: an mnist zoo (its manifest.json); this takes a tiny-lm or smollm2 zoo, "
                            f"which names its models in {ZOO_JSON}")
        raise UserError(f"{folder}: no {ZOO_JSON} (build a tiny-lm or smollm2 zoo with `evo-merge zoo build`)")
    try:
        return ZooManifest.model_validate(parse_json(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not valid JSON ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{file}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def finished_zoo(folder: str | Path) -> ZooManifest:
    """The manifest of a zoo whose build finished: one killed half-way (or still running) is marked
    as being built (no key, no models), and its models were taken for Hub ids that were not in the
    cache (audit 96)."""
    meta = read_zoo(folder)
    if meta.key is None and not meta.models:
        raise UserError(f"{folder}: a {meta.kind} zoo whose build did not finish (interrupted, or still running); "
                        f"build it again with `evo-merge zoo build --kind {meta.kind} --out {folder}`, which "
                        "starts over")
    return meta


def write_zoo(folder: str | Path, manifest: ZooManifest) -> Path:
    file = Path(folder) / ZOO_JSON
    atomic_write(file, manifest.model_dump_json(indent=2))
    return file


def claim_zoo_folder(folder: str | Path, kind: str, key: str, force: bool = False) -> None:
    """Refuse a folder that holds anything but a zoo of this kind, before the build's minutes:
    `--zoo ~/models` would have its `base/` replaced by the zoo's; and, unless `force`, a zoo built
    with other settings (`key`), whose models runs were started on. Mark a new one as a zoo being
    built (a manifest without a key, which no build reuses), so a build killed half-way starts
    again in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a zoo folder")
    if has_zoo(folder):
        meta = read_zoo(folder)
        if meta.kind != kind:  # `init --zoo` given the smollm2 zoo: hours of work
            example = (" (its example campaign: scripts/smollm2_campaign.yaml of the evo-merge repository, "
                       "docs/zoos.md)" if meta.kind == "smollm2" else "")
            raise UserError(f"{folder}: holds a {meta.kind} zoo, not a {kind} one; give another folder{example}")
        if meta.key is not None and meta.key != key and not force:  # a finished zoo (a killed build has no key)
            raise UserError(f"{folder}: holds a {kind} zoo built with other settings ({meta.key}; these are "
                            f"{key}): building replaces its models, and run folders started on them no longer "
                            f"resume; give another folder, or replace it with `evo-merge zoo build --kind {kind} "
                            f"--out {folder} --force`")
        # marked as being built before a model is replaced: a build killed half-way over a finished zoo
        # left its old key beside new weights, and the next build reused the mix as "up to date"
        write_zoo(folder, ZooManifest(kind=kind, models=[]))
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(f"{folder}: not empty and not a zoo folder (no {ZOO_JSON}); give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_zoo(folder, ZooManifest(kind=kind, models=[]))
