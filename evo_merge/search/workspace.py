"""A run folder opened for work: the resolved campaign, its model paths, its store.

Opening does the one-off work explicitly (paths resolved against the campaign file, endpoints
aligned once, the campaign's fingerprint checked against the store) so every later part takes
a ready `Workspace` and does no work of its own on construction. The facts that `status` and
`report` need (task names, directions, item counts, generations) are written into the store
here, so reading a run never opens a model or a task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evo_merge.config import DEFAULTS_VERSION, AlignSpec, Campaign
from evo_merge.errors import MissingModel, UserError
from evo_merge.files import atomic_write, parse_json
from evo_merge.schema import is_path_like
from evo_merge.search.binding import (
    CAMPAIGN_TEXT_META,
    CONFIG_DATA_META,
    CONFIG_META,
    DEFAULTS_META,
    RESOLVED_META,
    WEIGHTS_META,
    bound_campaign,
    campaign_text_digest,
    config_fingerprint,
    edited_away,
    fingerprinted,
)
from evo_merge.search.estimator_checks import check_estimator
from evo_merge.search.kinds import candidate_kind
from evo_merge.search.layout import ALIGNED_FOLDER, CAMPAIGN_FILE
from evo_merge.search.run_folder import STARTED_FILES, check_in_place, folder_identity
from evo_merge.search.store import FACTS_META, CampaignStore, Record
from evo_merge.search.trust import mark_score_cache, mark_tracking, mark_trusted
from evo_merge.user_paths import expand_home
from evo_merge.weights.checkpoint import weight_files
from evo_merge.weights.digest import (
    former_model_files_digests,
    former_weights_digests,
    model_files_digests,
    weights_digest,
)
from evo_merge.weights.references import (
    ModelRef,
    check_distinct,
    is_hub_id,
    open_reference,
    resolve_reference,
    say_if_shadowing,
    short_label,
    split_adapter,
)

# config key -> file name -> digest of that config or tokenizer file (None: absent); folders from before
# recorded one digest of them all
MODEL_FILES_META = Record("model_files", dict[str, str | dict[str, str | None]])
# what a run folder holds before its store is bound (campaign.yaml: a bind cut short after writing it)
FRESH_RUN_FILES = {*STARTED_FILES, CAMPAIGN_FILE}


def absolute_path(value: str, root: Path) -> str:
    """A path the campaign file at `root` names, as a run records it: absolute, normalised, symlinks kept."""
    return os.path.abspath(root / expand_home(value))


def resolve_campaign(campaign: Campaign, root: Path) -> Campaign:
    """The campaign with every relative path made absolute against `root` (the campaign file's
    folder): models and LoRA adapters (Hub ids kept), alignment data and permutation specs, the
    IRT model folder, local task files, a file MLflow store, `disk` placement's folder. A run
    stores and fingerprints this form, so it resumes from whatever folder its command runs in."""

    def absolute(value: str) -> str:
        return absolute_path(value, root)

    def model(value: str, key: str) -> str:
        """A local folder made absolute; a Hub id (`org/name[@rev]`, not a local path) kept as
        written; either may carry `+adapter`, whose folder is made absolute."""
        name, adapter = split_adapter(value, root)
        return local_or_hub(name, key) + (f"+{local_or_hub(adapter, key)}" if adapter else "")

    def local_or_hub(value: str, key: str) -> str:
        if Path(absolute(value)).exists():  # a folder spelled as a Hub id the cache holds too: said
            say_if_shadowing(value, Path(absolute(value)), key)
            return absolute(value)
        return value if is_hub_id(value) else absolute(value)

    def store_uri(uri: str | None) -> str | None:
        """A file MLflow store written as a relative path (`./mlruns`, `file:./mlruns`) lies in the
        campaign's folder; servers, databases and names (`databricks`) are kept."""
        if uri is None:
            return None
        path = uri.removeprefix("file:")
        relative_path = (uri.startswith(("file:", ".", "~")) or "/" in path) and "://" not in path
        return "file:" + absolute(path) if relative_path and not path.startswith("/") else uri

    tasks = [t.model_copy(update={"task": absolute(t.task)}) if is_path_like(t.task) else t for t in campaign.tasks]
    estimator = campaign.estimator
    if estimator.irt_model is not None:
        estimator = estimator.model_copy(update={"irt_model": absolute(estimator.irt_model)})
    align = campaign.align
    if align is not None:
        align = align.model_copy(update={"data": align.data and absolute(align.data),
                                         "arch": absolute(align.arch) if is_path_like(align.arch) else align.arch})
    tracking = campaign.tracking
    if tracking is not None and tracking.mlflow is not None:
        mlflow = tracking.mlflow.model_copy(update={"uri": store_uri(tracking.mlflow.uri)})
        tracking = tracking.model_copy(update={"mlflow": mlflow})
    storage = campaign.storage
    if storage.disk_dir is not None:
        storage = storage.model_copy(update={"disk_dir": absolute(storage.disk_dir)})
    evaluator = campaign.evaluator
    if evaluator.score_cache is not None:
        evaluator = evaluator.model_copy(update={"score_cache": absolute(evaluator.score_cache)})
    return campaign.model_copy(update={"base_model": campaign.base_model and model(campaign.base_model, "base_model"),
                                       "models": [model(m, f"models.{i}") for i, m in enumerate(campaign.models)],
                                       "tasks": tasks, "estimator": estimator, "align": align, "tracking": tracking,
                                       "storage": storage, "evaluator": evaluator})


