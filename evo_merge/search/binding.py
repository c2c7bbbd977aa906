"""Which campaign a run folder holds: its fingerprint, the defaults it was written under, and the
check that a campaign (or the folder's own campaign.yaml) is the one its store is bound to.

`status` and `report` check a folder as strictly as `resume` does without opening a model: a
store swapped in from another run, an edited campaign.yaml or an emptied database is refused on
one line instead of being read as this run. They stay torch-free where the folder's campaign.yaml
is the text its store last ran (`CAMPAIGN_TEXT_META`); only an edited one is validated (the method
registry behind validation loads torch) and fingerprinted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Json

from evo_merge import __version__
from evo_merge.config import DEFAULTS_VERSION, FORMER_DEFAULTS, Campaign, EvaluatorSpec
from evo_merge.errors import UserError
from evo_merge.markup import shell
from evo_merge.search.holdout import check_picks_held_out
from evo_merge.search.layout import CAMPAIGN_FILE
from evo_merge.search.lock import holder
from evo_merge.search.run_folder import check_run_files
from evo_merge.search.store import FACTS_META, CampaignStore, Record
from evo_merge.user_paths import expand_home

DEFAULTS_META = Record("defaults", int)  # the DEFAULTS_VERSION a run folder was written under; none: 1
CONFIG_META = Record("config", str)  # the fingerprint of the campaign the folder is bound to
WEIGHTS_META = Record("weights", dict[str, str])  # config key (base_model, models.N) -> digest of its weight files
# config key -> the model it resolved to when recorded (a Hub id at its commit, a folder), for the way back
RESOLVED_META = Record("resolved", dict[str, str])
MODEL_KEYS = ("base_model", "models")  # where the models are: a run checks they are the same ones by WEIGHTS_META
CAMPAIGN_TEXT_META = Record("campaign_text", str)  # sha256 of the campaign.yaml the folder last ran with
CONFIG_DATA_META = Record("config_data", Json[dict[str, Any]])  # what the fingerprint hashes (JSON text):
#   names the settings an edited campaign changed
OPTIONS_SORTED_SINCE = 8  # defaults version from which a task's options are fingerprinted in name order


def _swap_defaults(campaign: Campaign, version: int, *, to_former: bool) -> Campaign:
    """The campaign with each setting whose default changed after defaults `version` moved from
    the default it had then to today's (or, `to_former`, from today's to that one) where it is at one."""
    sections: dict[str, Any] = {}  # section ("" for the campaign's own settings) -> its updates
    for (section, name), changes in FORMER_DEFAULTS.items():
        if all(changed <= version for _, changed in changes):
            continue
        then = next(former for former, changed in changes if changed > version)  # its default at `version`
        spec = getattr(campaign, section) if section else campaign
        today = type(spec).model_fields[name].get_default(call_default_factory=True)
        old, new = (today, then) if to_former else (then, today)
        if getattr(spec, name) == old:
            sections.setdefault(section, {})[name] = new
    updates = {section: getattr(campaign, section).model_copy(update=changed)
               for section, changed in sections.items() if section}
    return campaign.model_copy(update={**updates, **sections.get("", {})})


def config_fingerprint(campaign: Campaign, *, written_at: int = DEFAULTS_VERSION, as_before: bool = False) -> str:
    """Identifies what a run computes (`fingerprinted`, hashed)."""
    fingerprint = fingerprinted(campaign, written_at=written_at, as_before=as_before)
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def fingerprinted(campaign: Campaign, *, written_at: int = DEFAULTS_VERSION, as_before: bool = False) -> str:
    """What identifies a run's computation, as JSON: where it is evaluated (local or which
    cluster) is left out, so a run started locally can be resumed on a cluster and back; so are
    settings at their defaults, so a setting added in a later version leaves older runs resumable;
    so is where it is tracked (trackers observe, they compute nothing), the sequence length the
    memory plan assumes, and the score cache (where scores measured before are read from). A task's
    options are keyword arguments, so their order in the file is left out too (a folder written
    before defaults version 8 holds them in the file's order). With an older
    `written_at`, a setting at the value it defaulted to then, since changed, is left out too: the
    fingerprint a run folder written then holds. Of the evaluator only its batch size counts; up to
    0.x an evaluator section written out (`kind: dask` at the default batch size, or `kind: local`)
    counted as `{}` against no section, so that a local run could not be resumed on a cluster:
    `as_before` gives that form, which the folders written then hold."""
    campaign = _swap_defaults(campaign, written_at, to_former=False)
    if written_at >= OPTIONS_SORTED_SINCE:
        tasks = [task.model_copy(update={"options": dict(sorted(task.options.items()))}) for task in campaign.tasks]
        campaign = campaign.model_copy(update={"tasks": tasks})
    # storage placement, its folder and the budgets change where tensors are kept, not what is computed
    storage = campaign.storage.model_copy(update={"placement": "device", "disk_dir": None, "host_budget_gib": None,
                                                  "device_budget_gib": None})
    # a spec of the batch size alone, built afresh (a copy of a dask spec with `kind` changed still dumped `{}`)
    evaluator = (campaign.evaluator.model_copy(update={"kind": "local"}) if as_before
                 else EvaluatorSpec(batch_size=campaign.evaluator.batch_size))
    where = campaign.model_copy(update={"evaluator": evaluator, "storage": storage})
    # the sequence length only sizes the memory plan's activations
    return where.model_dump_json(exclude={"evaluator": {"address", "n_workers", "sequence_tokens", "score_cache"},
                                          "tracking": True}, exclude_defaults=True)


def as_written_at(campaign: Campaign, version: int) -> Campaign:
    """The campaign a run folder written under defaults `version` runs: each setting changed since
    and left at today's default (which neither that version's campaign.yaml, written before the
    setting existed, nor its fingerprint tells from unset) at the default it had then."""
    return _swap_defaults(campaign, version, to_former=True)


def bound_campaign(store: CampaignStore, campaign: Campaign, run_dir: Path) -> Campaign:
    """The campaign a bound run folder runs, checked against the fingerprint its store holds. A
    folder written under older defaults (its `defaults` mark; none: version 1) matches with the
    settings changed since at their former values, and runs with them."""
    _require_campaign(store, run_dir)
    changed = differences(store, campaign)
    if changed is not None:
        raise different_campaign(run_dir, changed)
    return as_written_at(campaign, _defaults_version(store))


def different_campaign(run_dir: Path, changed: str) -> UserError:
    """The refusal of a campaign other than the one `run_dir` is bound to (`changed`: `differences`)."""
    return UserError(f"{run_dir}: holds a different campaign{changed}; resume it with the {CAMPAIGN_FILE} it "
                     "started with, or start a new run folder")


def folder_differences(run_dir: Path, campaign: Campaign) -> str | None:
    """`differences` of `campaign` from the one `run_dir` is bound to; None where it is that one, or the
    folder is bound to none (new, empty, or left by a start that failed). For checks before a run
    (`plan --out`, `demo --out`) that say so in their own words."""
    with _bound_store(run_dir) as store:
        return None if store is None else differences(store, campaign)


@contextmanager
def _bound_store(run_dir: Path) -> Iterator[CampaignStore | None]:
    """The store of the campaign `run_dir` is bound to, open for the block; None for a folder no
    campaign is bound to: new, empty, or left by a start that failed."""
    if not (run_dir / CampaignStore.DB).is_file():
        yield None
        return
    store = CampaignStore(run_dir)
    try:
        yield None if store.get_meta(CONFIG_META) is None else store
    finally:
        store.close()


def _require_campaign(store: CampaignStore, run_dir: Path) -> None:
    """Refuse a store that records no campaign: a resume would take it for a new run."""
    if store.get_meta(CONFIG_META) is None:
        raise UserError(f"{run_dir / CampaignStore.DB}: holds no campaign (emptied, or from a start that failed); "
                        "restore it from a backup, or start the campaign again in a new run folder")


def differences(store: CampaignStore, campaign: Campaign) -> str | None:
    """None when the store's campaign is `campaign` (under the defaults the folder was written
    with), else the settings that differ, as ` (changed: a.b, c)` (empty for a folder bound before
    its settings were stored)."""
    version = _defaults_version(store)
    if store.get_meta(CONFIG_META) in {config_fingerprint(campaign, written_at=written, as_before=before)
                                       for written in (DEFAULTS_VERSION, version) for before in (False, True)}:
        return None
    started = store.get_meta(CONFIG_DATA_META)  # none in folders bound before it was stored
    given = json.loads(fingerprinted(campaign, written_at=version))  # in the form the folder stored it
    if started is not None and _models_moved(store, started, given):
        return None
    return "" if started is None else _changed(started, given)


def tasks_changed(store: CampaignStore, campaign: Campaign) -> bool:
    """Whether `campaign` names other tasks (names, options, files) than the folder's run recorded
    (False for a folder bound before its settings were stored: unknown)."""
    started = store.get_meta(CONFIG_DATA_META)
    given = json.loads(fingerprinted(campaign, written_at=_defaults_version(store)))
    return started is not None and started.get("tasks") != given.get("tasks")


def _models_moved(store: CampaignStore, started: dict, given: dict) -> bool:
    """Whether the campaigns differ only in where their models are, each model's weights digest
    recorded: a project moved with its models is the same run (opening it checks each model's
    digest; a run folder's campaign.yaml holds absolute paths, which a move breaks)."""
    differ = {key for key in {*started, *given} if started.get(key) != given.get(key)}
    if (not differ or not differ <= set(MODEL_KEYS) or len(started.get("models", ())) != len(given.get("models", ()))
            or bool(started.get("base_model")) != bool(given.get("base_model"))):  # moved, not added or dropped
        return False
    recorded = store.get_meta(WEIGHTS_META, {})
    keys = [f"models.{i}" for i in range(len(given.get("models", ())))] + (["base_model"] if given.get("base_model")
                                                                          else [])
    return all(key in recorded for key in keys)


def _defaults_version(store: CampaignStore) -> int:
    """The folder's defaults version (folders written before the mark: version 1). One written by a
    newer evo-merge is refused: its defaults are none this version knows, and it was resumed under
    this version's without a word (audit 96)."""
    version = store.get_meta(DEFAULTS_META) or 1
    if version > DEFAULTS_VERSION:
        raise UserError(f"{store.run_dir}: written by a newer evo-merge (campaign defaults version {version}; this "
                        f"one, {__version__}, knows versions up to {DEFAULTS_VERSION}); upgrade evo-merge to open it")
    return version


def bound_defaults(run_dir: Path) -> int | None:
    """The defaults version of the campaign a run folder is bound to (what `bound_campaign` runs it
    under); None for a folder no campaign is bound to yet: new, empty, or left by a start that failed."""
    with _bound_store(run_dir) as store:
        return None if store is None else _defaults_version(store)


def _changed(started: dict, given: dict) -> str:
    """` (changed: algorithm.population, methods)`: the keys whose settings differ, first three. A
    section left out of one fingerprint is at its defaults there (`exclude_defaults`), so it is
    compared as empty: `evaluator.batch_size` edited was named `evaluator` (audit 138)."""
    def differ(a: Any, b: Any, prefix: str) -> list[str]:
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return [] if a == b else [prefix]
        return [key for name in dict.fromkeys([*a, *b])
                for key in differ(a.get(name), b.get(name), f"{prefix}.{name}" if prefix else name)]

    names = dict.fromkeys([*started, *given])  # in the order the run's settings are written
    sections = {name for name in names
                if isinstance(started.get(name, {}), dict) and isinstance(given.get(name, {}), dict)}
    keys = differ({name: started.get(name, {} if name in sections else None) for name in names},
                  {name: given.get(name, {} if name in sections else None) for name in names}, "")
    return f" (changed: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""


def campaign_text_digest(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / CAMPAIGN_FILE).read_bytes()).hexdigest()


