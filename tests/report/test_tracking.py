"""Experiment tracking against a real MLflow file store and W&B offline runs, read back afterwards."""

import glob
import json
import os
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from report_store import TASKS

from evo_merge.config import Campaign, TrackingSpec
from evo_merge.errors import UserError
from evo_merge.report.tracking import IDS_FILE, open_tracker
from evo_merge.search.metrics import generation_metrics
from evo_merge.search.objectives import Objectives

CAMPAIGN = Campaign.model_validate({"name": "tiny", "base_model": "b", "models": ["m1", "m2"],
                                    "tasks": [{"task": task, "name": t} for task, t in zip(("arith", "lang"), TASKS)]})


def run_through(tracker, store):
    """What the study loop does: each evaluation as stored, a step per generation, then finish."""
    evaluations = store.evaluations()
    tracker.log_evaluations(evaluations)
    for generation in (1, 2):
        tracker.log_generation(
            generation, generation_metrics(evaluations, Objectives.of(TASKS, ["maximize"] * 2), generation)
        )
    (store.run_dir / "report.md").write_text("# Campaign report\n")
    tracker.finish(store.run_dir)


def test_mlflow_run_holds_generations_evaluations_and_artifacts(small_store, tmp_path):
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    run_through(open_tracker(spec, small_store.run_dir, CAMPAIGN), small_store)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("merges").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["algorithm.population"] == "16"
    hv = client.get_metric_history(run.info.run_id, "generation/hypervolume")
    # hand-computed union of boxes: gen 1 (0.6,0.1),(0.4,0.4): 0.4*0.4 + 0.2*0.1; gen 2 adds (0.1,0.7): + 0.1*0.3
    assert [(m.step, round(m.value, 6)) for m in hv] == [(1, 0.18), (2, 0.21)]
    items = client.get_metric_history(run.info.run_id, "generation/items")
    assert [m.value for m in items] == [16.0, 24.0]
    measured = client.get_metric_history(run.info.run_id, "measured/alpha")
    assert [(m.step, m.value) for m in measured] == [(3, 0.45)]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "evaluations.json"} <= artifacts
    rows = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluations.json", str(tmp_path))).read_text())
    assert [r["id"] for r in rows] == [1, 2, 3, 4] and rows[2]["weight_1"] == 0.5 and rows[2]["measured_beta"] == 0.35

    # a resumed campaign continues the same run
    again = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    assert (
        again.trackers[0].run_id
        == run.info.run_id
        == json.loads((small_store.run_dir / IDS_FILE).read_text())["mlflow"]
    )
    # resumed against another store (a relative URI read from elsewhere): refused before anything is logged
    elsewhere = TrackingSpec.model_validate({"mlflow": {"uri": (tmp_path / "other").as_uri(), "experiment": "merges"}})
    with pytest.raises(UserError, match=f"MLflow run {run.info.run_id} .* does not hold"):
        open_tracker(elsewhere, small_store.run_dir, CAMPAIGN)


def _with_held_out_pick(store):
    """Two items of each task held out, evaluation 3 exported twice and 2 once: their item scores are
    i % 2, so each has held-out means alpha (1 + 0) / 2 and beta (1 + 1) / 2."""
    from evo_merge.search.holdout import HOLDOUT_META

    store.set_meta(HOLDOUT_META, {"alpha": ["alpha-1", "alpha-2"], "beta": ["beta-1", "beta-3"]})
    store.set_exported({"balanced": (3, "models/balanced"), "best-alpha": (3, "models/best-alpha"),
                        "best-beta": (2, "models/best-beta")})


def test_mlflow_holds_each_picks_scores_on_the_held_out_items(small_store, tmp_path):
    """The figures a pick's card publishes reached no tracker (only the search's estimates and
    measurements did): a user comparing campaigns in MLflow compared search-item scores."""
    from mlflow import MlflowClient

    _with_held_out_pick(small_store)
    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    run_through(open_tracker(spec, small_store.run_dir, CAMPAIGN), small_store)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("merges").experiment_id])
    held = {k: v for k, v in run.data.metrics.items() if k.startswith("heldout/")}
    assert held == {"heldout/balanced/alpha": 0.5, "heldout/balanced/beta": 1.0, "heldout/best-alpha/alpha": 0.5,
                    "heldout/best-alpha/beta": 1.0, "heldout/best-beta/alpha": 0.5, "heldout/best-beta/beta": 1.0}
    rows = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluations.json", str(tmp_path))).read_text())
    assert [(r["picked_as"], r.get("heldout_alpha")) for r in rows] == [
        ("", None), ("best-beta", 0.5), ("balanced,best-alpha", 0.5), ("", None)]