def with_disk_dir(campaign: Campaign, run_dir: Path) -> Campaign:
    """The campaign with `disk` placement's files in the run folder unless `storage.disk_dir` names
    another folder: the disk a user chose for a run's outputs, not the system's temporary folder,
    which is often small or held in RAM."""
    storage = campaign.storage
    if storage.placement != "disk" or storage.disk_dir is not None:
        return campaign
    return campaign.model_copy(update={"storage": storage.model_copy(update={"disk_dir": os.path.abspath(run_dir)})})


def checked_campaign(campaign: Campaign, root: Path) -> tuple[Campaign, dict[str, ModelRef]]:
    """The campaign with its paths resolved against `root` (the campaign file's folder), its models
    found and its estimator and alignment data checked: what `run`, `resume` and `plan` check
    before any model loads (`preflight`) and what the run opens with, one code for both."""
    campaign = resolve_campaign(campaign, root)
    refs = campaign_references(campaign)
    check_estimator(campaign)
    if campaign.align is not None and campaign.align.data is not None:
        existing_path(campaign.align.data, "align.data", "data file")
    return campaign, refs


def existing_path(value: str, key: str, what: str = "model path") -> Path:
    """The resolved path of a model (or `what`) the campaign names at `key`; a missing one is a user
    error naming the key."""
    path = Path(value)
    if not path.exists():
        raise UserError(f"{key}: {what} {value!r} does not exist")
    return path.resolve()


def model_reference(value: str, key: str) -> ModelRef:
    """A campaign model: a local folder (absolute after `resolve_campaign`) or a Hub id from the
    user's cache, optionally `+adapter`; a missing one is a user error naming the key."""
    if "+" not in value and not is_hub_id(value.partition("@")[0]) and not Path(value).exists():
        raise MissingModel(f"{key}: model path {value!r} does not exist")  # the plain folder's own message
    return resolve_reference(value, None, key)


def aligned_paths(spec: AlignSpec, models: list[Path], out: Path, data: Path | None) -> tuple[Path, list[Path]]:
    """Align the endpoints once (reused on resume): (the reference, the aligned folders)."""
    from evo_merge.align.api import PERMUTATIONS_FILE, align_folders, average_folders

    record = out / PERMUTATIONS_FILE
    if not record.exists():
        align_folders(models, spec.arch, spec.method, out, data=data, seed=spec.seed, arch_key="align.arch",
                      data_key="align.data")
    try:
        names = list(parse_json(record.read_text(encoding="utf-8"))["perms"])
        # each a folder of aligned/ (a received record named `../..` or an absolute path, read as an endpoint)
        if bad := next((n for n in names if not isinstance(n, str) or n in ("", ".", "..") or Path(n).name != n), None):
            raise ValueError(f"{bad!r} is not a folder name")
    except (ValueError, KeyError, TypeError) as exc:  # not one this version wrote whole
        raise UserError(f"{record}: unreadable ({type(exc).__name__}); {ALIGNED_AGAIN}") from None
    aligned = [out / name for name in names]
    if spec.reference == "first":
        return aligned[0], aligned
    mean = out / "universe-mean"
    if not mean.exists():
        average_folders(aligned, mean)
    return mean, aligned


