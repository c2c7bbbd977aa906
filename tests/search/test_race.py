"""The final phase's race: nested stratified samples, paired standard errors that hold, who leaves,
and a campaign whose finalists race before they are measured on every item."""

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from test_campaign import campaign, zoo  # noqa: F401  (the tiny family and the campaign file)

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import standard_merges
from evo_merge.search.front import Distinct, candidates, to_measure
from evo_merge.search.metrics import item_totals
from evo_merge.search.objectives import Objectives
from evo_merge.search.race import PICKS_META, RACE_META, SEED_OFFSET, RaceSample, beaten
from evo_merge.search.store import CampaignStore


def _sample(seed=0):
    items = {"t": [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(10)]}
    return RaceSample(items, {"t": {i: i[0] for i in items["t"]}}, seed)


def test_samples_are_stratified_nested_and_drawn_from_the_seed():
    sample = _sample()
    sizes = {}
    for fraction in (0.1, 0.25, 0.5):
        items = sample.items(fraction)["t"]
        sizes[fraction] = (sum(i[0] == "a" for i in items), sum(i[0] == "b" for i in items))
    assert sizes == {0.1: (4, 1), 0.25: (10, 2), 0.5: (20, 5)}  # round(2.5) is 2: Python rounds half to even
    small, large = set(sample.items(0.1)["t"]), set(sample.items(0.25)["t"])
    assert small < large < set(sample.items(0.5)["t"])
    assert sample.items(0.25) == _sample().items(0.25) and sample.items(0.25) != _sample(1).items(0.25)
    assert sorted(i[0] for i in sample.items(0.01)["t"]) == ["a", "b"]  # at least one item of each scenario


def test_the_paired_difference_and_its_floor_by_hand():
    """Two scenarios of 4 items, half of each sampled: b beats a on every item of `x` and ties on
    `y`. Mean 0.5 * 1 + 0.5 * 0. Neither scenario's differences vary, so each variance is floored
    at 1/n = 1/2: 0.5^2 * (1/2) / 2 * (1 - 2/4) = 1/32 each, an SE of sqrt(1/16) = 0.25."""
    ids = [f"x{i}" for i in range(4)] + [f"y{i}" for i in range(4)]
    sample = RaceSample({"t": ids}, {"t": {i: i[0] for i in ids}}, seed=3)
    a = {"t": {i: 0.0 for i in ids}}
    b = {"t": {i: 1.0 if i[0] == "x" else 0.0 for i in ids}}
    mean, se = sample.difference(a, b, 0.5)["t"]
    assert mean == pytest.approx(0.5) and se == pytest.approx(0.25)
    assert sample.difference(a, b, 0.99)["t"] == (pytest.approx(0.5), 0.0)  # every item seen: exact
    assert sample.score(b, 0.5) == {"t": pytest.approx(0.5)}


def test_scenarios_weigh_by_their_share_of_the_items():
    """Scenario `x` holds 6 of 8 items, `y` 2: b right on every x item alone scores 6/8 = 0.75 on
    every item, and so on any sample (weighted equally, 0.5)."""
    ids = [f"x{i}" for i in range(6)] + [f"y{i}" for i in range(2)]
    sample = RaceSample({"t": ids}, {"t": {i: i[0] for i in ids}}, seed=3)
    b = {"t": {i: 1.0 if i[0] == "x" else 0.0 for i in ids}}
    assert sample.score(b, 0.5) == {"t": pytest.approx(0.75)}
    assert sample.difference({"t": dict.fromkeys(ids, 0.0)}, b, 0.5)["t"][0] == pytest.approx(0.75)


def test_the_paired_spread_is_the_sample_variance_by_hand():
    """One scenario of 8 items, half sampled: differences 1, -1, 1, -1 (mean 0), whose sample variance
    (n - 1 = 3) is 4/3: SE sqrt(4/3 / 4 * (1 - 4/8)) = sqrt(1/6)."""
    ids = [f"x{i}" for i in range(8)]
    sample = RaceSample({"t": ids}, {"t": dict.fromkeys(ids, "x")}, seed=3)
    drawn = sample.items(0.5)["t"]
    a = {"t": dict.fromkeys(ids, 0.5)}
    b = {"t": {i: 0.5 + (1.0 if drawn.index(i) % 2 == 0 else -1.0) if i in drawn else 0.5 for i in ids}}
    mean, se = sample.difference(a, b, 0.5)["t"]
    assert mean == pytest.approx(0.0) and se == pytest.approx((1 / 6) ** 0.5)


