"""The license a merged model's card declares, read from its inputs' cards.

One license shared by every input is inherited, with the license files of an input that has them
(`LICENSE_FILES`: Apache-2.0 and Llama's licenses ask for their text to go with the weights). The
Hub's card spec asks a license outside its list (`license: other`) for a `license_name` and a
`license_link` ("LICENSE" for a file in the repository, or a URL): an inherited one keeps the
inputs' name, and its link is the input's own license file copied beside the weights, or a URL
into the input's Hub repository at its revision. Inputs that do not share a license make the merge
`other` too, named `mixed-input-licenses` and linked to a LICENSE.md listing each input's license:
a leaderboard reads the link, and a reader learns that every input's terms apply (a non-commercial
one said in so many words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from evo_merge.files import parse_json
from evo_merge.markup import md
from evo_merge.merge.card_inputs import CardInput
from evo_merge.weights.checkpoint import TOKENIZER_FILES, model_file

OTHER = "other"
MIXED = "mixed-input-licenses"
MIXED_FILE = "LICENSE.md"
MAX_LICENSE_BYTES = 1 << 20  # a license file copied beside the weights: text, not a stray archive
# files a model folder holds for other reasons: a card's license_link naming one is not copied over ours
OWN_FILES = {"README.md", "config.json", "merge_recipe.yaml", "merge_inputs.json", "results.json"}
# what a license text's file name ends with: a link naming any other file (tokenizer_config.json, a
# weights index, modeling_x.py) would copy an input's file over the merge's own (audit 95)
LICENSE_SUFFIXES = ("", ".txt", ".md", ".rst")
# an input's license texts, copied beside the weights of a merge of inputs sharing their license
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "USE_POLICY.md")
NON_COMMERCIAL = "-nc"  # in a license id: cc-by-nc-4.0, cc-by-nc-sa-4.0, cc-by-nc-nd-4.0


@dataclass(frozen=True)
class License:
    """A card's license keys: `license` (a Hub identifier, or `other`), and with `other` the
    `license_name` and `license_link` it gives."""

    id: str
    name: str | None = None
    link: str | None = None

    @property
    def label(self) -> str:
        """As the card's prose names it: `other (deepseek)` says more than `other`."""
        return f"{self.id} ({self.name})" if self.id == OTHER and self.name else self.id


def read_license(folder: Path | None) -> License | None:
    """The license an input's README.md front matter (or config.json) declares; None when unknown."""
    if folder is None:
        return None
    readme = folder / "README.md"
    if readme.is_file():
        from huggingface_hub import metadata_load  # the Hub's own reading of a card's front matter (CRLF, BOM)

        try:
            front = metadata_load(readme)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):  # not a card the Hub could read either
            front = None
        if isinstance(front, dict) and front.get("license"):
            name, link = front.get("license_name"), front.get("license_link")
            return License(str(front["license"]), str(name) if name else None, str(link) if link else None)
    config = folder / "config.json"
    if config.is_file():
        try:
            value = parse_json(config.read_text(encoding="utf-8")).get("license")
        except (ValueError, AttributeError):
            value = None
        return License(str(value)) if value else None
    return None


@dataclass(frozen=True)
class CardLicense:
    """What a merged card says of licenses: its front-matter keys, each input's license by the
    card's label for it, and the files the folder gets with it (a copied or listed license)."""

    keys: dict[str, str]
    per_input: dict[str, License | None]
    files: dict[str, str]

    @property
    def mixed(self) -> bool:
        return self.keys.get("license_name") == MIXED


def card_license(inputs: Sequence[CardInput]) -> CardLicense:
    """The license of a merge of `inputs` (see the module's docstring); nothing known, no keys."""
    per_input = {ref.display: read_license(ref.folder) for ref in inputs}
    # an adapter is an input of its own: its weights are in the merge too
    per_input |= {f"LoRA {ref.adapter}": read_license(ref.adapter_folder) for ref in inputs if ref.adapter}
    known = {(lic.id, lic.name) for lic in per_input.values() if lic is not None}
    if not known:
        return CardLicense({}, per_input, {})
    if len(known) == 1 and None not in per_input.values():
        shared = next(lic for lic in per_input.values() if lic is not None)
        if shared.id != OTHER:  # its text goes with the weights (Apache-2.0 section 4a, Llama's 1.b.i ask for it)
            return CardLicense({"license": shared.id}, per_input, _license_files(inputs))
        keys, files = {"license": OTHER, "license_name": shared.name or "other-input-license"}, {}
        link, copied = _inherited_link(inputs, per_input)
        if link is not None:
            keys["license_link"] = link
        files.update(copied)
        return CardLicense(keys, per_input, files)
    listing = _listing(inputs, per_input)
    return CardLicense({"license": OTHER, "license_name": MIXED, "license_link": MIXED_FILE}, per_input,
                       {MIXED_FILE: listing})