def open_records(run_dir: str | Path) -> CampaignStore:
    """The store of an existing run folder that records its campaign, whatever its campaign.yaml
    now says (the trust check reads its marks so); nothing is created."""
    run_dir = expand_home(run_dir)
    check_run_files(run_dir)
    with CampaignStore(run_dir).closed_on_error() as store:
        _require_campaign(store, run_dir)  # a store that lost it is damaged, whatever the file says
    return store


def open_run(run_dir: str | Path) -> CampaignStore:
    """The store of an existing run folder, checked against the folder's own campaign.yaml as
    `resume` checks it; nothing is created (reading a run must not start one)."""
    run_dir = expand_home(run_dir)
    with open_records(run_dir).closed_on_error() as store:
        if store.get_meta(CAMPAIGN_TEXT_META) != campaign_text_digest(run_dir):
            changed = differences(store, Campaign.load(run_dir / CAMPAIGN_FILE))
            if changed is not None:  # the run's own record is intact: the file is what changed
                start = shell("evo-merge", "run", "CAMPAIGN.yaml", "--out", run_dir)
                raise UserError(f"{run_dir / CAMPAIGN_FILE}: edited since the run started{changed}; undo the edit "
                                f"(`{start}` with the campaign it started with writes it back), or start the "
                                "edited campaign in a new run folder")
    return store


