"""The final phase: what is measured, picks on measured scores, held-out items kept from
everything before it, the standard merges as baselines, and `export --pick` measuring."""

import json
import re
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from test_campaign import campaign, zoo  # noqa: F401  (the tiny family and the campaign file)

from evo_merge.cli import cli
from evo_merge.config import Campaign, FinalSpec
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import Candidate, standard_merges
from evo_merge.search.front import Distinct, front_members, to_measure
from evo_merge.search.objectives import Objectives
from evo_merge.search.race import PICKS_META, RACE_META
from evo_merge.search.space import SearchSpace
from evo_merge.search.store import CampaignStore

NAMED = {"mostly-agree0": {"weights": {"agree0": 3, "agree1": 1}}}


def item_rows(run):
    """(evaluation key, phase, task, item) of every stored item score."""
    db = sqlite3.connect(run / "state.sqlite")
    return db.execute("SELECT e.key, e.phase, s.task, s.item FROM item_scores s "
                      "JOIN evaluations e ON e.id = s.evaluation_id").fetchall()


SEARCH_ITEMS, ALL_ITEMS, HELD_OUT = "measured (search items)", "measured (all items)", "measured (held-out items)"


def card(folder):
    """The model-index results (task -> value) and the card's `## Scores` table (column -> task -> value)."""
    text = (folder / "README.md").read_text()
    index = yaml.safe_load(text.split("---\n")[1])["model-index"][0]["results"]
    rows = [line.strip("|").split("|") for line in text.split("## Scores")[1].split("\n\n")[1].splitlines()]
    columns = [c.strip().replace("\\", "") for c in rows[0][1:]]
    table = {
        c: {r[0].strip().replace("\\", ""): float(r[i + 1].split("±")[0]) for r in rows[2:]}
        for i, c in enumerate(columns)
    }
    return {r["task"]["name"]: r["metrics"][0]["value"] for r in index}, table


