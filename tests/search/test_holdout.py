"""The holdout split: stratified by scenario, fixed by the seed, sized by the documented rule."""

import re
from collections import Counter

import numpy as np
import pytest

from evo_merge.config import FinalSpec
from evo_merge.errors import UserError
from evo_merge.search.holdout import holdout_size, split_items

ITEMS = [f"q{i:03d}" for i in range(200)]
# three scenarios of unequal sizes: 100, 60, 40 items
SCENARIOS = {item: "a" if i < 100 else "b" if i < 160 else "c" for i, item in enumerate(ITEMS)}


def test_the_split_keeps_each_scenarios_share():
    held = split_items(ITEMS, SCENARIOS, 50, seed=0)
    assert len(held) == len(set(held)) == 50
    assert Counter(SCENARIOS[i] for i in held) == {"a": 25, "b": 15, "c": 10}  # 25% of each
    assert held == [i for i in ITEMS if i in set(held)]  # in task order


def test_the_split_is_fixed_by_the_seed():
    assert split_items(ITEMS, SCENARIOS, 30, seed=7) == split_items(ITEMS, SCENARIOS, 30, seed=7)
    assert split_items(ITEMS, SCENARIOS, 30, seed=7) != split_items(ITEMS, SCENARIOS, 30, seed=8)


def test_remainders_go_to_the_largest_fractions_and_every_scenario_keeps_a_search_item():
    # 7 of 200: exact shares 3.5 / 2.1 / 1.4 -> 3 + 2 + 1 = 6, the 7th to the largest remainder (a: 0.5)
    assert Counter(SCENARIOS[i] for i in split_items(ITEMS, SCENARIOS, 7, seed=0)) == {"a": 4, "b": 2, "c": 1}
    tiny = {"x0": "x", "y0": "y", "y1": "y"}
    held = split_items(list(tiny), tiny, 2, seed=0)  # x's share goes unused: its one item stays searchable
    assert len(held) == 1 and held[0] in ("y0", "y1")


def test_no_scenarios_is_one_group():
    held = split_items(ITEMS, None, 20, seed=1)
    assert len(held) == 20 and set(held) <= set(ITEMS)


@pytest.mark.parametrize(("n_items", "holdout", "expected"), [
    (499, "auto", 0), (500, "auto", 100), (1200, "auto", 240),  # auto: 20% from 500 items on
    (120, 0.25, 30), (120, 10, 10), (120, None, 0)])
def test_holdout_size(n_items, holdout, expected):
    assert holdout_size("t", n_items, holdout) == expected


def test_a_holdout_that_leaves_no_search_items_is_a_user_error():
    with pytest.raises(UserError, match="final.holdout: 120 leaves no search items in task 't'"):
        holdout_size("t", 120, 120)


@pytest.mark.parametrize("value", [1.5, 1.0, -1, True, "half"])
def test_bad_holdout_values_are_refused(value):
    with pytest.raises(ValueError):
        FinalSpec(holdout=value)


def test_a_model_fitted_elsewhere_chooses_anchors_among_the_search_items_only():
    from evo_merge.irt import IRTModel, select_anchors

    n = 12
    alpha, beta = np.linspace(0.5, 2.0, n).reshape(n, 1), np.linspace(-1, 1, n)
    responses = (np.arange(4 * n).reshape(4, n) % 3 == 0).astype(float)
    model = IRTModel(item_ids=[f"q{j}" for j in range(n)], item_scenarios=["a"] * 6 + ["b"] * 6,
                     subject_ids=[f"s{j}" for j in range(4)], alpha=alpha, beta=beta, theta=np.zeros((4, 1)),
                     responses=responses, thresholds={"a": 0.5, "b": 0.5}, cv_alpha=np.stack([alpha, 2 * alpha]),
                     cv_beta=np.stack([beta, -beta]), cv_held=np.ones((2, 4), dtype=bool))
    held = frozenset({"q0", "q5", "q7"})
    kept = model.without_items(held)
    assert kept.item_ids == [f"q{j}" for j in range(n) if f"q{j}" not in held]
    assert kept.item_scenarios == ["a"] * 4 + ["b"] * 5
    assert np.array_equal(kept.alpha[:, 0], np.delete(alpha[:, 0], [0, 5, 7]))
    assert np.array_equal(kept.responses, np.delete(responses, [0, 5, 7], axis=1))
    assert np.array_equal(kept.cv_alpha[1, :, 0], 2 * np.delete(alpha[:, 0], [0, 5, 7]))
    assert np.array_equal(kept.cv_beta[1], -np.delete(beta, [0, 5, 7]))
    anchors = select_anchors(kept, 3, "random", seed=0)
    assert set(anchors.all_items()) <= set(kept.item_ids)
    assert model.without_items(frozenset()) is model and model.without_items({"elsewhere"}) is model