@dataclass
class Workspace:
    campaign: Campaign  # resolved: every path absolute
    run_dir: Path
    base: Path
    models: list[Path]
    store: CampaignStore
    references: list[str] | None = None  # base then endpoints as recipes name them (Hub id@commit, +adapter)
    folder_id: tuple[int, int] | None = None  # the run folder as opened (`check_in_place`)

    @classmethod
    def open(cls, campaign: Campaign, root: Path, run_dir: Path) -> Workspace:
        """Resolve, align once, and bind the run folder to this campaign (or check it is bound to it)."""
        run_dir = Path(run_dir)
        with models_moved_hint(run_dir):
            campaign, refs = checked_campaign(campaign, Path(root))
        with CampaignStore(run_dir).closed_on_error() as store:
            campaign = _bind(store, campaign, run_dir)
            # marked as soon as bound: a kill in the minutes of digests and alignment below must not
            # leave the user's own folder taken for a received one
            mark_trusted(store, campaign.tasks)
            mark_tracking(store, campaign.tracking)
            mark_score_cache(store, campaign.evaluator.score_cache)
            _check_weights(store, refs)
            models = [refs[f"models.{i}"] for i in range(len(campaign.models))]
            opened = folder_identity(run_dir)
            if campaign.align is None:
                base = refs["base_model"]
                names = [base.name, *(r.name for r in models)]
                return cls(campaign, run_dir, base.path, [r.path for r in models], store, names, opened)
            data = existing_path(campaign.align.data, "align.data", "data file") if campaign.align.data else None
            base, aligned = aligned_paths(campaign.align, [r.path for r in models], run_dir / ALIGNED_FOLDER, data)
            workspace = cls(campaign, run_dir, base, aligned, store, folder_id=opened)
            _check_weights(store, workspace.aligned_references(), ALIGNED_AGAIN)
            return workspace

    def check_in_place(self) -> None:
        """Refuse to write by the run folder's path once the folder was moved (`run_folder.check_in_place`):
        called before each write outside the database (IRT models, picks, the report) and per generation."""
        if self.folder_id is not None:
            check_in_place(self.run_dir, self.folder_id)

    def check_models_unchanged(self) -> None:
        """Refuse to go on when a model's files changed since the run folder recorded them: its
        candidates were scored on the weights read then, and an export merges the files again, so it
        would publish other weights under those scores (a folder rewritten during a run of hours).
        An aligned campaign's aligned copies in the run folder are what it merges: checked too."""
        _check_weights(self.store, campaign_references(self.campaign))
        if self.campaign.align is not None:
            _check_weights(self.store, self.aligned_references(), ALIGNED_AGAIN)

    def aligned_references(self) -> dict[str, ModelRef]:
        """The aligned copies an aligned campaign merges (`aligned/` in the run folder), by key."""
        return {"aligned.base": ModelRef(str(self.base), self.base),
                **{f"aligned.{i}": ModelRef(str(path), path) for i, path in enumerate(self.models)}}

    def evaluated_references(self) -> list[ModelRef]:
        """The base then each endpoint, as the evaluator reads them: an aligned campaign's aligned
        copies, or the models the campaign names (checked as the workspace opened)."""
        if self.campaign.align is not None:
            return list(self.aligned_references().values())
        named = {"base_model": self.campaign.base_model}
        named.update((f"models.{i}", m) for i, m in enumerate(self.campaign.models))
        return [model_reference(value, key) for key, value in named.items()]

    def sources(self) -> tuple[str, list[str]]:
        """(base, endpoints) as recipes and evaluators name them: folders, or Hub ids with the
        commit they resolved to, with `+adapter` where a LoRA adapter is folded in."""
        if self.references is None:
            return str(self.base), [str(m) for m in self.models]
        return self.references[0], list(self.references[1:])

    def evaluation_campaign(self) -> Campaign:
        """The campaign as its evaluator reads it (`with_disk_dir`)."""
        return with_disk_dir(self.campaign, self.run_dir)

    def dtype_name(self) -> str:
        """The evaluation dtype by name, "auto" resolved from the base's headers: the dtype the picks
        are exported in (the one they were scored in), written into their recipes as such."""
        from evo_merge.weights.dtypes import model_dtype

        return self._resolved_dtype(self.campaign.dtype, model_dtype)

    def stored_dtype_name(self) -> str:
        """The dtype the search keeps the task vectors in (`storage.dtype`, "auto" resolved from the
        base's headers): narrower than float32, each is rounded once, and a candidate scored is not
        bit for bit the float32 merge its recipe exports (docs/memory.md, exactness)."""
        from evo_merge.weights.dtypes import storage_dtype

        return self._resolved_dtype(self.campaign.storage.dtype, storage_dtype)

    def storage_rounding(self) -> dict[str, Any]:
        """What the search rounds as it keeps its tensors (`merge.storage`, from the checkpoints'
        headers): whether the task vectors (`rounded_task_vectors`), and the campaign's methods whose
        candidates are therefore a little off the exported picks (`rounded_methods`; docs/memory.md,
        exactness), as a run's facts record them."""
        from evo_merge.merge.storage import Storage, keeping
        from evo_merge.weights import Checkpoint
        from evo_merge.weights.dtypes import storage_dtype

        adapters = any(split_adapter(m, self.run_dir)[1] for m in self.campaign.models)
        checkpoints = [Checkpoint.open(path) for path in (self.base, *self.models)]
        try:
            dtype = storage_dtype(self.campaign.storage.dtype, checkpoints[0])  # as `stored_dtype_name` resolves it
            kept = keeping(Storage.of(self.campaign.storage), checkpoints, adapters, dtype)
        finally:
            for checkpoint in checkpoints:
                checkpoint.close()
        return {"rounded_task_vectors": not kept.task_vectors_exact,
                "rounded_methods": [method for method in self.campaign.methods
                                    if candidate_kind(method).rounds(method, kept)]}

    def _resolved_dtype(self, name: str, resolve: Callable[[str, Any], Any]) -> str:
        from evo_merge.weights import Checkpoint  # torch: only where a pick is exported or a run opens
        from evo_merge.weights.dtypes import dtype_name

        with Checkpoint.open(self.base) as base:
            return dtype_name(resolve(name, base))

    def endpoint_labels(self) -> list[str]:
        """`endpoint NAME` per endpoint, named as the campaign names it (a Hub id, `+adapter`), not by
        the folder it resolved to (a snapshot's commit hash, the adapter's base folder)."""
        return [f"endpoint {short_label(m)}" for m in self.campaign.models]

    def base_label(self) -> str:
        """What the base is, for tables beside the endpoints: an aligned campaign has none of its
        own, and with `reference: first` its base is the first endpoint (a row that repeats it),
        with `mean` the mean of the aligned endpoints."""
        align = self.campaign.align
        if align is None:
            return "base"
        if align.reference == "first":
            return f"base (= endpoint {short_label(self.campaign.models[0])})"
        return "base (mean of the endpoints)"