def test_the_standard_error_matches_the_spread_over_sample_draws():
    """Two correlated candidates on 600 items in 3 scenarios: over 300 sample draws, the error of
    the estimated difference against the true one (every item) has the spread the SEs say."""
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(600)]
    scenario = {i: "abc"[k % 3] for k, i in enumerate(ids)}
    p = rng.uniform(0.1, 0.9, 600)
    a_bits = rng.random(600) < p
    b_bits = np.where(rng.random(600) < 0.2, rng.random(600) < p + 0.05, a_bits)  # agrees on 80% of items
    a = {"t": dict(zip(ids, a_bits.astype(float)))}
    b = {"t": dict(zip(ids, b_bits.astype(float)))}
    truth = float(b_bits.mean() - a_bits.mean())
    z = []
    for seed in range(300):
        mean, se = RaceSample({"t": ids}, {"t": scenario}, seed).difference(a, b, 0.125)["t"]
        z.append((mean - truth) / se)
    assert abs(np.mean(z)) < 0.15 and 0.85 < np.std(z) < 1.15


def _scores(values):
    """One item per scenario per task, 200 scenarios: the whole sample is seen, so SEs are 0 and
    only the means and the tolerance decide."""
    ids = [f"i{k}" for k in range(200)]
    return ids, {name: {task: {i: v for i in ids} for task, v in row.items()} for name, row in values.items()}


@pytest.mark.parametrize(
    ("directions", "values", "tolerance", "left"),
    [
        # a is below b on both tasks: it leaves, to b; c trades off with b: it stays
        (("maximize", "maximize"), {"a": (0.2, 0.2), "b": (0.5, 0.5), "c": (0.9, 0.1)}, 0.0, {"a": "b"}),
        # the second task is minimised: a's 0.8 there is worse than b's 0.3
        (("maximize", "minimize"), {"a": (0.4, 0.8), "b": (0.5, 0.3)}, 0.0, {"a": "b"}),
        (("maximize", "minimize"), {"a": (0.4, 0.2), "b": (0.5, 0.3)}, 0.0, {}),
        # within the tolerance of each other: one leaves, never both (the better balanced one stays)
        (("maximize", "maximize"), {"a": (0.505, 0.5), "b": (0.5, 0.5)}, 0.01, {"b": "a"}),
        # each better on one task by more than the tolerance: both stay
        (("maximize", "maximize"), {"a": (0.52, 0.48), "b": (0.5, 0.5)}, 0.01, {}),
    ],
)
def test_who_leaves(directions, values, tolerance, left):
    ids, scores = _scores({k: dict(zip(("t", "u"), v)) for k, v in values.items()})
    sample = RaceSample({"t": ids, "u": ids}, {"t": {i: i for i in ids}, "u": {i: i for i in ids}}, seed=0)
    objectives = Objectives.of(["t", "u"], directions)
    assert beaten(scores, sample, 0.5, objectives, tolerance=tolerance) == left


def test_noise_alone_does_not_make_a_finalist_leave():
    """Ten finalists with the same true accuracy on every item's probability: the race has no
    ground to drop any of them, stage after stage."""
    rng = np.random.default_rng(1)
    ids = [f"i{k}" for k in range(400)]
    p = rng.uniform(0.2, 0.8, 400)
    scores = {f"c{j}": {t: dict(zip(ids, (rng.random(400) < p).astype(float))) for t in "tu"} for j in range(10)}
    sample = RaceSample({"t": ids, "u": ids}, {"t": {}, "u": {}}, seed=0)
    objectives = Objectives.of(["t", "u"], ["maximize", "maximize"])
    for fraction in (0.125, 0.25, 0.5):
        assert beaten(scores, sample, fraction, objectives, tolerance=0.01) == {}


