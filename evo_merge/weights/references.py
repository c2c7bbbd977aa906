"""Model references as recipes write them: a folder, a Hub id `org/name[@revision]`, and either
followed by `+adapter` (a PEFT LoRA adapter applied before merging: a folder or a Hub id too).

A reference that is not an existing path is looked up with huggingface_hub in the user's cache
(downloading only when HF_HUB_OFFLINE is not set). The merge records the Hub id with the commit
it resolved to, never the cache path, so the recipe it writes rebuilds the same weights anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from evo_merge.errors import MissingModel, UserError, first_line
from evo_merge.markup import shell
from evo_merge.user_paths import expand_home
from evo_merge.weights.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Checkpoint, weight_files
from evo_merge.weights.lora import LoraCheckpoint

_REVISION = re.compile(r"^[\w.\-/]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

log = logging.getLogger(__name__)
_SAID_SHADOWING: set[tuple[str, Path]] = set()
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # what a merge reads of a Hub model


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: where the weights are, and how a recipe names them."""

    name: str  # folder (absolute) or `org/name@commit`, plus `+adapter` if any
    path: Path
    lora: Path | None = None


def resolve_reference(value: str, root: Path | None, key: str) -> ModelRef:
    """Resolve a recipe's model reference; errors name the recipe key. `root`: the folder a relative
    path is read against before the working directory (a recipe's); None for a reference as a run
    stores it (`resolve_campaign` made its folders absolute), where a relative name is a Hub id and
    never a folder of the working directory."""
    model, lora = split_adapter(value, root)
    if not model.strip():  # `+adapter` took the recipe's own folder for the model
        raise UserError(f"{key}: no model named" + (f" before the '+' of {value!r} (MODEL+ADAPTER)" if lora else ""))
    if lora is not None and not lora.strip():
        raise UserError(f"{key}: {value!r} names no adapter after the '+' (MODEL+ADAPTER)")
    path, name = _resolve_model(model, root, key)
    if lora is None:
        return ModelRef(name, path)
    adapter, adapter_name = _resolve_adapter(lora, root, key)
    return ModelRef(f"{name}+{adapter_name}", path, adapter)


def _resolve_adapter(value: str, root: Path | None, key: str) -> tuple[Path, str]:
    """A LoRA adapter's folder and how a recipe names it: a local folder, or a Hub id (as models are)."""
    local = _local_path(value, root)
    if local is not None and local.is_dir():
        say_if_shadowing(value, local, key)
        return local, str(local)
    hub = _hub_id(value, key)
    if local is not None or hub is None:
        raise UserError(f"{key}: LoRA adapter folder {value!r} not found (nor a Hub id, org/name[@revision])")
    repo, revision = hub
    path = _snapshot(repo, revision, f"{key} (LoRA adapter)", _looked_in(root))
    return path, f"{repo}@{path.name}"


def check_distinct(refs: Mapping[str, ModelRef], base: str) -> None:
    """Each endpoint once, and none the base: a model listed twice splits one task vector over two
    coefficients, and the base as an endpoint adds a task vector of zeros; both make the genome
    larger and the search slower for nothing, and are a mistake in the list more often than not.
    Two references are the same model when they name the same folder (links resolved) with the
    same adapter; copies of a folder are not looked for (a sampled digest could not tell two
    fine-tunes that differ only in a few layers apart)."""
    seen: dict[tuple[Path, Path | None], str] = {}
    for key in sorted(refs, key=lambda k: k != base):  # the base (its key) first: "models.2 is the base"
        ref = refs[key]
        same = (ref.path.resolve(), ref.lora.resolve() if ref.lora is not None else None)
        if same in seen:
            what = "the base model" if seen[same] == base else f"the same model as {seen[same]}"
            raise UserError(f"{key} ({ref.name}): {what}; list each endpoint once, and not the base")
        seen[same] = key