def _bind(store: CampaignStore, campaign: Campaign, run_dir: Path) -> Campaign:
    """Bind a new run folder to the campaign, or check an existing one holds it (`bound_campaign`);
    returns the campaign the folder runs. A store that holds no campaign in a folder that holds a
    run's files (an emptied or deleted database) is refused, not taken for a new run."""
    if store.get_meta(CONFIG_META) is not None:
        bound = bound_campaign(store, campaign, run_dir)
        # bound by a version that wrote the file after, and killed; or the file edited since; or
        # the models moved (the campaign given names their new place, checked as the same models)
        if not (run_dir / CAMPAIGN_FILE).is_file() or edited_away(store, run_dir) or _names_other_places(
                bound, run_dir):
            _write_campaign(store, bound, run_dir, {})
        return bound
    if leftovers := sorted(e.name for e in run_dir.iterdir() if e.name not in FRESH_RUN_FILES):
        raise UserError(f"{run_dir / CampaignStore.DB}: holds no campaign, but the folder holds a run's files "
                        f"({', '.join(leftovers)}); restore the database from a backup, or start the campaign "
                        "in a new run folder")
    _write_campaign(store, campaign, run_dir, {CONFIG_META: config_fingerprint(campaign),
                                               CONFIG_DATA_META: fingerprinted(campaign),
                                               DEFAULTS_META: DEFAULTS_VERSION})
    return campaign