@pytest.fixture(scope="module")
def finished(tmp_path_factory, zoo):  # noqa: F811
    tmp = tmp_path_factory.mktemp("final")
    path = campaign(
        tmp,
        zoo,
        algorithm={"population": 6, "generations": 2, "seed": 4},  # a race survivor stays unmeasured (export test),
        estimator={"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1, "anchor_balance": 1},  # on this path
        final={"holdout": 0.25, "top_k": 2, "evaluate_top": 2, "picks": NAMED},
    )
    run = tmp / "run"
    runner = CampaignRunner.open(Campaign.load(path), tmp, run)
    runner.calibrate()
    runner.search()
    runner.evaluate_baselines()
    before_final = item_rows(run)
    anchors = {name: set() for name in runner.scoring.names}  # every candidate's, whichever anchor set it drew
    for evaluation in runner.workspace.store.evaluations():
        for name, ids in runner.scoring.anchor_items(evaluation.key).items():
            anchors[name] |= set(ids)
    resumed = CliRunner().invoke(cli, ["resume", str(run)])  # the final phase (the rest is looked up)
    assert resumed.exit_code == 0, resumed.output
    return run, runner, before_final, anchors, resumed.output


def test_held_out_items_never_reach_calibration_anchors_or_search(finished):
    run, _, before_final, anchors, _ = finished
    holdout = CampaignStore(run).get_meta("holdout")
    for task in ("agree0", "agree1"):
        assert len(holdout[task]) == 30  # 25% of 120, stratified: 15 of each scenario (even/odd item numbers)
        assert sum(int(i[-4:]) % 2 for i in holdout[task]) == 15
    held = {(task, item) for task, items in holdout.items() for item in items}
    phases = {phase for _, phase, _, _ in before_final}
    assert phases == {"calibration", "search", "baseline"} or phases == {"calibration", "search"}
    assert not [row for row in before_final if (row[2], row[3]) in held]
    for task in ("agree0", "agree1"):
        fitted = json.loads((run / "irt" / task / "model.json").read_text())["item_ids"]
        assert len(fitted) == 90 and not set(fitted) & set(holdout[task])
        assert anchors[task] and not anchors[task] & set(holdout[task])


def test_each_round_of_measuring_the_picks_is_a_line_of_a_log(finished):
    """The rounds shared one stage name, and a log says a stage once: the picks' held-out items
    (minutes to hours at 7B) were measured with no line, and the quiet-stage line was silent too."""
    run, output = finished[0], finished[4]
    rounds = CampaignStore(run).get_meta(PICKS_META)["rounds"]
    assert len(rounds) >= 2  # this campaign's first picks were not all measured whole
    for index in range(1, len(rounds)):
        assert f"final: measuring the picks on every item (round {index + 1}): " in output, output
    # the first round is numbered as the others: a log said "(round 2)" where the first had nothing to measure
    assert "final: measuring the picks on every item: " not in output


def test_measured_candidates_carry_search_scores_and_only_picks_held_out_ones(finished):
    """Every measured candidate is scored on all search items, and the held-out items, which serve
    only to report what is published, are scored for the picks (and the base and endpoints)."""
    run = finished[0]
    store = CampaignStore(run)
    db = sqlite3.connect(run / "state.sqlite")
    holdout = store.get_meta("holdout")
    picked = {eid for eid, _ in store.get_meta("exported").values()}
    rounds = {store.get(key).id for keys in store.get_meta(PICKS_META)["rounds"] for key in keys}
    measured = db.execute("SELECT id, measured, phase FROM evaluations WHERE measured IS NOT NULL "
                          "AND phase != 'calibration'")
    held_counts = set()
    for eid, scores, phase in measured.fetchall():
        if eid not in picked:  # a warm-up, or a pick of a round before the last: its search items alone
            assert phase == "baseline" or eid in rounds
        for task, value in json.loads(scores).items():
            items = dict(
                db.execute(
                    "SELECT item, score FROM item_scores WHERE evaluation_id = ? AND task = ?", (eid, task)
                ).fetchall()
            )
            held = set(items) & set(holdout[task])
            held_counts.add((eid in picked, len(held)))
            assert len(items) - len(held) == 90  # every search item
            search = [v for i, v in items.items() if i not in set(holdout[task])]
            assert value == pytest.approx(np.mean(search))  # `measured` is the search items' score
    # by default only the picks are measured in the final phase (test_race: every survivor)
    assert held_counts <= {(True, 30), (False, 0)} and (True, 30) in held_counts
    calibration = [n for (n,) in db.execute(
        "SELECT COUNT(*) FROM item_scores JOIN evaluations ON evaluations.id = evaluation_id "
        "WHERE phase = 'calibration' GROUP BY evaluation_id")]
    # base and endpoints on every item; the 5 warm-ups are the standard merges, stored as baselines
    assert calibration == [240] * 3
    report = (run / "report.md").read_text()
    assert "held-out items (never seen by calibration, anchors or search): agree0 30, agree1 30" in report
    assert re.search(r"held\\?_agree0", report) and "picked as" in report  # column names escaped for markdown


def test_picks_are_the_best_on_the_race_s_sample_and_cards_show_held_out_scores(finished):
    """By default the picks are chosen on the race's last sample, the same items for every
    survivor, and those measured on every item since on that measurement (test_race: on every
    item, without a race)."""
    run = finished[0]
    store = CampaignStore(run)
    exported = store.get_meta("exported")
    assert {"best-agree0", "best-agree1", "balanced", "mostly-agree0"} <= set(exported)
    measured = [e for phase in ("search", "baseline") for e in store.evaluations(phase) if e.measured]
    by_id = {e.id: e for e in measured}
    known = {key: store.get(key).measured or scores
             for key, scores in store.get_meta(RACE_META)["compared"]["scores"].items()}
    for task in ("agree0", "agree1"):
        assert known[by_id[exported[f"best-{task}"][0]].key][task] == max(v[task] for v in known.values())
    weighted = max(3 * v["agree0"] + v["agree1"] for v in known.values())
    picked = known[by_id[exported["mostly-agree0"][0]].key]
    assert 3 * picked["agree0"] + picked["agree1"] == pytest.approx(weighted)
    pick = by_id[exported["mostly-agree0"][0]].measured

    holdout = store.get_meta("holdout")
    folder = run / exported["mostly-agree0"][1]  # relative; a candidate picked twice is exported once, first name
    index, scores = card(folder)
    assert list(scores) == ["estimated", SEARCH_ITEMS, ALL_ITEMS, HELD_OUT]
    items = store.item_scores(by_id[exported["mostly-agree0"][0]].key)
    for task in ("agree0", "agree1"):
        held_out = np.mean([items[task][i] for i in holdout[task]])
        assert index[task] == pytest.approx(held_out) and scores[HELD_OUT][task] == pytest.approx(held_out, abs=5e-5)
        assert scores[SEARCH_ITEMS][task] == pytest.approx(pick[task], abs=5e-5)
        # what lm-eval gives on the whole task, which a reader running it compares with
        assert len(items[task]) == 120 and scores[ALL_ITEMS][task] == pytest.approx(np.mean(list(items[task].values())),
                                                                                     abs=5e-5)
    assert len(pd.read_parquet(folder / "item_scores.parquet")) == 60  # the 30 held-out items of each task
    # the card and the results file say the scores are on the held-out items, not on every item
    totals = {t["name"]: t["items"] for t in store.get_meta("facts")["tasks"]}
    front = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    names = {r["task"]["name"]: r["metrics"][0]["name"] for r in front["model-index"][0]["results"]}
    samples = json.loads((folder / "results.json").read_text())["n-samples"]
    for task in ("agree0", "agree1"):
        assert f"(30 held-out items of {totals[task]})" in names[task]
        assert samples[task] == {"original": totals[task], "effective": 30}


def test_status_shows_each_pick_on_the_search_and_the_held_out_items_as_its_card(finished):
    run = finished[0]
    output = CliRunner().invoke(cli, ["status", str(run)]).output
    assert "picks, measured on every search item / on the held-out items:" in output, output
    for name, (eid, folder) in CampaignStore(run).get_meta("exported").items():
        line = next(li for li in output.splitlines() if li.startswith(f"  {name}: evaluation {eid} "))
        _, scores = card(run / folder)
        for task in ("agree0", "agree1"):
            shown = re.search(rf"{task} ([\d.]+) / ([\d.]+)", line)
            assert shown, line
            assert float(shown[1]) == pytest.approx(scores[SEARCH_ITEMS][task], abs=6e-4)
            assert float(shown[2]) == pytest.approx(scores[HELD_OUT][task], abs=6e-4)


def test_the_expressible_standard_merges_are_measured_and_marked_as_baselines(finished):
    run, runner = finished[:2]
    store = CampaignStore(run)
    space = runner.space
    expressible = {label: c for label, c in standard_merges(2).items() if space.expressible([c])}
    assert set(expressible) == {
        "task_arithmetic lambda=0.5",
        "task_arithmetic lambda=0.7",
        "task_arithmetic lambda=1.0",
        "ties density=0.2",
        "tsv alpha=1",
    }
    race = store.get_meta("race")
    for candidate in expressible.values():  # finalists: measured whole if picked, else raced on samples
        assert (store.get(candidate.key).measured is not None or candidate.key in race["left"]
                or candidate.key in race["compared"]["scores"])
    report = (run / "report.md").read_text().replace("\\", "")  # markdown escapes aside
    assert all(label in report for label in expressible)


@pytest.mark.parametrize("state", ["not a finalist", "scored on the race's sample only"])
def test_export_measures_what_a_candidate_misses(finished, tmp_path, state):
    """A candidate exported by hand gets what a pick gets: every search item and the held-out
    ones, whether it was no finalist or a survivor of the race that was not picked."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    db = sqlite3.connect(run / "state.sqlite")
    store = CampaignStore(run)
    picked = [eid for eid, _ in store.get_meta("exported").values()]
    race = store.get_meta("race")
    finalists = {*race["left"], *race["compared"]["scores"]}
    rows = db.execute(f"SELECT id, key, measured FROM evaluations WHERE phase='search' AND status='ok' "
                      f"AND id NOT IN ({','.join('?' * len(picked))}) ORDER BY id", picked).fetchall()
    eid, key, before = next(row for row in rows if (row[1] in race["compared"]["scores"]) == (state != "not a finalist")
                            and (row[1] in finalists) == (state != "not a finalist") and row[2] is None)
    assert before is None
    scored = {task: len(items) for task, items in CampaignStore(run).item_scores(key).items()}
    (tmp_path / "a-file").write_text("")  # an --out that cannot be written: said before hours of measuring
    blocked = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "a-file" / "m")])
    assert blocked.exit_code == 2 and blocked.output.strip().endswith(f"{tmp_path / 'a-file'} is a file, not a folder")
    assert {task: len(items) for task, items in CampaignStore(run).item_scores(key).items()} == scored  # nothing scored
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    evaluation = CampaignStore(run).get(key)
    assert evaluation.measured is not None
    assert {task: len(items) for task, items in CampaignStore(run).item_scores(key).items()} == {
        "agree0": 120,
        "agree1": 120,
    }
    scores = card(tmp_path / "m")[1]
    assert list(scores) == ["estimated", SEARCH_ITEMS, ALL_ITEMS, HELD_OUT]
    said = re.search(r"measured on every search item / on the held-out items: agree0 ([\d.]+) / ([\d.]+), "
                     r"agree1 ([\d.]+) / ([\d.]+)", result.output)  # what it measured, said as the card says it
    assert said, result.output
    assert [float(v) for v in said.groups()] == pytest.approx(
        [scores[kind][task] for task in ("agree0", "agree1") for kind in (SEARCH_ITEMS, HELD_OUT)],
        abs=6e-4)
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    summary = (run / "report.md").read_text().split("## Reference models and measured candidates")[1]
    assert any(re.match(rf"\|\s*{eid}\s*\|", line) for line in summary.splitlines())


def _space():
    return SearchSpace({"ties": {"density": (0.0, 1.0)}, "tsv": {}}, 2, (0.0, 1.0))


def test_near_duplicates_are_one_candidate():
    same = Distinct(_space(), 0.02).same
    a = Candidate("ties", (0.5, 0.5), (("density", 0.3),))
    assert same(a, Candidate("ties", (0.51, 0.49), (("density", 0.31),)))  # every coordinate within 2% of its range
    assert not same(a, Candidate("ties", (0.5, 0.5), (("density", 0.35),)))
    assert same(a, Candidate("ties", (0.504, 0.5), (("density", 0.3),)))
    assert not same(a, Candidate("tsv", (0.5, 0.5), ()))
    assert Distinct(_space(), 0.0).same(a, Candidate("ties", (0.5012, 0.4991), (("density", 0.3004),)))  # rounded
    # two methods of the same parameters are two merges; so are two values of a parameter not searched
    both = Distinct(SearchSpace({"ties": {"density": (0.0, 1.0)}, "dare_ties": {"density": (0.0, 1.0)}}, 2,
                                (0.0, 1.0)), 0.02)
    assert not both.same(a, Candidate("dare_ties", (0.5, 0.5), (("density", 0.3),)))
    fixed = Distinct(SearchSpace({"ties": {}}, 2, (0.0, 1.0)), 0.02)
    assert not fixed.same(a, Candidate("ties", (0.5, 0.5), (("density", 0.8),)))


def test_each_pick_measures_its_top_k_distinct_candidates(tmp_path):
    store = CampaignStore(tmp_path)
    rows = [  # (weights, density, estimated a, estimated b)
        ((1.0, 0.0), 0.50, 0.90, 0.10),
        ((1.0, 0.0), 0.505, 0.89, 0.11),  # a near-duplicate of the first: skipped for best-a
        ((0.8, 0.2), 0.50, 0.80, 0.30),
        ((0.5, 0.5), 0.50, 0.50, 0.50),
        ((0.0, 1.0), 0.50, 0.10, 0.90),
        ((0.1, 0.9), 0.50, 0.20, 0.80),
        ((0.3, 0.3), 0.50, 0.30, 0.30),  # dominated, never anyone's top 2
    ]
    keys = []
    for weights, density, a, b in rows:
        key = Candidate("ties", weights, (("density", density),)).key
        store.add(key, phase="search", generation=1, method="ties", status="ok", estimates={"a": a, "b": b})
        keys.append(key)
    objectives = Objectives.of(["a", "b"], ["maximize", "maximize"])
    final = FinalSpec(top_k=2, evaluate_top=0, baselines=False, export=["best_per_task"])
    chosen = [e.key for e in to_measure(store, objectives, final, Distinct(_space(), 0.02))]
    assert chosen == [keys[0], keys[2], keys[4], keys[5]]
    balanced = FinalSpec(top_k=1, evaluate_top=3, baselines=False, export=["balanced"])
    chosen = {e.key for e in to_measure(store, objectives, balanced, Distinct(_space(), 0.02))}
    # balanced's best (0.8, 0.3), then the front's two ends, then (0.5, 0.5): farthest from both ends, and
    # adding the most hypervolume to them
    assert chosen == {keys[2], keys[0], keys[4], keys[3]}


@pytest.mark.parametrize(("choice", "third"), [("hypervolume", 3), ("spread", 2)])
def test_front_members_past_each_task_s_best_add_the_most_hypervolume_or_lie_farthest(tmp_path, choice, third):
    """Past the two ends (1, 0.1) and (0.1, 1), whose boxes cover 0.19: (0.55, 0.55) lies farthest
    from both (0.64 against 0.41) but adds 0.2025 of hypervolume, (0.9, 0.5) adds 0.32 (by hand)."""
    store = CampaignStore(tmp_path)
    keys = []
    for weights, a, b in (((1.0, 0.0), 1.0, 0.1), ((0.0, 1.0), 0.1, 1.0), ((0.5, 0.5), 0.55, 0.55),
                          ((0.8, 0.2), 0.9, 0.5)):
        keys.append(Candidate("ties", weights, (("density", 0.5),)).key)
        store.add(keys[-1], phase="search", generation=1, method="ties", status="ok", estimates={"a": a, "b": b})
    objectives = Objectives.of(["a", "b"], ["maximize", "maximize"])
    final = FinalSpec(top_k=1, evaluate_top=3, front_choice=choice, baselines=False, export=["best_per_task"])
    chosen = [e.key for e in to_measure(store, objectives, final, Distinct(_space(), 0.02))]
    assert chosen == [keys[0], keys[1], keys[third]]
    assert FinalSpec().front_choice == "hypervolume"


def test_members_taken_lazily_by_hypervolume_are_those_every_gain_recomputed_at_every_step_takes(tmp_path):
    """The hypervolume rule recomputes only the gains that could win (a gain only shrinks as members
    are taken); it must take what recomputing every gain at every step takes, in that order."""
    rng = np.random.default_rng(0)
    objectives = Objectives.of(["a", "b", "c", "d"], ["maximize", "maximize", "minimize", "maximize"])
    store = CampaignStore(tmp_path)
    for i in range(40):
        key = Candidate("ties", (i / 40, 1 - i / 40), (("density", 0.5),)).key
        store.add(key, phase="search", generation=1, method="ties", status="ok",
                  estimates=dict(zip(objectives.names, map(float, rng.uniform(size=4)))))
    members = store.evaluations("search")
    for n in (4, 9, 16):
        chosen = front_members(members, objectives, n, Distinct(_space(), 0.02))
        expected = chosen[:4]  # each task's best, as the rule takes them
        while len(expected) < n:
            rest = [e for e in members if e not in expected]
            points = np.array([objectives.vector(e.estimates) for e in expected])
            gains = [objectives.hypervolume(np.vstack([points, objectives.vector(e.estimates)]))
                     - objectives.hypervolume(points) for e in rest]
            expected.append(rest[int(np.argmax(gains))])
        assert [e.key for e in chosen] == [e.key for e in expected]
        assert {e.key for e in chosen[:4]} == {max(members, key=lambda e: objectives.goodness(e.estimates, t)).key
                                                for t in objectives.names}


@pytest.mark.parametrize("baselines", [True, False])
def test_baselines_are_finalists_only_when_final_baselines_says_so(tmp_path, baselines):
    """A standard merge the search scored low is measured as a baseline with `baselines: true` and
    left out with `baselines: false`; the warm-ups, measured whatever was chosen, hid an inverted
    check in the campaign tests."""
    from evo_merge.search.store import BASELINES_META

    store = CampaignStore(tmp_path)
    keys = []
    for weights, a, b in (((1.0, 0.0), 0.9, 0.1), ((0.0, 1.0), 0.1, 0.9), ((0.5, 0.5), 0.2, 0.2)):
        keys.append(Candidate("ties", weights, (("density", 0.5),)).key)
        store.add(keys[-1], phase="search", generation=1, method="ties", status="ok", estimates={"a": a, "b": b})
    store.set_meta(BASELINES_META, {keys[2]: "ties"})  # dominated: no pick's, nor the spread's
    objectives = Objectives.of(["a", "b"], ["maximize", "maximize"])
    final = FinalSpec(top_k=1, evaluate_top=0, baselines=baselines, export=["best_per_task"])
    chosen = [e.key for e in to_measure(store, objectives, final, Distinct(_space(), 0.02))]
    assert chosen == ([keys[0], keys[1], keys[2]] if baselines else [keys[0], keys[1]])


def test_the_card_s_all_items_score_leaves_out_a_task_not_scored_on_every_item(tmp_path):
    """`measured_all_items` is what lm-eval gives on the whole task: a task of 3 items the pick has 2
    of scored (its held-out one and one search item: a race's sample) has none, where the mean of
    those 2 was published as the whole task's score."""
    from evo_merge.search.export import card_scores
    from evo_merge.search.holdout import HOLDOUT_META
    from evo_merge.search.store import FACTS_META

    store = CampaignStore(tmp_path)
    store.set_meta(FACTS_META, {"name": "c", "generations": 1, "algorithm": "nsga2", "weights": None, "tasks": [
        {"name": "a", "direction": "maximize", "items": 4}, {"name": "b", "direction": "maximize", "items": 3}]})
    store.set_meta(HOLDOUT_META, {"a": ["a3"], "b": ["b2"]})
    key = Candidate("ties", (0.5, 0.5), (("density", 0.5),)).key
    evaluation = store.add(key, phase="search", generation=1, method="ties", status="ok",
                           estimates={"a": 0.5, "b": 0.5}, measured={"a": 2 / 3, "b": 0.5},
                           item_scores={"a": {"a0": 1.0, "a1": 1.0, "a2": 0.0, "a3": 0.0}, "b": {"b0": 1.0, "b2": 1.0}})
    scores = card_scores(store, evaluation)
    assert scores["measured"] == {"a": 0.0, "b": 1.0}  # the held-out items
    assert scores["measured_search_items"] == {"a": 2 / 3, "b": 0.5}
    assert scores["measured_all_items"] == {"a": 0.5}  # 2 of 4; b's 3rd item was never scored


def test_a_card_s_estimated_column_holds_estimates_only(tmp_path):
    """An endpoint (or a standard merge measured as a warm-up) holds its search items' measurement
    where a candidate holds its estimate: the card showed it as "estimated", said to come from
    anchor items and an IRT model (audit 94). Estimates have their SE, or are a search candidate's
    in a folder from before SEs were stored."""
    from evo_merge.search.export import card_scores
    from evo_merge.search.store import FACTS_META

    store = CampaignStore(tmp_path)
    store.set_meta(FACTS_META, {"name": "c", "generations": 1, "algorithm": "nsga2", "weights": None,
                                "estimator": "gpirt", "tasks": [{"name": "a", "direction": "maximize", "items": 2}]})
    rows = {
        "endpoint": ("calibration", {"a": 0.5}, None),
        "warm-up": ("baseline", {"a": 0.5}, None),
        "estimated baseline": ("baseline", {"a": 0.4}, {"a": 0.05}),
        "estimated": ("search", {"a": 0.4}, {"a": 0.05}),
        "older folder": ("search", {"a": 0.4}, None),
    }
    shown = {}
    for i, (label, (phase, estimates, se)) in enumerate(rows.items()):
        key = Candidate("ties", (0.1 * i, 0.5), (("density", 0.5),)).key
        evaluation = store.add(key, phase=phase, generation=1, method="ties", status="ok", estimates=estimates,
                               estimate_se=se, measured={"a": 0.5}, item_scores={"a": {"a0": 1.0, "a1": 0.0}})
        shown[label] = "estimated" in card_scores(store, evaluation)
    assert shown == {"endpoint": False, "warm-up": False, "estimated baseline": True, "estimated": True,
                     "older folder": True}


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (
            {"picks": {"../escape": {"weights": {"agree0": 1}}}},
            "final.picks: '../escape': a pick name is a folder name",
        ),
        (
            {"picks": {"p" * 65: {"weights": {"agree0": 1}}}},
            "a pick name is a folder name: letters, digits, '_', '.', '-', starting with a letter or digit, up to 64 "
            "characters",
        ),
        ({"picks": {"mine": {"weights": {"agree9": 1}}}}, "final.picks.mine.weights.agree9: not a task name"),
        (
            {"picks": {"mine": {"weights": {"agree0": 0}}}},
            "final.picks.mine.weights: give at least one positive weight",
        ),
        ({"holdout": 1.5}, "final.holdout: a fraction must lie in (0, 1)"),
        ({"race": [0.5, 0.25]}, "final.race: give increasing fractions in (0, 1), got [0.5, 0.25]"),
        ({"race": [0.5, 1.0]}, "final.race: give increasing fractions in (0, 1)"),
    ],
)
def test_bad_final_settings_give_one_line_errors(tmp_path, zoo, final, expected):  # noqa: F811
    path = campaign(tmp_path, zoo, final=final)
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_pick_name_the_first_rule_took_is_still_taken():
    """A run folder's campaign.yaml keeps the pick names it was started with: one with `..` inside
    (no path component) taken then and refused later could neither resume nor be renamed, the
    rename being an edit of the campaign (audit 103)."""
    from evo_merge.config import FinalSpec

    assert list(FinalSpec(picks={"a..b": {"weights": {"t": 1}}}).picks) == ["a..b"]


