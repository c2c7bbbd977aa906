"""Push an exported model folder to the Hugging Face Hub, after checks a reviewer would make.

Refused before any network call: a card that still names a machine path (it would publish this
machine's folder layout and mean nothing to readers), weights holding NaN or Inf (a broken merge),
a folder without weights or card, a pickle file or a weights file the model does not load (a
session's leftovers: a loader that globs `*.safetensors` would read them). Files evo-merge does not
write go with a warning naming them; Python's caches and hidden files stay behind. The token comes
from where huggingface_hub keeps it (HF_TOKEN, `hf auth login`); a dry run lists exactly the files
the upload sends (`commit_operations`), without a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evo_merge.errors import UserError, first_line
from evo_merge.merge.export import INPUTS_FILE, RECIPE_FILE
from evo_merge.merge.licenses import LICENSE_FILES, MIXED_FILE
from evo_merge.merge.results import ITEM_SCORES_FILE, RESULTS_FILE
from evo_merge.search.layout import MODELS_FOLDER
from evo_merge.search.store import CampaignStore
from evo_merge.weights import Checkpoint
from evo_merge.weights.checkpoint import PICKLE_SUFFIXES, SAFETENSORS_INDEX, TOKENIZER_FILES, weight_files
from evo_merge.weights.dtypes import all_finite
from evo_merge.weights.export import COPIED_FILES, MASS_JSON
from evo_merge.weights.references import is_revision

# an absolute POSIX path of two or more components (not a URL's //host), a home path, a Windows drive;
# or one after a Hub id's `+`: a LoRA adapter's folder (`org/name@sha+/home/me/adapter`; a `+` in other
# text, `C++/CUDA` or `+/-0.02/0.03`, starts none)
_PATH = r"~?/(?![/\s])[^\s\"'`)\],]*/[^\s\"'`)\],/][^\s\"'`)\],]*"
_LOCAL_PATH = re.compile(
    rf"(?:^|[\s\"'`(\[=,])({_PATH}|[A-Za-z]:\\[^\s\"'`]+)|[\w.-]+/[\w.-]+(?:@[\w.-]+)?\+({_PATH})"
)
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".jinja")
# what evo-merge writes into a model folder beside its weights (`.py` files too: the code a config's
# auto_map names, copied from the input); anything else is said before it is published
WRITTEN_FILES = frozenset({"README.md", RECIPE_FILE, INPUTS_FILE, RESULTS_FILE, ITEM_SCORES_FILE, SAFETENSORS_INDEX,
                           MIXED_FILE, MASS_JSON, *LICENSE_FILES, *COPIED_FILES, *TOKENIZER_FILES})
LEFT_BEHIND = ("__pycache__",)  # Python's caches of the copied code: never part of a model
LOGIN_HINT = (
    "log in with `hf auth login` (or set HF_TOKEN to a write token from https://huggingface.co/settings/tokens)"
)


@dataclass
class UploadPlan:
    """What a push would send: files relative to the folder, with their sizes; warnings to show."""

    folder: Path
    files: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def local_paths(text: str) -> list[str]:
    """Machine paths named in `text` (absolute, home-relative or drive paths)."""
    return [m.group(1) or m.group(2) for m in _LOCAL_PATH.finditer(text)]


def check_finite(folder: Path) -> None:
    """Refuse weights holding NaN or Inf, naming the first such tensor."""
    with Checkpoint.open(folder) as checkpoint:
        for name in checkpoint.names:
            tensor = checkpoint.tensor(name)
            if tensor.is_floating_point() and not all_finite(tensor):
                raise UserError(f"{folder}: tensor {name} holds NaN or Inf; refusing to upload a broken model")


def plan_upload(folder: str | Path) -> UploadPlan:
    """Check `folder` and list what would be uploaded: every visible file, each sent by its name."""
    folder = Path(folder)
    card = folder / "README.md"
    if not card.is_file() and (folder / CampaignStore.DB).is_file():  # a run folder: its picks are in models/
        picks = sorted(p.name for p in (folder / MODELS_FOLDER).glob("*") if (p / "README.md").is_file())
        raise UserError(f"{folder}: a campaign run folder; push one of its picks"
                        + (f": {', '.join(str(folder / MODELS_FOLDER / p) for p in picks)}" if picks else
                           " once exported (`evo-merge export`)"))
    if not card.is_file():
        raise UserError(f"{folder}: no README.md model card; export the pick with evo-merge first")
    if not _evo_merge_card(card):
        raise UserError(f"{card}: not a card evo-merge wrote (no `evo-merge` tag); push only folders it exported")
    if found := local_paths(card.read_text(encoding="utf-8", errors="replace")):
        raise UserError(f"{card}: the card names the local path {found[0]}; refusing to publish it")
    check_finite(folder)
    plan = UploadPlan(folder)
    own = folder.resolve()
    models = _model_folders(folder)
    weights = {p.resolve() for model in models for p in weight_files(model)}
    unknown = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part in LEFT_BEHIND for part in relative.parts) or path.suffix == ".pyc":
            continue
        if not path.resolve().is_relative_to(own):  # an upload reads through links: the target would be published
            raise UserError(f"{path}: links to {path.resolve()}, outside the folder; refusing to upload it")
        _refuse_stray_weights(path, weights)
        plan.files.append((relative.as_posix(), path.stat().st_size))
        if path.suffix in TEXT_SUFFIXES and path != card and (found := local_paths(path.read_text(errors="replace"))):
            plan.warnings.append(f"{relative} names local paths (e.g. {found[0]}): readers cannot use them")
        within = path.relative_to(max((m for m in models if path.is_relative_to(m)), key=lambda m: len(m.parts)))
        if path.resolve() not in weights and within.as_posix() not in WRITTEN_FILES and not (
                len(within.parts) == 1 and path.suffix == ".py"):
            unknown.append(relative.as_posix())
    if unknown:
        plan.warnings.append(f"{len(unknown)} file{'s' * (len(unknown) != 1)} evo-merge did not write would be "
                             f"published too: {', '.join(unknown)}; remove what does not belong in the repo")
    return plan


def _model_folders(folder: Path) -> list[Path]:
    """The model folders `folder` holds: itself, and a MASS folder's copy of its base (`base/`)."""
    from evo_merge.mass.model import BASE_FOLDER

    base = folder / BASE_FOLDER
    return [folder, base] if (folder / MASS_JSON).is_file() and base.is_dir() else [folder]


