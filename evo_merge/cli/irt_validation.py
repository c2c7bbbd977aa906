"""What `evo-merge irt validate` prints of a validation (`evo_merge.irt.validate`'s table): the
table itself, and one line on whether the default estimator pays on these responses. Kept out of
the IRT floor, which returns data and draws nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.table import Table

from evo_merge.irt.kinds import DEFAULT_ANCHOR_METHOD, DEFAULT_ESTIMATOR_KIND, FEW_HELD_OUT
from evo_merge.irt.validation import BASELINE, FEW_DRAWS


def default_summary(table: pd.DataFrame, overall: bool = False, folds_hint: int | None = None) -> str:
    """One line on the row a user gets without choosing: does the default pay on these responses?
    `folds_hint`: the folds that would hold every subject out once (`auto_folds`), offered where one
    split held out few; None where none can (a `--hold-out` not random, too few subjects)."""
    rows = table[table["default"]].sort_values("budget")
    if rows.empty:  # the default estimator was not among those validated
        return (f"no summary: the default ({DEFAULT_ANCHOR_METHOD} anchors + {DEFAULT_ESTIMATOR_KIND}) was not among "
                "the rows validated (--methods auto adds it)")
    ratios = ", ".join(f"{r.vs_baseline:.2f}x at {r.budget}" for r in rows.itertuples() if not np.isnan(r.vs_baseline))
    held, draws, folds = (int(rows[column].iloc[0]) for column in ("held_out", "draws", "folds"))
    refold = held < FEW_HELD_OUT and folds == 1 and folds_hint is not None and folds_hint > 1
    fixes = (([f"--folds {folds_hint} holds every subject out once"] if refold else [])
             + (["--repeats 5 averages more anchor draws"] if draws < FEW_DRAWS else []))
    caution = ""
    if held < FEW_HELD_OUT or draws < FEW_DRAWS:
        caution = (f"; {held} held-out subject{'s' if held > 1 else ''} and {draws} anchor "
                   f"draw{'s' if draws > 1 else ''}: a noisy verdict" + (f" ({'; '.join(fixes)})" if fixes else ""))
    beyond = " / ".join(f"{r.beyond_2se:.1%}" for r in rows.itertuples() if not np.isnan(r.beyond_2se))
    stated = f"; {beyond} of its errors beyond 2 SE (about 5% where its SEs are right)" if beyond else ""
    return (f"default ({DEFAULT_ANCHOR_METHOD} anchors, here {rows.method.iloc[0]}, + {DEFAULT_ESTIMATOR_KIND}): "
            f"{ratios or 'no ratio'} (its MAE{' of the overall score' if overall else ''} over random sampling's, "
            f"by anchors per scenario{caution}){stated}")


def validation_table(table: pd.DataFrame, hold_out: str = "random") -> Table:
    """The validation results as a rich table, the baseline and the default rows marked, MAE ± its
    spread over draws, and how far each estimator's SEs hold (errors beyond 2 SE, RMS SE / RMSE)."""
    held = "held-out subjects" if hold_out == "random" else f"the {hold_out} subjects, held out"
    folds, subjects = int(table.folds.iloc[0]), int(table.held_out.iloc[0])
    over = f", each of {subjects} held out once over {folds} fits" if folds > 1 else ""
    out = Table(title=f"IRT validation: mean absolute error on {held} (± SD over anchor draws{over})")
    for col in ("budget", "method", "estimator", "items", "saving N/n", "MAE ± SD", "draws", "vs baseline",
                "> 2 SE", "SE / RMSE"):
        out.add_column(col, justify="left" if col in ("method", "estimator") else "right")
    for r in table.sort_values(["budget", "mae"]).itertuples():
        style = "dim" if r.estimator == BASELINE else "bold" if r.default else None
        spread = f" ± {r.sd:.4f}" if r.draws > 1 else " (1 draw)"  # one draw has no spread to show, not 0
        out.add_row(str(r.budget), r.method, f"{r.estimator} (default)" if r.default else r.estimator, str(r.items),
                    f"{r.saving:.1f}x", f"{r.mae:.4f}{spread}", str(r.draws),
                    "" if np.isnan(r.vs_baseline) else f"{r.vs_baseline:.2f}",
                    "" if np.isnan(r.beyond_2se) else f"{r.beyond_2se:.1%}",
                    "" if np.isnan(r.se_ratio) else f"{r.se_ratio:.2f}", style=style)
    return out