def test_a_tracking_store_lost_mid_run_is_one_warning_and_the_run_goes_on(small_store, tmp_path, caplog):
    """Its store removed after the first points (a server gone): a traceback stopped the campaign,
    where trackers only observe."""
    import shutil

    store = tmp_path / "mlruns"
    spec = TrackingSpec.model_validate({"mlflow": {"uri": store.as_uri(), "experiment": "merges"}})
    tracker = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    tracker.log_evaluations([small_store.evaluations()[0]])
    shutil.rmtree(store)
    store.write_text("not a store any more")
    with caplog.at_level("WARNING", logger="evo_merge.report.tracking"):
        run_through(tracker, small_store)  # the rest of the run: no exception
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("tracking.mlflow: logging failed (")
    assert warnings[0].endswith("the run goes on without it, and it lacks what follows")
    assert not tracker.trackers
    with pytest.raises(UserError, match=f"or move {IDS_FILE} out of the run folder to log to a new MLflow run"):
        open_tracker(TrackingSpec.model_validate({"mlflow": {"uri": (tmp_path / "new").as_uri()}}),
                     small_store.run_dir, CAMPAIGN)


def test_mlflow_gives_up_on_a_server_in_seconds_unless_the_user_chose_otherwise(small_store, tmp_path, monkeypatch):
    """MLflow's own retries waited 4 min 14 s, silent, on a server refusing connections."""
    from evo_merge.report.tracking import HTTP_RETRIES

    for name in HTTP_RETRIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # the user's own setting is kept
    spec = TrackingSpec.model_validate({"mlflow": {"uri": (tmp_path / "mlruns").as_uri()}})
    open_tracker(spec, small_store.run_dir, CAMPAIGN)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_each_estimate_and_measurement_is_logged_once_across_resumes(small_store, tmp_path):
    """A search that measures every item logs `measured` with its generation; the final phase, a
    resume, or a run cut short while logging offers it again: the MLflow history keeps one point."""
    from dataclasses import replace

    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    evaluation = small_store.evaluations()[2]
    measured = replace(evaluation, measured={"alpha": 0.45, "beta": 0.35})
    first = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    first.log_evaluations([measured])  # with its generation, estimated and measured
    again = open_tracker(spec, small_store.run_dir, CAMPAIGN)  # a resume: another process
    again.log_evaluations([measured])
    again.log_evaluations([replace(evaluation, measured=None)])
    client = MlflowClient(uri)
    run_id = first.trackers[0].run_id
    for name in ("measured/alpha", "estimated/alpha"):
        assert len(client.get_metric_history(run_id, name)) == 1, name
    ids = json.loads((small_store.run_dir / IDS_FILE).read_text())
    assert ids["mlflow"] == run_id and ids["logged"] == {str(evaluation.id): ["estimated@8", "measured"]}


class Stopped(BaseException):
    """The process dying at a line: nothing after it runs (a BaseException, so no handler takes it)."""


def stop_when_noting(monkeypatch, key):
    """Stop the process the next time tracking.json is written with `key`: after the tracker call
    it records, before the note."""
    from evo_merge.report import tracking

    write = tracking._RunIds.set

    def set_or_stop(self, name, value):
        if name == key:
            monkeypatch.setattr(tracking._RunIds, "set", write)
            raise Stopped(name)
        write(self, name, value)

    monkeypatch.setattr(tracking._RunIds, "set", set_or_stop)


def test_a_run_stopped_between_creating_its_mlflow_run_and_noting_it_continues_that_run(
        small_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    stop_when_noting(monkeypatch, "mlflow")
    with pytest.raises(Stopped):
        open_tracker(spec, small_store.run_dir, CAMPAIGN)
    resumed = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("merges").experiment_id])
    assert resumed.trackers[0].run_id == run.info.run_id
    assert run.data.params["algorithm.population"] == "16"


