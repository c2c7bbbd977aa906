"""MASS as a search candidate kind (`kinds.CandidateKind`).

The genome varies the routing settings (`layer`, `threshold`, `max_tasks`); the endpoint
weights play no part, since routing picks the tasks per input. The factors are computed once
per workbench and kept there; each candidate only moves the router.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evo_merge.errors import UserError
from evo_merge.merge.card import Scores
from evo_merge.merge.export import Tracker
from evo_merge.merge.kinds import declared_ranges
from evo_merge.search.candidate import Candidate
from evo_merge.search.evidence import Evidence
from evo_merge.weights import Checkpoint

if TYPE_CHECKING:
    from evo_merge.mass import MassModel
    from evo_merge.merge.storage import Keeping
    from evo_merge.search.workbench import Workbench

KEPT = "mass"


class MassKind:
    def uses_weights(self, method: str) -> bool:
        return False  # routing picks the tasks per input

    def searched_ranges(self, method: str, configured: Mapping[str, Any],
                        base: Path) -> dict[str, tuple[float, float]]:
        """The configured ranges; the routing layer, unless given, ranges over the base's MLP blocks,
        and one given is checked against them (found out after calibration, the block was refused
        for every candidate)."""
        from evo_merge.mass.routing import routing_weights

        ranges = declared_ranges(method, dict(configured))
        with Checkpoint.open(base) as checkpoint:
            layers = list(routing_weights(checkpoint.names))
        if not layers:
            raise UserError(f"methods.mass: the base {base} has no MLP block to route on")
        given = configured.get("layer")
        for layer in given if isinstance(given, (tuple, list)) else [] if given is None else [given]:
            if layer not in layers and not layers[0] <= layer <= layers[-1]:
                raise UserError(f"methods.mass.layer: {layer:g} is not a block of the base {base}, whose MLP blocks "
                                f"are {layers[0]} to {layers[-1]}")
        if given is None:
            ranges["layer"] = (layers[0], layers[-1])
        return ranges

    def model(self, bench: Workbench) -> MassModel:
        """The workbench's MASS model (its factors computed on first use)."""
        if KEPT not in bench.kept:
            from evo_merge.mass import MassModel
            from evo_merge.merge.storage import Stash

            stash = Stash(bench.storage, bench.device)  # the factors kept like the merger's task vectors
            bench.kept[KEPT] = MassModel.from_checkpoints(bench.base, bench.models, stash=stash, dtype=bench.dtype,
                                                          names=bench.model_names or None).to(device=bench.device)
        return bench.kept[KEPT]

    def rounds(self, method: str, kept: Keeping) -> bool:
        """Its base and factors are kept in the storage dtype, and a MASS folder keeps them in the base
        checkpoint's: the search's MASS is the exported one, bits and all, where the two are the same
        dtype (bf16 checkpoints under `auto`), and not where they differ either way (float32 storage
        over bf16 checkpoints rounds the factors as the folder is written)."""
        return not kept.as_checkpoints

    def rounding_note(self, stored: str, task_vectors: bool) -> str:
        return (f"with the base and the factors kept in {stored} (`storage.dtype`), and a MASS folder keeps them in "
                "the base checkpoint's dtype: an exported MASS pick can route and score a little differently "
                "(`storage.dtype: auto` keeps them as the folder does; docs/memory.md, exactness)")

    def check_inputs(self, adapters: bool) -> None:
        if adapters:
            raise UserError("methods.mass: MASS decomposes model folders; inputs with a LoRA adapter (+adapter) "
                            "are merged by the other methods only")

    def check(self, bench: Workbench) -> None:
        self.check_inputs(bench.adapters)
        self.model(bench)  # decomposing refuses endpoints not fine-tuned from the base

    def build(self, bench: Workbench, candidate: Candidate) -> MassModel:
        mass = self.model(bench)
        mass.set_routing(**candidate.param_dict)
        return mass

    def export(self, candidate: Candidate, base: str, models: list[str], out: Path, *, scores: Scores,
               out_dtype: str, bench: Workbench | None, overwrite: bool, evidence: Evidence | None = None,
               track: Tracker | None = None, chosen_as: Sequence[str] = (), device: str = "cpu") -> Path:
        """A MASS folder (factors, routing, scores); built here when no workbench is at hand, its
        task vectors decomposed on `device` and the factors kept on the host (a cluster's driver
        shares its GPU with a worker's model).
        A measured candidate's `evidence` becomes its results files (the card has no model-index:
        the Hub cannot run a MASS folder)."""
        from evo_merge.mass import MassModel

        if bench is not None:
            mass = self.build(bench, candidate)
        else:  # base and models as recipes name them: the folders they resolve to
            import torch

            from evo_merge.mass.factors import COMPUTE_DTYPE
            from evo_merge.merge.storage import Stash, Storage
            from evo_merge.weights.references import resolve_reference

            refs = [resolve_reference(str(base), None, "base_model"),
                    *(resolve_reference(str(m), None, f"models.{i}") for i, m in enumerate(models))]
            stash = Stash(Storage(placement="host"), torch.device(device), COMPUTE_DTYPE)
            mass = MassModel.from_checkpoints(refs[0].path, [r.path for r in refs[1:]], track=track, stash=stash,
                                              names=[r.name for r in refs[1:]])
            mass.set_routing(**candidate.param_dict)
        from evo_merge.merge.card import score_errors

        evidence = evidence or Evidence()
        folder = mass.save(out, overwrite=overwrite, scores=scores, chosen_as=chosen_as, scores_note=evidence.note,
                           errors=score_errors(evidence.item_scores, evidence.estimate_se))
        if evidence.item_scores:
            from evo_merge.merge.results import write_results

            write_results(folder, evidence.item_scores, evidence.tasks)
        return folder


MASS_KIND = MassKind()