def _inherited_link(inputs: Sequence[CardInput], per_input: Mapping[str, License | None],
                    ) -> tuple[str | None, dict[str, str]]:
    """(license_link, files to write) for a shared `other` license: a URL as given; a file of an
    input's folder copied beside the weights under its own name; else a URL into the input's Hub
    repository; else none (a link to a file the folder lacks would be broken)."""
    for ref in inputs:
        lic = per_input.get(ref.display)
        if lic is None or not lic.link:
            continue
        if "://" in lic.link:
            return lic.link, {}
        if (text := _license_text(ref.folder, lic.link)) is not None:
            return Path(lic.link).name, {Path(lic.link).name: text}  # `./LICENSE` is read as `LICENSE`
        if ref.hub_id:
            return _hub_url(ref, lic.link), {}
    return None, {}


def _license_files(inputs: Sequence[CardInput]) -> dict[str, str]:
    """The license files (`LICENSE_FILES`) of the first input folder holding any, to copy beside
    the weights of a merge whose inputs share their license."""
    for ref in inputs:
        found = {name: text for name in LICENSE_FILES if (text := _license_text(ref.folder, name)) is not None}
        if found:
            return found
    return {}


def _license_text(folder: Path | None, link: str) -> str | None:
    """The text of the license file `link` names in `folder` (`./LICENSE` as `LICENSE`): a plain
    file of the folder itself (no `..`, no sub-folder), UTF-8, named as a text (`LICENSE_SUFFIXES`),
    not one of a model folder's own files nor a tokenizer's. A link out of the model folder is
    refused (`model_file`): its target would be published."""
    link = link.removeprefix("./")
    if (folder is None or Path(link).name != link or link in OWN_FILES or link in TOKENIZER_FILES
            or Path(link).suffix.lower() not in LICENSE_SUFFIXES):
        return None
    try:
        path = model_file(folder, link)
        if path is None or path.stat().st_size > MAX_LICENSE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _hub_url(ref: CardInput, link: str) -> str:
    """The Hub page of the file `link` names in `ref`'s repository at its revision (`./LICENSE` as
    `LICENSE`, `.github/LICENSE.md` as it is); the repository's page where the link climbs out of it."""
    path = PurePosixPath(link.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts:
        return f"https://huggingface.co/{ref.hub_id}"
    return f"https://huggingface.co/{ref.hub_id}/blob/{ref.revision or 'main'}/{path}"


def _listing(inputs: Sequence[CardInput], per_input: Mapping[str, License | None]) -> str:
    """LICENSE.md of a merge whose inputs do not share a license: each input and its license."""
    def where(ref: CardInput, lic: License) -> str:
        if lic.link and "://" in lic.link:
            return f" ({lic.link})"
        if lic.link and ref.hub_id:
            return f" ({_hub_url(ref, lic.link)})"
        return f" (https://huggingface.co/{ref.hub_id})" if ref.hub_id else ""

    lines = ["# Licenses of the merged models", "",
             "These weights are computed from the models below, which do not share one license. Each "
             "model's license applies to what was taken from it: check all of them before use.", ""]
    if any(lic is not None and NON_COMMERCIAL in lic.id for lic in per_input.values()):
        lines += ["One of them is licensed for non-commercial use only: so are these weights.", ""]
    for ref in inputs:
        lic = per_input.get(ref.display)
        lines.append(f"- {md(ref.display)}: {md(lic.label) + where(ref, lic) if lic else 'unknown'}")
        if ref.adapter:
            adapter = per_input.get(f"LoRA {ref.adapter}")
            lines.append(f"- LoRA adapter {md(ref.adapter)}: {md(adapter.label) if adapter else 'unknown'}")
    return "\n".join([*lines, ""])
