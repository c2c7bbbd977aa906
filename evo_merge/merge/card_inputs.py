"""How a model card names its inputs: a Hub id with its revision (found in a recipe's model string,
or in a folder of the Hub cache), or a local folder by its name: a machine path says nothing to a
reader and reveals this machine. Shared by the card and its license."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from evo_merge.user_paths import expand_home
from evo_merge.weights.references import is_hub_id

_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\](?P<rev>[0-9a-f]{7,64})")


@dataclass(frozen=True)
class CardInput:
    """An input model as a card names it: a Hub id (with revision) or a local folder's name, and
    the name of a LoRA adapter applied to it."""

    label: str
    hub_id: str | None = None
    revision: str | None = None
    folder: Path | None = None
    adapter: str | None = None
    adapter_folder: Path | None = None  # for the adapter's own license
    adapter_local: bool = False  # the adapter named by a folder of this machine, not a Hub id
    adapter_hub_id: str | None = None  # the adapter's Hub repo: a model the merge derives from too

    @property
    def display(self) -> str:
        name = f"{self.hub_id}@{self.revision}" if self.hub_id and self.revision else self.label
        return f"{name} + LoRA {self.adapter}" if self.adapter else name


def model_ref(reference: str, *, hub_id: str | None = None, revision: str | None = None) -> CardInput:
    """How the card names the input `reference` (a recipe's model string: a folder or
    `org/name[@rev]`, either followed by `+adapter`).

    Explicit `hub_id`/`revision` win; a folder inside the Hub cache (models--org--name/snapshots/
    SHA) is that Hub model at that revision; `org/name[@rev]` that is not a local path is a Hub id;
    anything else is a local folder, named by its last component."""
    path = expand_home(reference)
    if "+" in reference and not path.exists():
        model, adapter = reference.rsplit("+", 1)
        adapter_ref = model_ref(adapter)  # a folder, or a Hub id with its cached snapshot
        return replace(model_ref(model, hub_id=hub_id, revision=revision), adapter=adapter_ref.display,
                       adapter_folder=adapter_ref.folder, adapter_local=adapter_ref.hub_id is None,
                       adapter_hub_id=adapter_ref.hub_id)
    folder = path if path.is_dir() else None
    if hub_id is None and (cached := _CACHE_SNAPSHOT.search(str(reference))):
        hub_id, revision = f"{cached['org']}/{cached['name']}", revision or cached["rev"]
    if hub_id is None and folder is None:
        name, _, rev = reference.partition("@")
        if is_hub_id(name):  # as a recipe's model string is read (`weights.references`)
            hub_id, revision = name, revision or rev or None
    if hub_id is not None:
        return CardInput(hub_id, hub_id, revision, folder or cached_snapshot(hub_id, revision))
    return CardInput(path.name or reference, folder=folder)


def model_refs(references: Sequence[str]) -> dict[str, CardInput]:
    """Each reference as the card names it (`model_ref`), local folders that share a name told
    apart by as many of their parent folders as it takes (`a/final`, `b/final`): named alike, two
    inputs were one entry of the card's license list, the last one's license standing for both. One
    folder named twice (the base, and the base under a LoRA adapter) is one name, not a clash."""
    refs = {reference: model_ref(reference) for reference in dict.fromkeys(references)}
    labels = {reference: ref.label for reference, ref in refs.items()}

    def model_path(reference: str) -> Path:  # the folder of its model, its adapter left out
        return expand_home(reference.rsplit("+", 1)[0] if refs[reference].adapter else reference)

    def parts(reference: str) -> tuple[str, ...]:  # the folders of its path, the root left out
        path = model_path(reference)
        return path.parts[1:] if path.is_absolute() else path.parts

    local = [r for r in refs if refs[r].hub_id is None]
    for depth in range(2, 64):
        folders: dict[str, set[Path]] = {}  # label -> the folders it names
        for reference in local:
            folders.setdefault(labels[reference], set()).add(model_path(reference).resolve())
        clashing = [r for r in local if len(folders[labels[r]]) > 1]
        if not clashing:
            break
        if depth >= min(len(parts(r)) for r in clashing):  # one is a tail of another: its whole path would
            numbers: dict[Path, int] = {}  # name this machine's folders
            for reference in clashing:
                number = numbers.setdefault(model_path(reference).resolve(), len(numbers) + 1)
                labels[reference] = f"{labels[reference].rsplit('/', 1)[-1]} ({number})"
            break
        for reference in clashing:
            labels[reference] = "/".join(parts(reference)[-depth:])
    return {reference: replace(ref, label=labels[reference]) for reference, ref in refs.items()}


def cached_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The Hub model's folder in the local cache (for its license), found offline; None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("README.md", "config.json"):
        found = try_to_load_from_cache(hub_id, name, revision=revision)
        if isinstance(found, str):
            return Path(found).parent
    return None