def open_reference(ref: ModelRef, allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint of a resolved reference, with its LoRA adapter folded in if it has one."""
    if ref.lora is not None:
        return LoraCheckpoint.open_with_adapter(ref.path, ref.lora, allow_pickle=allow_pickle)
    return Checkpoint.open(ref.path, allow_pickle=allow_pickle)


def short_label(value: str) -> str:
    """A model reference as tables name it: a folder by its name, a Hub id without its revision,
    `+adapter` kept (`base+lora1` is not the base). A snapshot folder's name is a commit hash."""
    model, lora = split_adapter(value, Path("/"))
    parts = [model] if lora is None else [model, lora]
    return "+".join(Path(p).name if _local_path(p, Path("/")) is not None else p.partition("@")[0] for p in parts)


def split_adapter(value: str, root: Path | None) -> tuple[str, str | None]:
    """`model+adapter` -> (model, adapter or None); a path that itself contains '+' is kept whole."""
    if "+" not in value or _local_path(value, root) is not None:
        return value, None
    model, adapter = value.rsplit("+", 1)
    return model, adapter


def _local_path(value: str, root: Path | None) -> Path | None:
    path = expand_home(value)
    relative = [] if root is None else [root / path, Path.cwd() / path]
    for candidate in [path] if path.is_absolute() else relative:
        if candidate.exists():
            return candidate.resolve()
    return None


def _resolve_model(value: str, root: Path | None, key: str) -> tuple[Path, str]:
    local = _local_path(value, root)
    if local is not None:
        say_if_shadowing(value, local, key)
        return local, str(local)
    hub = _hub_id(value, key)
    if hub is None:
        raise MissingModel(f"{key}: model path {value!r} does not exist and is not a Hub id (org/name[@revision])")
    repo, revision = hub
    path = _snapshot(repo, revision, key, _looked_in(root))
    return path, f"{repo}@{path.name}"


def say_if_shadowing(value: str, local: Path, key: str) -> None:
    """A relative folder is read before a Hub id of the same spelling: `org/name` in a recipe copied
    from a model card is the folder `org/name` wherever one exists (`hf download --local-dir`
    leaves them), other weights than the card's, and the card then lists no such Hub model. Where
    the Hub cache holds that model too, the two readings are said (audit 137)."""
    from huggingface_hub import constants

    if Path(value).is_absolute() or not _looks_like_repo_id(value) or (value, local) in _SAID_SHADOWING:
        return
    if (Path(constants.HF_HUB_CACHE) / f"models--{value.replace('/', '--')}").is_dir():
        _SAID_SHADOWING.add((value, local))  # once: a campaign is resolved by several checks of one command
        log.warning(f"{key}: {value!r} is read as the folder {local}, not as the Hub model {value} in your cache; "
                    f"write {value}@main for the Hub model, or ./{value} to say the folder is meant")


def _hub_id(value: str, key: str) -> tuple[str, str | None] | None:
    """(repo, revision or None) of `org/name[@revision]`; None where `value` is no Hub id. A Hub id
    whose revision is none (`org/name@`), or could step out of the cache's refs/, is refused by name."""
    repo, at, revision = value.partition("@")
    if not _looks_like_repo_id(repo):
        return None
    if at and not is_revision(revision):
        raise UserError(f"{key}: {value!r}: {revision!r} is not a branch, tag or commit name of {repo} (letters, "
                        "digits, '_', '-', '.' and '/'-separated parts, none of them empty, '.' or '..')")
    return repo, revision or None


def is_hub_id(value: str) -> bool:
    """Whether `value` (without `@revision`) has the form of a Hub repo id, `org/name`."""
    return _looks_like_repo_id(value.partition("@")[0])


def is_revision(revision: str) -> bool:
    """A branch, tag or commit name: huggingface_hub joins it to the cache's refs/ folder, so a part
    `..` (or an empty one, `/x`) would read a file elsewhere as the commit to load; `push --revision`
    takes the same names for the branch it creates."""
    return bool(_REVISION.match(revision)) and all(part not in ("", ".", "..") for part in revision.split("/"))


def _looks_like_repo_id(repo: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def _looked_in(root: Path | None) -> str:
    """Where a relative name was looked for as a folder before it was taken for a Hub id."""
    return "beside the campaign file" if root is None else "here"


def _snapshot(repo: str, revision: str | None, key: str, looked_in: str = "here") -> Path:
    """The local snapshot folder of a Hub model (weights, config and tokenizer files only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    # a relative name that is no folder here is taken for a Hub id: say both, a typo'd path is likelier
    model = repo + (f"@{revision}" if revision else "")
    where = f"{key}: no folder {repo} {looked_in}, and Hub model {model}"
    download = shell("hf", "download", repo, *(["--revision", revision] if revision else []))

    def snapshot(local_only: bool) -> Path:
        folder = snapshot_download(repo, revision=revision, local_files_only=local_only, allow_patterns=SNAPSHOT_FILES)
        return _checked_snapshot(Path(folder), repo, f"{key}: Hub model {model}")

    folder, problem = None, None
    try:
        # a commit is immutable: one the cache holds whole is read from it, without asking the Hub (a
        # recipe an export wrote pins every Hub model so, and a machine without a route waited ~26 s per
        # model); one a download left short is completed where the Hub can be reached
        if revision is not None and _COMMIT.match(revision) and not offline:
            with contextlib.suppress(LocalEntryNotFoundError):
                folder = snapshot(local_only=True)
                problem = _missing_weights(folder)
        if folder is None or problem:
            folder = snapshot(local_only=offline)
            problem = _missing_weights(folder)
    except GatedRepoError:
        raise UserError(f"{where} is gated: accept its terms on the Hub and log in (huggingface-cli login)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{where} not found (or private: log in with huggingface-cli login)") from None
    except RevisionNotFoundError:
        raise UserError(f"{where}: no such revision") from None
    except LocalEntryNotFoundError:
        hint = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        # missing here, as a moved folder is: a run folder's own campaign says how to mend either
        raise MissingModel(f"{where} is not in the local cache and {hint} (`{download}` where the Hub can be reached "
                           "fills the cache)") from None
    except (HfHubHTTPError, OSError) as err:
        raise UserError(f"{where}: {first_line(err)}") from None
    if problem:
        raise UserError(f"{key}: Hub model {model}: {problem} (a download cut short? `{download}` completes it)")
    return folder


def _missing_weights(folder: Path) -> str | None:
    """What a Hub snapshot lacks of the weights a merge reads (a download cut short): a LoRA
    adapter's file, or a model's weights and every shard its index lists; None when it holds them."""
    if (folder / ADAPTER_CONFIG).is_file():
        return None if (folder / ADAPTER_WEIGHTS).is_file() else f"no {ADAPTER_WEIGHTS} in {folder}"
    try:
        weight_files(folder)
    except UserError as exc:
        return str(exc)
    return None


def _checked_snapshot(folder: Path, repo: str, where: str) -> Path:
    """The snapshot folder, refused unless it really is `snapshots/<commit>` of the repo's cache folder:
    a refs file holding `../..`, or a snapshot that is a link, would load weights from elsewhere
    under the repo's name (and the saved recipe and card would claim them)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo_folder = expand_home(constants.HF_HUB_CACHE).resolve() / repo_folder_name(repo_id=repo, repo_type="model")
    real = folder.resolve()
    if real.parent != repo_folder.resolve() / "snapshots" or not _COMMIT.match(real.name):
        raise UserError(f"{where} resolves to {real}, not a commit's snapshot folder in {repo_folder}/snapshots "
                        "(a refs file or snapshot link in the cache points elsewhere); refusing it")
    blobs = repo_folder.resolve() / "blobs"
    for file in sorted(f for f in folder.rglob("*") if f.is_file()):  # a snapshot's files link to its blobs
        target = file.resolve()
        if not (target.is_relative_to(blobs) or target.is_relative_to(real)):
            raise UserError(f"{where}: its file {file.relative_to(folder)} links to {target}, outside the repo's "
                            "cache folder, which would load other files under the repo's name; refusing it")
    return real
