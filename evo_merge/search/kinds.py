"""Candidate kinds: what a candidate's method means to the search.

A kind declares its part of the genome (which hyperparameters, over which ranges, whether the
endpoint weights count), builds a candidate on a `Workbench`, and exports it. A static merge
method writes one set of weights into the resident module and exports as the recipe
`evo-merge merge` rebuilds; MASS (`mass_kind.py`) routes each input. The search
looks kinds up in `KINDS` by method name and never branches on one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from evo_merge.config import block_size
from evo_merge.merge.card import Scores  # "estimated" / "measured" -> task -> score
from evo_merge.merge.export import Tracker
from evo_merge.merge.groups import group_setting, tensor_weights
from evo_merge.merge.kinds import MASS, Ranges, declared_ranges
from evo_merge.search.candidate import MODEL, Candidate
from evo_merge.search.evidence import Evidence
from evo_merge.weights import Checkpoint

if TYPE_CHECKING:
    from evo_merge.merge.storage import Keeping
    from evo_merge.search.workbench import Workbench

TENSOR_NAMES = "static.tensor_names"  # the workbench's base tensor names, kept for block-group weights


def merge_rounding_note(stored: str, task_vectors: bool) -> str:
    """`CandidateKind.rounding_note` of a static merge: the rounded task vectors (`task_vectors`), or
    the factors a method computes from exact ones."""
    if task_vectors:
        what = (f"task vectors stored in {stored}, each rounded once (a `storage.dtype` narrower than the "
                "checkpoints', or an endpoint that is a LoRA adapter's sum, formed in float32)")
    else:
        what = f"factors the method computes (TSV's), stored in {stored} (`storage.dtype`), each rounded once"
    return (f"on merges of {what}; an exported pick is the merge of its recipe (`merge_recipe.yaml`) and can "
            "score a little differently (`storage.dtype: float32` measures exactly the exported weights; "
            "docs/memory.md, exactness)")


class CandidateKind(Protocol):
    def uses_weights(self, method: str) -> bool:
        """False when the endpoint weights play no part (the genome decodes them as all 1)."""
        ...

    def searched_ranges(self, method: str, configured: Mapping[str, Any], base: Path) -> Ranges:
        """The hyperparameters the genome varies for `method`, with their ranges, from the campaign's
        settings of it (a range, or one value fixed in every candidate, which has no gene);
        UserError for a setting the base cannot take."""
        ...

    def check_inputs(self, adapters: bool) -> None:
        """Fail before any model loads if this kind cannot take the campaign's inputs (`adapters`:
        a LoRA adapter is folded into some input): `plan` and `run` both ask."""
        ...

    def check(self, bench: Workbench) -> None:
        """Fail before any evaluation if this kind cannot work on the workbench's models."""
        ...

    def rounds(self, method: str, kept: Keeping) -> bool:
        """Whether the search's candidate of `method` can differ from the exported pick, its tensors
        kept as `kept` (a `merge.storage.Keeping`) says."""
        ...

    def rounding_note(self, stored: str, task_vectors: bool) -> str:
        """How the scores of a candidate that `rounds` were measured, and what the exported pick is
        (completing "scores ... were measured "), with tensors stored in `stored` and the task vectors
        themselves rounded or not (a run's `facts`)."""
        ...

    def build(self, bench: Workbench, candidate: Candidate) -> Any:
        """The candidate's model, ready to score (raises CandidateFailed-worthy errors)."""
        ...

    def export(self, candidate: Candidate, base: str, models: list[str], out: Path, *,
               scores: Scores, out_dtype: str, bench: Workbench | None, overwrite: bool,
               evidence: Evidence | None = None, track: Tracker | None = None, chosen_as: Sequence[str] = (),
               device: str = "cpu") -> Path:
        """Write the candidate as a model folder with its card, computed on `device`; `bench` is reused when given;
        `evidence` (task metadata, and per-item scores of a measured candidate) goes into the
        card's model-index and the results files; `track` wraps the tensors written, for a bar;
        `chosen_as` names the campaign picks it is, in the card."""
        ...


def tensor_names(base: Path) -> list[str]:
    """The base's tensor names, from its headers: block-group weights are laid out over them."""
    with Checkpoint.open(base) as checkpoint:
        return list(checkpoint.names)


def weight_settings(candidate: Candidate, names: list[str], n_models: int) -> list[Any]:
    """Each endpoint's recipe `weight`: a number, or its group weights as one filter per block."""
    if candidate.granularity == MODEL:
        return list(candidate.weights)
    size = block_size(candidate.granularity)
    return [group_setting(names, size, values) for values in candidate.endpoint_weights(n_models)]