@pytest.mark.parametrize("note", ["logged", "generation"])
def test_points_logged_before_a_stop_are_not_logged_again_by_the_resume(small_store, tmp_path, monkeypatch, note):
    """Stopped between logging to MLflow and noting it in tracking.json: the resume offers the same
    points again, and the run keeps one of each."""
    from mlflow import MlflowClient

    from evo_merge.report.tracking import follow_campaign

    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    objectives = Objectives.of(TASKS, ["maximize"] * 2)
    evaluations = small_store.evaluations()

    def generation_one():  # what follow_campaign reads of a CampaignRunner
        workspace = SimpleNamespace(run_dir=small_store.run_dir, store=small_store,
                                    campaign=CAMPAIGN.model_copy(update={"tracking": spec}))
        runner = SimpleNamespace(workspace=workspace, objectives=objectives, on_generation=[])
        tracker = follow_campaign(runner)
        runner.on_generation[0](1, evaluations)
        return tracker

    stop_when_noting(monkeypatch, note)
    with pytest.raises(Stopped):
        generation_one()
    run_id = generation_one().trackers[0].run_id
    client = MlflowClient(uri)
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert [m.step for m in client.get_metric_history(run_id, "generation/hypervolume")] == [1]
    assert len(client.get_metric_history(run_id, "estimated/alpha")) == len(evaluations)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_damaged_tracking_json_is_one_user_error_naming_it(small_store, tmp_path, text):
    (small_store.run_dir / IDS_FILE).write_text(text)
    spec = TrackingSpec.model_validate({"mlflow": {"uri": (tmp_path / "mlruns").as_uri(), "experiment": "merges"}})
    with pytest.raises(UserError, match=f"^{small_store.run_dir / IDS_FILE}: damaged"):
        open_tracker(spec, small_store.run_dir, CAMPAIGN)


def test_an_estimate_refined_later_is_logged_again_and_ends_as_stored(small_store, tmp_path):
    """An adaptive test continued before the final phase gives an evaluation more items and a new
    estimate after its generation logged the first: the tracker must end with the stored one. A
    ledger written before estimates were named by their items ("estimated") logs none again."""
    from dataclasses import replace

    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    spec = TrackingSpec.model_validate({"mlflow": {"uri": uri, "experiment": "merges"}})
    first, second = small_store.evaluations()[1:3]
    tracker = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    tracker.log_evaluations([first])
    tracker.log_evaluations([second])
    refined = replace(first, estimates={"alpha": 0.66, "beta": 0.12}, items_evaluated=first.items_evaluated + 6)
    tracker.log_evaluations([refined])
    tracker.log_evaluations([refined])  # a resume offers it again: once is enough
    client = MlflowClient(uri)
    run_id = tracker.trackers[0].run_id
    history = client.get_metric_history(run_id, "estimated/alpha")
    assert sorted((m.step, m.value) for m in history) == [(first.id, 0.6), (first.id, 0.66), (second.id, 0.4)]
    ids = json.loads((small_store.run_dir / IDS_FILE).read_text())
    ids["logged"][str(second.id)] = ["estimated"]  # as an older version wrote it
    (small_store.run_dir / IDS_FILE).write_text(json.dumps(ids))
    resumed = open_tracker(spec, small_store.run_dir, CAMPAIGN)
    resumed.log_evaluations([replace(second, items_evaluated=second.items_evaluated + 6)])
    assert len(client.get_metric_history(run_id, "estimated/beta")) == 3  # first, refined first, second


def test_a_relative_file_store_lies_in_the_campaign_s_folder(tmp_path):
    from evo_merge.search.workspace import resolve_campaign

    stores = {}
    for uri in ("file:./mlruns", "./mlruns", "http://host:5000", "databricks", "sqlite:///mlflow.db"):
        spec = CAMPAIGN.model_copy(update={"tracking": TrackingSpec.model_validate({"mlflow": {"uri": uri}})})
        stores[uri] = resolve_campaign(spec, tmp_path / "configs").tracking.mlflow.uri
    assert stores["file:./mlruns"] == stores["./mlruns"] == f"file:{tmp_path / 'configs' / 'mlruns'}"
    assert [stores[u] for u in ("http://host:5000", "databricks", "sqlite:///mlflow.db")] == \
        ["http://host:5000", "databricks", "sqlite:///mlflow.db"]


