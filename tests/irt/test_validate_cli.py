"""`irt validate` on heterogeneous items, and the `evo-merge irt` commands end to end."""

from __future__ import annotations

import io
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.irt import load_anchors, validate, validate_responses
from evo_merge.irt.anchors import Anchors, select_anchors
from evo_merge.irt.estimators import Estimator
from evo_merge.irt.kinds import DEFAULT_ANCHOR_BALANCE, SELECTABLE_ANCHOR_METHODS
from evo_merge.irt.model import IRTModel
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities
from evo_merge.irt.validation import (
    BASELINE,
    RANDOM_DRAWS,
    auto_folds,
    random_baseline,
    split_subjects,
    subject_folds,
)


def test_irt_anchors_and_gpirt_beat_random_sampling_by_25_percent_at_n30():
    gen = make_synthetic_irt(600, dims=2, n_scenarios=2, heterogeneous=True, seed=1)
    theta, ids = synthetic_abilities(120, dims=2, seed=2)
    table = validate(validate_responses(gen.sample(theta, ids, seed=3)), budgets=[30], repeats=3,
                     methods=["kmeans-irt", "random"], dims=2, seed=0)
    mae = table.set_index(["method", "estimator"])["mae"]
    assert mae["kmeans-irt", "gpirt"] <= 0.75 * mae["random", BASELINE], table
    assert table.loc[table.estimator.eq(BASELINE), "vs_baseline"].item() == 1.0
    assert (table["items"] == 60).all() and (table["saving"] == 10.0).all()
    # the many-draw baseline and one random anchor set per repeat with the plain mean measure the
    # same thing: they agree within the spread of 3 draws
    one_set = table.set_index(["method", "estimator"]).loc[("random", "anchor")]
    assert abs(one_set["mae"] - mae["random", BASELINE]) < 3 * one_set["sd"] + 0.01, table


