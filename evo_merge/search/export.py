"""Export evaluated candidates as model folders, each by its kind, with its scores in the card and,
when measured on every item, the lm-eval-style results files beside the weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from evo_merge.config import Campaign
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import Evaluator
from evo_merge.search.kinds import Evidence, candidate_kind
from evo_merge.search.store import CampaignStore, Evaluation
from evo_merge.search.workspace import Workspace
from evo_merge.tasks.base import FitnessTask
from evo_merge.tasks.meta import TaskMeta, task_meta


def export_candidate(workspace: Workspace, evaluation: Evaluation, out: Path, *, evaluator: Evaluator | None = None,
                     overwrite: bool = False) -> Path:
    """Write one evaluation's candidate to `out`; the evaluator's workbench is reused when it has one."""
    candidate = Candidate.from_key(evaluation.key)
    scores = {kind: values for kind, values in
              (("estimated", evaluation.estimates), ("measured", evaluation.measured)) if values}
    bench = evaluator.workbench() if evaluator is not None else None
    return candidate_kind(candidate.method).export(
        candidate, workspace.base, workspace.models, Path(out), scores=scores, out_dtype=workspace.campaign.dtype,
        bench=bench, overwrite=overwrite, evidence=evidence(workspace.store, evaluation))


def record_task_meta(store: CampaignStore, campaign: Campaign, tasks: Mapping[str, FitnessTask]) -> None:
    """Keep what cards and results files say about each task (dataset, split, metric, version,
    limit) in the store, so an export from a run folder needs no task object."""
    store.set_meta("task_meta", {t.label: task_meta(t.label, tasks[t.label], direction=t.direction).as_dict()
                                 for t in campaign.tasks})


def evidence(store: CampaignStore, evaluation: Evaluation) -> Evidence:
    """The task metadata, and the per-item scores when the evaluation was measured on every item."""
    tasks = {name: TaskMeta(**meta) for name, meta in (store.get_meta("task_meta") or {}).items()}
    return Evidence(tasks, store.item_scores(evaluation.key) if evaluation.measured else None)


def export_picks(workspace: Workspace, chosen: Mapping[str, Evaluation], evaluator: Evaluator | None = None
                 ) -> dict[str, tuple[int, Path]]:
    """Export each chosen candidate once, under the first name that picked it, into models/."""
    exported: dict[str, tuple[int, Path]] = {}
    folders: dict[int, Path] = {}
    for name, evaluation in chosen.items():
        if evaluation.id not in folders:
            folders[evaluation.id] = export_candidate(workspace, evaluation, workspace.run_dir / "models" / name,
                                                      evaluator=evaluator, overwrite=True)
        exported[name] = (evaluation.id, folders[evaluation.id])
    return exported
