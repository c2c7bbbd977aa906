"""Anchor items: the few items per scenario a new subject is evaluated on, with their weights.

Clustered anchors represent their cluster: the item nearest each K-means centroid, weighted by
the cluster's share of the scenario's items, so Σ w_i y_i estimates the scenario mean. That mean
is right for subjects who answer a cluster's items alike, as the calibration subjects did, and
biased for one who does not (a merge stronger or weaker than any of them, or with another
profile), however many anchors it gets. `stratified-irt` uses the same clusters of item
parameters as strata and draws random members in each (two per stratum on average), so its
weighted mean is unbiased for every subject, like a random sample's, and is as precise as the
clusters are homogeneous. `auto` (the default) is stratified-irt with at least MIN_CLUSTER_SUBJECTS
calibration subjects, and stratified sampling (proportional strata of item mean score, never
worse than random sampling in expectation) below, where the item parameters are too noisy to
cluster; it says why. `auto-kmeans` (the default before defaults version 8) is kmeans-irt with
enough calibration subjects and stratified below; the other methods are used as named.

A stratified draw is balanced (`balanced_draw`): of `balance` draws of the design, the one whose
weighted means would have estimated the calibration subjects' own scenario means best is kept. The
calibration subjects are scored on every item, so each draw's error on them is known before any
candidate is scored; a candidate that answers like some mix of them is then estimated about as well,
and the items are still drawn at random within their strata, never chosen by a candidate's answers.
Balancing is not design-unbiased for every subject as one draw is (items that balance well are drawn
more often); bench_irt.py measures it on held-out subjects, and the cross-fit that weighs gp-IRT's
two parts re-draws each fold's anchors balanced on that fold's subjects, so it sees the same design.

A model's anchors are `budget` per scenario (`equal`), or the same number spread over its
scenarios where they cut the error of the model's overall, item-weighted score most (`neyman`,
Neyman's optimal allocation for stratified sampling, with the spread of item difficulties within a
scenario counted beside each item's own noise: `allocate`). Candidates are merges, which lie
between the models they merge, while calibration often holds the base and the endpoints at 0 or 1
on a skill; so the variances are the IRT model's at the midpoints of pairs of calibration
subjects, not at the subjects themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Collection, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from evo_merge.errors import UserError
from evo_merge.files import atomic_write, parse_json
from evo_merge.irt.anchor_files import anchors_path, refuse_link
from evo_merge.irt.kinds import (
    ANCHOR_ALLOCATIONS,
    ANCHOR_METHODS,
    AUTOMATIC_ANCHOR_METHODS,
    BALANCED_ANCHOR_METHODS,
    DEFAULT_ANCHOR_BALANCE,
    DEFAULT_ANCHOR_METHOD,
    MIN_CLUSTER_SUBJECTS,
    SELECTABLE_ANCHOR_METHODS,
)
from evo_merge.irt.model import IRTModel, positive_count

log = logging.getLogger(__name__)
# drawn at random (within strata): their mean's error is the design's, for every subject
SAMPLED = ("random", "stratified", "stratified-irt")
FALLBACK_METHOD = "stratified"
# stratified-irt's picks per stratum on average: with one each, a stratum of a third of the items got one item
STRATUM_PICKS = 2
KMEANS_RESTARTS = 10
CLUSTER_MEMO = 256  # k-means results remembered (`_clusters`)
_CLUSTERS: dict[tuple, list[np.ndarray]] = {}
BALANCE_CELLS = 4_000_000  # draws x (items, or subjects x anchors) at once in `balanced_draw` (32 MB)
MAX_PAIRS = 256  # calibration-subject midpoints averaged for a scenario's item variance (a random subset beyond)


def choose_anchor_method(requested: str, n_subjects: int,
                         subjects: str = "calibration subjects") -> tuple[str, str | None]:
    """The method to use for `requested` with this many calibration subjects (an automatic one
    resolved, the others as named), and why it is not what the automatic one names with enough
    subjects (None when it is, or nothing was resolved). `subjects`: what the reason calls them (a
    campaign reusing an IRT model did not measure them: `calibration subjects of estimator.irt_model`)."""
    if requested not in ANCHOR_METHODS:
        raise UserError(f"unknown anchor method {requested!r} (choose from {', '.join(ANCHOR_METHODS)})")
    if requested not in AUTOMATIC_ANCHOR_METHODS:
        return requested, None
    if n_subjects >= MIN_CLUSTER_SUBJECTS:
        return AUTOMATIC_ANCHOR_METHODS[requested], None
    return FALLBACK_METHOD, (f"{FALLBACK_METHOD} anchors instead of {requested}: {n_subjects} {subjects} are fewer "
                             f"than {MIN_CLUSTER_SUBJECTS}, too few for clusters to beat random sampling")


@dataclass(frozen=True)
class Anchors:
    method: str
    budget: int
    seed: int
    items: dict[str, list[str]]  # scenario -> anchor item ids
    weights: dict[str, list[float]]  # scenario -> weights (sum to 1)
    allocation: str = "equal"  # how many per scenario (`allocate`); files written before it: equal
    balance: int = 1  # draws the kept one was the best-balanced of (`balanced_draw`); files written before it: 1

    @property
    def sampled(self) -> bool:
        """Anchors drawn at random (within strata): their mean is unbiased for every subject (about
        so, balanced on the calibration subjects), so where it and the IRT prediction disagree beyond
        its sampling error, the IRT part is off."""
        return self.method in SAMPLED

    def counts(self) -> dict[str, int]:
        return {scenario: len(items) for scenario, items in self.items.items()}

    def all_items(self) -> list[str]:
        return [i for items in self.items.values() for i in items]

    def save(self, model_dir: str | Path, overwrite: bool = False) -> Path:
        """Store the set beside its model as `anchors/<method>-<budget>.json`. A stored set of that
        name holding other items (another seed, allocation or balance) is replaced only with `overwrite`:
        subjects scored on it could no longer be estimated (a damaged one is replaced)."""
        path = anchors_path(model_dir, self.method, self.budget)
        refuse_link(path.parent)
        stored = None if overwrite or not path.is_file() or path.is_symlink() else _readable(path)
        if stored not in (None, self):
            differ = [f"{key} {getattr(stored, key)} there, {getattr(self, key)} here"
                      for key in ("seed", "allocation", "balance") if getattr(stored, key) != getattr(self, key)]
            raise UserError(f"{path} holds other {self.method} anchors of budget {self.budget} "
                            f"({'; '.join(differ) or 'chosen on another fit of the model'}), which subjects may have "
                            "been scored on; the stored set's settings choose it again, and overwrite (`--overwrite`) "
                            "replaces it")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(asdict(self), indent=1))  # a link there is replaced, never written through
        return path


def load_anchors(model_dir: str | Path, budget: int | None = None, method: str | None = None,
                 item_ids: Collection[str] | None = None) -> Anchors:
    """The stored anchor set matching budget/method; either may be omitted when only one set matches.
    With the model's `item_ids`, a set holding items of another model (a file copied in from another
    folder) is refused naming the file: the estimate said only "item … is not in the IRT model"."""
    found = sorted((Path(model_dir) / "anchors").glob("*.json"))
    names = [p.stem for p in found]
    match = [p for p in found if (method is None or p.stem.rsplit("-", 1)[0] == method)
             and (budget is None or p.stem.rsplit("-", 1)[-1] == str(budget))]
    if len(match) != 1:
        what = "no" if not match else "several"
        raise UserError(f"{model_dir}: {what} stored anchor sets match (stored: {', '.join(names) or 'none'}); "
                        "run `evo-merge irt anchors` or pass --budget/--method")
    anchors = read_anchors(match[0])
    known = set(item_ids or ())
    if item_ids is not None and (alien := next((i for i in anchors.all_items() if i not in known), None)):
        raise UserError(f"{match[0]}: item {alien} is not in the IRT model of {model_dir}: these anchors were chosen "
                        "on another model (`evo-merge irt anchors` chooses this model's)")
    return anchors


def _readable(path: Path) -> Anchors | None:
    try:
        return read_anchors(path)
    except UserError:
        return None


def read_anchors(path: str | Path) -> Anchors:
    """One stored anchor set (`MODEL/anchors/<method>-<budget>.json`), checked as it is read."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the anchors file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not an anchors file (not UTF-8 text)") from None
    try:
        data = parse_json(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt anchors file ({exc})") from None
    keys = [f.name for f in fields(Anchors)]
    required = {f.name for f in fields(Anchors) if f.default is MISSING}
    if not (isinstance(data, dict) and required <= data.keys() <= set(keys)):
        raise UserError(f"{path}: not an anchors file (one written by `evo-merge irt anchors` holds "
                        f"{', '.join(keys)})")
    anchors = Anchors(**data)
    if anchors.allocation not in ANCHOR_ALLOCATIONS:
        raise UserError(f"{path}: corrupt anchors file (unknown allocation {anchors.allocation!r})")
    if positive_count(anchors.balance) is None:
        raise UserError(f"{path}: corrupt anchors file (balance is not a positive integer: {anchors.balance!r})")
    if not isinstance(anchors.items, dict) or not all(isinstance(v, list) for v in anchors.items.values()):
        raise UserError(f"{path}: corrupt anchors file (items is not a scenario -> list of item ids)")
    listed = [str(item) for items in anchors.items.values() for item in items]
    if len(set(listed)) != len(listed):  # weighed twice, and counted twice by status
        twice = next(item for item in listed if listed.count(item) > 1)
        raise UserError(f"{path}: corrupt anchors file (item {twice!r} is listed twice)")
    if problem := _weights_problem(anchors):
        raise UserError(f"{path}: corrupt anchors file ({problem})")
    return anchors


def _weights_problem(anchors: Anchors) -> str | None:
    """What is wrong with a stored set's weights, if anything: the estimators zip each scenario's
    weights with its items, so a list of another length put weights on other items, and their
    weighted means take non-negative weights with a positive sum."""
    if not isinstance(anchors.weights, dict) or anchors.weights.keys() != anchors.items.keys():
        return "weights is not a scenario -> list of weights for the scenarios of items"
    for scenario, items in anchors.items.items():
        weights = anchors.weights[scenario]
        if not isinstance(weights, list) or len(weights) != len(items):
            return f"scenario {scenario!r} has {len(items)} items and not as many weights"
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                   for w in weights) or (items and sum(weights) <= 0):
            return f"scenario {scenario!r}: weights must be non-negative numbers with a positive sum"
    return None


