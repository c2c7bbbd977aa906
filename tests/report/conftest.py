import pytest

from evo_merge.search.candidate import Candidate
from evo_merge.search.store import CampaignStore

TASKS = ["alpha", "beta"]
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
