"""How good is each (anchor method × estimator × budget) on held-out subjects?

Fits the model on the training subjects only, then scores every held-out subject from its
anchor responses and compares with its true per-scenario mean. Random anchors with the plain
mean (method `random`, estimator `anchor`) is the baseline every other row is compared to.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from rich.progress import Progress
from rich.table import Table

from evo_merge.errors import UserError
from evo_merge.irt.anchors import METHODS, select_anchors
from evo_merge.irt.estimators import Estimator
from evo_merge.irt.model import IRTModel
from evo_merge.irt.responses import ResponseMatrix

DEFAULT_BUDGETS = (10, 20, 50, 100)
DEFAULT_ESTIMATORS = ("anchor", "pirt", "gpirt")
ENDPOINT_ESTIMATORS = ("mpirt", "gmpirt")


def split_subjects(
    responses: pd.DataFrame, test_frac: float, seed: int, keep_in_train: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split of the subjects (never putting `keep_in_train` in the test set)."""
    if not 0.0 < test_frac < 1.0:
        raise UserError(f"test fraction must be between 0 and 1, not {test_frac}")
    subjects = list(dict.fromkeys(responses["subject"]))
    missing = [s for s in keep_in_train if s not in subjects]
    if missing:
        raise UserError(f"endpoint subject {missing[0]} is not in the responses")
    candidates = np.array([s for s in subjects if s not in set(keep_in_train)])
    n_test = max(1, int(round(test_frac * len(subjects))))
    if len(subjects) - n_test < 4 or n_test > candidates.size:
        raise UserError(f"too few subjects ({len(subjects)}) for a test fraction of {test_frac}")
    test = set(np.random.default_rng(seed).choice(candidates, n_test, replace=False))
    is_test = responses["subject"].isin(test)
    return responses[~is_test], responses[is_test]


def validate(
    responses: pd.DataFrame,
    test_frac: float = 0.25,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    methods: Sequence[str] = METHODS,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    seed: int = 0,
    backend: str = "torch",
    dims: int | str = "auto",
    repeats: int = 1,
    endpoints: Sequence[str] = (),
    overall: bool = False,
) -> pd.DataFrame:
    """Mean absolute error (over held-out subjects and scenarios, averaged over `repeats` anchor draws).

    `budget` counts anchors per scenario. With `overall`, the error is that of the item-weighted
    mean over the scenarios (one number per subject): a campaign's task score, when its
    scenarios are the task's sub-skills."""
    if repeats < 1:
        raise UserError(f"repeats must be at least 1, not {repeats}")
    estimators = list(estimators) + ([e for e in ENDPOINT_ESTIMATORS if e not in estimators] if endpoints else [])
    train, test = split_subjects(responses, test_frac, seed, endpoints)
    model = IRTModel.fit(train, backend=backend, dims=dims, seed=seed)
    test_matrix = ResponseMatrix.from_long(test, items=model.item_ids)
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("validating", total=len(budgets) * len(methods) * repeats)
        for budget in budgets:
            for method in methods:
                errors: dict[str, list[float]] = {k: [] for k in estimators}
                for rep in range(repeats):
                    anchors = select_anchors(model, budget, method, seed=seed + rep)
                    for kind in estimators:
                        est = Estimator(model, anchors, kind, endpoints=list(endpoints) or None, seed=seed)
                        pred = est.estimate_matrix(test_matrix.scores[:, est.anchor_idx])
                        truth = est.scenario_means(test_matrix.scores)
                        if overall:  # the item-weighted mean over scenarios
                            share = est.sizes / est.sizes.sum()
                            pred, truth = pred @ share, truth @ share
                        errors[kind].append(float(np.nanmean(np.abs(pred - truth))))
                    progress.advance(task)
                n_items = len(anchors.all_items())
                for kind in estimators:
                    rows.append({"method": method, "estimator": kind, "budget": budget, "items": n_items,
                                 "saving": len(model.item_ids) / n_items, "mae": float(np.mean(errors[kind]))})
    table = pd.DataFrame(rows)
    base = table[(table.method == "random") & (table.estimator == "anchor")].set_index("budget")["mae"]
    table["vs_baseline"] = table["mae"] / table["budget"].map(base)
    return table


def validation_table(table: pd.DataFrame) -> Table:
    """The validation results as a rich table, baseline rows marked."""
    out = Table(title="IRT validation: mean absolute error on held-out subjects")
    for col in ("budget", "method", "estimator", "items", "saving N/n", "MAE", "vs baseline"):
        out.add_column(col, justify="left" if col in ("method", "estimator") else "right")
    for r in table.sort_values(["budget", "mae"]).itertuples():
        baseline = r.method == "random" and r.estimator == "anchor"
        out.add_row(str(r.budget), r.method, r.estimator + (" (baseline)" if baseline else ""), str(r.items),
                    f"{r.saving:.1f}x", f"{r.mae:.4f}", "" if np.isnan(r.vs_baseline) else f"{r.vs_baseline:.2f}",
                    style="dim" if baseline else None)
    return out