def test_the_search_saving_is_against_a_search_on_the_search_items(finished):
    """A full-evaluation search scores its candidates on the search items only (held-out ones are
    for the picks): 90 of each task's 120 here, so 180 per candidate, not 240."""
    run = finished[0]
    store = CampaignStore(run)
    n_search, spent = len(store.evaluations("search")), store.items_evaluated("search")
    result = CliRunner().invoke(cli, ["status", str(run)], terminal_width=200)
    assert f"item evaluations in search: {spent:,} vs {n_search * 180:,} for a full-evaluation search" in result.output
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    assert f"a full-evaluation search would have spent {n_search * 180:,}" in (run / "report.md").read_text()



def test_the_search_saving_counts_failed_candidates_on_neither_side(finished, tmp_path):
    """A failed candidate records no items, and was counted in the full search's cost: a run with a
    third of its candidates failed said 120x where 80x was saved (audit 144)."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    with sqlite3.connect(run / "state.sqlite") as db:
        first = db.execute("SELECT MIN(id) FROM evaluations WHERE phase = 'search'").fetchone()[0]
        db.execute("UPDATE evaluations SET status = 'failed', items_evaluated = 0, error = 'RuntimeError: x', "
                   "estimates = NULL WHERE id = ?", (first,))
    store = CampaignStore(run)
    n_search, spent = len(store.evaluations("search")), store.items_evaluated("search")
    store.close()
    result = CliRunner().invoke(cli, ["status", str(run)], terminal_width=200)
    assert f"item evaluations in search: {spent:,} vs {(n_search - 1) * 180:,} for a full-evaluation" in result.output
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    assert f"would have spent {(n_search - 1) * 180:,}" in (run / "report.md").read_text()
    with sqlite3.connect(run / "state.sqlite") as db:  # every one failed: no saving to speak of ("0 vs 0")
        db.execute("UPDATE evaluations SET status = 'failed', items_evaluated = 0, error = 'RuntimeError: x', "
                   "estimates = NULL WHERE phase = 'search'")
    result = CliRunner().invoke(cli, ["status", str(run)], terminal_width=200)
    assert "item evaluations in search: none scored: every search candidate failed" in result.output
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    assert "search phase: none scored: every search candidate failed" in (run / "report.md").read_text()


def test_a_resumed_export_removes_what_a_killed_one_left_half_written(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    partial = [run / "models" / ".balanced.tmp-0a1b2c3d", run / "models" / ".best-agree0.old-x_9kq2m1"]
    for folder in partial:
        folder.mkdir()
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 1024)
    kept = run / "models" / "notes.tmp-1234"  # not one of the writer's hidden folders: left alone
    kept.mkdir()
    store = CampaignStore(run)
    store.db.execute("DELETE FROM meta WHERE key IN ('exported', 'finished')")
    store.db.commit()
    store.close()
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert not any(folder.exists() for folder in partial) and kept.is_dir()


@pytest.mark.parametrize("fault", ["race", "picks"])
def test_finalists_or_picks_that_fail_when_measured_are_reported_and_picks_are_measured(tmp_path, zoo, fault,  # noqa: F811
                                                                                         caplog):
    """A plugin task that raises for some models, only when the final phase scores them (the race's
    samples, or a pick's remaining items): the run finished (a pick failing crashed it, every
    resume too), every exported pick is measured (one was exported with estimates only), and
    status and the report name the failures (they were silent)."""
    base, fts = zoo
    raised = tmp_path / "raised.txt"
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": f"agree{i}",
              "options": {"reference": str(f), "name": f"agree{i}", "seed": i, "fault": fault,
                          "failures": str(raised)}}
             for i, f in enumerate(fts)]
    config = campaign(tmp_path, zoo, tasks=tasks)
    run = tmp_path / "run"
    times_raised = []
    for command in (["run", str(config), "--out", str(run)], ["resume", str(run)]):
        with caplog.at_level("WARNING", logger="evo_merge"):
            result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        times_raised.append(len(raised.read_text().splitlines()))
    said = [r.getMessage() for r in caplog.records if ": measuring it failed: task 'agree" in r.getMessage()]
    assert times_raised[0] > 0 and times_raised[1] == times_raised[0]  # a recorded failure is not tried again
    store = CampaignStore(run)
    failures, exported = store.measure_failures(), store.get_meta("exported")
    assert failures and set(failures.values()) <= {f"task 'agree{i}': RuntimeError: scorer blew up on this model"
                                                   for i in (0, 1)}
    assert len(said) == len(failures)  # each said once, as it failed (not again by the resume)
    for eid, folder in exported.values():
        evaluation = next(e for e in store.evaluations() if e.id == eid)
        assert evaluation.measured is not None and evaluation.key not in failures
        assert (run / folder / "results.json").is_file()
    store.close()
    status = CliRunner().invoke(cli, ["status", str(run)])
    assert f"{len(failures)} failed when measured in the final phase" in status.output
    report = (run / "report.md").read_text()
    assert report.count("RuntimeError: scorer blew up") == len(failures)
    assert report.count("measured in the final phase: task &#x27;agree") + report.count(
        "measured in the final phase: task 'agree") == len(failures)
    if fault == "race":
        assert f"{len(failures)} could not be scored" in report
    store = CampaignStore(run)
    failed_id = next(e.id for e in store.evaluations() if e.key in failures)
    store.close()
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(failed_id), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "scoring it on every item failed (task 'agree" in result.output, result.output
    assert not (tmp_path / "x").exists()

    # a failure stored with no message (a bare RuntimeError()): an IndexError traceback in the report and export
    store = CampaignStore(run)
    store.set_meta(f"measure_failed:{next(e.key for e in store.evaluations() if e.id == failed_id)}", "")
    store.close()
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    assert "measured in the final phase: no message" in (run / "report.md").read_text()
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(failed_id), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "failed (no message); not exported" in result.output, result.output
    store = CampaignStore(run)
    store.set_meta(f"measure_failed:{next(e.key for e in store.evaluations() if e.id == failed_id)}", 5)
    store.close()
    result = CliRunner().invoke(cli, ["report", str(run)])  # not text: an AttributeError traceback
    assert result.exit_code == 2 and "measure_failed:" in result.output and "is damaged" in result.output


def test_a_tie_on_a_pick_s_task_goes_to_the_candidate_better_elsewhere_never_a_dominated_one():
    """best-arith was candidate 11 (arith 0.900, seq 0.817) beside candidate 17 (0.900, 1.000),
    the first stored of two tied on arith."""
    from evo_merge.search.front import choose
    from evo_merge.search.store import Evaluation

    def evaluation(id_, arith, seq):
        scores = {"arith": arith, "seq": seq}
        return Evaluation(id_, f"k{id_}", "search", 1, "mass", "ok", scores, scores, 10, 1.0, None)

    measured = [evaluation(11, 0.9, 0.817), evaluation(17, 0.9, 1.0), evaluation(3, 0.5, 1.0)]
    objectives = Objectives.of(["arith", "seq"], ["maximize", "maximize"])
    chosen = choose(measured, objectives, FinalSpec())
    assert chosen["best-arith"].id == 17 and chosen["best-seq"].id == 17


def test_a_task_too_small_to_hold_items_out_keeps_its_measured_score_on_the_card(tmp_path, zoo):  # noqa: F811
    """`holdout: auto` holds out 20% of a task of 500 items and none of one of 120: the small task,
    measured on all its items, was left out of the card's measured scores, its model-index,
    results.json and item_scores.parquet, on its own best pick too."""
    base, fts = zoo
    tasks = [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
              "options": {"reference": str(f), "name": f"agree{i}", "seed": i, "n_items": n}}
             for i, (f, n) in enumerate(zip(fts, (500, 120)))]
    config = campaign(tmp_path, zoo, tasks=tasks, algorithm={"population": 4, "generations": 1, "seed": 0},
                      final={"holdout": "auto", "top_k": 1, "evaluate_top": 1})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    holdout = store.get_meta("holdout")
    assert len(holdout["agree0"]) == 100 and holdout["agree1"] == []
    eid, folder = store.get_meta("exported")["best-agree1"]
    items = store.item_scores(store.evaluations()[[e.id for e in store.evaluations()].index(eid)].key)
    whole = np.mean(list(items["agree1"].values()))
    assert len(items["agree1"]) == 120
    index, scores = card(run / folder)
    assert index["agree1"] == pytest.approx(whole) and scores[HELD_OUT]["agree1"] == pytest.approx(whole, abs=5e-5)
    assert index["agree0"] == pytest.approx(np.mean([items["agree0"][i] for i in holdout["agree0"]]))
    results = json.loads((run / folder / "results.json").read_text())
    assert results["results"]["agree1"] and results["n-samples"]["agree1"] == {"original": 120, "effective": 120}
    assert results["n-samples"]["agree0"] == {"original": 500, "effective": 100}
    table = pd.read_parquet(run / folder / "item_scores.parquet")
    assert len(table) == 100 + 120


def test_a_pick_folder_whose_weights_were_replaced_is_exported_again_on_resume(finished, tmp_path, caplog):
    """Another pick's weights copied over `models/best-agree0`: `status`, `report` and `resume` went
    on showing it as that pick, with that pick's scores."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    exported = {name: folder for name, (_, folder) in CampaignStore(run).get_meta("exported").items()}
    first, other = run / exported["best-agree0"], run / exported["best-agree1"]
    assert first != other
    original = {k: v.clone() for k, v in load_file(first / "model.safetensors").items()}  # (mapped: copied over below)
    shutil.copyfile(other / "model.safetensors", first / "model.safetensors")
    with caplog.at_level("WARNING", logger="evo_merge.search.export"):
        result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"{first}: its weights are not those this run exported; exported again" in caplog.text
    restored = load_file(first / "model.safetensors")
    assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge.search.export"):
        assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0  # kept as it is now
    assert "exported again" not in caplog.text
    shutil.rmtree(first)
    status = CliRunner().invoke(cli, ["status", str(run)]).output
    assert "models/best-agree0 (missing: `evo-merge resume` exports it again)" in status, status


