"""What an exported candidate's card says of its scores (`CandidateKind.export`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from evo_merge.tasks.meta import TaskMeta


@dataclass(frozen=True)
class Evidence:
    """How an exported candidate's scores were obtained: each task's metadata (dataset, metric,
    version), for a candidate measured on every item its per-item scores (task -> item -> score),
    and the standard errors of its estimated scores."""

    tasks: Mapping[str, TaskMeta] = field(default_factory=dict)
    item_scores: Mapping[str, Mapping[str, float]] | None = None
    note: str | None = None  # the card's caveats: scores measured on a rounding of the weights, an SE too small
    estimate_se: Mapping[str, float] = field(default_factory=dict)
