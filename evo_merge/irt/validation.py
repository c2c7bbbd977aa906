"""How good is each (anchor method × estimator × budget) on held-out subjects?

Fits the model on the training subjects only, then scores every held-out subject from its
anchor responses and compares with its true per-scenario mean. The baseline every other row
is compared to is random items with a plain mean, averaged over many draws per subject; one
random anchor set per repeat with every estimator (`random` + `gpirt` among them) shows what
the anchor method itself adds. Each row also says whether the estimator's standard errors can be
believed on these responses: the share of its errors beyond 2 SE (about 5% where the SEs are
right and the errors normal) and its RMS SE over its RMSE.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from evo_merge.errors import UserError
from evo_merge.irt.anchors import choose_anchor_method, select_anchors
from evo_merge.irt.estimators import Estimator
from evo_merge.irt.kinds import (
    ANCHOR_MEAN,
    BALANCED_ANCHOR_METHODS,
    DEFAULT_ANCHOR_BALANCE,
    DEFAULT_ANCHOR_METHOD,
    DEFAULT_ESTIMATOR_KIND,
    ENDPOINT_ESTIMATORS,
    FEW_HELD_OUT,
    GPIRT,
    HOLD_OUTS,
    PIRT,
    RANDOM_DRAWS,
    SELECTABLE_ANCHOR_METHODS,
)
from evo_merge.irt.model import IRTModel, fit_count
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.progress import Progress, no_progress

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (10, 20, 50, 100)
BASELINE = "mean (baseline)"
DEFAULT_ESTIMATORS = (ANCHOR_MEAN, PIRT, GPIRT)
FEW_DRAWS = 5  # fewer anchor draws: one draw's anchors serve every held-out subject, its MAE is one noisy number
ROUND_OFF = 1e-9  # an error this small is an exact estimate's round-off (SE 0), not one beyond its SE


def split_subjects(
    responses: pd.DataFrame, test_frac: float, seed: int, keep_in_train: Sequence[str] = (), hold_out: str = "random"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test split of the subjects (never putting `keep_in_train` in the test set): seeded at
    random, or the `strongest` / `weakest` by mean score."""
    if not 0.0 < test_frac < 1.0:
        raise UserError(f"test fraction must be between 0 and 1, not {test_frac}")
    if hold_out not in HOLD_OUTS:
        raise UserError(f"unknown hold-out {hold_out!r} (choose from {', '.join(HOLD_OUTS)})")
    subjects, candidates = _subjects(responses, keep_in_train)
    n_test = max(1, int(round(test_frac * len(subjects))))
    if len(subjects) < 5:
        raise UserError(f"too few subjects ({len(subjects)}): validation holds some out and fits on at least 4")
    if len(subjects) - n_test < 4 or n_test > candidates.size:
        raise UserError(f"too few subjects ({len(subjects)}) for a test fraction of {test_frac}")
    if hold_out == "random":
        test = set(np.random.default_rng(seed).choice(candidates, n_test, replace=False))
    else:
        mean = responses.groupby("subject", sort=False)["score"].mean().reindex(candidates).to_numpy()
        order = np.argsort(-mean if hold_out == "strongest" else mean, kind="stable")
        test = set(candidates[order[:n_test]])
    is_test = responses["subject"].isin(test)
    return responses[~is_test], responses[is_test]


