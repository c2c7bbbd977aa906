"""A candidate scored on many items reports them as it goes, and its scores are those of one call."""

from pathlib import Path

import pytest
from agreement_task import AgreementTask  # tests/search is on sys.path (pytest's rootdir import mode)

from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import ITEMS, JOB_PARTS, MERGING, PIECES
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.local import LocalEvaluator
from evo_merge.search.workbench import Workbench
from evo_merge.tasks import base
from evo_merge.tasks.base import checked_scores
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base, fts = save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2, noise=0.08)
    tasks = {f"agree{i}": AgreementTask(str(f), name=f"agree{i}", n_items=10, seed=i) for i, f in enumerate(fts)}
    return Workbench.open(base, fts, device="cpu"), tasks


def test_every_item_is_scored_in_calls_of_a_bounded_size_each_reported(bench, monkeypatch):
    workbench, tasks = bench
    monkeypatch.setattr(base, "ITEMS_PER_CALL", 4)
    asked = []
    for task in tasks.values():
        monkeypatch.setattr(task, "evaluate", lambda m, t, ids, _f=task.evaluate: asked.append(ids) or _f(m, t, ids))
    evaluator, told = LocalEvaluator(workbench, tasks), []
    candidate = Candidate("task_arithmetic", (0.6, 0.4), ())
    scores = evaluator.evaluate(candidate, {"agree0": None, "agree1": tasks["agree1"].item_ids[:5]},
                                lambda done, total, part=ITEMS: told.append((part, done, total)))
    assert [len(ids) for ids in asked] == [4, 4, 2, 4, 1]
    items = [(done, total) for part, done, total in told if part == ITEMS]
    assert items == [(0, 15), (4, 15), (8, 15), (10, 15), (14, 15), (15, 15)]  # 0: its merge is being built
    # between the first two, the merge tells each tensor it writes
    n = len([t for t in workbench.module.state_dict().values() if t.is_floating_point()])
    assert told[1:n + 2] == [(MERGING, done, n) for done in range(n + 1)] and told[n + 2][0] == ITEMS
    model = evaluator.build(candidate)  # the same model scored on all its items in one call each
    whole = {"agree0": checked_scores(tasks["agree0"], model, workbench.tokenizer, None),
             "agree1": checked_scores(tasks["agree1"], model, workbench.tokenizer, tasks["agree1"].item_ids[:5])}
    assert scores == {name: {str(k): float(v) for k, v in series.items()} for name, series in whole.items()}


def test_a_candidate_that_first_computes_its_method_s_pieces_says_so_once(bench):
    """TSV-M's first candidate decomposes every matrix (10 minutes at 0.67B on a CPU) under the same
    "merging" line as a merge of seconds (audit 126): that merge is its own part, once per run."""
    workbench, tasks = bench
    evaluator = LocalEvaluator(workbench, tasks)
    parts = []
    for weights in ((1.0, 1.0), (0.5, 0.8)):
        told = []
        evaluator.evaluate(Candidate("tsv", weights, (("alpha", 1.0),)), {"agree0": tasks["agree0"].item_ids[:2]},
                           lambda done, total, part=ITEMS, told=told: told.append(part))
        parts.append([part for part in dict.fromkeys(told) if part != ITEMS])
    assert parts == [[PIECES], [MERGING]]
    assert JOB_PARTS[PIECES] == " · merging (computing its pieces first)"
    evaluator.evaluate(Candidate("task_arithmetic", (0.6, 0.4), ()), {"agree0": tasks["agree0"].item_ids[:2]},
                       lambda done, total, part=ITEMS: parts.append(part))
    assert PIECES not in parts[2:]


def test_a_campaign_stage_follows_its_candidates_items(bench, tmp_path: Path, monkeypatch):
    from evo_merge.search.store import CampaignStore

    workbench, tasks = bench
    monkeypatch.setattr(base, "ITEMS_PER_CALL", 4)
    seen = []

    class Everything:  # scores every item: the ledger stores them as scored (what the stage shows is under test)
        names = list(tasks)

        def search_items(self):
            return {name: None for name in tasks}

        def estimate(self, scores, key=None):
            return {n: sum(s.values()) / len(s) for n, s in scores.items()}, None

        def search_scores(self, scores):
            return self.estimate(scores)[0]

    ledger = EvaluationLedger(CampaignStore(tmp_path), lambda: LocalEvaluator(workbench, tasks), Everything(),
                              progress=lambda stage, done, total: seen.append((stage, done, total)))
    ledger.evaluate([Candidate("task_arithmetic", (1.0, 0.0), ()), Candidate("task_arithmetic", (0.0, 1.0), ())],
                    phase="calibration", generation=None, items={name: None for name in tasks}, stage="calibration")
    items = [(done, total) for stage, done, total in seen if stage == "calibration" + JOB_PARTS[ITEMS]]
    assert items == 2 * [(0, 20), (4, 20), (8, 20), (10, 20), (14, 20), (18, 20), (20, 20)]
    assert [s for s in seen if s[0] == "calibration"] == [("calibration", 0, 2), ("calibration", 1, 2),
                                                          ("calibration", 2, 2)]


def test_a_first_tsv_m_candidate_tells_its_decomposition_tensor_by_tensor(bench):
    """TSV-M's first candidate decomposes every tensor (minutes at 7B): that shows as its merge's
    progress, one tensor after another (that the tensors equal the file path's, decomposed all at
    once before: tests/merge/test_recipes.py)."""
    workbench, tasks = bench
    workbench.merger.clear_cache()
    evaluator, told = LocalEvaluator(workbench, tasks), []
    evaluator.build(Candidate("tsv", (1.0, 0.5), (("alpha", 1.0),)), lambda done, total: told.append((done, total)))
    assert told[0][0] == 0 and [done for done, _ in told] == list(range(told[0][1] + 1))
    assert workbench.merger.on_tensor is None  # told only while building
