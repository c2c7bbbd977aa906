"""`estimator.kind: adaptive` in a campaign: each candidate's items are chosen step by step from
its own answers, every step is stored with the estimate and standard error it leads to, and a
replay continues from the store without evaluating anything again."""

import sqlite3

import pytest
import yaml
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.search.store import CampaignStore
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    base, fts = save_tiny_family(root / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = {
        "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}},
        "estimator": {"kind": "adaptive", "warmup_merges": 5, "dims": 1, "target_se": 0.02, "max_items": 15},
        "algorithm": {"population": 6, "generations": 2, "seed": 4},
        "final": {"evaluate_top": 2, "export": ["balanced"]},
    }
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", str(root / "campaign.yaml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run"


def search_items(run):
    db = sqlite3.connect(run / "state.sqlite")
    return dict(db.execute("SELECT key, items_evaluated FROM evaluations WHERE phase = 'search' AND status = 'ok'"))


def test_candidates_take_more_items_than_the_first_step_and_stay_within_the_budget(run):
    counts = search_items(run)
    first_step = 5 * 2 * 2  # 5 items per scenario, 2 scenarios, 2 tasks: the test's opening step
    assert max(counts.values()) > first_step  # the tests asked for more where the SE was too large
    assert max(counts.values()) <= 15 * 2 * 2  # max_items per scenario and task
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
