"""An adaptive test whose next step fails: the candidate keeps the estimate from the items it
had, the failure is stored, a resume does not try the step again (the same decisions follow as
in a run that was never interrupted), and the report lists it."""

import numpy as np
import pytest
from agreement_task import AgreementTask  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.markup import md
from evo_merge.search.candidate import Candidate
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.local import LocalEvaluator
from evo_merge.search.store import ADAPTIVE_FAILED, CampaignStore
from evo_merge.search.workbench import Workbench
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    base, fts = save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2, noise=0.08)
    return Workbench.open(base, fts, device="cpu"), fts


def agreement(fts, broken=()) -> dict[str, AgreementTask]:
    return {f"agree{i}": AgreementTask(str(f), name=f"agree{i}", n_items=12, seed=i, broken=broken)
            for i, f in enumerate(fts)}


class Stepwise:
    """A test of 2 more items per task per step, in item order, up to 8: the IRT test's stand-in
    (under test is what the ledger does when a step fails, not how steps are chosen)."""

    def __init__(self, tasks):
        self.tasks, self.names = tasks, list(tasks)

    def search_items(self):
        return {name: None for name in self.tasks}

    def search_ids(self, name):  # every item is a search item: 12, of which a test scores at most 8
        return self.tasks[name].item_ids

    def search_scores(self, scores):
        return {n: sum(scores[n].values()) / len(scores[n]) for n in self.names}

    def next_items(self, scores, precision=1.0):
        steps = {n: [i for i in t.item_ids if i not in scores.get(n, {})][:2]
                 for n, t in self.tasks.items() if len(scores.get(n, {})) < 8}
        return steps or None

    def estimate(self, scores, key=None):
        return {n: sum(s.values()) / len(s) for n, s in scores.items()}, None


def test_a_failed_step_is_kept_and_not_tried_again_on_a_resume(family, tmp_path, caplog):
    workbench, fts = family
    first = {name: task.item_ids[:4] for name, task in agreement(fts).items()}
    candidates = [Candidate("task_arithmetic", (1.0, 0.0), ()), Candidate("task_arithmetic", (0.3, 0.9), ())]
    broken = agreement(fts, broken=["agree1-0006"])  # the second step of agree1 asks for items 4 and 5, the third 6
    store = CampaignStore(tmp_path)
    store.set_meta("adaptiveXfailed:" + candidates[0].key, "another record")  # matched as text, `_` is no wildcard
    ledger = EvaluationLedger(store, lambda: LocalEvaluator(workbench, broken), Stepwise(broken))
    with caplog.at_level("WARNING", logger="evo_merge"):
        evaluations = ledger.evaluate(candidates, phase="search", generation=1, items=first, stage="search")
    failures = store.adaptive_failures()
    said = [r.getMessage() for r in caplog.records if ": its next adaptive step failed: " in r.getMessage()]
    assert len(said) == 2 and all(line.endswith("it keeps the estimate of its items") for line in said)
    assert set(failures) == {c.key for c in candidates}
    assert all("the scorer crashed on agree1-0006" in error for error in failures.values())
    # 4 first items and one step of 2 per task, then the failed step, whose 2 items of agree0 were scored (and paid
    # for: a failing run's totals undercounted them) but not kept
    for evaluation in evaluations:
        assert evaluation.status == "ok" and evaluation.items_evaluated == 2 * 6 + 2
        assert {n: len(s) for n, s in store.item_scores(evaluation.key).items()} == {"agree0": 6, "agree1": 6}
    assert store.get_meta(ADAPTIVE_FAILED + candidates[0].key) == failures[candidates[0].key]

    healed = agreement(fts)  # the scorer works again: a resume still makes the decision the run made
    again = EvaluationLedger(CampaignStore(tmp_path), lambda: LocalEvaluator(workbench, healed), Stepwise(healed))
    resumed = again.evaluate(candidates, phase="search", generation=1, items=first, stage="search")
    assert [e.items_evaluated for e in resumed] == [14, 14]

    fresh = tmp_path / "fresh"  # without a failure the same tests run to their 8 items per task
    clean = EvaluationLedger(CampaignStore(fresh), lambda: LocalEvaluator(workbench, healed), Stepwise(healed))
    assert [e.items_evaluated for e in clean.evaluate(candidates, phase="search", generation=1, items=first,
                                                      stage="search")] == [16, 16]


