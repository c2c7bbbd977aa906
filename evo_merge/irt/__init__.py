"""IRT evaluation: fit a multidimensional 2PL on a response matrix, pick anchor items, and
estimate a new subject's per-scenario accuracy (with a standard error) from its anchor scores,
or choose its items adaptively.

    responses = load_responses("responses.csv")
    model = IRTModel.fit(responses, backend="torch", dims="auto", seed=0)
    anchors = select_anchors(model, budget=30, method="auto", seed=0)
    estimator = Estimator(model, anchors, kind="gpirt")
    result = estimator.estimate({"item-1": 1.0, ...})  # {"scenario": 0.61, ..., "overall": 0.58}
    result.se                                           # {"scenario": 0.03, ..., "overall": 0.02}

Names are imported on first use (PEP 562), so `evo_merge.config` can read the allowed values in
`evo_merge.irt.kinds` without loading torch and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Estimate": "result", "Estimator": "estimators", "AdaptiveEstimator": "estimators",
    "estimate_table": "estimators",
    "ESTIMATOR_REVISION": "estimators",
    "Anchors": "anchors", "choose_anchor_method": "anchors", "load_anchors": "anchors",
    "select_anchors": "anchors",
    "AdaptiveTest": "adaptive",
    "IRTModel": "model",
    "load_responses": "responses", "validate_responses": "responses",
    "validate": "validation",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
