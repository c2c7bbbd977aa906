"""Export evaluated candidates as model folders, each by its kind, with its scores in the card and,
when measured on every item, the lm-eval-style results files beside the weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.irt.kinds import FULL_EVALUATION
from evo_merge.markup import shell
from evo_merge.progress import Progress, no_progress, stage_track
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import Evaluator
from evo_merge.search.evidence import Evidence
from evo_merge.search.holdout import HOLDOUT_META, held_out_scores
from evo_merge.search.kinds import candidate_kind, rounded_storage_note
from evo_merge.search.layout import MODELS_FOLDER
from evo_merge.search.metrics import se_caveat
from evo_merge.search.run_folder import in_run, pick_folder_change
from evo_merge.search.store import FACTS_META, SEARCH, CampaignStore, Evaluation, Record, evaluated_on
from evo_merge.search.workspace import Workspace
from evo_merge.tasks.base import FitnessTask
from evo_merge.tasks.meta import TaskMeta, task_meta
from evo_merge.weights.digest import weights_digest
from evo_merge.weights.export import sweep_partial_folders
from evo_merge.weights.references import ModelRef

log = logging.getLogger(__name__)
TASK_META = Record("task_meta", dict[str, TaskMeta])  # store meta: what cards and results files say of each task
# store meta: a pick's folder (as `exported` names it) -> digest of its weights as the run wrote them
EXPORTED_WEIGHTS_META = Record("exported_weights", dict[str, str])


def card_scores(store: CampaignStore, evaluation: Evaluation) -> dict[str, dict[str, float]]:
    """The card's scores: estimated, and measured; with a holdout, `measured` is the held-out
    score (items no choice was made on), the search items' score is `measured_search_items` and
    every item's `measured_all_items`.
    A task too small to hold items out (`holdout: auto`) was measured on all its items: that is
    its `measured` score (it was left out of the card, the pick's own task included).
    Only an estimate is an estimated score: a search that measures every item (`estimator.kind:
    full`), and a candidate measured before the search (the base, an endpoint, a standard merge
    measured as a warm-up), hold their search items' measurement there, which the card showed as
    "estimated", said to come from anchor items and an IRT model. An estimate has its SE, or is a
    search candidate's in a folder from before SEs were stored."""
    held_out = held_out_scores(store, evaluation.key, store.get_meta(HOLDOUT_META, {}))
    if held_out is not None:
        held_out = {**(evaluation.measured or {}), **held_out}
    full = (store.get_meta(FACTS_META) or {}).get("estimator") == FULL_EVALUATION
    estimated = not full and (evaluation.estimate_se is not None or evaluation.phase == SEARCH)
    estimates = evaluation.estimates if estimated else None
    kinds = (("estimated", estimates), ("measured", evaluation.measured)) if held_out is None else (
        ("estimated", estimates), ("measured_search_items", evaluation.measured),
        ("measured_all_items", _all_items_scores(store, evaluation)), ("measured", held_out))
    return {kind: values for kind, values in kinds if values}


def _all_items_scores(store: CampaignStore, evaluation: Evaluation) -> dict[str, float]:
    """Each task's mean over every item, where all are scored: what lm-eval gives on the whole task
    (a reader who runs it compares with this, not with the held-out score)."""
    items = {t["name"]: t["items"] for t in (store.get_meta(FACTS_META) or {}).get("tasks", [])}
    return {task: float(sum(scores.values()) / len(scores))
            for task, scores in store.item_scores(evaluation.key).items() if scores and len(scores) == items.get(task)}


def export_candidate(workspace: Workspace, evaluation: Evaluation, out: Path, *, evaluator: Evaluator | None = None,
                     overwrite: bool = False, progress: Progress = no_progress, chosen_as: Sequence[str] = ()) -> Path:
    """Write one evaluation's candidate to `out`, merged on the campaign's device where this process
    has it (`available_device`), from the checkpoints through its recipe (the kind's `export`; MASS
    reuses the evaluator's workbench when it has one: its routing is no file merge). `progress`
    gets a stage `exporting NAME` over the tensors written; `chosen_as` names the picks it is, in
    its card. The caller checks the models first (`Workspace.check_models_unchanged`): the scores
    on the card are of the weights the run read."""
    from evo_merge.weights.devices import available_device

    named = workspace.campaign.device
    device = available_device(named)
    # where the candidates were built: as the run recorded it; else the device the campaign names
    ran_on = evaluated_on(workspace.store) or ([] if named == "auto" else [named.split(":")[0]])
    if any(kind != device.type for kind in ran_on):
        log.warning("the run evaluated on %s, this export merges on %s: equal to rounding, but DARE and DELLA draw "
                    "other drops than the candidate scored", " and ".join(ran_on), device.type)
    candidate = Candidate.from_key(evaluation.key)
    bench = evaluator.workbench() if evaluator is not None else None
    return candidate_kind(candidate.method).export(
        candidate, *workspace.sources(), Path(out), scores=card_scores(workspace.store, evaluation),
        out_dtype=workspace.dtype_name(), bench=bench, overwrite=overwrite,
        evidence=evidence(workspace.store, evaluation), track=stage_track(progress, f"exporting {Path(out).name}"),
        chosen_as=chosen_as, device=str(device))


def record_task_meta(store: CampaignStore, campaign: Campaign, tasks: Mapping[str, FitnessTask]) -> None:
    """Keep what cards and results files say about each task (dataset, split, metric, version,
    limit) in the store, so an export from a run folder needs no task object."""
    store.set_meta(TASK_META, {t.label: task_meta(t.label, tasks[t.label], direction=t.direction).as_dict()
                                 for t in campaign.tasks})


def evidence(store: CampaignStore, evaluation: Evaluation) -> Evidence:
    """The task metadata, the per-item scores when the evaluation was measured on every item (with
    a holdout, those of the held-out items, as the card's measured scores are), the estimates' SEs,
    and what the card says of them: scores measured on a rounding of the weights, an SE that leaves
    part of the error out."""
    tasks, facts = store.get_meta(TASK_META, {}), store.get_meta(FACTS_META) or {}
    estimate_se = evaluation.estimate_se or {}
    # the card shows each estimate ± its SE: where that SE leaves part of the error out, it says so
    caveat = se_caveat(facts, store) if estimate_se else None
    notes = (rounded_storage_note(facts, evaluation.method), caveat and f"the {caveat}")  # "Mpirt" read as a name
    note = "; ".join(n for n in notes if n) or None
    if not evaluation.measured:
        return Evidence(tasks, None, note, estimate_se)
    scores, holdout = store.item_scores(evaluation.key), store.get_meta(HOLDOUT_META, {})
    if held_out_scores(store, evaluation.key, holdout) is not None:  # the card says which items, not "all N"
        # a task with none held out: all its items, as its measured score
        scores = {task: {i: scores[task][i] for i in items} if items else scores.get(task, {})
                  for task, items in holdout.items()}
        tasks = {name: replace(meta, held_out=len(scores[name])) if holdout.get(name) else meta
                 for name, meta in tasks.items()}
    return Evidence(tasks, scores, note, estimate_se)


def export_picks(workspace: Workspace, chosen: Mapping[str, Evaluation], evaluator: Evaluator | None = None,
                 progress: Progress = no_progress) -> dict[str, tuple[int, Path]]:
    """Export each chosen candidate once, under the first name that picked it, into models/, its
    card naming every pick it is (the partial folders a killed export left there first removed:
    the run's lock keeps others out). A pick the run already exported as the same candidate and
    folder is kept as it is (a folder is written whole or not at all): the resume of a finished
    run rewrites no model, and a kill during it cannot leave a pick missing. A kept folder whose
    weights are no longer those the run wrote (`EXPORTED_WEIGHTS_META`: another pick's copied over
    it, a file replaced) is no pick: it is exported again, with a warning. The picks are recorded
    (`CampaignStore.exported`) once all are written."""
    run_dir = workspace.run_dir
    workspace.check_in_place()
    workspace.check_models_unchanged()  # once, for every pick: their cards' scores are of the weights the run read
    if (run_dir / MODELS_FOLDER).is_dir():
        sweep_partial_folders(run_dir / MODELS_FOLDER)
    names: dict[int, list[str]] = {}
    for name, evaluation in chosen.items():
        names.setdefault(evaluation.id, []).append(name)
    done, store = workspace.store.exported(), workspace.store
    written = store.get_meta(EXPORTED_WEIGHTS_META, {})
    folders: dict[int, Path] = {}
    for name, evaluation in chosen.items():  # each candidate under the first name that picked it
        out = run_dir / MODELS_FOLDER / name
        where = in_run(out, run_dir)
        if evaluation.id in folders:
            continue
        kept = out.is_dir() and all(done.get(n) == (evaluation.id, where) for n in names[evaluation.id])
        if kept and (weights := _weights_digest(out)) is None:  # no model folder: what it holds may be the user's
            raise UserError(f"{out}: a pick folder of this run whose weights are gone; move out any file of your "
                            f"own, remove the folder, and `{shell('evo-merge', 'resume', run_dir)}` exports it again")
        if kept and (changed := _changed_since_exported(out, weights, written.get(where))):
            log.warning("%s: %s; exported again", out, changed)
            kept = False
        folders[evaluation.id] = out if kept else export_candidate(
            workspace, evaluation, out, evaluator=evaluator, overwrite=True, progress=progress,
            chosen_as=names[evaluation.id])
        if not kept and (digest := _weights_digest(out)) is not None:
            store.set_meta(EXPORTED_WEIGHTS_META, written := {**written, where: digest})
    store.set_exported({name: (evaluation.id, in_run(folders[evaluation.id], run_dir))
                        for name, evaluation in chosen.items()})
    return {name: (evaluation.id, folders[evaluation.id]) for name, evaluation in chosen.items()}


def _changed_since_exported(folder: Path, weights: str, digest: str | None) -> str | None:
    """Why a pick folder the run exported, whose weights have digest `weights`, is no longer its pick
    (None: it is): its weights replaced, or its card gone (resume left a pick without the card that
    says what it is, which `push` then refused), or a file made a link to one elsewhere (which
    could change under the pick). `digest`: the weights' as exported (None: a run from before it
    was kept)."""
    if digest is not None and weights != digest:
        return "its weights are not those this run exported"
    return pick_folder_change(folder)


def _weights_digest(folder: Path) -> str | None:
    """The digest a run folder keeps of a pick folder's weights (`weights_digest`: a MASS folder's
    factors too); None for a folder with no weights file, which is then not checked."""
    try:
        return weights_digest(ModelRef(str(folder), folder))
    except UserError:
        return None