def _refuse_stray_weights(path: Path, weights: set[Path]) -> None:
    """A pickle checkpoint (code runs when it is loaded; evo-merge writes safetensors only), or a
    safetensors file the model's index does not list (an older merge's shard, a copy): a loader or a
    leaderboard that globs the folder's weights would read it. Either is refused, named."""
    if path.suffix in PICKLE_SUFFIXES:
        raise UserError(f"{path}: a pickle checkpoint, which runs code when it is loaded (evo-merge writes "
                        "safetensors only); remove it before pushing")
    if path.suffix == ".safetensors" and path.resolve() not in weights:
        raise UserError(f"{path}: a weights file the model does not load (not among those its index or "
                        "model.safetensors name); remove it before pushing: tools that read every *.safetensors "
                        "would load it")


def _evo_merge_card(card: Path) -> bool:
    """Whether the card's front matter has the `evo-merge` tag every card evo-merge writes has."""
    from huggingface_hub import metadata_load

    try:
        tags = (metadata_load(card) or {}).get("tags") or []
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):  # not a card the Hub could read either
        return False
    return isinstance(tags, list) and "evo-merge" in tags


def hub_token() -> str:
    """The user's Hub token, or a one-line user error saying how to log in."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def push_to_hub(plan: UploadPlan, repo_id: str, *, private: bool | None = None, revision: str | None = None) -> str:
    """Create the repo (and branch `revision`) if needed and upload the planned folder; the commit URL.

    `private` None: a new repo takes its owner's default visibility (an organisation's may be
    private), not public. `private` True on a repo that exists and is public is refused before any
    file is sent: the Hub leaves an existing repo's visibility as it is, and the upload would publish."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo_id)
    check_revision(revision)
    api = HfApi(token=hub_token())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and api.model_info(repo_id).private is False:
            raise UserError(f"{repo_id} exists and is public: --private does not change an existing repo; make it "
                            "private on the Hub first, or push without --private")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id,
            operations=commit_operations(plan),
            revision=revision,
            commit_message="Upload merged model exported by evo-merge",
        )
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to upload") from None
    except HfHubHTTPError as exc:  # the Hub's reason, where it gave one: the message's first line is the status
        raise UserError(f"upload to {repo_id} failed: {_hub_reason(exc)}") from None
    except (OSError, ValueError, *_transport_errors()) as exc:  # ValueError: an id or revision the Hub refuses
        raise UserError(f"upload to {repo_id} failed: {first_line(exc)}") from None
    return str(commit.commit_url)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What the HTTP client huggingface_hub sends its requests with raises when the Hub cannot be
    reached: requests' errors (before huggingface_hub 1.0) are OSErrors, httpx's and httpx2's (the
    client it names `huggingface_hub.utils.httpx`) are not, and a push with no route to the Hub
    showed a traceback (audit 137)."""
    from huggingface_hub import utils

    client = getattr(utils, "httpx", None)
    return (client.TransportError,) if client is not None else ()


def _hub_reason(exc: Exception) -> str:
    """The status line of a refused request, with the reason the Hub sent (its `server_message`),
    which huggingface_hub puts on a later line or leaves out of the message."""
    status = first_line(exc).rstrip(": ")
    reason = (getattr(exc, "server_message", None) or "").strip().replace("\n", " ")
    return f"{status}: {reason}" if reason and reason not in status else status


def commit_operations(plan: UploadPlan) -> list:
    """One upload per file the plan lists, by its name: `upload_folder(allow_patterns=names)` read
    each name as a glob, so a file named `*.txt` or `a[1].json` sent other files than the dry run
    listed, or not itself (audit 95)."""
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name)) for name, _ in plan.files]


def check_revision(revision: str | None) -> None:
    """`--revision`, a branch the upload creates: refused before any work unless git and the Hub take
    it as a branch name (the rules a recipe's `@revision` follows), where the Hub refused it only
    after the export and the checks."""
    if revision is not None and not is_revision(revision):
        raise UserError(f"--revision {revision!r}: not a branch name (letters, digits, '_', '-', '.' and "
                        "'/'-separated parts, none of them empty, '.' or '..')")


def check_repo_id(repo_id: str, option: str = "--push-to-hub") -> str:
    """`repo_id` if the Hub takes it (huggingface_hub's own check: NAME in your namespace, or
    ORG/NAME), else a user error, before any export: a refusal at upload came after the work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"{option} {repo_id!r}: not a Hub repo id ({first_line(exc)})") from None
    return repo_id