@pytest.fixture(scope="module")
def raced(tmp_path_factory, zoo):  # noqa: F811
    """One campaign's final phase raced with every survivor measured whole, raced as by default
    (only the picks measured whole) and, from the same search, measured whole."""
    tmp = tmp_path_factory.mktemp("race")
    # a tolerance under which finalists of this small search leave the race (the tests need leavers)
    final = {"holdout": 0.25, "top_k": 3, "evaluate_top": 6, "race_tolerance": 0.08}
    runs = {}
    for name, race in (("raced", {"race": [0.125, 0.25, 0.5], "measure_whole": "survivors"}), ("picks", {}),
                       ("whole", {"race": []})):
        (tmp / name).mkdir()
        path = campaign(tmp / name, zoo, algorithm={"population": 8, "generations": 2, "seed": 1},
                        final={**final, **race})
        result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp / name / "run")])
        assert result.exit_code == 0, result.output
        runs[name] = tmp / name / "run"
    runs["config"] = tmp / "raced" / "campaign.yaml"
    return runs


def _measured(run):
    db = sqlite3.connect(run / "state.sqlite")
    return {k: json.loads(m) for k, m in db.execute("SELECT key, measured FROM evaluations "
                                                    "WHERE measured IS NOT NULL AND phase != 'calibration'")}


def test_leavers_are_not_measured_and_a_finalist_matches_each(raced):
    store = CampaignStore(raced["raced"])
    record = store.get_meta(RACE_META)
    whole = _measured(raced["whole"])  # the same search: the whole final phase measured
    measured = _measured(raced["raced"])
    assert record["left"] and record["finalists"] == len(whole)
    assert set(measured) | set(record["left"]) == set(whole)
    assert not set(measured) & set(record["left"])
    holdout = store.get_meta("holdout")
    for key, leaver in record["left"].items():
        scored = store.item_scores(key)
        # scored on the stage's sample only, never on held-out items, and a measured finalist matches it
        assert sum(len(v) for v in scored.values()) < 2 * 90 and not set(scored["agree0"]) & set(holdout["agree0"])
        assert leaver["beaten_by"] in whole
        winner = whole[leaver["beaten_by"]]  # at most the tolerance worse on every task, measured
        assert all(winner[t] >= whole[key][t] - 0.05 for t in ("agree0", "agree1"))
    picked = {eid for eid, _ in store.get_meta("exported").values()}
    for key, scores in measured.items():
        assert scores == whole[key]  # survivors measured on every search item, as without a race
        if store.get(key).id not in picked:  # held-out items are for the picks alone
            assert not set(store.item_scores(key)["agree0"]) & set(holdout["agree0"])
    assert set(measured) - {k for k in measured if store.get(k).id in picked}  # survivors that are no pick
    spent = {name: CampaignStore(raced[name]).items_evaluated(measured=True) for name in ("raced", "whole")}
    assert spent["raced"] < spent["whole"]


