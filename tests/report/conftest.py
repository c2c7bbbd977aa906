import pytest

from evo_merge.search.candidate import Candidate
from evo_merge.search.store import CampaignStore

from report_store import TASKS  # a plain module: conftest modules of other folders share its name

# (generation, weights, estimates); generation None: calibration, measured on every item
EVALUATIONS = [
    (None, (0.0, 0.0), {"alpha": 0.2, "beta": 0.3}),
    (1, (1.0, 0.0), {"alpha": 0.6, "beta": 0.1}),
    (1, (0.5, 0.5), {"alpha": 0.4, "beta": 0.4}),
    (2, (0.2, 0.9), {"alpha": 0.1, "beta": 0.7}),
]


@pytest.fixture
def small_store(tmp_path):
    """A run folder whose store holds a calibration evaluation and two generations, one measured."""
    store = CampaignStore(tmp_path / "run")
    for generation, weights, estimates in EVALUATIONS:
        key = Candidate("task_arithmetic", weights, (("lambda", 1.0),)).key
        items = {t: {f"{t}-{i}": float(i % 2) for i in range(4)} for t in TASKS}
        store.add(key, phase="search" if generation else "calibration", generation=generation,
                  method="task_arithmetic", status="ok", estimates=estimates, item_scores=items, seconds=0.1)
    measured_key = Candidate("task_arithmetic", (0.5, 0.5), (("lambda", 1.0),)).key
    store.add_measurement(measured_key, {"alpha": 0.45, "beta": 0.35}, {})
    yield store
    store.close()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A finished tiny campaign (two agreement tasks) tracked to an MLflow file store:
    (root, run folder, MLflow tracking URI)."""
    import sys
    from pathlib import Path

    import yaml
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.zoo.tiny import save_tiny_family

    sys.path.insert(0, str(Path(__file__).parents[1] / "search"))  # the agreement_task plugin
    root = tmp_path_factory.mktemp("tracked")
    base, fts = save_tiny_family(root / "zoo", "llama", n_finetunes=2, noise=0.08)
    uri = (root / "mlruns").as_uri()
    config = {
        "name": "tracked", "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}},
        "estimator": {"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1},
        "algorithm": {"population": 8, "generations": 3, "seed": 3},
        "final": {"evaluate_top": 3},
        "tracking": {"mlflow": {"uri": uri, "experiment": "tracked"}},
    }
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", str(root / "campaign.yaml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root, root / "run", uri