def read_run(run: str | Path) -> tuple[CampaignStore, dict[str, Any]]:
    """The run's store and facts, opened without the campaign's models or tasks (and checked against
    its campaign.yaml as `resume` checks it); a run that has not recorded its facts is not read."""
    run = expand_home(run)
    try:
        store = open_run(run)
    except UserError:
        if pid := holder(run):  # a run that has not written its campaign yet
            raise UserError(f"{run}: a run is starting here (pid {pid}); it has not written its campaign yet") from None
        raise
    with store.closed_on_error():
        facts = store.get_meta(FACTS_META)
        if facts is None:  # starting, stopped before its tasks were loaded, or written before facts were stored
            if pid := holder(run):
                raise UserError(f"{run}: a run is starting here (pid {pid}); it has not recorded its tasks yet")
            again = shell("evo-merge", "resume", run)
            raise UserError(f"{run}: the campaign has not recorded its tasks yet; `{again}` records them")
        tasks = {t["name"] for t in facts["tasks"]}
        scored = store.scored_tasks() or tasks
        if scored != tasks:  # every reader takes the recorded tasks for those the evaluations were scored on
            raise UserError(f"{run}: state.sqlite is damaged: its tasks ({', '.join(sorted(tasks))}) are not those "
                            f"its evaluations were scored on ({', '.join(sorted(scored))})")
        check_picks_held_out(store)
    return store, facts


def edited_away(store: CampaignStore, run_dir: Path) -> bool:
    """Whether the folder's campaign.yaml no longer holds the campaign its store records (an edit of
    the identity, or a file that no longer loads), so a start with the right campaign writes it back;
    an edit of what a resume may change (placement, budgets) is kept."""
    if store.get_meta(CAMPAIGN_TEXT_META) == campaign_text_digest(run_dir):
        return False
    try:
        return differences(store, Campaign.load(run_dir / CAMPAIGN_FILE)) is not None
    except UserError:
        return True