@pytest.mark.parametrize("damage", ["item scores", "held-out record"])
def test_a_pick_whose_held_out_scores_are_gone_is_damage_for_every_command(finished, tmp_path, damage):
    """Half a pick's item scores deleted, or the held-out record edited to other items: `status` and
    `report` showed the pick without its held-out scores and without a word (its card still
    published them), `resume` went on or refused by another record (audit 127)."""
    from contextlib import closing

    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    name, (eid, _) = sorted(CampaignStore(run).get_meta("exported").items())[0]
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        if damage == "item scores":
            db.execute("DELETE FROM item_scores WHERE evaluation_id = ? AND rowid % 2 = 0", (eid,))
        else:
            db.execute("UPDATE meta SET value = ? WHERE key = 'holdout'", (json.dumps({"agree0": ["x"]}),))
        db.commit()
    commands = ("status", "report", "resume") if damage == "item scores" else ("status", "report")
    for command in commands:
        result = CliRunner().invoke(cli, [command, str(run)])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
            f"error: {run / 'state.sqlite'}: the record of pick {name}'s held-out scores (evaluation {eid}: its "
            "item_scores, or the held-out items) is damaged (edited, or not written by evo-merge); restore it from "
            "a backup, or start the campaign again in a new run folder"), (command, result.output)


