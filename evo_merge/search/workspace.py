"""A run folder opened for work: the resolved campaign, its model paths, its store.

Opening does the one-off work explicitly (paths resolved against the campaign file, endpoints
aligned once, the campaign's fingerprint checked against the store) so every later part takes
a ready `Workspace` and does no work of its own on construction. The facts that `status` and
`report` need (task names, directions, item counts, generations) are written into the store
here, so reading a run never opens a model or a task.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evo_merge.config import DEFAULTS_VERSION, FORMER_DEFAULTS, Campaign
from evo_merge.errors import UserError
from evo_merge.search.store import CampaignStore, atomic_write
from evo_merge.weights.references import ModelRef, is_hub_id, resolve_reference, split_adapter

CAMPAIGN_FILE = "campaign.yaml"
DEFAULTS_META = "defaults"  # the DEFAULTS_VERSION a run folder was written under; none: 1


def resolve_campaign(campaign: Campaign, root: Path) -> Campaign:
    """The campaign with every relative path made absolute against `root` (the campaign file's
    folder): models, alignment data and permutation specs, the IRT model folder, local task
    files. A run stores and fingerprints this form, so it resumes from whatever folder its
    command runs in."""

    def absolute(value: str) -> str:
        return os.path.abspath(root / Path(value).expanduser())  # normalised, symlinks kept

    def model(value: str) -> str:
        """A local folder made absolute; a Hub id (`org/name[@rev]`, not a local path) kept as
        written; either may carry `+adapter`, whose folder is made absolute."""
        name, adapter = split_adapter(value, root)
        local = Path(absolute(name)).exists() or not is_hub_id(name)
        return (absolute(name) if local else name) + (f"+{absolute(adapter)}" if adapter else "")

    def is_path(value: str) -> bool:  # as the task registry reads it: not a shipped name or a plugin
        return value.endswith((".yaml", ".yml")) or "/" in value

    tasks = [t.model_copy(update={"task": absolute(t.task)}) if is_path(t.task) else t for t in campaign.tasks]
    estimator = campaign.estimator
    if estimator.irt_model is not None:
        estimator = estimator.model_copy(update={"irt_model": absolute(estimator.irt_model)})
    align = campaign.align
    if align is not None:
        align = align.model_copy(update={"data": align.data and absolute(align.data),
                                         "arch": absolute(align.arch) if is_path(align.arch) else align.arch})
    return campaign.model_copy(update={"base_model": campaign.base_model and model(campaign.base_model),
                                       "models": [model(m) for m in campaign.models],
                                       "tasks": tasks, "estimator": estimator, "align": align})


def _swap_defaults(campaign: Campaign, version: int, *, to_former: bool) -> Campaign:
    """The campaign with each setting whose default changed after defaults `version` moved from
    its former default to today's (or, `to_former`, from today's to the former) where it is at one."""
    sections: dict[str, Any] = {}
    for (section, name), (former, changed) in FORMER_DEFAULTS.items():
        if changed <= version:
            continue
        spec = sections.get(section, getattr(campaign, section))
        today = type(spec).model_fields[name].get_default(call_default_factory=True)
        old, new = (today, former) if to_former else (former, today)
        if getattr(spec, name) == old:
            sections[section] = spec.model_copy(update={name: new})
    return campaign.model_copy(update=sections)


def config_fingerprint(campaign: Campaign, *, written_at: int = DEFAULTS_VERSION) -> str:
    """Identifies what a run computes: where it is evaluated (local or which cluster) is left out,
    so a run started locally can be resumed on a cluster and back; so are settings at their
    defaults, so a setting added in a later version leaves older runs resumable; so is where it
    is tracked (trackers observe, they compute nothing). With an older `written_at`, a setting at
    the value it defaulted to then, since changed, is left out too: the fingerprint a run folder
    written then holds."""
    campaign = _swap_defaults(campaign, written_at, to_former=False)
    # storage placement and budgets change where tensors are kept, not what is computed (#13)
    storage = campaign.storage.model_copy(update={"placement": "device", "host_budget_gib": None,
                                                  "device_budget_gib": None})
    where = campaign.model_copy(update={"evaluator": campaign.evaluator.model_copy(update={"kind": "local"}),
                                        "storage": storage})
    data = where.model_dump_json(exclude={"evaluator": {"address", "n_workers"}, "tracking": True},
                                 exclude_defaults=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def existing_path(value: str, key: str) -> Path:
    """The resolved path of a model the campaign names at `key`; a missing one is a user error naming the key."""
    path = Path(value)
    if not path.exists():
        raise UserError(f"{key}: model path {value!r} does not exist")
    return path.resolve()


def model_reference(value: str, key: str) -> ModelRef:
    """A campaign model: a local folder (absolute after `resolve_campaign`) or a Hub id from the
    user's cache, optionally `+adapter`; a missing one is a user error naming the key."""
    if "+" not in value and not is_hub_id(value.partition("@")[0]):
        existing_path(value, key)  # the plain folder case keeps its own message
    return resolve_reference(value, Path("/"), key)


