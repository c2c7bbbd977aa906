"""IRT evaluation: fit a multidimensional 2PL on a response matrix, pick anchor items, and
estimate a new subject's per-scenario accuracy from its anchor scores (DESIGN.md §5).

    responses = load_responses("responses.csv")
    model = IRTModel.fit(responses, backend="torch", dims="auto", seed=0)
    anchors = select_anchors(model, budget=30, method="kmeans-irt", seed=0)
    estimator = Estimator(model, anchors, kind="gpirt")
    estimator.estimate({"item-1": 1.0, ...})  # {"scenario": 0.61, ..., "overall": 0.58}
"""

from evo_merge.irt.anchors import METHODS, Anchors, load_anchors, select_anchors
from evo_merge.irt.estimators import KINDS, Estimator, estimate_table
from evo_merge.irt.model import IRTModel
from evo_merge.irt.responses import load_responses, validate_responses
from evo_merge.irt.validate import validate

__all__ = [
    "KINDS", "METHODS", "Anchors", "Estimator", "IRTModel", "estimate_table",
    "load_anchors", "load_responses", "select_anchors", "validate", "validate_responses",
]