def test_by_default_the_picks_are_chosen_on_the_race_s_last_sample_and_measured_whole(raced):
    store, whole = CampaignStore(raced["picks"]), _measured(raced["whole"])
    record = store.get_meta(RACE_META)
    compared = record["compared"]
    assert compared["stage"] == 0.25 and set(compared["scores"]) | set(record["left"]) == set(whole)
    runner = CampaignRunner.open(Campaign.load(raced["picks"] / "campaign.yaml"), raced["picks"], raced["picks"])
    runner.calibrate()  # the stored scores and sample, to recompute the survivors' sample scores by hand
    scoring = runner.scoring
    sample = RaceSample({n: scoring.search_ids(n) for n in scoring.names},
                        {n: scoring.tasks[n].scenarios for n in scoring.names}, 1 + SEED_OFFSET)
    for key, scores in compared["scores"].items():
        items = store.item_scores(key)
        assert scores == pytest.approx({t: sum(share * np.mean([items[t][i] for i in ids])
                                               for share, ids in _strata(sample, t, 0.25)) for t in scoring.names})
    runner.close()
    # each pick is the best survivor on the sample for it, and it alone is measured on every item
    exported = {name: store.db.execute("SELECT key FROM evaluations WHERE id = ?", (eid,)).fetchone()[0]
                for name, (eid, _) in store.get_meta("exported").items()}
    for task in ("agree0", "agree1"):
        assert exported[f"best-{task}"] == max(compared["scores"], key=lambda k: compared["scores"][k][task])
    assert exported["balanced"] == max(compared["scores"], key=lambda k: np.mean(list(compared["scores"][k].values())))
    measured = _measured(raced["picks"])
    warmups = {c.key for c in standard_merges(2).values()} & set(measured)  # measured whole in calibration
    assert set(measured) == set(exported.values()) | warmups
    assert all(measured[key] == whole[key] for key in measured)  # measured whole, as without a race
    spent = {name: CampaignStore(raced[name]).items_evaluated(measured=True) for name in ("picks", "raced", "whole")}
    assert spent["picks"] < spent["raced"] < spent["whole"]
    result = CliRunner().invoke(cli, ["status", str(raced["picks"])])
    # the standard merges among the finalists were measured whole before the race, as warm-ups: counted
    # apart, stayed or not (a warm-up that fell behind is no leaver; it was left out of every count)
    before = [k for k in set(compared["scores"]) | set(record["left"]) | set(measured)
              if store.get(k).phase == "baseline" and store.get(k).items_evaluated == 180]
    raced_count, kept = record["finalists"] - len(before), record["finalists"] - len(record["left"])
    assert before and (f"{len(record['left'])} of {raced_count} finalists left it before every item") in " ".join(
        result.output.split())
    assert (f"{len(before)} more were warm-ups measured on every item before the final phase, which the race does "
            f"not drop; the {kept} that stayed were compared on 25% of the items, and only the picks among them "
            "measured on every item") in " ".join(result.output.split())
    report = (raced["picks"] / "report.md").read_text()
    section = report.split("## Compared on the race's last sample")[1].split("\n## ")[0]
    unmeasured = {store.get(k).id for k in compared["scores"] if store.get(k).measured is None}
    assert {int(line.split("|")[1]) for line in section.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()} == unmeasured
    # the front files show the survivors scored on the sample too, not the measured picks alone
    pareto = pd.read_csv(raced["picks"] / "pareto.csv")
    ids = {store.get(k).id for k in compared["scores"]}
    assert ids <= set(pareto["id"]) and pareto["sample_agree0"].notna().sum() == len(ids - set(
        store.get(k).id for k in measured))
    assert "Compared on the race&#x27;s last sample" in (raced["picks"] / "report.html").read_text() or \
        "Compared on the race's last sample" in (raced["picks"] / "report.html").read_text()


def _strata(sample, task, fraction):
    """Per scenario (stratum) of `task`: its share of the task's search items, and its sampled ids at `fraction`."""
    total = sum(len(stratum.order) for stratum in sample.strata[task])
    for stratum in sample.strata[task]:
        yield len(stratum.order) / total, stratum.order[: max(1, round(fraction * len(stratum.order)))]


def test_status_and_report_say_who_left_the_race(raced):
    run = raced["raced"]
    record = CampaignStore(run).get_meta(RACE_META)
    result = CliRunner().invoke(cli, ["status", str(run)])
    assert result.exit_code == 0, result.output
    assert f"final-phase race: {len(record['left'])} of {record['finalists']} finalists left it" in result.output
    report = (run / "report.md").read_text()
    assert "## Left the final-phase race" in report
    assert report.count("matched by evaluation") == len(record["left"])


