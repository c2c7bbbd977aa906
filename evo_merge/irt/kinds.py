"""The allowed values users can name, defined once: the config schema, the CLI's choices and the
library all read them from here, so adding a kind cannot leave one of them behind.

This module imports nothing, so the config schema can use it without loading torch.
"""

from __future__ import annotations

# estimators of a candidate's accuracy from a few scored items (see estimators.py, adaptive.py)
ANCHOR_MEAN = "anchor"  # the anchors' (weighted) mean alone
PIRT = "pirt"  # the IRT model's prediction from the ability fitted on the anchors
GPIRT = "gpirt"  # the two mixed by their measured errors
MPIRT, GMPIRT = "mpirt", "gmpirt"  # p-IRT, gp-IRT with the ability a combination of the endpoints'
ADAPTIVE = "adaptive"  # the estimator that picks each subject's items itself, from its answers so far
ESTIMATOR_KINDS = (ANCHOR_MEAN, PIRT, GPIRT, MPIRT, GMPIRT, ADAPTIVE)
ENDPOINT_ESTIMATORS = (MPIRT, GMPIRT)  # those that need the endpoints' abilities (merge-aware)
# estimators whose standard error leaves out part of the error (an audit: mp-IRT 42-61% beyond 2 SE on the
# shipped tiny-lm responses), said wherever the ± is shown. An adaptive test's SE counts the IRT model's own
# error since estimator revision 4 (measured by cross-fitting; the posterior's alone was half the error)
SE_CAVEATS = dict.fromkeys(ENDPOINT_ESTIMATORS, "their standard error counts the error of merges the IRT model "
                           "simulates between the endpoints, not of real ones: 4-10x too small on the shipped "
                           "tiny-lm responses; read it as a lower bound (`irt validate` measures it on your responses)")
# an adaptive test's SE before that revision (a run folder scored then), or where no calibration subject
# answered every item to measure the model's error on: the posterior's alone, about half the error
POSTERIOR_SE_CAVEAT = ("their standard error is the IRT model's posterior SE, which leaves out the model's own error "
                       "(large with few calibration subjects); read it as a lower bound")
ADAPTIVE_ERROR_REVISION = 4
FULL_EVALUATION = "full"  # a campaign's costly baseline: every item scored, no estimator
CAMPAIGN_ESTIMATOR_KINDS = (*ESTIMATOR_KINDS, FULL_EVALUATION)
# "auto" is stratified-irt with enough calibration subjects, stratified below; "auto-kmeans" (the
# default before defaults version 8) kmeans-irt with enough, stratified below (anchors.choose_anchor_method)
ANCHOR_METHODS = ("auto", "auto-kmeans", "stratified-irt", "kmeans-irt", "kmeans-correctness", "stratified", "random")
# what a campaign, `evo-merge irt` and the library use unless told otherwise
DEFAULT_ESTIMATOR_KIND = GPIRT
DEFAULT_ANCHOR_METHOD = "auto"
# stratified and stratified-irt anchors: of this many draws of the design, the one whose weighted means come
# closest to the calibration subjects' own scenario means is kept (anchors.balanced_draw; 1: one draw, as
# before defaults version 10). bench_irt.py --only balance: tiny-lm arith and lang with 12 calibration subjects
# 0.52x-0.86x random sampling's error where one draw gave 0.58x-0.89x; 50 draws gave most of it, 1,000 little more
DEFAULT_ANCHOR_BALANCE = 200
MAX_ANCHOR_BALANCE = 100_000  # a campaign's or the CLI's limit: seconds a set (audit 120: 13 s at 10,000 items)
# the anchor methods drawn in strata, which `balance` applies to (the others are drawn once, or not drawn)
BALANCED_ANCHOR_METHODS = ("stratified", "stratified-irt")
# how a model's anchors are spread over its scenarios (anchors.allocate)
ANCHOR_ALLOCATIONS = ("equal", "neyman")
BACKEND_NAMES = ("torch", "pyirt")

# below this many calibration subjects automatic anchors are stratified (bench_irt.py: kmeans-irt lost to
# random sampling at 12-20)
MIN_CLUSTER_SUBJECTS = 30
# the automatic anchor methods: what each is with at least MIN_CLUSTER_SUBJECTS calibration subjects
# (anchors.FALLBACK_METHOD below); the others are used as named
AUTOMATIC_ANCHOR_METHODS = {"auto": "stratified-irt", "auto-kmeans": "kmeans-irt"}
SELECTABLE_ANCHOR_METHODS = tuple(m for m in ANCHOR_METHODS if m not in AUTOMATIC_ANCHOR_METHODS)
# `irt validate`: which subjects are held out: drawn at random (like the calibration ones), or those
# scoring best or worst on average (unlike every calibration subject: merges that beat their endpoints are such)
HOLD_OUTS = ("random", "strongest", "weakest")
RANDOM_DRAWS = 200  # random draws per subject behind the baseline (2 draws can be 18% off)
# fewer held-out subjects than this: the summary says its verdict is noisy (3 subjects of a synthetic
# 12-model leaderboard gave the default 1.28x, 1.41x, 0.37x at 10 / 30 / 100 items on one split and
# anchor draw; 4 folds and 5 draws 0.80x, 0.73x, 0.72x; docs/irt.md)
FEW_HELD_OUT = 10
