"""The allowed values users can name, defined once: the config schema, the CLI's choices and the
library all read them from here, so adding a kind cannot leave one of them behind.

This module imports nothing, so the config schema can use it without loading torch.
"""

from __future__ import annotations

# estimators of a candidate's accuracy from a few scored items (see estimators.py, adaptive.py)
ESTIMATOR_KINDS = ("anchor", "pirt", "gpirt", "mpirt", "gmpirt", "adaptive")
ENDPOINT_ESTIMATORS = ("mpirt", "gmpirt")  # those that need the endpoints' abilities (merge-aware)
FULL_EVALUATION = "full"  # a campaign's costly baseline: every item scored, no estimator
CAMPAIGN_ESTIMATOR_KINDS = (*ESTIMATOR_KINDS, FULL_EVALUATION)
# "auto" is stratified-irt with enough calibration subjects, stratified below; "auto-kmeans" (the
# default before defaults version 8) kmeans-irt with enough, stratified below (anchors.choose_anchor_method)
ANCHOR_METHODS = ("auto", "auto-kmeans", "stratified-irt", "kmeans-irt", "kmeans-correctness", "stratified", "random")
# what a campaign, `evo-merge irt` and the library use unless told otherwise
DEFAULT_ESTIMATOR_KIND = "gpirt"
DEFAULT_ANCHOR_METHOD = "auto"
# how a model's anchors are spread over its scenarios (anchors.allocate)
ANCHOR_ALLOCATIONS = ("equal", "neyman")
BACKEND_NAMES = ("torch", "pyirt")