@pytest.mark.parametrize(("text", "said"), [("-3", "a fraction must lie in (0, 1), got -3.0"),
                                            ("-0.5", "a fraction must lie in (0, 1), got -0.5"),
                                            ("all", "not the text 'all'")])
def test_a_holdout_written_as_text_is_checked_as_the_number_it_says(text, said):
    """`holdout: "-3"` became -3 after the checks: plan counted 2,406 search items of 2,400. YAML
    reads `1e3` as text: it is the number 1000."""
    from pydantic import ValidationError

    from evo_merge.config import FinalSpec

    with pytest.raises(ValidationError, match=re.escape(said)):
        FinalSpec(holdout=text)
    assert FinalSpec(holdout="1e3").holdout == 1000 and FinalSpec(holdout="0.2").holdout == 0.2
    assert FinalSpec(holdout="auto").holdout == "auto"


def test_a_holdout_written_1e3_is_a_number_of_items_as_its_text_is(tmp_path):
    """The campaign loader reads `1e3` as a float (as mergekit's recipes need it): `holdout: 1e3` was
    refused as a fraction, where `holdout: '1e3'` held out 1,000 items (audit 129)."""
    from evo_merge.config import FinalSpec
    from evo_merge.schema import load_yaml

    (tmp_path / "f.yaml").write_text("holdout: 1e3\n")
    assert FinalSpec(**load_yaml(tmp_path / "f.yaml")).holdout == 1000
    assert FinalSpec(holdout=200.0).holdout == 200 and FinalSpec(holdout=0.25).holdout == 0.25
    with pytest.raises(ValueError, match=r"a fraction must lie in \(0, 1\), got 2.5"):
        FinalSpec(holdout=2.5)


def test_a_split_that_holds_out_fewer_items_than_asked_says_so_once(tmp_path, caplog):
    """Each scenario keeps a search item: 3 items asked of two 2-item scenarios hold out 2. It
    was silent, though the docs read an integer as N items per task."""
    from campaigns import agreement_tasks, run_campaign, write_campaign  # tests/search is on sys.path
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.search.holdout import HOLDOUT_META
    from evo_merge.search.store import CampaignStore
    from evo_merge.zoo.tiny import save_tiny_family

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts, tasks=agreement_tasks(fts, n_items=4),
                            algorithm={"population": 2, "generations": 1, "seed": 2},
                            final={"evaluate_top": 1, "export": ["balanced"], "holdout": 3})
    planned = CliRunner().invoke(cli, ["plan", str(config)])  # the split the run makes, and the item counts on it
    assert planned.exit_code == 0 and ("agree0 (4 items, 2 held out of the 3 asked: each scenario keeps an item for "
                                       "the search)") in planned.output, planned.output
    assert "calibration 3 models x 4 search items = 12" in planned.output, planned.output
    with caplog.at_level("WARNING", logger="evo_merge"):
        run = run_campaign(config, tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "final.holdout asks for" in r.getMessage()]
    assert said == [f"task 'agree{i}': 2 items held out, not the 3 final.holdout asks for (each of its scenarios "
                    "keeps one item for the search)" for i in (0, 1)]
    store = CampaignStore(run)
    assert {task: len(items) for task, items in store.get_meta(HOLDOUT_META).items()} == {"agree0": 2, "agree1": 2}
    store.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge"):
        assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0
    assert not [r for r in caplog.records if "final.holdout asks for" in r.getMessage()]


def test_a_full_evaluation_search_scores_every_item_but_the_held_out_ones(tmp_path):
    """What the search's saving is measured against: counted with the held-out items, a run holding
    out a fifth of its items claimed a quarter more saving than it had."""
    from evo_merge.search.holdout import HOLDOUT_META, search_item_count
    from evo_merge.search.metrics import search_saving
    from evo_merge.search.store import CampaignStore

    store = CampaignStore(tmp_path)
    store.set_meta(HOLDOUT_META, {"a": ["a-1", "a-7"], "b": []})
    facts = {"tasks": [{"name": "a", "items": 10}, {"name": "b", "items": 7}]}
    assert search_item_count(facts, store) == 8 + 7
    assert search_saving(store, facts, 4) == (0, 4 * 15, None)
    store.close()
