"""Export evaluated candidates as model folders, each by its kind, with its scores in the card."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import Evaluator
from evo_merge.search.holdout import HOLDOUT_META, held_out_scores
from evo_merge.search.kinds import candidate_kind
from evo_merge.search.store import CampaignStore, Evaluation
from evo_merge.search.workspace import Workspace

EXPORTED_META = "exported"  # store meta: pick name -> [evaluation id, folder]


def card_scores(store: CampaignStore, evaluation: Evaluation) -> dict[str, dict[str, float]]:
    """The card's scores: estimated, and measured; with a holdout, `measured` is the held-out
    score (items no choice was made on) and the search items' score is `measured_search_items`."""
    held_out = held_out_scores(store, evaluation.key, store.get_meta(HOLDOUT_META, {}))
    kinds = (("estimated", evaluation.estimates), ("measured", evaluation.measured)) if held_out is None else (
        ("estimated", evaluation.estimates), ("measured_search_items", evaluation.measured), ("measured", held_out))
    return {kind: values for kind, values in kinds if values}


def export_candidate(workspace: Workspace, evaluation: Evaluation, out: Path, *, evaluator: Evaluator | None = None,
                     overwrite: bool = False) -> Path:
    """Write one evaluation's candidate to `out`; the evaluator's workbench is reused when it has one."""
    candidate = Candidate.from_key(evaluation.key)
    bench = evaluator.workbench() if evaluator is not None else None
    return candidate_kind(candidate.method).export(
        candidate, workspace.base, workspace.models, Path(out), scores=card_scores(workspace.store, evaluation),
        out_dtype=workspace.campaign.dtype, bench=bench, overwrite=overwrite)


def export_picks(workspace: Workspace, chosen: Mapping[str, Evaluation], evaluator: Evaluator | None = None
                 ) -> dict[str, tuple[int, Path]]:
    """Export each chosen candidate once, under the first name that picked it, into models/;
    the picks are recorded in the store for the report."""
    exported: dict[str, tuple[int, Path]] = {}
    folders: dict[int, Path] = {}
    for name, evaluation in chosen.items():
        if evaluation.id not in folders:
            folders[evaluation.id] = export_candidate(workspace, evaluation, workspace.run_dir / "models" / name,
                                                      evaluator=evaluator, overwrite=True)
        exported[name] = (evaluation.id, folders[evaluation.id])
    workspace.store.set_meta(EXPORTED_META, {name: [i, str(path)] for name, (i, path) in exported.items()})
    return exported