def _resumed_before_its_export(source, tmp_path, meta, forget=None):
    """A copy of the run `source` as a kill between measuring its picks and exporting them leaves
    it (`forget` applied to its store too), resumed: its picks exported, items measured and record
    `meta`, before and after."""
    run = tmp_path / "run"
    shutil.copytree(source, run)
    store = CampaignStore(run)
    # the picks in their order too: the report lists them so (front-13 came before front-12 after a resume)
    before = list(store.get_meta("exported").items()), store.items_evaluated(measured=True), store.get_meta(meta)
    if forget is not None:
        forget(store)
    store.db.execute("DELETE FROM meta WHERE key IN ('exported', 'finished')")
    store.db.commit()
    store.close()
    shutil.rmtree(run / "models")
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    after = CampaignStore(run)
    picks = list(after.get_meta("exported").items())
    return before, (picks, after.items_evaluated(measured=True), after.get_meta(meta))


def test_a_run_cut_after_its_picks_were_measured_resumes_to_the_same_picks(raced, tmp_path):
    """Killed between measuring the picks and exporting them: the resumed final phase compares the
    survivors on the race's sample again, measured picks included (the race's record the same), and
    exports what the whole run did, scoring nothing again."""
    before, after = _resumed_before_its_export(raced["picks"], tmp_path, RACE_META)
    assert after == before