def aligned_paths(spec, models: list[Path], out: Path, data: Path | None) -> tuple[Path, list[Path]]:
    """Align the endpoints once (reused on resume): (the reference, the aligned folders)."""
    from evo_merge.align.api import align_folders
    from evo_merge.weights import Checkpoint, write_model_folder

    record = out / "permutations.json"
    if not record.exists():
        align_folders(models, spec.arch, spec.method, out, data=data, seed=spec.seed)
    aligned = [out / name for name in json.loads(record.read_text())["perms"]]
    if spec.reference == "first":
        return aligned[0], aligned
    mean = out / "universe-mean"
    if not mean.exists():
        checkpoints = [Checkpoint.open(p) for p in aligned]
        tensors = (
            (n, sum(c.tensor(n) for c in checkpoints) / len(checkpoints))
            if checkpoints[0].dtype(n).is_floating_point
            else (n, checkpoints[0].tensor(n))
            for n in checkpoints[0].names
        )
        write_model_folder(mean, tensors, copy_from=aligned[0])
    return mean, aligned


@dataclass
class Workspace:
    campaign: Campaign  # resolved: every path absolute
    run_dir: Path
    base: Path
    models: list[Path]
    store: CampaignStore
    references: list[str] | None = None  # base then endpoints as recipes name them (Hub id@commit, +adapter)

    @classmethod
    def open(cls, campaign: Campaign, root: Path, run_dir: Path) -> Workspace:
        """Resolve, align once, and bind the run folder to this campaign (or check it is bound to it)."""
        campaign = resolve_campaign(campaign, Path(root))
        run_dir = Path(run_dir)
        refs = [model_reference(m, f"models.{i}") for i, m in enumerate(campaign.models)]
        store = CampaignStore(run_dir)
        campaign = _bind(store, campaign, run_dir)
        if campaign.align is not None:
            data = existing_path(campaign.align.data, "align.data") if campaign.align.data else None
            base, models = aligned_paths(campaign.align, [r.path for r in refs], run_dir / "aligned", data)
            return cls(campaign, run_dir, base, models, store)
        base = model_reference(campaign.base_model, "base_model")
        return cls(campaign, run_dir, base.path, [r.path for r in refs], store, [base.name, *(r.name for r in refs)])

    @property
    def task_names(self) -> list[str]:
        return [t.label for t in self.campaign.tasks]

    def sources(self) -> tuple[str, list[str]]:
        """(base, endpoints) as recipes and evaluators name them: folders, or Hub ids with the
        commit they resolved to, with `+adapter` where a LoRA adapter is folded in."""
        if self.references is None:
            return str(self.base), [str(m) for m in self.models]
        return self.references[0], list(self.references[1:])

    def endpoint_labels(self) -> list[str]:
        return [f"endpoint {m.name}" for m in self.models]


def as_written_at(campaign: Campaign, version: int) -> Campaign:
    """The campaign a run folder written under defaults `version` runs: each setting changed since
    and left at today's default (which neither that version's campaign.yaml, written before the
    setting existed, nor its fingerprint tells from unset) at the default it had then."""
    return _swap_defaults(campaign, version, to_former=True)


def _bind(store: CampaignStore, campaign: Campaign, run_dir: Path) -> Campaign:
    """Bind a new run folder to the campaign, or check an existing one holds it; returns the
    campaign the folder runs. A folder written under older defaults (its `defaults` mark; none:
    version 1) matches with the settings changed since at their former values, and runs with them."""
    stored, fingerprint = store.get_meta("config"), config_fingerprint(campaign)
    if stored is None:
        store.set_meta("config", fingerprint)
        store.set_meta(DEFAULTS_META, DEFAULTS_VERSION)
        atomic_write(run_dir / CAMPAIGN_FILE, yaml.safe_dump(campaign.model_dump(mode="json"), sort_keys=False))
        return campaign
    version = store.get_meta(DEFAULTS_META) or 1
    if stored not in (fingerprint, config_fingerprint(campaign, written_at=version)):
        raise UserError(
            f"{run_dir}: holds a different campaign; resume it with its own {CAMPAIGN_FILE} or start a new run folder"
        )
    return as_written_at(campaign, version)


def record_facts(store: CampaignStore, campaign: Campaign, item_counts: dict[str, int]) -> None:
    """What reading a run needs, kept in the store: name, tasks (direction, items), generations."""
    store.set_meta(
        "facts",
        {
            "name": campaign.name,
            "generations": campaign.algorithm.generations,
            "algorithm": campaign.algorithm.name,
            "tasks": [
                {"name": t.label, "direction": t.direction, "items": item_counts[t.label]} for t in campaign.tasks
            ],
            "weights": campaign.objective.weights,
        },
    )
