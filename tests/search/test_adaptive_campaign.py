"""`estimator.kind: adaptive` in a campaign: each candidate's items are chosen step by step from
its own answers, every step is stored with the estimate and standard error it leads to, and a
replay continues from the store without evaluating anything again."""

import sqlite3

import pytest
from campaigns import run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.search.store import CampaignStore
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    base, fts = save_tiny_family(root / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(root / "campaign.yaml", base, fts, algorithm={"population": 6, "generations": 2, "seed": 4},
                            estimator={"kind": "adaptive", "warmup_merges": 5, "dims": 1, "target_se": 0.02,
                                       "max_items": 15})
    return run_campaign(config, root / "run")


def search_items(run):
    db = sqlite3.connect(run / "state.sqlite")
    return dict(db.execute("SELECT key, items_evaluated FROM evaluations WHERE phase = 'search' AND status = 'ok'"))


def test_candidates_take_more_items_than_the_first_step_and_stay_within_the_budget(run):
    counts = search_items(run)
    first_step = 5 * 2 * 2  # 5 items per scenario, 2 scenarios, 2 tasks: the test's opening step
    assert max(counts.values()) > first_step  # the tests asked for more where the SE was too large
    # max_items per scenario and task, doubled for front members refined before the final phase
    assert max(counts.values()) <= 2 * 15 * 2 * 2
    full = 2 * 120  # every item of both tasks
    assert sum(counts.values()) < full * len(counts)


def test_every_search_estimate_carries_its_standard_error(run):
    store = CampaignStore(run)
    for evaluation in store.evaluations("search"):
        if evaluation.status == "ok" and evaluation.measured is None:
            assert set(evaluation.estimate_se) == {"agree0", "agree1"}
            assert all(0 < se < 0.5 for se in evaluation.estimate_se.values())
    assert "±" in CliRunner().invoke(cli, ["status", str(run)]).output


def test_a_replay_continues_every_test_from_the_store(run):
    before = search_items(run)
    assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0
    assert search_items(run) == before


def test_refining_continues_a_test_to_a_smaller_error_with_more_items(run):
    """What `resolve_front` does to an overlapping member: its test goes on at half the target SE."""
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner

    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()  # replayed: every calibration subject and the IRT models come from the run folder
    store = runner.workspace.store
    # not refined in the run (within one test's budget), with the largest SE of the posterior's, which
    # more items reduce (the SE stored also counts the IRT model's own error, measured on held-out
    # calibration subjects, which they do not)
    error = {task: runner.scoring.estimators[task].test.model_error["overall"] for task in ("agree0", "agree1")}
    chosen = max((e for e in store.evaluations("search") if e.status == "ok" and e.measured is None
                  and e.items_evaluated <= 15 * 2 * 2),
                 key=lambda e: max(se**2 - error[task] for task, se in e.estimate_se.items()))
    runner.ledger.refine([chosen], 0.5, "refine")
    after = store.get(chosen.key)
    assert after.items_evaluated > chosen.items_evaluated
    assert max(after.estimate_se.values()) < max(chosen.estimate_se.values())
    runner.close()


def test_an_estimate_that_does_not_come_out_finite_is_an_estimation_failure(run, monkeypatch):
    """Stored as it came, a NaN estimate or SE read back as a damaged run folder."""
    from evo_merge.config import Campaign
    from evo_merge.irt.estimators import AdaptiveEstimator
    from evo_merge.irt.result import Estimate
    from evo_merge.search.campaign import CampaignRunner

    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()
    chosen = next(e for e in runner.workspace.store.evaluations("search") if e.status == "ok")
    scores = runner.workspace.store.item_scores(chosen.key)
    assert runner.scoring.estimate(scores, chosen.key)[0] == pytest.approx(chosen.estimates)
    monkeypatch.setattr(AdaptiveEstimator, "estimate",
                        lambda self, s: Estimate({"overall": 0.5}, {"overall": float("nan")}))
    with pytest.raises(FloatingPointError, match=r"task 'agree0': the estimate 0.5 ± nan is not finite"):
        runner.scoring.estimate(scores, chosen.key)
    runner.close()


def test_overlap_is_judged_on_every_task():
    from evo_merge.search.refine import overlapping
    from evo_merge.search.store import Evaluation

    def ev(i, a, b, se):
        return Evaluation(i, str(i), "search", 1, "ties", "ok", {"x": a, "y": b}, None, 10, 0.0, None,
                          {"x": se, "y": se})

    close, near, far = ev(1, 0.50, 0.50, 0.02), ev(2, 0.53, 0.51, 0.02), ev(3, 0.60, 0.40, 0.02)
    assert [e.id for e in overlapping([close, near, far], ["x", "y"])] == [1, 2]
    # within the SEs on x alone: the front orders them by y
    assert overlapping([close, ev(4, 0.51, 0.60, 0.02)], ["x", "y"]) == []


def test_a_measured_member_counts_with_its_measured_score_and_no_error():
    """An estimate within its own SE of a measured member is unresolved; one within two SEs of it
    is not (it would be, of another estimate with the same SE); the measured member is never refined."""
    from evo_merge.search.refine import overlapping
    from evo_merge.search.store import Evaluation

    measured = Evaluation(1, "1", "baseline", None, "linear", "ok", {"x": 0.9, "y": 0.9}, {"x": 0.5, "y": 0.5},
                          100, 0.0, None, None)

    def estimated(i, x, y):
        return Evaluation(i, str(i), "search", 1, "ties", "ok", {"x": x, "y": y}, None, 10, 0.0, None,
                          {"x": 0.02, "y": 0.02})

    within_own, within_two = estimated(2, 0.515, 0.49), estimated(3, 0.535, 0.47)
    assert [e.id for e in overlapping([measured, within_own], ["x", "y"])] == [2]
    assert overlapping([measured, within_two], ["x", "y"]) == []
    assert [e.id for e in overlapping([estimated(4, 0.5, 0.5), within_two], ["x", "y"])] == [4, 3]


def test_an_adaptive_campaign_with_held_out_items_resumes(tmp_path):
    """Measured candidates hold held-out items the IRT model never saw: a replay must not trip on them."""
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts,
                            algorithm={"population": 4, "generations": 1, "seed": 4},
                            estimator={"kind": "adaptive", "warmup_merges": 3, "dims": 1, "max_items": 10},
                            final={"evaluate_top": 1, "top_k": 1, "export": ["balanced"], "holdout": 0.25})
    run = run_campaign(config, tmp_path / "run")
    before = search_items(run)
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert search_items(run) == before