def test_missing_tracking_package_is_a_user_error_naming_the_extra(small_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: `import mlflow` raises ImportError
    spec = TrackingSpec.model_validate({"mlflow": {"uri": "file:./mlruns"}})
    with pytest.raises(UserError, match=r"tracking\.mlflow: .*evo-merge\[tracking\]"):
        open_tracker(spec, small_store.run_dir, CAMPAIGN)


def wandb_records(run_dir):
    """(kind, record) of a finished offline W&B run; its service may still be writing the log
    after `finish()` returns, so wait (a few seconds at most) for the closing `exit` record."""
    deadline = time.time() + 60
    records = read_wandb_log(run_dir)
    while not any(kind == "exit" for kind, _ in records) and time.time() < deadline:
        time.sleep(0.2)
        records = read_wandb_log(run_dir)
    return records


def read_wandb_log(run_dir):
    """Records of an offline W&B run log, parsed with W&B's own protobuf (records in 32 KiB
    blocks behind a 7-byte file header, each chunk behind crc/length/type, as in LevelDB's log)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    raw, pos, chunk, out = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = chunk + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full or last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append((record.WhichOneof("record_type"), record))
            chunk = b""
    return out


def test_wandb_offline_run_logs_a_step_per_generation(small_store, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = TrackingSpec.model_validate({"wandb": {"project": "merges", "mode": "offline"}})
    run_through(open_tracker(spec, small_store.run_dir, CAMPAIGN), small_store)
    records = wandb_records(small_store.run_dir)
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for kind, r in records
        if kind == "history"
    ]
    generations = [
        (h["generation"], round(h["generation/hypervolume"], 6)) for h in history if "generation/hypervolume" in h
    ]
    assert generations == [(1, 0.18), (2, 0.21)]
    assert [h["measured/alpha"] for h in history if "measured/alpha" in h] == [0.45]
    assert {"run", "artifact", "exit"} <= {kind for kind, _ in records}


def test_wandb_summary_holds_each_picks_scores_on_the_held_out_items(small_store, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _with_held_out_pick(small_store)
    spec = TrackingSpec.model_validate({"wandb": {"project": "merges", "mode": "offline"}})
    run_through(open_tracker(spec, small_store.run_dir, CAMPAIGN), small_store)
    summary = {}
    for kind, record in wandb_records(small_store.run_dir):
        if kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    held = {k: v for k, v in summary.items() if k.startswith("heldout/")}
    assert held == {"heldout/balanced/alpha": 0.5, "heldout/balanced/beta": 1.0, "heldout/best-alpha/alpha": 0.5,
                    "heldout/best-alpha/beta": 1.0, "heldout/best-beta/alpha": 0.5, "heldout/best-beta/beta": 1.0}


def test_the_ledger_is_written_once_per_batch_and_logs_nothing_twice(small_store, monkeypatch):
    """tracking.json was read and rewritten after every evaluation: a campaign's logging grew as the
    square of its evaluations (188 s over 8,000 with a tracker that did nothing)."""
    from evo_merge.report.tracking import Trackers, _RunIds

    class Recording:  # a tracker of its own: what it is asked to log
        label = "recording"

        def __init__(self):
            self.logged = []

        def log_evaluation(self, evaluation):
            self.logged.append(evaluation.id)

    recording = Recording()
    ledger = small_store.run_dir / IDS_FILE
    trackers = Trackers([recording], small_store.run_dir)
    evaluations = small_store.evaluations()
    writes, write = [], _RunIds.set
    monkeypatch.setattr(_RunIds, "set", lambda self, key, value: (writes.append(key), write(self, key, value)))
    trackers.log_evaluations(evaluations)
    trackers.log_evaluations(evaluations)  # nothing new: not logged, not written
    assert recording.logged == [e.id for e in evaluations] and writes == ["logged"]
    assert set(json.loads(ledger.read_text())["logged"]) == {str(e.id) for e in evaluations}
