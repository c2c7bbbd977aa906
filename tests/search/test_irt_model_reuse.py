"""Which fitted IRT models a campaign reuses for a task (`search.scoring.task_irt_model`) and
when `plan` asks (`search.estimator_checks.check_irt_model_items`), on a model saved by hand."""

from types import SimpleNamespace

import numpy as np
import pytest

from evo_merge.config import EstimatorSpec
from evo_merge.errors import UserError
from evo_merge.irt.model import IRTModel
from evo_merge.search.estimator_checks import check_irt_model_items
from evo_merge.search.scoring import task_irt_model

ITEMS = [f"q{i}" for i in range(10)]


@pytest.fixture
def saved(tmp_path):
    subjects, dims, folds = 4, 1, 2
    model = IRTModel(item_ids=ITEMS, item_scenarios=["s"] * 10, subject_ids=[f"m{j}" for j in range(subjects)],
                     alpha=np.ones((10, dims)), beta=np.linspace(-1, 1, 10), theta=np.zeros((subjects, dims)),
                     responses=np.zeros((subjects, 10)), thresholds={"s": 0.5}, cv_alpha=np.ones((folds, 10, dims)),
                     cv_beta=np.zeros((folds, 10)), cv_held=np.zeros((folds, subjects), bool))
    model.save(tmp_path / "t")
    return tmp_path


def test_a_model_fitted_on_every_item_is_taken_on_the_search_items(saved):
    """`irt fit` on a task's full responses, reused where two items are held out: its items are
    the search items once those are taken away (audit 97: this case was untested)."""
    model = task_irt_model(saved, "t", ITEMS, frozenset({"q8", "q9"}))
    assert model.item_ids == ITEMS[:8] and model.beta.shape == (8,)


def test_a_model_holding_items_the_task_does_not_search_is_refused(saved):
    """A model over more items than the task searches (the task reread with a `limit`) would
    choose anchors the task lacks (audit 97: only a model missing items was tested)."""
    with pytest.raises(UserError, match=r"2 of its items are not search items of the task \(e.g. q8\)"):
        task_irt_model(saved, "t", ITEMS[:8], frozenset())


def test_plan_asks_nothing_of_an_irt_model_a_full_evaluation_never_reads(tmp_path):
    task = SimpleNamespace(item_ids=["q0", "q1", "q2"], scenarios=None)
    for kind, refused in (("full", False), ("gpirt", True)):
        campaign = SimpleNamespace(estimator=EstimatorSpec(irt_model=str(tmp_path / "none"), kind=kind),
                                   final=SimpleNamespace(holdout=0), algorithm=SimpleNamespace(seed=0))
        if refused:
            with pytest.raises(UserError, match="not an IRT model folder"):
                check_irt_model_items(campaign, {"t": task})
        else:
            check_irt_model_items(campaign, {"t": task})


def test_a_campaign_on_the_shipped_irt_models_measures_only_the_base_and_the_endpoints(tmp_path, monkeypatch,
                                                                                        caplog):
    """`estimator: {irt_model: irt_models}` as the docs suggest, on the shipped benchmarks (only
    the refusal of a missing folder was tested): no warm-up merge is measured and no model is
    fitted; every search candidate is scored on its anchors alone, so a shipped model drifting
    from its benchmark's items is found here."""
    import yaml
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.irt import anchors as anchor_methods
    from evo_merge.search.store import ANCHORS_META, CampaignStore
    from evo_merge.shipped import shipped_dir
    from evo_merge.zoo.tiny import save_tiny_family

    # the automatic anchors' fallback said of the model's subjects, which this run did not measure (audit 129:
    # "8 calibration subjects" after "calibration: 4/4"); the shipped models' 64 taken as too few here
    monkeypatch.setattr(anchor_methods, "MIN_CLUSTER_SUBJECTS", 100)

    base, fts = save_tiny_family(tmp_path / "family", "llama", n_finetunes=2)
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": str(base), "models": [str(f) for f in fts], "tasks": [{"task": "arith"}, {"task": "seq"}],
        "methods": {"task_arithmetic": {}}, "device": "cpu",
        "estimator": {"kind": "gpirt", "irt_model": str(shipped_dir("irt_models")), "anchors": 5},
        "algorithm": {"population": 4, "generations": 1, "seed": 0}, "final": {"evaluate_top": 1, "export": []}}))
    with caplog.at_level("INFO", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert ("stratified anchors instead of auto: 64 calibration subjects of estimator.irt_model are fewer than 100"
            in caplog.text), caplog.text
    store = CampaignStore(tmp_path / "run")
    calibration = store.evaluations("calibration")
    assert len(calibration) == 3 and not (tmp_path / "run" / "irt").exists()  # the base and the 2 endpoints
    anchors = sum(n for counts in store.get_meta(ANCHORS_META).values() for n in counts.values())
    assert anchors == 2 * 5 * 4.5  # 5 per scenario on average: arith's 4 scenarios and seq's 5
    assert {e.items_evaluated for e in store.evaluations("search")} == {anchors}
    assert anchors < calibration[0].items_evaluated == 1920  # every search item of both tasks
    store.close()