def _names_other_places(campaign: Campaign, run_dir: Path) -> bool:
    """Whether the folder's campaign.yaml names its models elsewhere than `campaign` does."""
    try:
        written = Campaign.load(run_dir / CAMPAIGN_FILE)
    except UserError:
        return True
    return (written.base_model, written.models) != (campaign.base_model, campaign.models)


def _write_campaign(store: CampaignStore, campaign: Campaign, run_dir: Path, binding: dict[str, Any]) -> None:
    """The folder's campaign.yaml first, then (one transaction) the binding and the file's digest:
    a kill between them leaves an unbound store beside the file, which the next start binds."""
    atomic_write(run_dir / CAMPAIGN_FILE, yaml.safe_dump(campaign.model_dump(mode="json"), sort_keys=False))
    store.set_metas({**binding, CAMPAIGN_TEXT_META: campaign_text_digest(run_dir)})


@contextmanager
def models_moved_hint(run_dir: Path) -> Iterator[None]:
    """A model a run folder's campaign names is not there: moved with its project, perhaps. Says
    how to point the folder at the new place (`binding`: accepted once the models check out)."""
    try:
        yield
    except MissingModel as exc:
        if not (run_dir / CampaignStore.DB).is_file():
            raise
        raise MissingModel(f"{exc}; if the models moved, write their new place into {run_dir / CAMPAIGN_FILE} "
                           "(base_model, models): the run checks they are the same models") from None


def campaign_references(campaign: Campaign) -> dict[str, ModelRef]:
    """Key (`models.N`, `base_model`) -> the model it names, for a campaign with absolute paths
    (`resolve_campaign`); each endpoint once and none the base (`check_distinct`). An aligned
    campaign has no base of its own: it builds one from the models, so `base_model` is not read."""
    refs = {f"models.{i}": model_reference(m, f"models.{i}") for i, m in enumerate(campaign.models)}
    if campaign.align is None:
        refs["base_model"] = model_reference(campaign.base_model, "base_model")
    for key, ref in refs.items():  # a folder without weights, named by its key as a missing one is
        try:
            weight_files(ref.path)
            if ref.lora is not None:  # an adapter that does not fit its model: refused by `plan` too
                open_reference(ref)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
    check_distinct(refs, "base_model")
    adapters = any(ref.lora is not None for ref in refs.values())
    for method, settings in campaign.methods.items():  # what a kind cannot take, named before any model loads
        candidate_kind(method).check_inputs(adapters)
        if "base_model" in refs:  # its ranges, resolved from the base's header (MASS's routing blocks)
            candidate_kind(method).searched_ranges(method, settings, refs["base_model"].path)
    return refs


# the way on when an aligned copy changed: the alignment is deterministic, and rebuilt when missing
ALIGNED_AGAIN = "remove the run folder's aligned/ (it is built again from the models as it was), then go on"


def _check_weights(store: CampaignStore, refs: dict[str, ModelRef], way_on: str | None = None) -> None:
    """Refuse a run folder whose models' weights, config or tokenizer files changed since it started (a
    resume would mix scores of two different models under one name); record them on first open (older
    folders: from now on).

    A record made by an earlier digest (before every tensor's ends were read; before it covered
    exactly the files read) is checked with the digest it was made with, then replaced by the current one.
    What each model resolved to is recorded with them (`RESOLVED_META`), for a refusal to name it."""
    _refuse_changed_weights(store, refs, way_on)
    _refuse_changed_model_files(store, refs, way_on)
    resolved = store.get_meta(RESOLVED_META, {})
    if new := {key: ref.name for key, ref in refs.items() if key not in resolved}:  # while its digests held
        store.set_meta(RESOLVED_META, {**resolved, **new})