def test_a_pick_file_made_a_link_elsewhere_is_exported_again_on_resume(finished, tmp_path, caplog):
    """`models/best-agree0/model.safetensors` moved out and linked back: resume read the same weights
    through the link and kept the folder, whose weights could then change under it (audit 127)."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    exported = {name: folder for name, (_, folder) in CampaignStore(run).get_meta("exported").items()}
    pick = run / exported["best-agree0"]
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(pick / "model.safetensors", outside)
    (pick / "model.safetensors").symlink_to(outside)
    status = CliRunner().invoke(cli, ["status", str(run)]).output  # said before the resume that mends it
    assert (f"{exported['best-agree0']} (changed: model.safetensors is a link (to {outside}), where the run wrote a "
            "file; `evo-merge resume` exports it again)") in status, status
    with caplog.at_level("WARNING", logger="evo_merge.search.export"):
        result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"{pick}: model.safetensors is a link (to {outside}), where the run wrote a file; exported again" \
        in caplog.text
    assert not (pick / "model.safetensors").is_symlink() and outside.is_file()  # replaced, the target left alone
    assert "changed:" not in CliRunner().invoke(cli, ["status", str(run)]).output


def test_the_picks_of_a_run_from_before_their_weights_digest_are_kept_on_resume(finished, tmp_path, caplog):
    """A run exported before it kept its picks' weights digests has none to compare: its picks are kept
    as they are, not exported again on every resume (audit 115)."""
    from contextlib import closing

    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    with closing(sqlite3.connect(run / "state.sqlite")) as db:  # as an older run left it
        db.execute("DELETE FROM meta WHERE key = 'exported_weights'")
        db.commit()
    picks = [run / folder for _, folder in CampaignStore(run).get_meta("exported").values()]
    stamps = {folder: (folder / "model.safetensors").stat().st_mtime_ns for folder in picks}
    with caplog.at_level("WARNING", logger="evo_merge.search.export"):
        result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0 and "exported again" not in caplog.text, (result.output, caplog.text)
    assert {folder: (folder / "model.safetensors").stat().st_mtime_ns for folder in picks} == stamps


def test_a_pick_folder_missing_its_card_is_exported_again_and_one_missing_its_weights_is_refused_with_the_way_on(
        finished, tmp_path, caplog):
    """Its card deleted, resume kept the pick without one, and `push` then refused it: exported again.
    Its weights deleted, resume refused the run's own pick as "not a model folder ... refusing to
    replace it" with no way on (audit 111); removing it then (audit 113) deleted what else the folder
    held (a GGUF conversion of the user's): refused, nothing removed, the way on said."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    folder = run / next(f for _, f in CampaignStore(run).get_meta("exported").values())

    def files():  # results.json's `date` is when it was written
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "results.json"} | {
            "results.json": {k: v for k, v in json.loads((folder / "results.json").read_text()).items() if k != "date"}}

    before = files()
    (folder / "README.md").unlink()
    with caplog.at_level("WARNING", logger="evo_merge.search.export"):
        result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"{folder}: its model card (README.md) is gone; exported again" in caplog.text
    assert files() == before

    (folder / "model.safetensors").unlink()
    (folder / "model-q8.gguf").write_bytes(b"GGUF mine")
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        f"error: {folder}: a pick folder of this run whose weights are gone; move out any file of your own, remove "
        f"the folder, and `evo-merge resume {run}` exports it again"), result.output
    assert (folder / "model-q8.gguf").read_bytes() == b"GGUF mine"
    shutil.rmtree(folder)
    assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0
    assert files() == before


