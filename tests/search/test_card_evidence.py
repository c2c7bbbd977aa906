"""What a pick's card shows of a store's scores and standard errors, from store rows written by
hand (`search.export.evidence`, `merge.card.scores_section`)."""

import pytest

from evo_merge.merge.card import score_errors, scores_section
from evo_merge.search.candidate import Candidate
from evo_merge.search.export import evidence
from evo_merge.search.store import FACTS_META, CampaignStore


@pytest.fixture
def store(tmp_path):
    def make(estimator):
        store = CampaignStore(tmp_path / estimator)
        store.set_meta(FACTS_META, {"name": "c", "generations": 1, "algorithm": "nsga2", "weights": None,
                                    "estimator": estimator,
                                    "tasks": [{"name": "a", "direction": "maximize", "items": 2}]})
        return store
    return make


KEY = Candidate("ties", (0.5, 0.5), (("density", 0.5),)).key


def test_an_unmeasured_pick_shows_its_estimate_with_its_standard_error(store):
    """`final.evaluate_top: 0` exports picks the final phase never measured: their estimates still
    carry the SEs the store holds (audit 97: untested)."""
    runs = store("gpirt")
    pick = runs.add(KEY, phase="search", generation=1, method="ties", status="ok", estimates={"a": 0.4},
                    estimate_se={"a": 0.05})
    found = evidence(runs, pick)
    assert found.estimate_se == {"a": 0.05} and found.item_scores is None
    rows = scores_section({"estimated": {"a": 0.4}}, score_errors(None, found.estimate_se))
    assert "| a | 0.4000 ± 0.0500 |" in rows


def test_the_se_caveat_goes_only_on_a_card_that_shows_an_estimate_s_se(store):
    """An endpoint measured before the search shows no estimate, so the mp-IRT caveat on its SE
    would be about nothing on its card (audit 97: untested)."""
    runs = store("mpirt")
    endpoint = runs.add(KEY, phase="calibration", generation=1, method="ties", status="ok",
                        estimates={"a": 0.5}, estimate_se=None, measured={"a": 0.5},
                        item_scores={"a": {"a0": 1.0, "a1": 0.0}})
    assert evidence(runs, endpoint).note is None
    pick = runs.add(Candidate("ties", (0.4, 0.6), (("density", 0.5),)).key, phase="search", generation=1,
                    method="ties", status="ok", estimates={"a": 0.45}, estimate_se={"a": 0.04})
    assert evidence(runs, pick).note.startswith("the mpirt estimates")


def test_a_standard_error_of_zero_is_shown():
    """A pick right (or wrong) on every item of a task has a measured SE of exactly 0: shown as
    ± 0.0000, not left out as if unknown (audit 97)."""
    rows = scores_section({"measured": {"t": 1.0}}, score_errors({"t": {"a": 1.0, "b": 1.0, "c": 1.0}}))
    assert "| t | 1.0000 ± 0.0000 |" in rows
