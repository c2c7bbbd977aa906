"""Estimates pooled over similar recipes (search.pooling) and the final phase choosing on them."""

from dataclasses import replace

import numpy as np
import pytest

from evo_merge.config import FinalSpec
from evo_merge.search import pooling
from evo_merge.search.candidate import Candidate
from evo_merge.search.front import Distinct, to_measure
from evo_merge.search.objectives import Objectives
from evo_merge.search.pooling import pooled
from evo_merge.search.space import SearchSpace
from evo_merge.search.store import POOLED_META, CampaignStore, Evaluation

SPACE = SearchSpace({"task_arithmetic": {}, "ties": {"density": (0.1, 0.9)}}, 2, (0.0, 1.5))


def test_coordinates_scale_each_part_by_its_range():
    ties = Candidate("ties", (0.75, 1.5), (("density", 0.5),))
    assert SPACE.coordinates(ties).tolist() == pytest.approx([0, 1, 0.5, 1.0, 0.5])
    # task arithmetic has no density: 0 there; a fixed parameter outside the genome is left out
    arithmetic = Candidate("task_arithmetic", (0.0, 0.3), (("lambda", 1.0),))
    assert SPACE.coordinates(arithmetic).tolist() == pytest.approx([1, 0, 0.0, 0.2, 0.0])


def _truth(w):
    return 0.3 + 0.25 * w[0] - 0.12 * w[1] ** 2  # a smooth score over the two coefficients


def _estimated(key, estimate, se=0.06, identity=1):
    return Evaluation(identity, key, "search", 1, "task_arithmetic", "ok", {"t": estimate}, None, 4, None, None,
                      estimate_se={"t": se})