def candidate_recipe(candidate: Candidate, base: str | Path, models: list[str] | list[Path], out_dtype: str):
    """The mergekit-style recipe of a static-merge candidate, as `evo-merge merge` takes it."""
    from evo_merge.merge.recipe import Recipe

    if candidate.granularity != MODEL:  # a Hub id or `+adapter` reference: its folder holds the names
        from evo_merge.weights.references import resolve_reference

        names = tensor_names(resolve_reference(str(base), None, "base_model").path)
    else:
        names = []
    return Recipe.model_validate({
        "merge_method": candidate.method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": w}}
                   for m, w in zip(models, weight_settings(candidate, names, len(models)))],
        "parameters": candidate.param_dict,
        "dtype": "float32",
        "out_dtype": out_dtype,
    })


class StaticMerge:
    """A registered merge method: one set of weights, written in place, exported as its recipe."""

    def uses_weights(self, method: str) -> bool:
        """As the method declares: some (model_stock, karcher, ...) ignore per-model weights."""
        from evo_merge.merge import get_method

        return get_method(method).uses_weights

    def searched_ranges(self, method: str, configured: Mapping[str, Any], base: Path) -> Ranges:
        return declared_ranges(method, configured)

    def rounds(self, method: str, kept: Keeping) -> bool:
        from evo_merge.merge.storage import rounds

        return rounds(method, kept)

    def rounding_note(self, stored: str, task_vectors: bool) -> str:
        return merge_rounding_note(stored, task_vectors)

    def check_inputs(self, adapters: bool) -> None:
        """Every input folds in: the merger reads adapters tensor by tensor."""

    def check(self, bench: Workbench) -> None:
        """The in-place merger checked the endpoints when the workbench opened."""

    def build(self, bench: Workbench, candidate: Candidate) -> Any:
        """Block-group weights go to the merger per tensor, read from the settings the export writes
        (laid out over the base's tensors), for every tensor it merges: a head it unties included."""
        weights: Any = candidate.weights
        if candidate.granularity != MODEL:
            names = bench.kept.setdefault(TENSOR_NAMES, tensor_names(bench.base))
            weights = tensor_weights(weight_settings(candidate, names, len(bench.models)), bench.merger.names)
        return bench.merger.apply(candidate.method, weights, candidate.param_dict)

    def export(self, candidate: Candidate, base: str, models: list[str], out: Path, *,
               scores: Scores, out_dtype: str, bench: Workbench | None, overwrite: bool,
               evidence: Evidence | None = None, track: Tracker | None = None, chosen_as: Sequence[str] = (),
               device: str = "cpu") -> Path:
        """Streamed from the checkpoints through the recipe, exactly as `evo-merge merge` does:
        the exported folder is the recipe's merge by construction, whatever the search stored."""
        from evo_merge.merge.export import export_merge
        from evo_merge.merge.plan import plan_from_recipe

        plan = plan_from_recipe(candidate_recipe(candidate, base, models, out_dtype))
        evidence = evidence or Evidence()
        return export_merge(plan, out, overwrite=overwrite, title=out.name, scores=scores, tasks=evidence.tasks,
                            item_scores=evidence.item_scores, track=track, chosen_as=chosen_as, device=device,
                            scores_note=evidence.note, estimate_se=evidence.estimate_se)


# method name -> "module:attribute" of its kind; every other method is a static merge
KINDS: dict[str, str] = {MASS: "evo_merge.search.mass_kind:MASS_KIND"}  # loaded when a campaign has MASS
STATIC = StaticMerge()


def candidate_kind(method: str) -> CandidateKind:
    target = KINDS.get(method)
    if target is None:
        return STATIC
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def rounded_storage_note(facts: Mapping[str, Any] | None, method: str | None = None) -> str | None:
    """The line a report (`method` None) or a pick's card gives scores measured on candidates the
    search kept otherwise than their exported picks keep them (`Workspace.storage_rounding`), each
    kind saying how (`CandidateKind.rounding_note`): an exported pick can answer a few items
    differently. None where the scores are the exported picks' own, and for a run from before the
    dtype was recorded."""
    facts = facts or {}
    stored = facts.get("stored_dtype")
    if stored is None:
        return None
    rounded = facts.get("rounded_methods")
    if rounded is None:  # a run from before: every method's task vectors were rounded below float32
        exact = stored in ("float32", "float64")  # (float64: a float64 base's, recorded by earlier versions)
        return None if exact else f"scores were measured {merge_rounding_note(stored, True)}"
    task_vectors = facts.get("rounded_task_vectors", True)
    if method is not None:
        return f"scores were measured {candidate_kind(method).rounding_note(stored, task_vectors)}" if (
            method in rounded) else None
    by_note: dict[str, list[str]] = {}  # methods of one kind share their note
    for name in rounded:
        by_note.setdefault(candidate_kind(name).rounding_note(stored, task_vectors), []).append(name)
    lines = [f"scores of {', '.join(names)} candidates were measured {note}" for note, names in by_note.items()]
    return "; ".join(lines) or None