def test_overall_error_is_that_of_the_item_weighted_mean_of_the_scenarios():
    """|sum_k w_k e_k| <= sum_k w_k |e_k|: the task-level error of an estimator whose overall is the
    item-weighted mean of its scenarios' never exceeds the scenario-level one (equal-sized
    scenarios), and is 0 when the anchors are every item. gp-IRT mixes its overall on its own (no
    such bound), and is exact there too."""
    gen = make_synthetic_irt(100, dims=1, n_scenarios=2, seed=1)
    theta, ids = synthetic_abilities(40, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    kwargs = dict(budgets=[5, 50], methods=["kmeans-irt", "random"], dims=1, seed=0)
    per_scenario = validate(data, **kwargs).set_index(["budget", "method", "estimator"])["mae"]
    task = validate(data, overall=True, **kwargs).set_index(["budget", "method", "estimator"])["mae"]
    weighted_mean = task.index.get_level_values("estimator") != "gpirt"
    assert (task[weighted_mean] <= per_scenario[weighted_mean] + 1e-12).all() and (task < per_scenario).any()
    assert task[50, "random", "anchor"] == pytest.approx(0.0, abs=1e-12)
    assert task[50, "random", "gpirt"] == pytest.approx(0.0, abs=1e-12)
    assert task[50, "random", BASELINE] == pytest.approx(0.0, abs=1e-12)
    # random sampling is exact there: no ratio to it (it was inf from 1e-17 over 0)
    ratios = validate(data, **kwargs).set_index("budget")["vs_baseline"]
    assert ratios[50].isna().all() and ratios[5].notna().all()


def test_validate_says_how_far_each_estimator_s_standard_errors_hold():
    """The anchor mean of random anchors has a binomial error, which its SE states: about 5% of
    its errors lie beyond 2 SE and its RMS SE is its RMSE, up to the sampling of 40 subjects x 2
    scenarios x 3 draws. Where the anchors are every item, no error and none beyond."""
    gen = make_synthetic_irt(400, dims=1, n_scenarios=2, seed=1)
    theta, ids = synthetic_abilities(160, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    table = validate(data, budgets=[40, 200], methods=["random"], dims=1, repeats=3, seed=0)
    row = table.set_index(["budget", "estimator"])
    assert 0.01 <= row.loc[(40, "anchor"), "beyond_2se"] <= 0.10, table
    assert 0.8 <= row.loc[(40, "anchor"), "se_ratio"] <= 1.25, table
    assert row.loc[(200, "anchor"), "beyond_2se"] == 0.0 and row.loc[(200, "anchor"), "mae"] < 1e-15


def test_validate_overall_scores_gpirt_s_own_overall_estimate():
    """A campaign's task score is gp-IRT's own overall estimate (not the mean of its scenarios'):
    `irt validate --overall` measures that one, recomputed here from the same split, fit and anchors."""
    gen = make_synthetic_irt(200, dims=1, n_scenarios=4, seed=5)
    theta, ids = synthetic_abilities(40, dims=1, seed=6)
    data = validate_responses(gen.sample(theta, ids, seed=7))
    table = validate(data, budgets=[5], methods=["random"], estimators=["gpirt"], dims=1, seed=0, overall=True)
    got = table.set_index(["method", "estimator"]).loc[("random", "gpirt"), "mae"]
    train, test = split_subjects(data, 0.25, 0)
    model = IRTModel.fit(train, dims=1, seed=0)
    est = Estimator(model, select_anchors(model, 5, "random", seed=0), "gpirt")
    scores = ResponseMatrix.from_long(test, items=model.item_ids).scores
    values = est.estimate_with_overall(scores[:, est.anchor_idx])[0]
    truth = est.overall(est.scenario_means(scores))
    assert got == pytest.approx(np.abs(values[:, -1] - truth).mean())
    assert got != pytest.approx(np.abs(est.overall(values[:, :-1]) - truth).mean())


@pytest.mark.parametrize("hold_out", ["strongest", "weakest"])
def test_a_strongest_or_weakest_hold_out_tests_on_subjects_unlike_every_training_one(hold_out):
    gen = make_synthetic_irt(60, dims=1, n_scenarios=2, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    train, test = split_subjects(data, 0.25, 0, keep_in_train=["m0000"], hold_out=hold_out)
    assert test.subject.nunique() == 5 and "m0000" not in set(test.subject)
    tested = test.groupby("subject")["score"].mean()
    trained = train.groupby("subject")["score"].mean().drop("m0000")  # kept in training whatever it scores
    if hold_out == "strongest":
        assert tested.min() >= trained.max()
    else:
        assert tested.max() <= trained.min()
    with pytest.raises(UserError, match="unknown hold-out 'best'"):
        split_subjects(data, 0.25, 0, hold_out="best")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("irt_cli")
    gen = make_synthetic_irt(80, dims=1, n_scenarios=2, seed=1)
    theta, ids = synthetic_abilities(40, dims=1, seed=2)
    full = gen.sample(theta, ids, seed=3)
    full.to_csv(root / "responses.csv", index=False)
    return root, full


def run(*args):
    result = CliRunner().invoke(cli, ["irt", *map(str, args)])
    return result.exit_code, result.output


def test_a_csv_that_appears_while_validating_is_kept_without_overwrite(files, output_appearing):
    """Without --overwrite, a file put at --csv while `irt validate` worked is kept (audit 112;
    each command passes the user's word on, audit 115)."""
    root, _ = files
    arm, check = output_appearing
    out = root / "appeared" / "v.csv"
    out.parent.mkdir()
    arm(out)
    result = CliRunner().invoke(cli, ["irt", "validate", str(root / "responses.csv"), "--budgets", "5",
                                      "--repeats", "1", "--dims", "1", "--csv", str(out)])
    check(result, out, "--csv")


def test_a_leaderboard_s_items_by_models_file_fits_and_validates_with_its_scenarios(files):
    """Items as rows, scenarios in a file of their own: the fit and the validation read the same
    table as the long file's, scenario for scenario."""
    root, full = files
    full.pivot(index="item", columns="subject", values="score").to_csv(root / "rows.csv")
    full[["item", "scenario"]].drop_duplicates().to_csv(root / "map.csv", index=False)
    layout = ["--items-as-rows", "--scenarios", root / "map.csv"]
    code, out = run("fit", root / "rows.csv", *layout, "--out", root / "rows-m", "--dims", "1")
    assert code == 0 and "40 subjects, 80 items, 2 scenario(s)" in out, out
    assert IRTModel.load(root / "rows-m").scenarios == ["s0", "s1"]
    args = ["--budgets", "5", "--methods", "random", "--repeats", "1", "--draws", "20", "--dims", "1"]
    tables = [run("validate", path, *extra, *args, "--csv", root / f"{name}.csv")
              for name, path, extra in (("v-rows", root / "rows.csv", layout), ("v-long", root / "responses.csv", []))]
    assert [code for code, _ in tables] == [0, 0], tables
    rows, long = (pd.read_csv(root / f"{name}.csv") for name in ("v-rows", "v-long"))
    pd.testing.assert_frame_equal(rows, long)
    code, out = run("validate", root / "rows.csv", "--items-as-rows", "--scenarios", root / "no-map.csv", *args)
    assert code == 2 and out.strip().splitlines() == [f"error: scenarios file {root / 'no-map.csv'} not found"]
    # new models' anchor scores in the same layout estimate as their long table does
    assert run("anchors", root / "rows-m", "--budget", "5", "--method", "random")[0] == 0
    chosen = load_anchors(root / "rows-m").all_items()
    partial = full[full["item"].isin(chosen)]
    partial.pivot(index="item", columns="subject", values="score").to_csv(root / "partial-rows.csv")
    partial.to_csv(root / "partial-long.csv", index=False)
    estimates = [run("estimate", root / "rows-m", "--responses", root / f"partial-{name}.csv", *extra)
                 for name, extra in (("rows", ["--items-as-rows"]), ("long", []))]
    assert [code for code, _ in estimates] == [0, 0] and estimates[0][1] == estimates[1][1]
    assert len(estimates[0][1].splitlines()) == 1 + 40 * 3


def test_fit_anchors_estimate_validate(files):
    root, full = files
    code, out = run("fit", root / "responses.csv", "--out", root / "m", "--dims", "1")
    assert code == 0 and "D=1" in out
    # its fits (D=1 on each half, then on everyone) as a line in a log: a large matrix takes minutes
    assert re.search(r"^fitting IRT: 3/3 in \d+:\d\d:\d\d$", out, re.M), out
    code, out = run("anchors", root / "m", "--budget", "5", "--method", "kmeans-irt")
    assert code == 0
    listed = {line.split(": ")[0]: line.split(": ")[1].split() for line in out.splitlines() if ": " in line}
    assert set(listed) == {"s0", "s1"} and all(len(v) == 5 for v in listed.values())
    partial = full[full["item"].isin(listed["s0"] + listed["s1"])]
    partial.to_csv(root / "partial.csv", index=False)
    code, out = run("estimate", root / "m", "--responses", root / "partial.csv", "--estimator", "pirt")
    assert code == 0
    table = pd.read_csv(pd.io.common.StringIO(out))
    assert list(table.columns) == ["subject", "scenario", "estimator", "estimate", "se"]
    assert (table.se > 0).all() and (table.se < 0.5).all()
    assert len(table) == 40 * 3 and set(table.scenario) == {"s0", "s1", "overall"}
    assert table.estimate.between(0, 1).all()
    code, out = run("estimate", root / "m", "--responses", root / "partial.csv", "--estimator", "gmpirt",
                    "--endpoints", "m0000,m0001", "--gmp-delta", "0.5", "--out", root / "est.csv")
    assert code == 0 and (root / "est.csv").read_text().startswith("subject,scenario,estimator,estimate,se")
    # its SE counts merges the model simulates, not real ones (an audit: 42-61% of errors beyond 2 SE): said
    assert ("gmpirt estimates: their standard error counts the error of merges the IRT model simulates "
            "between the endpoints") in out
    # a new folder is made for it: the missing folder was found out once every estimate was made
    code, out = run("estimate", root / "m", "--responses", root / "partial.csv", "--out", root / "no" / "est.csv")
    assert code == 0 and (root / "no" / "est.csv").is_file()
    assert f"wrote {root / 'no' / 'est.csv'}: 40 subject(s), gpirt estimates" in out  # it said nothing
    # scores of items outside the anchor set are not read: said, with the estimator that reads them
    code, out = run("estimate", root / "m", "--responses", root / "responses.csv", "--out", root / "all.csv")
    assert code == 0 and f"{root / 'responses.csv'}: {len(full) - len(partial):,} scores of items outside the anchor " \
                         "set were not used" in out and "--estimator adaptive uses every item scored" in out
    assert pd.read_csv(root / "all.csv").equals(pd.read_csv(root / "no" / "est.csv"))
    # the same budget spread by neyman: as many anchors in all (in a copy: later tests need one stored set)
    shutil.copytree(root / "m", root / "m-neyman")
    code, out = run("anchors", root / "m-neyman", "--budget", "5", "--method", "random", "--allocation", "neyman")
    assert code == 0
    spread = {line.split(": ")[0]: line.split(": ")[1].split() for line in out.splitlines() if ": " in line}
    assert sum(map(len, spread.values())) == 10 and min(map(len, spread.values())) >= 1
    assert load_anchors(root / "m-neyman", method="random").allocation == "neyman"
    code, out = run("validate", root / "responses.csv", "--budgets", "5,10", "--dims", "1", "--csv", root / "v.csv")
    assert code == 0 and "baseline" in out
    # sent to a log (not a terminal), its progress is a line, as a campaign's stages are
    steps = 2 * len(SELECTABLE_ANCHOR_METHODS) * 5  # budgets x anchor methods x the default 5 anchor draws
    assert re.search(rf"^validating: {steps}/{steps} in \d+:\d\d:\d\d$", out, re.M), out
    assert out.index("fitting IRT: 3/3") < out.index("validating:"), out
    table = pd.read_csv(root / "v.csv")
    assert len(table) == 2 * (len(SELECTABLE_ANCHOR_METHODS) * 3 + 1) and np.isfinite(table.mae).all()
    # which draws the stratified rows' anchor sets were the best-balanced of: the CSV says, as the console does
    stratified = table.method.isin(["stratified", "stratified-irt"])
    assert (table.balance[stratified] == DEFAULT_ANCHOR_BALANCE).all() and table.balance[~stratified].isna().all()
    # 30 training subjects: the default is stratified-irt anchors + gp-IRT, marked and summed up
    default = table[table["default"]]
    assert set(zip(default.method, default.estimator, default.budget)) == {("stratified-irt", "gpirt", 5),
                                                                          ("stratified-irt", "gpirt", 10)}
    ratios = ", ".join(f"{r:.2f}x at {b}" for b, r in zip(default.budget, default.vs_baseline))
    assert f"default (auto anchors, here stratified-irt, + gpirt): {ratios} " in out, out
    assert "noisy verdict" not in out  # 10 held-out subjects, 5 anchor draws
    assert "gpirt (default)" in out
    # and how far its SEs hold: the share of its errors beyond 2 SE, in the summary and the CSV
    beyond = " / ".join(f"{r:.1%}" for r in default.beyond_2se)
    assert f"; {beyond} of its errors beyond 2 SE (about 5% where its SEs are right)" in out, out
    assert table.loc[table.estimator == BASELINE, ["beyond_2se", "se_ratio"]].isna().all().all()
    assert table.loc[table.estimator != BASELINE, "se_ratio"].gt(0).all()
    code, out = run("validate", root / "responses.csv", "--budgets", "5", "--dims", "1", "--hold-out", "strongest",
                    "--overall")
    assert code == 0 and "mean absolute error on the strongest subjects, held out" in out, out
    assert "(its MAE of the overall score over random sampling's" in out


def test_folds_hold_every_subject_out_once_and_pool_their_errors(files):
    """With `folds`, each subject (endpoints aside) is held out once, and each row is the folds'
    errors weighted by their held-out subjects: the baseline row is the weighted mean of each
    fold's own random-sampling baseline."""
    _, full = files
    data = validate_responses(full[full.subject.isin(sorted(full.subject.unique())[:14])])
    splits = subject_folds(data, 4, seed=0, keep_in_train=["m0000"])
    held = [test.subject.unique() for _, test in splits]
    assert sorted(s for part in held for s in part) == sorted(set(data.subject) - {"m0000"})
    assert [len(h) for h in held] == [4, 3, 3, 3] and all("m0000" in set(train.subject) for train, _ in splits)
    table = validate(data, budgets=[5], methods=["stratified"], dims=1, folds=4, endpoints=["m0000"], repeats=2)
    assert (table.held_out == 13).all() and (table.folds == 4).all()
    assert (table.draws[table.estimator != BASELINE] == 2).all()
    expected = 0.0
    for train, test in splits:
        model = IRTModel.fit(train, dims=1, seed=0)
        scores = ResponseMatrix.from_long(test, items=model.item_ids).scores
        expected += random_baseline(scores, model.scenario_items(), 5, RANDOM_DRAWS, 0, False)[0] * len(scores) / 13
    assert table.loc[table.estimator == BASELINE, "mae"].item() == pytest.approx(expected)
    with pytest.raises(UserError, match="folds hold every subject out once: they go with a random hold-out"):
        validate(data, budgets=[5], dims=1, folds=4, hold_out="strongest")
    # `--folds auto`: 1/test-frac folds where one split would hold out fewer than 10, as many as the subjects allow
    def few(n):
        return data[data.subject.isin(sorted(data.subject.unique())[:n])]

    assert [auto_folds(data, 0.25, ["m0000"]), auto_folds(data, 0.5), auto_folds(few(6), 0.25),
            auto_folds(few(5), 0.25), auto_folds(few(4), 0.25)] == [4, 2, 4, 5, 1]  # 5: each fit keeps 4
    assert auto_folds(validate_responses(full), 0.25) == 1  # 40 subjects: one split holds out 10
    with pytest.raises(UserError, match="cannot make 15 folds of 14 subjects"):
        subject_folds(data, 15, seed=0)
    with pytest.raises(UserError, match="cannot make 2 folds of 6 subjects"):  # 3 left to fit on
        subject_folds(data[data.subject.isin(sorted(data.subject.unique())[:6])], 2, seed=0)


def test_validate_s_table_and_summary_say_only_what_holds(files):
    """Found by a black-box audit: a budget given twice was a traceback after every fit; a --csv in a
    new folder failed after the work; one anchor draw showed a spread of ± 0.0000; the summary offered
    --folds 4 where it is refused (a --hold-out not random, 5 subjects); leaving out the default's
    method dropped the summary without a word."""
    root, full = files
    few = full[full.subject.isin(sorted(full.subject.unique())[:12])]
    few.to_csv(root / "twelve.csv", index=False)
    args = ("validate", root / "twelve.csv", "--dims", "1", "--methods", "auto")
    code, out = run(*args, "--budgets", "5,5", "--repeats", "1", "--folds", "1", "--csv", root / "new" / "v.csv")
    assert code == 0 and len(pd.read_csv(root / "new" / "v.csv").query("estimator == 'gpirt'")) == 2  # one budget
    assert "± 0.0000" not in out and "(1 draw)" in out and "--folds 4 holds every subject out once" in out
    code, out = run(*args, "--budgets", "5", "--hold-out", "strongest")
    assert code == 0 and "noisy verdict" in out and "--folds" not in out.split("noisy verdict")[1]
    code, out = run(*args, "--budgets", "5", "--methods", "random")
    assert code == 0 and "no summary: the default (auto anchors + gpirt) was not among the rows validated" in out
    five = full[full.subject.isin(sorted(full.subject.unique())[:5])]
    assert auto_folds(validate_responses(five), 0.25) == 5  # 4 folds would leave 3 to fit on, 5 leave 4
    five.to_csv(root / "five.csv", index=False)
    code, out = run("validate", root / "five.csv", "--dims", "1", "--methods", "auto", "--budgets", "5")
    assert code == 0 and "each of 5 held out once over 5 fits" in out, out
    full[full.subject.isin(sorted(full.subject.unique())[:4])].to_csv(root / "four.csv", index=False)
    code, out = run("validate", root / "four.csv", "--dims", "1", "--budgets", "5")  # no test fraction was given
    assert code == 2 and out.strip() == "error: too few subjects (4): validation holds some out and fits on at least 4"


def test_a_verdict_from_few_subjects_or_one_anchor_draw_says_it_is_noisy(files):
    """The verdict is on the default's row (stratified anchors with 12 subjects), the only method run."""
    root, full = files
    full[full.subject.isin(sorted(full.subject.unique())[:12])].to_csv(root / "twelve.csv", index=False)
    twelve = ("validate", root / "twelve.csv", "--budgets", "5", "--dims", "1", "--methods", "stratified")
    code, out = run(*twelve, "--repeats", "1", "--folds", "1")
    assert code == 0 and ("; 3 held-out subjects and 1 anchor draw: a noisy verdict (--folds 4 holds every subject "
                          "out once; --repeats 5 averages more anchor draws))") in out, out
    # the default (`--folds auto`) does just that with a dozen subjects, and says so
    code, out = run(*twelve)
    assert code == 0 and "each of 12 held out once over 4 fits" in out and "noisy verdict" not in out, out
    code, out = run(*twelve, "--test-frac", "0.5")
    assert code == 0 and "held out once" not in out and "6 held-out subjects" in out, out  # the split asked for
    code, out = run(*twelve, "--folds", "4")
    assert code == 0 and "noisy verdict" not in out and "12 held-out" not in out, out
    code, out = run(*twelve, "--folds", "3", "--repeats", "2")
    assert code == 0 and "; 12 held-out subjects and 2 anchor draws: a noisy verdict (--repeats 5 averages" in out


def test_validate_marks_the_fallback_default_with_few_calibration_subjects(files):
    """With fewer than 30 training subjects a campaign's `auto` anchors are stratified: that row is the default."""
    _, full = files
    subjects = sorted(full.subject.unique())[:20]
    table = validate(validate_responses(full[full.subject.isin(subjects)]), budgets=[5],
                     methods=SELECTABLE_ANCHOR_METHODS, dims=1)
    assert set(zip(*[table.loc[table["default"], c] for c in ("method", "estimator")])) == {("stratified", "gpirt")}


def test_validate_methods_auto_is_the_default_s_row_and_random_only(files):
    """`--methods auto` validates what a campaign would use, resolved for the fewest training subjects
    of any fold (stratified below 30), and random anchors: the rows of a full run's, faster."""
    root, full = files
    full[full.subject.isin(sorted(full.subject.unique())[:20])].to_csv(root / "twenty.csv", index=False)
    code, out = run("validate", root / "twenty.csv", "--budgets", "5", "--dims", "1", "--folds", "2",
                    "--repeats", "2", "--methods", "auto", "--csv", root / "auto.csv")
    assert code == 0, out
    table = pd.read_csv(root / "auto.csv")
    assert set(table.method) == {"stratified", "random"}
    assert table.loc[table["default"], ["method", "estimator"]].values.tolist() == [["stratified", "gpirt"]]
    subset = validate(validate_responses(full[full.subject.isin(sorted(full.subject.unique())[:20])]), budgets=[5],
                      methods=["stratified"], dims=1, folds=2, repeats=2)
    assert np.allclose(table.sort_values(["method", "estimator"])["mae"],
                       subset.sort_values(["method", "estimator"])["mae"])


def test_estimate_reads_the_anchors_an_automatic_method_stored(files, tmp_path):
    """With 30 or more subjects `irt anchors --method auto-kmeans` (the former auto) stores kmeans-irt
    anchors and `--method auto` stratified-irt ones; `irt estimate --method M` resolves M the same way,
    so each reads its own set, and an automatic method whose set was never stored is one line naming
    the stored ones, not a traceback."""
    root, full = files  # 40 subjects
    model_dir = tmp_path / "m"
    assert run("fit", root / "responses.csv", "--out", model_dir, "--dims", "1")[0] == 0
    code, out = run("anchors", model_dir, "--budget", "4", "--method", "auto-kmeans")
    assert code == 0 and load_anchors(model_dir).method == "kmeans-irt"
    items = [i for line in out.splitlines() if ": " in line for i in line.split(": ")[1].split()]
    full[full["item"].isin(items)].to_csv(tmp_path / "partial.csv", index=False)
    code, out = run("estimate", model_dir, "--responses", tmp_path / "partial.csv", "--method", "auto-kmeans")
    assert code == 0 and "overall" in out
    code, out = run("estimate", model_dir, "--responses", tmp_path / "partial.csv", "--method", "auto")
    assert code == 2 and "stored: kmeans-irt-4" in out and "Traceback" not in out
    assert run("anchors", model_dir, "--budget", "4", "--method", "auto")[0] == 0
    assert load_anchors(model_dir, method="stratified-irt").sampled
    code, out = run("estimate", model_dir, "--responses", root / "responses.csv", "--method", "auto")
    assert code == 0 and "overall" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "{root}/missing.csv", "--out", "{root}/x"], "not found"),
        (
            ["fit", "{root}/responses.csv", "--out", "{root}/x", "--dims", "two"],
            "--dims: expected 'auto' or a positive integer",
        ),
        (  # a digit to str.isdigit, not to int(): a ValueError traceback without the isascii guard (audit 104)
            ["fit", "{root}/responses.csv", "--out", "{root}/x", "--dims", "²"],
            "--dims: expected 'auto' or a positive integer, not '²'",
        ),
        (["anchors", "{root}/nomodel", "--budget", "3"], "not an IRT model folder"),
        (["estimate", "{root}/m", "--responses", "{root}/bad.csv"], "out of [0, 1]"),
        (
            ["estimate", "{root}/m", "--responses", "{root}/partial.csv", "--estimator", "mpirt"],
            "needs endpoint subjects",
        ),
        (
            ["estimate", "{root}/m", "--responses", "{root}/partial.csv", "--estimator", "mpirt", "--endpoints", "zz"],
            "endpoint subject zz is not among",
        ),
        (["estimate", "{root}/m", "--responses", "{root}/alien.csv"], "item alien is not in the IRT model"),
        (  # a set copied in from another model's folder: it named neither file nor model
            ["estimate", "{root}/foreign", "--responses", "{root}/partial.csv"],
            "anchors/stratified-1.json: item alien is not in the IRT model of",
        ),
        (  # it was ignored without a word
            ["estimate", "{root}/m", "--responses", "{root}/partial.csv", "--endpoints", "m0000"],
            "--endpoints: only mpirt and gmpirt use the endpoints, not --estimator gpirt",
        ),
        (  # ignored without a word too (audit 131)
            ["estimate", "{root}/m", "--responses", "{root}/partial.csv", "--gmp-delta", "0.5"],
            "--gmp-delta: only gmpirt mixes its parts at a given weight, not --estimator gpirt",
        ),
        (
            [
                "estimate",
                "{root}/m",
                "--responses",
                "{root}/partial.csv",
                "--estimator",
                "gmpirt",
                "--endpoints",
                "m0000",
                "--gmp-delta",
                "1.5",
            ],
            "--gmp-delta must be 'auto' or a number in [0, 1]",
        ),
        (["validate", "{root}/responses.csv", "--budgets", "5,x"], "--budgets must be a comma-separated list"),
        (["validate", "{root}/responses.csv", "--folds", "4", "--hold-out", "strongest"],
         "folds hold every subject out once: they go with a random hold-out, not 'strongest'"),
        (["validate", "{root}/responses.csv", "--folds", "41"], "cannot make 41 folds of 40 subjects"),
        (["validate", "{root}/responses.csv", "--folds", "0"],
         "--folds: expected 'auto' or a positive integer, not '0'"),
        (["validate", "{root}/responses.csv", "--methods", "auto,centroids"], "--methods must name anchor methods"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, args, message):
    root, _ = files
    if not (root / "m").exists():
        run("fit", root / "responses.csv", "--out", root / "m", "--dims", "1")
        run("anchors", root / "m", "--budget", "5")
        pd.DataFrame({"subject": ["a"], "item": ["i00000"], "score": [1.0]}).to_csv(root / "partial.csv", index=False)
    pd.DataFrame({"subject": ["a"], "item": ["i00000"], "score": [3.0]}).to_csv(root / "bad.csv", index=False)
    pd.DataFrame({"subject": ["a"], "item": ["alien"], "score": [1.0]}).to_csv(root / "alien.csv", index=False)
    if not (root / "foreign").exists():
        shutil.copytree(root / "m", root / "foreign")
        shutil.rmtree(root / "foreign" / "anchors")
        Anchors("stratified", 1, 0, {"s0": ["alien"]}, {"s0": [1.0]}).save(root / "foreign")
    code, out = run(*[a.format(root=root) for a in args])
    assert code == 2, out
    assert out.startswith("error: ") and message in out and out.count("\n") == 1, out


def test_a_budget_below_one_is_refused_by_its_option_before_the_model_is_read(tmp_path):
    """It printed the anchor method's fallback notice first, then an error that named no option."""
    result = CliRunner().invoke(cli, ["irt", "anchors", str(tmp_path / "no-model"), "--budget", "0"])
    assert result.exit_code == 2 and "Invalid value for '--budget': 0 is not in the range x>=1" in result.output


@pytest.mark.parametrize("command", ["fit", "validate"])
@pytest.mark.parametrize(("option", "message"), [(("--dims", "x"), "--dims: expected 'auto' or a positive integer"),
                                                 (("--lr", "0.1"), "--lr")])
def test_an_option_s_mistake_is_named_before_the_responses_are_read(tmp_path, command, option, message):
    """`validate` read the responses (a missing file, minutes of a large one) before it looked at
    `--dims` and the backend's options; `fit` looked first (audit 130)."""
    out = ("--out", str(tmp_path / "m")) if command == "fit" else ()
    result = CliRunner().invoke(cli, ["irt", command, str(tmp_path / "none.csv"), *out, *option])
    assert result.exit_code == 2 and message in result.output and "none.csv" not in result.output, result.output


def test_errors_about_a_responses_file_start_with_its_name(tmp_path):
    """Too few subjects, an unknown item and a subject without a scenario's anchors did not say which file."""
    rng = np.random.default_rng(0)
    full = pd.DataFrame([(f"m{i}", f"i{j}", float(rng.random() < 0.5), f"s{j // 30}") for i in range(12)
                         for j in range(60)], columns=["subject", "item", "score", "scenario"])
    files = {"cal": full, "three": full[full.subject.isin(["m0", "m1", "m2"])],
             "unknown": full[full.subject.eq("m0")].replace({"item": {"i0": "zzz"}}),
             "no_s1": full[full.subject.eq("m0") & full.scenario.eq("s0")]}
    for name, table in files.items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    assert run("fit", tmp_path / "cal.csv", "--out", tmp_path / "m", "--dims", "1")[0] == 0
    assert run("anchors", tmp_path / "m", "--budget", "5", "--method", "random")[0] == 0
    three, unknown, no_s1 = (tmp_path / f"{name}.csv" for name in ("three", "unknown", "no_s1"))
    cases = [  # (command, the file it concerns, message)
        (("fit", three, "--out", tmp_path / "x"), three, "need at least 4 subjects to fit an IRT model, got 3"),
        (("estimate", tmp_path / "m", "--responses", unknown), unknown, "item zzz is not in the IRT model"),
        (("estimate", tmp_path / "m", "--responses", no_s1), no_s1,
         "subject m0 has no scored anchor item in scenario 's1': score the anchors of every scenario of the model "
         "(of each of its tasks, for a model fitted on several: `responses export --task NAME` fits one)"),
    ]
    assert [run(*args) for args, _, _ in cases] == [(2, f"error: {path}: {message}\n") for _, path, message in cases]


def test_anchors_of_another_seed_replace_a_stored_set_only_with_overwrite(tmp_path):
    """`irt anchors` replaced the set subjects had been scored on; `estimate` then refused them or,
    with p-IRT, estimated them from nothing."""
    rng = np.random.default_rng(0)
    full = pd.DataFrame([(f"m{i}", f"i{j}", float(rng.random() < 0.5), f"s{j // 30}") for i in range(12)
                         for j in range(60)], columns=["subject", "item", "score", "scenario"])
    full.to_csv(tmp_path / "cal.csv", index=False)
    assert run("fit", tmp_path / "cal.csv", "--out", tmp_path / "m", "--dims", "1")[0] == 0
    stored = tmp_path / "m" / "anchors" / "random-5.json"
    assert run("anchors", tmp_path / "m", "--budget", "5", "--method", "random")[0] == 0
    first = stored.read_text()
    assert run("anchors", tmp_path / "m", "--budget", "5", "--method", "random")[0] == 0  # the same set: kept
    code, out = run("anchors", tmp_path / "m", "--budget", "5", "--method", "random", "--seed", "1")
    assert code == 2 and "holds other random anchors of budget 5" in out and stored.read_text() == first
    assert run("anchors", tmp_path / "m", "--budget", "5", "--method", "random", "--seed", "1", "--overwrite")[0] == 0
    assert stored.read_text() != first


def test_links_in_a_received_model_folder_s_anchors_write_and_delete_nothing_outside_it(tmp_path):
    """`irt anchors` wrote through `anchors/stratified-5.json` linked to a user's file (it read as a
    damaged set, replaced without --overwrite), and `irt fit --overwrite` deleted the sets in the
    folder `anchors/` linked to, then failed with "Not a directory" after replacing the model."""
    rng = np.random.default_rng(0)
    full = pd.DataFrame([(f"m{i}", f"i{j}", float(rng.random() < 0.5), f"s{j // 30}") for i in range(12)
                         for j in range(60)], columns=["subject", "item", "score", "scenario"])
    full.to_csv(tmp_path / "cal.csv", index=False)
    model, home = tmp_path / "m", tmp_path / "home"
    assert run("fit", tmp_path / "cal.csv", "--out", model, "--dims", "1")[0] == 0
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    (model / "anchors").mkdir()
    (model / "anchors" / "random-5.json").symlink_to(home / ".bashrc")
    assert run("anchors", model, "--budget", "5", "--method", "random")[0] == 0
    assert (home / ".bashrc").read_text() == "mine"  # the link was replaced by the set, not written through
    assert not (model / "anchors" / "random-5.json").is_symlink()

    (home / "docs").mkdir()
    (home / "docs" / "random-7.json").write_text("my notes")
    shutil.rmtree(model / "anchors")
    (model / "anchors").symlink_to(home / "docs")
    before = (model / "params.npz").read_bytes()
    for args in (("anchors", model, "--budget", "3", "--method", "random"),
                 ("fit", tmp_path / "cal.csv", "--out", model, "--dims", "1", "--overwrite", "--seed", "3")):
        code, out = run(*args)
        assert (code, out) == (2, f"error: {model / 'anchors'}: is a link (to {home / 'docs'}); anchor sets are "
                                  "written and removed there, so a link is refused: make it a folder\n")
    assert sorted(p.name for p in (home / "docs").iterdir()) == ["random-7.json"]
    assert (model / "params.npz").read_bytes() == before  # refused before the fit, not after it


@pytest.mark.parametrize(("args", "expected"), [
    (("validate", "r.csv", "--test-frac", "0"), "Invalid value for '--test-frac'"),
    (("validate", "r.csv", "--repeats", "0"), "Invalid value for '--repeats'"),
    (("validate", "r.csv", "--draws", "0"), "Invalid value for '--draws'"),
    (("validate", "r.csv", "--balance", "0"), "Invalid value for '--balance'"),
    (("anchors", "m", "--budget", "5", "--balance", "100001"), "Invalid value for '--balance'"),
    (("estimate", "m", "--responses", "r.csv", "--gmp-delta", "2"), "--gmp-delta must be 'auto' or a number in [0, 1]"),
])
def test_an_option_out_of_its_range_is_named_before_any_file_is_read(tmp_path, args, expected):
    """These said "test fraction must be …", "repeats and draws must be …", "gmp-IRT delta …",
    naming no option, and some only after the responses were read."""
    code, out = run(*(str(tmp_path / a) if a in ("r.csv", "m") else a for a in args))
    assert code == 2 and expected in out, out


def test_estimate_takes_scenarios_from_the_model_not_the_responses_file(tmp_path, files):
    """The documented pipeline: `responses build --scenario subskill` fits `arith:inc`, `eval` writes the
    task's own `inc`. A check refusing the difference broke it; the model's scenarios are the ones used."""
    root, full = files
    model = tmp_path / "m"
    assert run("fit", root / "responses.csv", "--out", model, "--dims", "1")[0] == 0
    assert run("anchors", model, "--budget", "5")[0] == 0
    anchors = load_anchors(model).all_items()
    partial = full[full.item.isin(anchors) & (full.subject == full.subject.iloc[0])].copy()
    partial.to_csv(tmp_path / "as-fitted.csv", index=False)
    partial.assign(scenario="renamed").to_csv(tmp_path / "renamed.csv", index=False)
    outputs = [run("estimate", model, "--responses", tmp_path / name) for name in ("as-fitted.csv", "renamed.csv")]
    assert [code for code, _ in outputs] == [0, 0] and outputs[0][1] == outputs[1][1]
    assert set(pd.read_csv(io.StringIO(outputs[0][1])).scenario) == {*full.scenario.unique(), "overall"}


def test_a_budget_of_every_item_states_no_se_ratio(files):
    """At a budget covering every item each estimate is exact, its error round-off: the SE / RMSE
    column showed ratios of round-off (0.76-1.07) as if they said how far the SEs hold."""
    root, _ = files
    code, out = run("validate", root / "responses.csv", "--budgets", "5,40", "--dims", "1", "--methods", "random",
                    "--repeats", "2", "--csv", root / "every.csv")
    assert code == 0, out
    table = pd.read_csv(root / "every.csv")
    every = table[(table.budget == 40) & (table.estimator != BASELINE)]
    assert len(every) and (every.mae < 1e-9).all() and every.se_ratio.isna().all()
    assert table[(table.budget == 5) & (table.estimator != BASELINE)].se_ratio.gt(0).all()


def test_the_summary_line_says_what_a_table_of_the_default_s_rows_holds():
    """`default_summary` on hand-made rows (no fit): the ratios it reads, the advice it gives only
    where it applies (more folds where one split held out few, more draws under five), singulars,
    and no empty clauses where a ratio or the SE check is missing."""
    import numpy as np
    import pandas as pd

    from evo_merge.cli.irt_validation import default_summary

    def table(held, draws, folds, ratios=(0.8, 0.9), beyond=(0.05, 0.06), default=True):
        return pd.DataFrame({"budget": [10, 30], "method": "stratified", "estimator": "gpirt", "default": default,
                             "vs_baseline": ratios, "beyond_2se": beyond, "held_out": held, "draws": draws,
                             "folds": folds})

    assert default_summary(table(40, 10, 4)) == (
        "default (auto anchors, here stratified, + gpirt): 0.80x at 10, 0.90x at 30 (its MAE over random sampling's, "
        "by anchors per scenario); 5.0% / 6.0% of its errors beyond 2 SE (about 5% where its SEs are right)")
    assert "(--folds 4 holds every subject out once; --repeats 5 averages more anchor draws)" in default_summary(
        table(3, 1, 1), folds_hint=4)
    assert "; 1 held-out subject and 5 anchor draws: a noisy verdict)" in default_summary(table(1, 5, 1))  # no fix
    assert "--folds" not in default_summary(table(3, 10, 3), folds_hint=4)  # folded already
    bare = default_summary(table(40, 10, 4, ratios=(np.nan, np.nan), beyond=(np.nan, np.nan)), overall=True)
    assert bare.endswith("no ratio (its MAE of the overall score over random sampling's, by anchors per scenario)")
    assert default_summary(table(40, 10, 4, default=False)).startswith("no summary: the default (auto anchors + "
                                                                       "gpirt) was not among the rows validated")


def test_anchors_and_validate_take_the_balance_of_stratified_draws(files, tmp_path):
    """`irt anchors --balance 1` stores the one draw earlier versions made (the stored file says so);
    `irt validate --balance 1` scores stratified rows on one draw each, so a user sees what balancing
    pays on their responses; random anchors are one draw either way."""
    root, _ = files
    model_dir = tmp_path / "m"
    assert run("fit", root / "responses.csv", "--out", model_dir, "--dims", "1")[0] == 0
    model = IRTModel.load(model_dir)
    for balance in ("1", "50"):
        code, _ = run("anchors", model_dir, "--budget", "5", "--method", "stratified", "--balance", balance,
                      "--overwrite")
        assert code == 0
        stored = load_anchors(model_dir, method="stratified")
        assert stored == select_anchors(model, 5, "stratified", seed=0, balance=int(balance))
        assert stored.balance == int(balance)
    data = validate_responses(pd.read_csv(root / "responses.csv"))
    tables = {b: validate(data, budgets=[5], methods=["stratified"], dims=1, repeats=2, seed=0, balance=b)
              .set_index(["method", "estimator"])["mae"] for b in (1, 200)}
    assert tables[1]["stratified", "gpirt"] != tables[200]["stratified", "gpirt"]
    assert tables[1]["random", "gpirt"] == tables[200]["random", "gpirt"]
    code, out = run("validate", root / "responses.csv", "--budgets", "5", "--methods", "stratified", "--dims", "1",
                    "--repeats", "2", "--balance", "1", "--csv", tmp_path / "v.csv")
    assert code == 0, out
    assert "stratified anchors here: one draw per anchor set (--balance); a campaign's are the best-balanced of 200" \
        in out  # the default row is not what a campaign's default would score
    written = pd.read_csv(tmp_path / "v.csv").set_index(["method", "estimator"])
    assert written.mae["stratified", "gpirt"] == pytest.approx(tables[1]["stratified", "gpirt"])
    assert written.balance["stratified", "gpirt"] == 1  # the CSV says so too, apart from the console's line


def test_the_fits_of_every_fold_are_one_count_fixed_from_the_start(files):
    """Folds of 11 and 12 training subjects try one D and two (3 fits and 5): the count was each
    fold's own times the folds, so a log read 3/12 and then 15/20 (audit 122)."""
    _, full = files
    data = validate_responses(full[full.subject.isin(sorted(full.subject.unique())[:15])])
    assert sorted(train.subject.nunique() for train, _ in subject_folds(data, 4, seed=0)) == [11, 11, 11, 12]
    seen = []
    validate(data, budgets=[5], methods=["random"], folds=4, repeats=1,
             progress=lambda stage, done, total: seen.append((done, total)) if stage == "fitting IRT" else None)
    assert {total for _, total in seen} == {3 + 3 + 3 + 5}
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[-1] == (14, 14)


def test_the_overall_random_baseline_weights_each_scenario_by_its_items():
    """`irt validate --overall`'s baseline is the error of the item-weighted mean of the scenarios'
    random-item means (scenarios of 3 and 5 items weigh 3/8 and 5/8), as the overall score is, not
    their plain mean (audit 133, M03): a hand value, and exact enumeration of every draw without
    replacement."""
    import itertools

    groups = {"a": np.arange(3), "b": np.arange(3, 8)}
    # one subject, a = [1, 1, 1] and b = [1, 0, 0, 0, 0], one item each: truth 4/8, the estimate 1 (b's 1,
    # chance 1/5) or 3/8, so the error is 1/5 * 1/2 + 4/5 * 1/8 = 0.2 (the scenarios' plain mean gives 0.16)
    hand = np.array([[1, 1, 1, 1, 0, 0, 0, 0.0]])
    assert random_baseline(hand, groups, 1, 4000, 0, overall=True)[0] == pytest.approx(0.2, abs=0.01)  # SE 0.0024
    test = (np.random.default_rng(11).random((6, 8)) < 0.5).astype(float)
    share = np.array([3, 5]) / 8
    for budget in (1, 2):
        def error(row, a, b):
            estimate = share @ [row[list(a)].mean(), row[list(b)].mean()]
            return abs(estimate - share @ [row[:3].mean(), row[3:].mean()])

        exact = np.mean([np.mean([error(row, a, b) for a in itertools.combinations(range(3), budget)
                                  for b in itertools.combinations(range(3, 8), budget)]) for row in test])
        got = random_baseline(test, groups, budget, 4000, 0, overall=True)[0]  # SE about 0.001
        assert got == pytest.approx(exact, abs=0.004), (budget, got, exact)  # the plain mean's: 0.274, 0.144


def test_items_count_a_scenario_smaller_than_the_budget_at_its_size():
    """`items` (and `saving`, every item over them) counts min(budget, scenario size) per scenario:
    scenarios of 4 and 20 items at a budget of 10 are 14 items, not 20 (audit 133, M29)."""
    rng = np.random.default_rng(5)
    sizes = {"small": 4, "large": 20}
    items = [(scenario, f"{scenario}-{j}") for scenario, size in sizes.items() for j in range(size)]
    ability, difficulty = rng.normal(size=12), rng.normal(size=len(items))
    correct = rng.random((12, len(items))) < 1 / (1 + np.exp(difficulty[None] - ability[:, None]))
    data = pd.DataFrame([{"subject": f"m{i:02d}", "item": item, "scenario": scenario, "score": float(correct[i, j])}
                         for i in range(12) for j, (scenario, item) in enumerate(items)])
    table = validate(validate_responses(data), budgets=[2, 10, 30], methods=["random"], estimators=["anchor"],
                     dims=1, seed=0, draws=5)
    counts = table.groupby("budget")[["items", "saving"]].agg(["min", "max"])
    assert counts["items"]["min"].tolist() == counts["items"]["max"].tolist() == [4, 14, 24]
    assert counts["saving"]["max"].tolist() == pytest.approx([24 / 4, 24 / 14, 1.0])
    assert counts["saving"]["min"].tolist() == pytest.approx([24 / 4, 24 / 14, 1.0])


def test_validate_leaves_out_items_only_held_out_subjects_answered(files, caplog):
    """A sparse table (a leaderboard's missing cells): an item answered only by subjects a split
    held out is not in that split's model, and `irt validate` stopped with "item ... is not in the
    IRT model", naming no file, for a model the user never gave (audit 133)."""
    _, full = files
    subjects = sorted(full.subject.unique())[:15]
    data = full[full.subject.isin(subjects)]
    lone = data.item.iloc[0]
    data = validate_responses(data[(data.item != lone) | (data.subject == subjects[0])])
    with caplog.at_level(logging.WARNING, logger="evo_merge.irt.validation"):
        table = validate(data, budgets=[5], methods=["random"], folds=3, repeats=1, draws=5)
    assert len(table) and table["mae"].notna().all()
    assert [r.getMessage() for r in caplog.records] == [
        "fold 1: 1 item answered by held-out subjects only, left out of the errors (no training subject scored "
        "them: the model has no parameters for them)"]


def test_clustered_anchors_of_a_sparse_table_s_cross_fit_folds_are_chosen(files):
    """An item answered by one subject has no parameters in a cross-fit fold that holds that subject
    out (NaN), and k-means on the fold's parameters stopped `irt validate` with a traceback (audit
    139): such an item sits at the others' mean."""
    _, full = files
    subjects = sorted(full.subject.unique())[:15]
    data = full[full.subject.isin(subjects)]
    lone = data.item.unique()[:3]
    data = validate_responses(data[~data.item.isin(lone) | (data.subject == subjects[0])])
    table = validate(data, budgets=[5], methods=["kmeans-irt", "kmeans-correctness", "stratified-irt"], folds=3,
                     repeats=1, draws=5)
    assert set(table.method) == {"kmeans-irt", "kmeans-correctness", "stratified-irt", "random"}
    assert table["mae"].notna().all()


def test_the_table_pools_the_folds_by_their_held_out_subjects_by_hand():
    """Two folds of 1 and 3 held-out subjects (weights 1/4, 3/4), two anchor draws. gp-IRT's pooled
    MAE per draw: 0.175 and 0.225, mean 0.2; its SE ratio sqrt(mean SE^2 / mean error^2) =
    sqrt(0.004375 / 0.0175) = 0.5. Random sampling: MAE 0.225, spread sqrt(1/16 * 0.04^2 + 9/16 *
    0.02^2) = 0.018028 (folds independent), so gp-IRT is at 0.2 / 0.225 = 0.889 of it."""
    from evo_merge.irt.validation import _table

    fold0 = np.array([[0.1, 0.0, 0.01, 0.04], [0.3, 1.0, 0.01, 0.04]])  # per draw: MAE, beyond 2 SE, SE^2, error^2
    fold1 = np.array([[0.2, 0.0, 0.0025, 0.01], [0.2, 0.0, 0.0025, 0.01]])
    table = _table({(10, "random", "gpirt"): [fold0, fold1]}, {10: [(0.3, 0.04), (0.2, 0.02)]}, draws=200,
                   held=np.array([1, 3]), budgets=[10], scenario_sizes=[20, 20], n_model_items=40,
                   default_method="random", balance=200).set_index("estimator")
    assert table.loc["gpirt", ["mae", "beyond_2se", "se_ratio"]].tolist() == pytest.approx([0.2, 0.125, 0.5])
    assert table.loc["gpirt", "vs_baseline"] == pytest.approx(0.2 / 0.225)
    assert table.loc[table.index != "gpirt", ["mae", "sd"]].values.ravel().tolist() == pytest.approx(
        [0.225, 0.000325**0.5])
