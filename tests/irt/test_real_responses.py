"""gp-IRT on real responses of unlike models, not 2PL draws: 36 scikit-learn classifiers of 9
families, each trained on 30-500 of scikit-learn's bundled 8x8 digits, answering the 1,297 digits
none was trained on (each digit class a scenario). The model calibrates on 10 of them, as on a
small leaderboard, and estimates the other 26 from a few anchors per scenario."""

from __future__ import annotations

import numpy as np
import pytest

from evo_merge.irt import Estimator, IRTModel, select_anchors
from evo_merge.irt.classifiers import classifier_responses
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.irt.validation import random_baseline

FAMILIES = ("logreg-weak", "svc-rbf", "knn1", "knn7", "tree", "gaussian-nb", "bernoulli-nb", "centroid", "ridge")


@pytest.fixture(scope="module")
def digits_responses():
    """Accuracy 0.20-0.98 (4 s)."""
    return classifier_responses("digits", FAMILIES, train_sizes=(30, 60, 150, 500), train_pool=500)


def test_on_real_classifier_responses_gpirt_beats_random_sampling(digits_responses):
    """Measured (3 calibration sets of 10 models, 5 anchor draws each): per scenario 0.72x / 0.76x
    random sampling's MAE at 5 / 10 items per digit, the overall over the 10 digits 0.78x / 0.87x
    (worst set 0.89x). kmeans-irt anchors, the default the issue saw lose, fail it."""
    data = digits_responses
    ratios = {(budget, part): [] for budget in (5, 10) for part in ("scenarios", "overall")}
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(data.models))
        train, test = order[:10], order[10:]
        model = IRTModel.fit(data.responses(train), seed=0)
        matrix = ResponseMatrix.from_long(data.responses(test), model.item_ids).scores
        for budget in (5, 10):
            errors = []
            for draw in range(5):
                est = Estimator(model, select_anchors(model, budget, "auto", seed=draw), "gpirt")
                values = est.estimate_with_overall(matrix[:, est.anchor_idx])[0]
                truth = est.scenario_means(matrix)
                overall = np.abs(values[:, -1] - est.overall(truth)).mean()
                errors.append([np.abs(values[:, :-1] - truth).mean(), overall])
            mae = np.mean(errors, axis=0)
            for k, part in enumerate(("scenarios", "overall")):
                random_mae, _ = random_baseline(matrix, model.scenario_items(), budget, 200, seed,
                                                overall=part == "overall")
                ratios[budget, part].append(mae[k] / random_mae)
    for budget in (5, 10):
        assert np.mean(ratios[budget, "scenarios"]) < 0.8, ratios
        assert np.mean(ratios[budget, "overall"]) < 0.95, ratios
        assert max(ratios[budget, "overall"]) < 1.0, ratios  # on every calibration set