@pytest.fixture(scope="module")
def rechosen(tmp_path_factory, zoo):  # noqa: F811
    """A run whose picks, chosen on the race's sample, partly fell behind once measured on every
    item (seed 1 of this family does, with one anchor draw per set), exporting the front's members too."""
    tmp = tmp_path_factory.mktemp("rechosen")
    path = campaign(tmp, zoo, algorithm={"population": 8, "generations": 2, "seed": 1},
                    estimator={"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1, "anchor_balance": 1},
                    final={"holdout": 0.25, "top_k": 3, "evaluate_top": 6, "race_tolerance": 0.08,
                           "export": ["best_per_task", "balanced", "front"]})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_picks_that_fall_behind_once_measured_are_chosen_again_so_that_pareto_csv_agrees(rechosen):
    """A `front-N` pick chosen on the sample and dominated once measured, or a `best-<task>` pick
    another candidate beats, is what pareto.csv would contradict: every pick is measured on every
    item, the front picks are pareto.csv's front, and each best pick is the best there."""
    store = CampaignStore(rechosen)
    rounds = store.get_meta(PICKS_META)["rounds"]
    assert len(rounds) > 2 and set(rounds[0]) != set(rounds[-1])  # a pick fell behind: what this tests
    pareto = pd.read_csv(rechosen / "pareto.csv").set_index("id")
    tasks = ("agree0", "agree1")
    known = pd.DataFrame({t: pareto[f"meas_{t}"].fillna(pareto[f"sample_{t}"]) for t in tasks})
    exported = {name: eid for name, (eid, _) in store.get_meta("exported").items()}
    assert pareto.loc[list(exported.values()), [f"meas_{t}" for t in tasks]].notna().all().all()
    front = {f"front-{i}" for i in pareto.index[pareto.front]}
    assert {name for name in exported if name.startswith("front-")} == front
    for task in tasks:
        assert known.loc[exported[f"best-{task}"], task] == known[task].max()
    assert known.mean(axis=1)[exported["balanced"]] == known.mean(axis=1).max()
    fell = len(set(rounds[0]) - set(rounds[-1]))
    status = " ".join(CliRunner().invoke(cli, ["status", str(rechosen)]).output.split())
    assert f"picks: {fell} of the {len(rounds[0])} chosen on the race's sample fell behind" in status
    assert f"{fell} of the {len(rounds[0])} chosen on the race's sample fell behind" in " ".join(
        (rechosen / "report.md").read_text().split())


def test_a_resume_replays_the_rounds_of_picks_to_the_same_picks(rechosen, tmp_path):
    """Killed after the first round of picks was measured: the later rounds' picks are measured in
    the store already, yet the replay treats them as it did (their sample scores) and ends where the
    whole run did, scoring nothing again."""
    def after_the_first_round(store):
        record = store.get_meta(PICKS_META)
        store.set_meta(PICKS_META, {**record, "rounds": record["rounds"][:1]})
    before, after = _resumed_before_its_export(rechosen, tmp_path, PICKS_META, after_the_first_round)
    assert after == before


def test_an_export_onto_one_of_the_merge_s_inputs_is_refused_before_measuring(raced, tmp_path):
    """`export --pick ID --out <an endpoint> --overwrite` measured the candidate, then refused the folder:
    its items were kept and counted for an export that never was."""
    run = tmp_path / "run"
    shutil.copytree(raced["picks"], run)
    store = CampaignStore(run)
    unmeasured = next(e for e in store.evaluations("search") if e.status == "ok" and e.measured is None)
    spent = store.items_evaluated(measured=True)
    endpoint = Path(yaml.safe_load((run / "campaign.yaml").read_text())["models"][0])
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(unmeasured.id), "--out", str(endpoint),
                                      "--overwrite"])
    assert result.exit_code == 2 and "which this command reads" in result.output, result.output
    assert "measuring" not in result.output and store.items_evaluated(measured=True) == spent
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", "99999", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and f"(the id column of {run / 'evaluations.csv'}" in result.output


def test_a_candidate_exported_by_hand_competes_for_the_picks_on_the_same_sample(raced, tmp_path):
    """Measured whole by `export --pick` (a leaver, or no finalist at all), a candidate takes part
    in the picks like a survivor, scored on the race's sample as they are: its whole score against
    their sample scores would favour whichever the sample flatters."""
    run = tmp_path / "run"
    shutil.copytree(raced["picks"], run)
    store = CampaignStore(run)
    record = store.get_meta(RACE_META)
    leaver = next(k for (k,) in store.db.execute("SELECT key FROM evaluations WHERE phase = 'search' AND status = 'ok' "
                                                 "ORDER BY id") if k not in record["compared"]["scores"])
    phases, spent = store.items_by_phase(), store.items_evaluated(measured=True)
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(store.get(leaver).id), "--out",
                                      str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    # its measurement counts as the export's, not the final phase's (which it was added to)
    measured = store.items_evaluated(measured=True) - spent
    assert measured > 0 and store.items_by_phase() == {**phases, "export --pick": measured}
    assert f"export --pick {measured:,})" in item_totals(store)
    # the run's tables are rewritten by `report`: the export says so (they showed the old state silently)
    assert f"was measured for this export: `evo-merge report {run}` adds it" in result.output
    store.db.execute("DELETE FROM meta WHERE key IN ('exported', 'finished')")
    store.db.commit()
    store.close()
    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()
    scoring = runner.scoring
    sample = RaceSample({n: scoring.search_ids(n) for n in scoring.names},
                        {n: scoring.tasks[n].scenarios for n in scoring.names}, 1 + SEED_OFFSET)
    offered = runner.measure_final()  # what the picks are chosen among (the race looked up, nothing scored)
    store = runner.workspace.store
    on_sample = {e.key: sample.score(store.item_scores(e.key), 0.25) for e in offered}
    assert leaver in on_sample and all(e.measured == pytest.approx(on_sample[e.key]) for e in offered)
    runner.close()
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    exported = {name: store.db.execute("SELECT key FROM evaluations WHERE id = ?", (eid,)).fetchone()[0]
                for name, (eid, _) in store.get_meta("exported").items()}
    for task in ("agree0", "agree1"):
        assert on_sample[exported[f"best-{task}"]][task] == max(s[task] for s in on_sample.values())


def test_a_resumed_race_takes_the_same_decisions_without_scoring_again(raced):
    run = raced["raced"]
    before = CampaignStore(run)
    spent, record = before.items_evaluated(measured=True), before.get_meta(RACE_META)
    before.db.execute("DELETE FROM meta WHERE key = 'race'")  # forgotten: the replay decides again, from the scores
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    after = CampaignStore(run)
    assert after.items_evaluated(measured=True) == spent and after.get_meta(RACE_META) == record


def test_finalists_race_from_the_same_set_the_whole_phase_measures(raced):
    """The race narrows the final phase's set; it does not choose another one."""
    run, path = raced["raced"], raced["config"]
    runner = CampaignRunner.open(Campaign.load(path), path.parent, run)
    final = runner.workspace.campaign.final
    chosen = to_measure(runner.workspace.store, runner.objectives, final, Distinct(runner.space,
                                                                                  final.distinct))
    assert len(chosen) == CampaignStore(run).get_meta(RACE_META)["finalists"]


def test_a_leaver_exported_by_hand_is_measured_and_no_leaver_any_more(raced, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(raced["raced"], run)
    key = next(iter(CampaignStore(run).get_meta(RACE_META)["left"]))
    eid = CampaignStore(run).get(key).id
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0  # the race is run again from the store
    store = CampaignStore(run)
    assert key not in store.get_meta(RACE_META)["left"] and store.get(key).measured is not None
    assert len(store.get_meta(RACE_META)["left"]) == len(CampaignStore(raced["raced"]).get_meta(RACE_META)["left"]) - 1


def test_full_evaluation_runs_no_race(tmp_path, zoo):  # noqa: F811
    """Every candidate of a full-evaluation campaign is measured as it is searched: nothing to save."""
    path = campaign(tmp_path, zoo, estimator={"kind": "full"}, algorithm={"population": 4, "generations": 1})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert CampaignStore(tmp_path / "run").get_meta(RACE_META) is None


def test_a_leaver_is_scored_on_its_anchors_and_its_stage_s_sample_only(raced):
    """The race's items are the stage's stratified sample of the search items; anchors that fall
    in it are looked up, not scored again, so a leaver's final-phase items are exactly the sample
    minus its anchors."""
    run, path = raced["raced"], raced["config"]
    runner = CampaignRunner.open(Campaign.load(path), path.parent, run)
    runner.calibrate()  # every evaluation looked up; the IRT models and anchors loaded
    scoring, store = runner.scoring, runner.workspace.store
    sample = RaceSample({n: scoring.search_ids(n) for n in scoring.names},
                        {n: scoring.tasks[n].scenarios for n in scoring.names}, 1 + SEED_OFFSET)
    leavers = store.get_meta(RACE_META)["left"]
    assert leavers
    for key, leaver in leavers.items():
        anchors = {n: set(ids) for n, ids in scoring.anchor_items(key).items()}  # its anchor set's
        stage = {n: set(ids) for n, ids in sample.items(leaver["stage"]).items()}
        assert {n: set(v) for n, v in store.item_scores(key).items()} == {n: anchors[n] | stage[n] for n in stage}
        row = store.db.execute("SELECT items_measured FROM evaluations WHERE key = ?", (key,)).fetchone()
        assert row[0] == sum(len(stage[n] - anchors[n]) for n in stage)
    runner.close()


def test_a_run_choosing_its_picks_on_fewer_than_100_items_of_a_task_says_so_first():
    """The picks are chosen on the race's last sample: 50 items of a 200-item task can miss its best
    finalist by about a point (scripts/bench_pick_sample.py), so the run says so while the race can
    still be changed, with a last stage that samples 100 items where the task has 200 or more."""
    from evo_merge.search.race import MIN_PICK_SAMPLE, small_pick_samples

    assert MIN_PICK_SAMPLE == 100
    note = small_pick_samples({"arith": 960, "gsm8k": 200, "tiny": 40}, [0.125, 0.25], "picks")
    assert note == ("final.race: the picks will be chosen on the race's last sample, about 50 of gsm8k's 200, "
                    "about 10 of tiny's 40 search items; a sample of fewer than 100 can miss a task's best "
                    "finalist by up to about a point of accuracy: race: [] on every item")
    assert "race: [0.34] chooses on 100, race: []" in small_pick_samples({"mmlu": 300}, [0.25], "picks")
    assert 0.34 * 300 >= 100 > 0.33 * 300  # the stage suggested samples 100 items, not 99
    assert small_pick_samples({"arith": 960, "seq": 400}, [0.125, 0.25], "picks") is None  # 100 of 400: enough
    assert small_pick_samples({"gsm8k": 200}, [0.125, 0.25], "survivors") is None  # chosen on every item
    assert small_pick_samples({"gsm8k": 200}, [], "picks") is None  # no race: every finalist measured


def test_the_race_line_counts_warm_ups_that_fell_behind_so_that_its_counts_add_up():
    """4 finalists, none left, 2 compared: the 2 others were warm-ups measured whole, which the line
    left out ("0 of 4 finalists left it …; the 2 that stayed …"); then it counted them among the
    finalists that could leave, and the picks were chosen among all 4, not the 2 "that stayed"."""
    from evo_merge.search.race import race_summary

    record = {"finalists": 4, "left": {}, "compared": {"stage": 0.25, "scores": {"a": {}, "b": {}},
                                                       "measured": ["c", "d"]}}
    assert race_summary(record) == (
        "final-phase race: 0 of 2 finalists left it before every item; 2 more were warm-ups measured on every item "
        "before the final phase, which the race does not drop; the 4 that stayed were compared on 25% of the items, "
        "and only the picks among them measured on every item")


def test_the_picks_are_chosen_among_candidates_in_the_store_s_order_whatever_was_measured_since(tmp_path, zoo):  # noqa: F811
    """A resumed final phase found the picks of the first run's rounds measured, and listed them
    before the other survivors: `front-N` picks came in another order in report.md, and a tie on a
    pick's score (broken by list order) could go to another candidate. (Seed 3 of this family puts
    a survivor before a measured pick in the store's order.)"""
    path = campaign(tmp_path, zoo, algorithm={"population": 8, "generations": 2, "seed": 3},
                    final={"holdout": 0.25, "top_k": 3, "evaluate_top": 6, "race_tolerance": 0.08,
                           "export": ["best_per_task", "balanced", "front"]})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()
    offered = [e.key for e in runner.measure_final()]  # as a resume finds it: the picks measured since
    runner.close()
    order = [e.key for e in candidates(CampaignStore(run))]
    assert len(offered) > 2 and offered == sorted(offered, key=order.index)


def test_an_export_that_scores_the_held_out_items_alone_says_the_report_adds_them(raced, tmp_path):
    """A survivor measured on every search item but no pick has no held-out scores: `export --pick`
    scores them alone, and said nothing, though the report's held-out columns change."""
    run = tmp_path / "run"
    shutil.copytree(raced["whole"], run)  # every finalist measured on the search items, the picks on all
    store = CampaignStore(run)
    picks = {eid for eid, _ in store.exported().values()}
    holdout = store.get_meta("holdout")
    survivor = next(e for e in store.evaluations("search") if e.measured is not None and e.id not in picks
                    and not set(store.item_scores(e.key)["agree0"]) & set(holdout["agree0"]))
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(survivor.id), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert set(store.item_scores(survivor.key)["agree0"]) >= set(holdout["agree0"])  # scored now
    assert store.get(survivor.key).measured == survivor.measured  # its search items' score as it was
    assert f"evaluation {survivor.id} was measured for this export" in result.output


def test_the_race_sample_note_counts_every_task_where_a_race_runs():
    """A race runs unless every candidate of every task is measured whole: `kind: full`, or anchors
    at least every scenario's search items (the largest one's, where they differ). Where it runs,
    it samples every task, those the anchors cover too (audits 103, 104)."""
    from types import SimpleNamespace

    from evo_merge.config import EstimatorSpec
    from evo_merge.search.campaign import CampaignRunner

    scenarios = {**{f"s{i}": "short" for i in range(3)}, **{f"l{i}": "long" for i in range(9)}}
    task = SimpleNamespace(scenarios=scenarios)
    small = SimpleNamespace(scenarios=None)

    def raced(**spec):
        runner = SimpleNamespace(workspace=SimpleNamespace(campaign=SimpleNamespace(estimator=EstimatorSpec(**spec))),
                                 tasks={"mixed": task, "small": small},
                                 scoring=SimpleNamespace(search_ids=lambda name: list(scenarios) if name == "mixed"
                                                         else ["a", "b"]))
        return CampaignRunner._raced_items(runner)

    assert raced(kind="full") == {}
    assert raced(anchors=9) == {}  # the long scenario's 9 covered: every candidate measured whole
    assert raced(anchors=5) == {"mixed": 12, "small": 2}  # the short one's 3 covered, not the long one's 9
    assert raced(kind="adaptive", anchors=50) == {"mixed": 12, "small": 2}  # a test may stop short