def _clusters(features: np.ndarray, n_clusters: int, seed: int) -> list[np.ndarray]:
    """K-means (best of several restarts) with at most as many clusters as distinct items (few
    calibration subjects make many items look alike): each cluster's members, nearest its centroid first.

    Remembered for the last `CLUSTER_MEMO` calls: every estimator kind on the same anchors re-chooses
    its cross-fit folds' anchors (`irt validate` asks for the same k-means three times a draw), and
    on a leaderboard's scenarios of thousands of items each k-means takes a tenth of a second or more.
    """
    key = (hashlib.blake2b(np.ascontiguousarray(features).tobytes(), digest_size=16).digest(),
           features.shape, features.dtype.str, n_clusters, seed)
    if (known := _CLUSTERS.get(key)) is not None:
        return known
    from sklearn.cluster import KMeans  # a second's import, for k-means anchors alone (30+ calibration subjects)
    from sklearn.exceptions import ConvergenceWarning

    n_clusters = min(n_clusters, len(np.unique(features, axis=0)))
    with warnings.catch_warnings():  # near-duplicate rows can still leave a cluster empty: skipped below
        warnings.filterwarnings("ignore", "Number of distinct clusters", ConvergenceWarning)
        km = KMeans(n_clusters=n_clusters, n_init=KMEANS_RESTARTS, random_state=seed).fit(features)
    dist = np.linalg.norm(features - km.cluster_centers_[km.labels_], axis=1)
    members = [np.flatnonzero(km.labels_ == c) for c in range(n_clusters)]
    clusters = [m[np.argsort(dist[m], kind="stable")] for m in members if m.size]
    for m in clusters:
        m.setflags(write=False)  # shared by every caller that asks again
    if len(_CLUSTERS) >= CLUSTER_MEMO:
        del _CLUSTERS[next(iter(_CLUSTERS))]  # the oldest
    _CLUSTERS[key] = clusters
    return clusters