def test_ctrl_c_while_an_export_measures_says_to_run_the_export_again(finished, tmp_path, monkeypatch):
    """It said `resume with: evo-merge resume RUN`, which measures and exports nothing for a finished
    run. (Ctrl-C while the folder is written, after the run's lock, is a plain "interrupted".)"""
    from evo_merge.search.ledger import EvaluationLedger

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(EvaluationLedger, "measure", interrupted)
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    eid = next(iter(CampaignStore(run).get_meta("exported").values()))[0]
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "m")])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "error: interrupted; run the export again to finish it"


def test_a_final_phase_whose_every_pick_fails_when_measured_stops_the_run_and_resume_measures_them(tmp_path, zoo):  # noqa: F811
    """A task failing on its held-out items alone (a malformed row there, first scored in the final
    phase): the run said "finished", exit 0, exported nothing; status blamed the picks' luck."""
    base, fts = zoo
    fixed = tmp_path / "fixed"
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": f"agree{i}",
              "options": {"reference": str(f), "name": f"agree{i}", "seed": i, "fault": "held-out",
                          "failures": str(fixed)}} for i, f in enumerate(fts)]
    config = campaign(tmp_path, zoo, tasks=tasks, final={"evaluate_top": 3, "holdout": 17})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: the final phase measured no pick: ")
    assert "RuntimeError: Context is not a string" in line
    assert not (run / "models").exists()
    store = CampaignStore(run)
    assert store.measure_failures() == {} and store.get_meta("finished") is None
    store.close()
    fixed.write_text("the row mended")
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    exported = store.get_meta("exported")
    assert exported and store.measure_failures() == {}
    store.close()
    for _, folder in exported.values():
        assert (run / folder / "results.json").is_file()


def test_status_gives_the_search_s_best_estimate_its_measurement_where_there_is_one(finished):
    """The highest of many estimates runs high (an audit: +0.41 SE on average over 12 such lines, up
    to +0.135): status showed it alone where the final phase had measured the candidate since."""
    run = finished[0]
    output = " ".join(CliRunner().invoke(cli, ["status", str(run)]).output.split())
    by_id = {e.id: e for e in CampaignStore(run).evaluations()}
    shown = 0
    for task in ("agree0", "agree1"):
        line = re.search(rf"best {task} in the search \(higher is better\): [\d.]+(?: ± [\d.]+)? estimated "
                         rf"\(evaluation (\d+), \w+\)(; measured ([\d.]+) since)?", output)
        assert line, output
        best = by_id[int(line[1])]
        if best.measured:
            assert line[3] == f"{best.measured[task]:.3f}", output
            shown += 1
        else:
            assert line[2] is None
    assert shown  # this run measured a search's best