def _refuse_changed_weights(store: CampaignStore, refs: dict[str, ModelRef], way_on: str | None) -> None:
    """Refuse a model whose weights digest differs from the one recorded (or from a former digest of
    it, a record an earlier version made); record it where none is (older folders: from now on)."""
    stored = store.get_meta(WEIGHTS_META, {})
    digests = {key: weights_digest(ref) for key, ref in refs.items()}
    for key, digest in digests.items():
        recorded = stored.get(key, digest)
        if recorded != digest and recorded not in former_weights_digests(refs[key]):
            if other := next((k for k, d in stored.items() if d == digest and k != key), None):  # reordered
                raise UserError(f"{key} ({refs[key].name}) holds the weights this run folder recorded for {other}: "
                                "the models are in another order than the run started with (the campaign's list, or "
                                "their files swapped); restore the order")
            raise _changed(store, key, refs[key], "weights", way_on)
    if stored != digests:
        store.set_meta(WEIGHTS_META, {**stored, **digests})


def _refuse_changed_model_files(store: CampaignStore, refs: dict[str, ModelRef], way_on: str | None) -> None:
    """Refuse a model one of whose recorded config or tokenizer files changed, appeared or went away,
    naming it; a file not recorded (its name checked since) is recorded from now on. A folder's one
    combined digest from before is checked as it was made, then replaced by the per-file record."""
    stored = store.get_meta(MODEL_FILES_META, {})
    digests = {key: model_files_digests(ref) for key, ref in refs.items()}
    for key, now in digests.items():
        recorded = stored.get(key, now)
        if isinstance(recorded, str):
            changed = [] if recorded in former_model_files_digests(refs[key]) else ["config or tokenizer files"]
        else:
            changed = [name for name, digest in recorded.items() if name in now and now[name] != digest]
        if changed:
            raise _changed(store, key, refs[key], ", ".join(changed), way_on)
    if stored != digests:
        store.set_meta(MODEL_FILES_META, {**stored, **digests})


def _changed(store: CampaignStore, key: str, ref: ModelRef, what: str, way_on: str | None = None) -> UserError:
    """The refusal of a model that changed, with the way back where the run knows it: a Hub id named
    without a revision resolves to the newest commit in the cache, so a download moved it under the
    run, which then names the commit it began with (audit 137)."""
    was = store.get_meta(RESOLVED_META, {}).get(key)
    if way_on is None and was is not None and was != ref.name and is_hub_id(was.split("+")[0]):
        way_on = (f"it was {was} then: write that into the run folder's {CAMPAIGN_FILE} as {key} to resume with it, "
                  "or start the campaign in a new run folder")
    way_on = way_on or "resume with the models as they were then, or start the campaign in a new run folder"
    return UserError(f"{key} ({ref.name}): its {what} changed since this run folder was started; {way_on}")


def record_facts(store: CampaignStore, campaign: Campaign, item_counts: dict[str, int], stored_dtype: str,
                 rounding: dict[str, Any]) -> None:
    """What reading a run needs, kept in the store: name, tasks (direction, items), generations, the
    dtype the search keeps tensors in and what it rounds there (`Workspace.storage_rounding`: what the
    scores were measured on). A run begun before that was recorded kept every task vector rounded
    below float32, and keeps saying so (no `rounded_methods`) when resumed."""
    try:
        previous = store.get_meta(FACTS_META)
    except UserError:  # damaged: written anew, which repairs it
        previous = None
    if previous is not None and "rounded_methods" not in previous:
        rounding = {}
    store.set_meta(
        FACTS_META,
        {
            "name": campaign.name,
            "generations": campaign.algorithm.generations,
            "algorithm": campaign.algorithm.name,
            "tasks": [
                {"name": t.label, "direction": t.direction, "items": item_counts[t.label]} for t in campaign.tasks
            ],
            "weights": campaign.objective.weights,
            "estimator": campaign.estimator.kind,  # what an estimate's SE is (none in folders from before)
            "endpoints": [short_label(m) for m in campaign.models],  # as tables name them
            "stored_dtype": stored_dtype,
            **rounding,
        },
    )