def test_a_replay_answers_each_generation_as_it_was_told(tmp_path):
    """Continuing a front member's test before the final phase changes its stored estimate after
    its generation was told. A replay (resume, or `run` on a finished folder) must tell the
    algorithm what it was told then: otherwise later generations ask for other candidates, which
    are evaluated on top of the finished search and change its front."""
    import json

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts,
                            algorithm={"population": 6, "generations": 3, "seed": 4},
                            estimator={"kind": "adaptive", "warmup_merges": 3, "dims": 1, "max_items": 10})
    run = run_campaign(config, tmp_path / "run")
    db = sqlite3.connect(run / "state.sqlite")
    told = dict(db.execute("SELECT generation, keys FROM generations"))
    # what a continued test does to a stored estimate, made large enough to reorder every choice
    with db:
        for key, estimates in db.execute("SELECT key, estimates FROM evaluations WHERE phase = 'search'").fetchall():
            flipped = {task: 1.0 - value for task, value in json.loads(estimates).items()}
            db.execute("UPDATE evaluations SET estimates = ? WHERE key = ?", (json.dumps(flipped), key))
    before = search_items(run)
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert search_items(run) == before  # nothing new evaluated
    assert dict(db.execute("SELECT generation, keys FROM generations")) == told


def test_a_test_that_reaches_every_search_item_makes_its_candidate_measured(tmp_path):
    """Tasks of 20 items, an SE target no test meets: each test runs through every item, and its
    candidate is measured as one whose anchors are every item is (audit 98: only the finalists
    were, the same case taken two ways)."""
    from campaigns import agreement_tasks

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts, tasks=agreement_tasks(fts, n_items=20),
                            algorithm={"population": 6, "generations": 2, "seed": 4},
                            estimator={"kind": "adaptive", "warmup_merges": 5, "dims": 1, "target_se": 1e-6,
                                       "max_items": 20})
    run = run_campaign(config, tmp_path / "run")
    rows = sqlite3.connect(run / "state.sqlite").execute(
        "SELECT items_evaluated, measured IS NOT NULL FROM evaluations WHERE phase = 'search' AND status = 'ok'")
    assert {tuple(row) for row in rows} == {(40, 1)}