def _spread(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Picks per cluster: one each, then each further pick to the cluster with most members per pick."""
    counts = np.ones(sizes.size, dtype=int)
    for _ in range(budget - sizes.size):
        room = sizes - counts
        if not room.any():
            break
        counts[np.argmax(np.where(room > 0, sizes / counts, -1))] += 1
    return counts


def _from_clusters(members: list[np.ndarray], budget: int, rng: np.random.Generator,
                   nearest_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """`budget` picks spread over the clusters (`_spread`), each weighted by its cluster's share over
    the cluster's picks: the member nearest the centroid and random further ones (`nearest_first`),
    or random members only (a stratified sample, unbiased for every subject)."""
    counts = _spread(np.array([m.size for m in members]), budget)
    picks, weights = [], []
    for m, k in zip(members, counts):
        chosen = [m[0], *rng.choice(m[1:], k - 1, replace=False)] if nearest_first else rng.choice(m, k, replace=False)
        picks += list(chosen)
        weights += [m.size / k] * k
    weights = np.asarray(weights, dtype=float)
    return np.asarray(picks), weights / weights.sum()


def _strata(model: IRTModel, items: np.ndarray, budget: int, method: str, seed: int) -> list[np.ndarray]:
    """A stratified design's strata over `items` (their members, in draw order): `stratified`'s
    `budget` equal-size strata of item mean score, one pick each; `stratified-irt`'s clusters of the
    items' IRT parameters, `_spread` picks each."""
    if method == "stratified":
        mean = np.nanmean(model.responses[:, items], axis=0)
        return np.array_split(items[np.argsort(mean, kind="stable")], budget)
    return [items[m] for m in _clusters(_parameters(model, items), max(1, budget // STRATUM_PICKS), seed)]


def _parameters(model: IRTModel, items: np.ndarray) -> np.ndarray:
    """The items' IRT parameters (α, β) as rows: what stratified-irt and kmeans-irt cluster. An item
    no subject of the fit answered has none (NaN: a cross-fit fold of a sparse table): it sits at the
    mean of the others, where k-means stopped on it with a traceback (audit 139)."""
    rows = np.column_stack([model.alpha[items], model.beta[items]])
    if np.isnan(rows).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only: its mean is NaN, then 0
            centre = np.nan_to_num(np.nanmean(rows, axis=0))
        rows = np.where(np.isnan(rows), centre, rows)
    return rows


def _select(model: IRTModel, items: np.ndarray, budget: int, method: str, rng: np.random.Generator, seed: int):
    n = items.size
    if budget >= n:
        return items, np.full(n, 1.0 / n)
    if method == "random":
        return np.sort(rng.choice(items, budget, replace=False)), np.full(budget, 1.0 / budget)
    if method in BALANCED_ANCHOR_METHODS:
        return _stratified_draw(_strata(model, items, budget, method, seed), budget, method, rng)
    if method == "kmeans-correctness":  # clusters of the calibration subjects' answers
        cols = model.responses[:, items]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an item no subject answered: the mean of all
            answered = np.nanmean(cols, axis=0)
            answered = np.where(np.isnan(answered), np.nan_to_num(np.nanmean(cols), nan=0.5), answered)
        features = np.where(np.isnan(cols), answered, cols).T
    else:
        features = _parameters(model, items)
    # extra picks from a generator of their own, as always: a run folder re-chooses the same items
    local, weights = _from_clusters(_clusters(features, budget, seed), budget, np.random.default_rng(seed),
                                    nearest_first=True)
    return items[local], weights


def _stratified_draw(strata: list[np.ndarray], budget: int, method: str,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw of a stratified design from `rng`, each pick weighted by its stratum's share over its
    picks: `stratified`'s one item per stratum (drawn as it always was: a run folder re-chooses it),
    `stratified-irt`'s `_spread` random members per cluster."""
    if method == "stratified":
        n = sum(s.size for s in strata)
        return np.array([rng.choice(s) for s in strata]), np.array([s.size / n for s in strata])
    return _from_clusters(strata, budget, rng, nearest_first=False)


def _draws(strata: list[np.ndarray], counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Stratified samples, one per row of `keys` (a random key per stratum member, the strata's
    members side by side): each stratum's picks its members of the smallest keys, a uniform draw
    without replacement, laid out as `_from_clusters` lays out one."""
    bounds = np.cumsum([0, *(m.size for m in strata)])
    picks = [m[np.argpartition(keys[:, lo:hi], k - 1, axis=1)[:, :k]]
             for m, k, lo, hi in zip(strata, counts, bounds[:-1], bounds[1:])]
    return np.concatenate(picks, axis=1)


def balanced_draw(model: IRTModel, items: np.ndarray, budget: int, method: str, balance: int,
                  rng: np.random.Generator, spare: np.random.Generator | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Of `balance` draws of `method`'s stratified design over one scenario's `items` (sorted), the
    first whose weighted anchor means miss the calibration subjects' means over all the scenario's
    items by the least sum of squares (rerandomisation).

    The first draw is the one `_select` makes from the set's generator `rng` (all there is with
    `balance` 1: earlier versions' draw); the others come from this scenario's own generator
    `spare`, a row of keys each, so the set's generator moves on as it did, and a larger `balance`
    draws the same draws and more: it never keeps a worse-balanced one. They are drawn and weighed
    a chunk at a time (`BALANCE_CELLS`), so a leaderboard's thousands of subjects, or a large
    `balance`, take little memory.

    With few calibration subjects the strata of one draw still leave the anchors' mean a random
    sample's error on every subject; their scores on every item say which draws err least on them.
    An item a subject was not scored on counts at its item's mean (0 where nobody was)."""
    if balance == 1 or budget >= items.size:
        return _select(model, items, budget, method, rng, seed)
    strata = _strata(model, items, budget, method, seed)
    first, weights = _stratified_draw(strata, budget, method, rng)
    counts = _spread(np.array([m.size for m in strata]), budget)
    scores = model.responses[:, items]
    seen = ~np.isnan(scores)
    item_mean = np.where(seen, scores, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    filled = np.where(seen, scores, item_mean)
    truth = filled.mean(axis=1, keepdims=True)

    def misses(draws: np.ndarray) -> np.ndarray:  # per row; elementwise sums, whatever BLAS threads run
        estimates = (filled[:, np.searchsorted(items, draws)] * weights).sum(axis=2)  # (subjects, draws)
        return ((estimates - truth) ** 2).sum(axis=0)

    best, least = first, misses(first[None])[0]
    rows = max(1, BALANCE_CELLS // max(items.size, len(filled) * budget))
    for start in range(1, balance, rows):
        chunk = _draws(strata, counts, spare.random((min(rows, balance - start), items.size)))
        found = misses(chunk)
        if found.min() < least:  # the first of equals kept
            best, least = chunk[int(np.argmin(found))], found.min()
    return best, weights


def midpoint_probabilities(model: IRTModel, seed: int = 0) -> np.ndarray:
    """P(correct) of every item (columns) at the midpoints (θ_j + θ_l)/2 of pairs of calibration
    subjects (rows; at the one subject's θ when there is only one): the merges a search scores lie
    between the calibration subjects."""
    n = model.theta.shape[0]
    j, k = np.triu_indices(n, 1 if n > 1 else 0)
    if j.size > MAX_PAIRS:
        keep = np.random.default_rng(seed).choice(j.size, MAX_PAIRS, replace=False)
        j, k = j[keep], k[keep]
    return model.predict((model.theta[j] + model.theta[k]) / 2.0)


def allocate(model: IRTModel, budget: int, allocation: str = "equal", seed: int = 0) -> dict[str, int]:
    """Anchors per scenario: `budget` each, all items of a smaller scenario (`equal`); or as many in
    all, at least one per scenario, added one at a time where the item-weighted mean's sampling
    variance Σ_k W_k² V_k(n_k) falls most (`neyman`).

    V_k(n) = (w_k + b_k / n) / n at the midpoints: w_k the mean of an item's p(1 − p) (the score's
    own noise), b_k the variance of p over the scenario's items. One anchor answers for all of
    them, so b_k counts whole; n strata of items ordered by difficulty leave each about 1/n of it.
    With w_k alone, a scenario of very easy and very hard items looked certain and got one anchor,
    whose score said 0 or 1 for a merge at 0.5 there (an audit: 1 anchor against 19 for a scenario
    of equal variance, its anchor mean off by 0.50)."""
    if allocation not in ANCHOR_ALLOCATIONS:
        raise UserError(f"unknown anchor allocation {allocation!r} (choose from {', '.join(ANCHOR_ALLOCATIONS)})")
    groups = model.scenario_items()
    sizes = np.array([idx.size for idx in groups.values()])
    counts = np.minimum(budget, sizes)
    if allocation == "neyman":
        prob = midpoint_probabilities(model, seed)
        share = (sizes / sizes.sum()) ** 2
        within = share * np.array([(prob[:, idx] * (1.0 - prob[:, idx])).mean() for idx in groups.values()])
        between = share * np.array([prob[:, idx].var(axis=1).mean() for idx in groups.values()])
        within = np.maximum(within, 1e-6 * share)  # a scenario known exactly still takes its turn

        def gain(n: np.ndarray) -> np.ndarray:  # Σ W² V(n) − Σ W² V(n + 1), per scenario
            return within * (1.0 / n - 1.0 / (n + 1)) + between * (1.0 / n**2 - 1.0 / (n + 1) ** 2)

        total, counts = counts.sum(), np.ones_like(sizes)
        for _ in range(total - counts.sum()):
            counts[np.argmax(np.where(counts < sizes, gain(counts.astype(float)), -1.0))] += 1
    return {scenario: int(n) for scenario, n in zip(groups, counts)}


def select_anchors(model: IRTModel, budget: int, method: str = DEFAULT_ANCHOR_METHOD, seed: int = 0,
                   allocation: str = "equal", counts: Mapping[str, int] | None = None,
                   balance: int = DEFAULT_ANCHOR_BALANCE) -> Anchors:
    """`budget` anchors per scenario on average, spread over the scenarios by `allocation`, or
    `counts` per scenario where given (a cross-fit re-chooses anchors of the same design); a
    stratified method's the best-balanced of `balance` draws (`balanced_draw`; the others ignore it).

    The automatic methods are resolved by `choose_anchor_method` (an information line when they fall back); the
    others are used as named, so `irt validate` can show how clustering does with few subjects.
    """
    if method in AUTOMATIC_ANCHOR_METHODS:
        method, reason = choose_anchor_method(method, len(model.subject_ids))
        if reason:  # the designed choice, not a fault: an information line
            log.info(reason)
    if method not in SELECTABLE_ANCHOR_METHODS:
        raise UserError(f"unknown anchor method {method!r} (choose from {', '.join(ANCHOR_METHODS)})")
    if (count := positive_count(budget)) is None:
        raise UserError(f"anchor budget must be a positive integer, not {budget!r}")
    budget = count  # a plain int: the stored set's JSON and its file name hold it
    if (draws := positive_count(balance)) is None:
        raise UserError(f"anchor balance must be a positive integer, not {balance!r}")
    draws = draws if method in BALANCED_ANCHOR_METHODS else 1  # as stored: what the choice was
    counts = dict(counts) if counts is not None else allocate(model, budget, allocation, seed)
    rng = np.random.default_rng(seed)
    groups = model.scenario_items()
    # each scenario's further draws from a generator of its own: how many a scenario draws moves no other's
    spares = ([np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(len(groups))]
              if draws > 1 else [None] * len(groups))
    items, weights = {}, {}
    for (scenario, idx), spare in zip(groups.items(), spares):
        picked, w = balanced_draw(model, idx, counts[scenario], method, draws, rng, spare, seed)
        items[scenario] = [model.item_ids[j] for j in picked]
        weights[scenario] = [float(x) for x in w]
    return Anchors(method, budget, seed, items, weights, allocation, draws)