def _noisy(n=60, se=0.06, seed=0):
    """`n` task-arithmetic candidates, each estimated off its truth by N(0, se), with SE `se`."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, w in enumerate(rng.uniform(0, 1.5, size=(n, 2)).round(4)):
        true = _truth(w)
        rows.append((_estimated(Candidate("task_arithmetic", tuple(w)).key, float(true + rng.normal(0, se)), se,
                                i + 1), true))
    return rows


def _errors(rows, evaluations):
    truth = np.array([t for _, t in rows])
    return np.abs(np.array([e.estimates["t"] for e in evaluations]) - truth).mean()


def test_pooled_estimates_follow_the_scores_scale():
    """Scores and their SEs shrunk by k about c pool to the pooled values shrunk alike: the GP fits
    standardised scores, so their noise must be standardised too (left raw, estimates looked 25-400x
    more precise than they are, which a fitted white noise hides where the SEs are alike: audit 147)."""
    evaluations = [replace(e, estimate_se={"t": (0.02, 0.15)[i % 2]}) for i, (e, _) in enumerate(_noisy())]
    c, k = 0.5, 0.5  # SEs unlike each other: a white noise fitted to one scale cannot stand in for them
    shrunk = [replace(e, estimates={"t": c + k * (e.estimates["t"] - c)}, estimate_se={"t": k * e.estimate_se["t"]})
              for e in evaluations]
    wide = np.array([e.estimates["t"] for e in pooled(evaluations, SPACE, ["t"])])
    narrow = np.array([e.estimates["t"] for e in pooled(shrunk, SPACE, ["t"])])
    assert narrow == pytest.approx(c + k * (wide - c), abs=1e-4)


def test_pooling_recovers_a_smooth_score_from_noisy_estimates():
    """Each estimate is 0.05 off on average; its neighbours' estimates say where it lies, so the
    pooled estimates are several times closer to the truth."""
    rows = _noisy()
    evaluations = [e for e, _ in rows]
    out = pooled(evaluations, SPACE, ["t"])
    assert _errors(rows, out) < 0.4 * _errors(rows, evaluations)
    assert [e.key for e in out] == [e.key for e in evaluations] and out[0].estimate_se == evaluations[0].estimate_se
    assert [e.estimates for e in pooled(evaluations, SPACE, ["t"])] == [e.estimates for e in out]  # reproducible


def test_a_measured_candidate_keeps_its_score_and_anchors_its_neighbours():
    rows = _noisy(n=30)
    first, true = rows[0]
    measured = Evaluation(first.id, first.key, "baseline", None, first.method, "ok", {"t": 0.0}, {"t": true},
                          240, None, None)
    w0, w1 = Candidate.from_key(first.key).weights
    twin = _estimated(Candidate("task_arithmetic", (w0 + 0.001, w1)).key, true + 0.2, identity=99)  # 0.2 off
    out = pooled([measured, *(e for e, _ in rows[1:]), twin], SPACE, ["t"])
    assert out[0] is measured
    assert abs(out[-1].estimates["t"] - true) < 0.05  # pulled onto its measured neighbour


def test_estimates_without_standard_errors_or_too_few_candidates_stay_as_they_are():
    evaluations = [e for e, _ in _noisy(n=30)]
    unscored = [Evaluation(e.id, e.key, e.phase, e.generation, e.method, e.status, e.estimates, None, 4, None, None)
                for e in evaluations]
    assert pooled(unscored, SPACE, ["t"]) == unscored  # full evaluation, folders from before SEs
    # a degenerate SE: one NaN made every pooled estimate NaN, and the finalists were sorted on NaN
    undefined = [replace(evaluations[0], estimate_se={"t": float("nan")}), *evaluations[1:]]
    assert pooled(undefined, SPACE, ["t"]) == undefined
    assert pooled(evaluations[:5], SPACE, ["t"]) == evaluations[:5]


def test_many_candidates_fit_the_kernel_on_a_subset_and_pool_every_one(monkeypatch):
    """Past FIT_AT_MOST the kernel is fitted on an evenly spaced subset (the fit is cubic); every
    candidate is still conditioned on, so all are pooled."""
    monkeypatch.setattr(pooling, "FIT_AT_MOST", 20)
    rows = _noisy(n=60)
    assert _errors(rows, pooled([e for e, _ in rows], SPACE, ["t"])) < 0.5 * _errors(rows, [e for e, _ in rows])


def _store(folder):
    store = CampaignStore(folder)
    for evaluation, _ in _noisy(n=30, seed=1):
        value = evaluation.estimates["t"]
        store.add(evaluation.key, phase="search", generation=1, method="task_arithmetic", status="ok",
                  estimates={"t": value, "u": 1 - value}, estimate_se={"t": 0.06, "u": 0.06})
    return store


def test_the_final_phase_pools_once_and_keeps_its_choice_when_measurements_arrive(tmp_path):
    """Pooling leans on measured candidates: the finalists are chosen on the estimates pooled when
    the final phase first ran, so a candidate measured later (`export --pick`, a resumed final
    phase) changes no choice. Recomputed, it would."""
    store = _store(tmp_path / "run")
    objectives = Objectives.of(["t", "u"], ["maximize", "maximize"])
    final, distinct = FinalSpec(top_k=2, evaluate_top=4, baselines=False), Distinct(SPACE, 0.02)
    first = [e.key for e in to_measure(store, objectives, final, distinct)]
    stored = store.get_meta(POOLED_META)
    assert set(stored) == {e.key for e in store.evaluations()}
    assert all(e.estimates == store.get(e.key).estimates for e in to_measure(store, objectives, final, distinct))
    store.add_measurement(first[0], {"t": 0.0, "u": 0.0}, {})
    assert [e.key for e in to_measure(store, objectives, final, distinct)] == first
    assert store.get_meta(POOLED_META) == stored
    store.db.execute("DELETE FROM meta WHERE key = ?", (POOLED_META.key,))
    store.db.commit()
    assert [e.key for e in to_measure(store, objectives, final, distinct)] != first  # what storing them prevents
    plain = _store(tmp_path / "plain")
    own = [e.key for e in to_measure(plain, objectives, final.model_copy(update={"pool_estimates": False}), distinct)]
    assert plain.get_meta(POOLED_META) is None and own != first  # each candidate's own estimates choose others