def _subjects(responses: pd.DataFrame, keep_in_train: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every subject, and those that may be held out (all but `keep_in_train`, which must be there)."""
    subjects = list(dict.fromkeys(responses["subject"]))
    missing = [s for s in keep_in_train if s not in subjects]
    if missing:
        raise UserError(f"endpoint subject {missing[0]} is not in the responses")
    return subjects, np.array([s for s in subjects if s not in set(keep_in_train)])


def subject_folds(responses: pd.DataFrame, folds: int, seed: int,
                  keep_in_train: Sequence[str] = ()) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """`folds` train/test splits whose test sets partition the subjects (but `keep_in_train`),
    seeded: each subject is held out once, so a verdict rests on every subject, not on the few
    one split holds out."""
    subjects, candidates = _subjects(responses, keep_in_train)
    if folds < 2 or folds > candidates.size or len(subjects) - -(-candidates.size // folds) < 4:
        raise UserError(f"cannot make {folds} folds of {len(subjects)} subjects (each needs a held-out subject "
                        "and at least 4 to fit on)")
    order = np.random.default_rng(seed).permutation(candidates)
    splits = []
    for part in np.array_split(order, folds):
        is_test = responses["subject"].isin(set(part))
        splits.append((responses[~is_test], responses[is_test]))
    return splits


def auto_folds(responses: pd.DataFrame, test_frac: float, keep_in_train: Sequence[str] = ()) -> int:
    """Folds for `irt validate --folds auto` (random hold-out): one split where it holds out at least
    FEW_HELD_OUT subjects, else as many folds as the test fraction makes (4 for 0.25), fewer where the
    subjects do not allow them, so a verdict from a dozen models rests on each of them, not on three."""
    subjects, candidates = _subjects(responses, keep_in_train)
    if round(test_frac * len(subjects)) >= FEW_HELD_OUT:
        return 1
    wanted = min(round(1 / test_frac), candidates.size)
    # more folds hold fewer out of each fit (5 subjects: 4 folds leave 3 to fit on, 5 leave 4), fewer make fewer fits
    for folds in [*range(wanted, candidates.size + 1), *range(wanted - 1, 1, -1)]:
        if len(subjects) - -(-candidates.size // folds) >= 4:  # as `subject_folds` requires
            return folds
    return 1


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k smallest keys (in no order)."""
    return np.argpartition(keys, min(k, keys.shape[1]) - 1, axis=1)[:, :k]


def random_baseline(test: np.ndarray, groups: dict[str, np.ndarray], budget: int, draws: int, seed: int,
                    overall: bool) -> tuple[float, float]:
    """MAE of random items + plain mean, averaged over `draws` independent draws per subject and
    scenario (they cost no fit), and the spread (SD) of one draw's MAE across draws."""
    rng = np.random.default_rng(seed)
    share = np.array([g.size for g in groups.values()], dtype=float)
    share /= share.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of unscored items only: NaN, skipped
        truth = np.column_stack([np.nanmean(test[:, g], axis=1) for g in groups.values()])
        per_draw = []
        for _ in range(draws):
            # each subject's `budget` items of smallest random key: a uniform sample without replacement
            picks = [g[_smallest(rng.random((test.shape[0], g.size)), budget)] for g in groups.values()]
            pred = np.column_stack([np.nanmean(np.take_along_axis(test, p, axis=1), axis=1) for p in picks])
            err = np.abs(pred @ share - truth @ share) if overall else np.abs(pred - truth)
            per_draw.append(np.nanmean(err))
    return float(np.mean(per_draw)), float(np.std(per_draw))


def validate(
    responses: pd.DataFrame,
    test_frac: float = 0.25,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    methods: Sequence[str] = SELECTABLE_ANCHOR_METHODS,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    seed: int = 0,
    backend: str = "torch",
    dims: int | str = "auto",
    repeats: int = 1,
    endpoints: Sequence[str] = (),
    overall: bool = False,
    draws: int = RANDOM_DRAWS,
    hold_out: str = "random",
    folds: int = 1,
    balance: int = DEFAULT_ANCHOR_BALANCE,
    progress: Progress = no_progress,
    **backend_options: float,
) -> pd.DataFrame:
    """Mean absolute error (over held-out subjects and scenarios, averaged over `repeats` anchor
    draws) with its spread over the draws.

    `budget` counts anchors per scenario. The baseline (random items + plain mean) averages
    `draws` random draws per subject; `random` anchors always get their estimator rows too, so
    the table shows whether clustering pays. With `overall`, the error is that of the overall
    score (the item-weighted mean of the scenarios' true scores; one number per subject) as each
    estimator estimates it: a campaign's task score, when its scenarios are the task's sub-skills.
    `hold_out` (`split_subjects`) chooses the test subjects: `strongest` asks whether subjects
    better than every calibration subject, as a campaign's best merges can be, are estimated well.
    With `folds` K > 1 (random hold-out only) every subject is held out once, over K fits
    (`subject_folds`), and each row pools the K folds' errors, weighted by their held-out
    subjects: a leaderboard of a dozen models holds out 3 in one split, too few for a verdict.
    `methods` may name the automatic ones (`auto`), resolved as a campaign would resolve them for
    the fewest training subjects of any split. Stratified anchors are the best-balanced of `balance`
    draws on each split's training subjects, as a campaign's are (1: one draw, to see what balancing
    pays on these responses)."""
    if repeats < 1 or draws < 1:
        raise UserError(f"repeats and draws must be at least 1, not {repeats} and {draws}")
    if folds > 1 and hold_out != "random":
        raise UserError(f"folds hold every subject out once: they go with a random hold-out, not {hold_out!r}")
    estimators = list(estimators) + ([e for e in ENDPOINT_ESTIMATORS if e not in estimators] if endpoints else [])
    splits = ([split_subjects(responses, test_frac, seed, endpoints, hold_out)] if folds <= 1
              else subject_folds(responses, folds, seed, endpoints))
    n_train = min(train["subject"].nunique() for train, _ in splits)
    methods = list(dict.fromkeys([*(choose_anchor_method(m, n_train)[0] for m in methods), "random"]))
    total, done = len(splits) * len(budgets) * len(methods) * repeats, 0

    def advance() -> None:
        nonlocal done
        done += 1
        progress("validating", done, total)

    # (budget, method, kind) -> per fold, `_anchor_errors`' four figures per draw
    errors: dict[tuple[int, str, str], list[np.ndarray]] = {}
    baselines: dict[int, list[tuple[float, float]]] = {}  # budget -> per fold, (MAE, SD of one draw's)
    held: list[int] = []
    # every split's fits, one count: the folds' training subjects differ in number, and so may the D values each tries
    fits = [fit_count(train["subject"].nunique(), dims) for train, _ in splits]
    for i, (train, test) in enumerate(splits):
        def fitting(stage: str, fit_done: int, fit_total: int, before: int = sum(fits[:i])) -> None:
            progress(stage, before + fit_done, sum(fits))

        model = IRTModel.fit(train, backend=backend, dims=dims, seed=seed, progress=fitting, **backend_options)
        if i == 0:  # its clock starts once the first fit is done
            progress("validating", done, total)
        test_scores = _held_out_scores(model, test, f"fold {i + 1}" if len(splits) > 1 else "the held-out subjects")
        held.append(test_scores.shape[0])
        for budget in budgets:
            for method in methods:
                for kind, values in _anchor_errors(model, test_scores, budget, method, estimators, seed, repeats,
                                                   endpoints, overall, balance, advance).items():
                    errors.setdefault((budget, method, kind), []).append(np.array(values))
            baselines.setdefault(budget, []).append(random_baseline(test_scores, model.scenario_items(), budget,
                                                                    draws, seed, overall))
    scenario_sizes = [g.size for g in model.scenario_items().values()]
    default_method = choose_anchor_method(DEFAULT_ANCHOR_METHOD, n_train)[0]
    return _table(errors, baselines, draws, np.array(held, dtype=float), budgets, scenario_sizes,
                  len(model.item_ids), default_method, balance)


def _held_out_scores(model: IRTModel, test: pd.DataFrame, where: str) -> np.ndarray:
    """The held-out subjects' scores on the model's items. A sparse table may hold items only the
    held-out subjects answered: the model has no parameters for them, so they are left out of the
    errors, with one warning naming `where` (a fold, or the held-out subjects)."""
    unseen = ~test["item"].isin(model.item_ids)
    if unseen.any():
        n = test.loc[unseen, "item"].nunique()
        log.warning(f"{where}: {n} item{'s' * (n != 1)} answered by held-out subjects only, left out of the "
                    "errors (no training subject scored them: the model has no parameters for them)")
        test = test[~unseen]
    return ResponseMatrix.from_long(test, items=model.item_ids).scores


def _table(errors: dict[tuple[int, str, str], list[np.ndarray]], baselines: dict[int, list[tuple[float, float]]],
           draws: int, held: np.ndarray, budgets: Sequence[int], scenario_sizes: Sequence[int],
           n_model_items: int, default_method: str, balance: int) -> pd.DataFrame:
    """`validate`'s table: per budget, each (method, estimator)'s errors pooled over the folds
    (`held`: each fold's held-out subjects, its weight) and the random baseline's row (`draws` per
    subject); the ratio
    to the baseline; and which row is what a campaign or `irt anchors` / `irt estimate` would use
    (`default_method` with the default estimator)."""
    share = held / held.sum()  # each fold's weight: its held-out subjects
    rows = []
    for budget in budgets:
        n_items = sum(min(budget, size) for size in scenario_sizes)
        row = {"budget": budget, "items": n_items, "saving": n_model_items / n_items, "held_out": int(held.sum()),
               "folds": held.size}
        for (b, method, kind), per_fold in errors.items():
            if b == budget:
                # each draw's figures over every held-out subject, each fold weighted by its subjects
                mae, beyond, se2, err2 = np.tensordot(share, np.stack(per_fold), axes=1).T
                # exact estimates (every item scored) err by round-off alone: a ratio to it says nothing
                exact = err2.mean() < ROUND_OFF**2
                ratio = np.nan if exact else float(np.sqrt(se2.mean() / err2.mean()))
                rows.append(row | {"method": method, "estimator": kind, "mae": float(mae.mean()),
                                   "sd": float(mae.std()), "draws": mae.size, "beyond_2se": float(beyond.mean()),
                                   "se_ratio": ratio, "balance": balance if method in BALANCED_ANCHOR_METHODS
                                   else None})  # what a stratified row's anchor sets were the best-balanced of
        mae, sd = np.array(baselines[budget]).T
        # the folds' spreads added as independent: folds of one size draw the same positions (one
        # seed), but of other subjects, and their errors were measured uncorrelated (audit 133)
        rows.append(row | {"method": "random", "estimator": BASELINE, "mae": float(share @ mae),
                           "sd": float(np.sqrt(share**2 @ sd**2)), "draws": draws,
                           "beyond_2se": np.nan, "se_ratio": np.nan, "balance": None})  # a plain mean states no SE
    table = pd.DataFrame(rows).astype({"balance": "Int64"})
    base = table[table.estimator == BASELINE].set_index("budget")["mae"]
    # no ratio where random sampling is exact (the budget covers every item): shown blank, not inf
    table["vs_baseline"] = table["mae"] / table["budget"].map(base).replace(0.0, np.nan)
    table["default"] = (table.method == default_method) & (table.estimator == DEFAULT_ESTIMATOR_KIND)
    return table


def _anchor_errors(model: IRTModel, test_scores: np.ndarray, budget: int, method: str, estimators: Sequence[str],
                   seed: int, repeats: int, endpoints: Sequence[str], overall: bool, balance: int,
                   advance) -> dict[str, np.ndarray]:
    """Per estimator kind, one row per anchor draw (seeds seed .. seed + repeats - 1): the MAE, the
    share of errors beyond 2 SE, and the mean squared SE and error."""
    stats: dict[str, list[tuple[float, ...]]] = {k: [] for k in estimators}
    for rep in range(repeats):
        anchors = select_anchors(model, budget, method, seed=seed + rep, balance=balance)
        for kind in estimators:
            est = Estimator(model, anchors, kind, endpoints=list(endpoints) or None, seed=seed)
            pred, se = est.estimate_with_overall(test_scores[:, est.anchor_idx])
            truth = est.scenario_means(test_scores)
            # the item-weighted mean over scenarios, estimated as the estimator estimates it
            pred, se, truth = ((pred[:, -1], se[:, -1], est.overall(truth)) if overall
                               else (pred[:, :-1], se[:, :-1], truth))
            error = np.abs(pred - truth)
            stated = ~np.isnan(error) & ~np.isnan(se)
            beyond = error[stated] > np.maximum(2.0 * se[stated], ROUND_OFF)
            stats[kind].append((float(np.nanmean(error)), float(np.mean(beyond)),
                                float(np.mean(se[stated] ** 2)), float(np.mean(error[stated] ** 2))))
        advance()
    return {kind: np.array(rows) for kind, rows in stats.items()}