def test_the_report_lists_a_stopped_adaptive_test(tmp_path):
    """A finished adaptive campaign with a step's failure recorded as the ledger records it: the
    report's failures name the evaluation and the error, and whether the final phase measured it whole since."""
    from campaigns import run_campaign, write_campaign

    root = tmp_path / "zoo"
    base, fts = save_tiny_family(root, "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts, algorithm={"population": 6, "generations": 2,
                                                                             "seed": 4},
                            estimator={"kind": "adaptive", "warmup_merges": 5, "dims": 1, "target_se": 0.02,
                                       "max_items": 10})
    run = run_campaign(config, tmp_path / "run")
    store = CampaignStore(run)
    evaluation = next(e for e in store.evaluations("search") if e.status == "ok" and e.measured is None)
    finalist = next(e for e in store.evaluations() if e.status == "ok" and e.measured)
    for stopped in (evaluation, finalist):
        store.set_meta(ADAPTIVE_FAILED + stopped.key, "RuntimeError: the scorer crashed on agree1-0006")
    store.close()
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    report = (run / "report.md").read_text()
    assert (f"- evaluation {evaluation.id} ({md(evaluation.method)}), an adaptive step (the test stopped there; its "
            "estimate keeps the items it had): RuntimeError: the scorer crashed on agree1-0006") in report
    # a test the final phase measured whole since: its estimate no longer rests on the items it had
    assert (f"- evaluation {finalist.id} ({md(finalist.method)}), an adaptive step (the test stopped there; measured "
            "on every item since): RuntimeError: the scorer crashed on agree1-0006") in report


class FailsAtSix(Stepwise):
    """An estimator whose estimate does not come out once a task has 6 items (what `Scoring.estimate`
    raises for a NaN estimate or SE)."""

    def estimate(self, scores, key=None):
        if any(len(s) >= 6 for s in scores.values()):
            raise FloatingPointError("task 'agree0': the estimate nan ± nan is not finite")
        return super().estimate(scores, key)


class SingularAtSix(Stepwise):
    """An estimator whose fit of a task's ability meets a singular matrix once a task has 6 items
    (numpy's LinAlgError, a ValueError)."""

    def estimate(self, scores, key=None):
        if any(len(s) >= 6 for s in scores.values()):
            raise np.linalg.LinAlgError("Singular matrix")
        return super().estimate(scores, key)


def _one_test(workbench, tasks, scoring, folder):
    """One candidate's adaptive test from its first 4 items per task, through a ledger on `folder`:
    (store, candidate, first items, its evaluation)."""
    first = {name: task.item_ids[:4] for name, task in tasks.items()}
    candidate = Candidate("task_arithmetic", (1.0, 0.0), ())
    store = CampaignStore(folder)
    ledger = EvaluationLedger(store, lambda: LocalEvaluator(workbench, tasks), scoring)
    (evaluation,) = ledger.evaluate([candidate], phase="search", generation=1, items=first, stage="search")
    return store, candidate, first, evaluation


@pytest.mark.parametrize("failing, error", [
    (FailsAtSix, "task 'agree0': the estimate nan ± nan is not finite"), (SingularAtSix, "Singular matrix")])
def test_a_step_whose_estimate_does_not_come_out_ends_the_test_keeping_its_items(family, tmp_path, caplog,
                                                                                 failing, error):
    """The step's estimate went unchecked into the store, and a NaN read back as a damaged run
    folder on every later status, report and resume; an estimator's error stops that test alone."""
    workbench, fts = family
    tasks = agreement(fts)
    with caplog.at_level("WARNING", logger="evo_merge"):
        store, candidate, first, evaluation = _one_test(workbench, tasks, failing(tasks), tmp_path)
    stored = store.item_scores(candidate.key)
    before = Stepwise(tasks).estimate({n: {i: s[i] for i in first[n]} for n, s in stored.items()})
    assert evaluation.status == "ok" and evaluation.items_evaluated == 12  # the failed step's items are kept
    assert evaluation.estimates == pytest.approx(before[0])  # with the estimate of the first 4 items
    assert store.adaptive_failures() == {candidate.key: f"estimation failed: {error}"}
    assert any("its next adaptive step failed: estimation failed" in r.getMessage() for r in caplog.records)
    again = EvaluationLedger(CampaignStore(tmp_path), lambda: LocalEvaluator(workbench, tasks), Stepwise(tasks))
    (resumed,) = again.evaluate([candidate], phase="search", generation=1, items=first, stage="search")
    assert resumed.items_evaluated == 12


class WholeAtSix(FailsAtSix):
    """A test whose step to 6 items per task reaches every search item (6 of them), and whose
    estimate does not come out there."""

    def search_ids(self, name):
        return self.tasks[name].item_ids[:6]


def test_a_step_reaching_every_item_measures_its_candidate_though_its_estimate_failed(family, tmp_path):
    """Scored on every search item, the candidate needs no estimate: it is measured at once, as a
    step whose estimate came out is, not left to a later repair (audit 100)."""
    workbench, fts = family
    tasks = agreement(fts)
    store, candidate, _, evaluation = _one_test(workbench, tasks, WholeAtSix(tasks), tmp_path)
    scores = store.item_scores(candidate.key)
    assert evaluation.items_evaluated == 12 and store.adaptive_failures()  # its step to 6 items, then it ended
    assert evaluation.measured == {n: sum(s.values()) / 6 for n, s in scores.items()}
