"""Experiment tracking: a campaign reported live to MLflow and/or Weights & Biases.

People who run long campaigns follow them where they follow their other experiments. The study
loop reports through the small `Tracker` protocol: one call per finished generation (hypervolume,
best estimate per task, item evaluations spent), one per stored evaluation (its genome, estimated
and measured scores), and `finish` with the run folder, which uploads the evaluation table, the
report and the plots as artifacts, and the picks' scores on the held-out items (`heldout/PICK/TASK`).
One campaign is one tracker run: its id is kept in the run folder (`tracking.json`), so
`evo-merge resume` continues the same run. Trackers only observe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from evo_merge.config import Campaign, MLflowSpec, TrackingSpec, WandbSpec
from evo_merge.errors import UserError, first_line
from evo_merge.files import atomic_write, parse_json
from evo_merge.search.candidate import Candidate
from evo_merge.search.holdout import HOLDOUT_META, held_out_scores
from evo_merge.search.layout import CAMPAIGN_FILE, PARETO_CSV, PARETO_PNG, PROGRESS_PNG, REPORT_HTML, REPORT_MD
from evo_merge.search.metrics import recorded_metrics
from evo_merge.search.store import BASELINE, CALIBRATION, CampaignStore, Evaluation

log = logging.getLogger(__name__)
IDS_FILE = "tracking.json"
RUN_KEY_TAG = "evo_merge.run_key"
EXTRA = "pip install 'evo-merge[tracking]'"
# a tracking server that refuses or drops connections: MLflow's defaults (7 retries, 120 s each) kept a run
# waiting over 4 minutes, silent, before its first evaluation; these give up within about half a minute
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
ARTIFACTS = (CAMPAIGN_FILE, REPORT_MD, REPORT_HTML, PARETO_CSV, PARETO_PNG, PROGRESS_PNG)


class Tracker(Protocol):
    """What the study loop calls; every method is cheap next to an evaluation."""

    label: str  # the campaign key it is configured by, for messages

    def log_generation(self, generation: int, metrics: Mapping[str, float]) -> None: ...

    def log_evaluation(self, evaluation: Evaluation) -> None: ...

    def finish(self, run_dir: Path) -> None: ...


def evaluation_record(evaluation: Evaluation) -> dict[str, Any]:
    """One evaluation flat: id, phase, generation, status, genome (method, weight per endpoint,
    parameters), estimated and measured score per task."""
    candidate = Candidate.from_key(evaluation.key)
    record: dict[str, Any] = {"id": evaluation.id, "phase": evaluation.phase, "generation": evaluation.generation,
                              "status": evaluation.status, "method": candidate.method,
                              "items": evaluation.items_evaluated}
    record.update({f"weight_{i}": w for i, w in enumerate(candidate.weights)})
    record.update({f"param_{k}": v for k, v in candidate.params})
    for kind, scores in (("estimated", evaluation.estimates), ("measured", evaluation.measured)):
        record.update({f"{kind}_{task}": value for task, value in (scores or {}).items()})
    return record


def flat_params(campaign: Campaign) -> dict[str, str]:
    """The campaign as dotted key -> text, for a tracker's run parameters."""
    def walk(prefix: str, value: Any) -> dict[str, str]:
        if isinstance(value, dict) and value:
            return {k: v for key, item in value.items() for k, v in walk(f"{prefix}{key}.", item).items()}
        return {prefix.rstrip("."): json.dumps(value) if isinstance(value, (list, dict)) else str(value)}

    return walk("", campaign.model_dump(mode="json", exclude={"tracking"}))


def metric_name(name: str) -> str:
    """A task label made safe as a metric key (MLflow and W&B allow letters, digits, _-. /)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {metric_name(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _scores(evaluation: Evaluation) -> dict[str, float]:
    out = {f"estimated/{t}": v for t, v in (evaluation.estimates or {}).items()}
    out.update({f"measured/{t}": v for t, v in (evaluation.measured or {}).items()})
    return _finite(out)


class _RunIds:
    """Tracker run ids (and the last generation logged) of a campaign, kept in its run folder so a
    resume continues the same runs."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / IDS_FILE

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            ids = parse_json(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            ids = None
        if not isinstance(ids, dict):
            raise UserError(f"{self.path}: damaged (not the JSON object evo-merge writes); restore it from a backup, "
                            "or delete it to log the rest of the campaign to a new tracker run")
        return ids

    def get(self, key: str) -> Any:
        return self._read().get(key)

    def set(self, key: str, value: Any) -> None:
        """Read, change, write: several holders in one process (each tracker, the study loop's hook)
        keep each other's keys."""
        ids = {**self._read(), key: value}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(ids, indent=2) + "\n")


def _existing(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]


def evaluation_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluation of the run, from its store (complete even when a resume skipped some live
    calls), with the picks it was exported as (`picked_as`, names joined by commas) and, for those,
    their mean score on each task's held-out items (`heldout_TASK`: what their cards publish)."""
    store = CampaignStore(run_dir)
    try:
        holdout = store.get_meta(HOLDOUT_META, {})
        picked: dict[int, list[str]] = {}
        for name, (eid, _) in store.exported().items():
            picked.setdefault(eid, []).append(name)
        rows = []
        for evaluation in store.evaluations():
            row = {**evaluation_record(evaluation), "picked_as": ",".join(picked.get(evaluation.id, []))}
            if evaluation.id in picked:
                held = held_out_scores(store, evaluation.key, holdout) or {}
                row.update({f"heldout_{task}": value for task, value in held.items()})
            rows.append(row)
        return rows
    finally:
        store.close()


def held_out_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`heldout/PICK/TASK` of each exported pick measured on the held-out items: the scores a
    leaderboard would see, to compare across campaigns in the tracker."""
    return _finite({f"heldout/{pick}/{key.removeprefix('heldout_')}": value for row in rows if row["picked_as"]
                    for pick in row["picked_as"].split(",") for key, value in row.items()
                    if key.startswith("heldout_")})


class MLflowTracker:
    """One MLflow run per campaign, through `MlflowClient` (no global active run to leak)."""

    label = "tracking.mlflow"

    def __init__(self, spec: MLflowSpec, run_dir: Path, campaign: Campaign):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = spec.uri
        if uri and (uri.startswith("file:") or "://" not in uri):  # asked for by name: MLflow 3 wants an opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for name, value in HTTP_RETRIES.items():  # unless the user set them: seconds, not MLflow's minutes
            os.environ.setdefault(name, value)
        ids = _RunIds(run_dir)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = ids.get("mlflow") or self._start(spec, campaign, ids)
        except MlflowException as exc:
            raise UserError(f"tracking.mlflow: {first_line(exc)}") from None
        try:  # a resumed run continues its MLflow run: it must be in this store, or nothing is logged
            run = self.client.get_run(self.run_id)
        except MlflowException:
            raise UserError(f"tracking.mlflow: this run logged to MLflow run {self.run_id} (tracking.json), which "
                            f"the store {self.client.tracking_uri} does not hold; point tracking.mlflow.uri at the "
                            f"store it was logged to, or move {IDS_FILE} out of the run folder to log to a new "
                            "MLflow run") from None
        ids.set("mlflow", self.run_id)
        self._held = self._points(run)

    def _start(self, spec: MLflowSpec, campaign: Campaign, ids: _RunIds) -> str:
        """The campaign's MLflow run, found by a key noted in tracking.json before the run is created:
        a campaign stopped between creating it and noting its id continues that run, not a second one."""
        from mlflow.entities import Param

        key = ids.get("mlflow_key") or uuid.uuid4().hex
        ids.set("mlflow_key", key)
        experiment = self.client.get_experiment_by_name(spec.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(spec.experiment)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'")
        run = found[0] if found else self.client.create_run(
            experiment_id, run_name=campaign.name, tags={"evo_merge.campaign": campaign.name, RUN_KEY_TAG: key})
        items = [Param(k[:250], v[:6000]) for k, v in flat_params(campaign).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch (same values: no-op)
            self.client.log_batch(run.info.run_id, params=items[start:start + 100])
        return run.info.run_id

    def _points(self, run: Any) -> dict[tuple[str, int], float]:
        """The last value the run holds at each metric and step: a campaign stopped between logging a
        point and noting it in tracking.json offers it again when resumed, and MLflow would keep both."""
        history = [m for key in run.data.metrics for m in self.client.get_metric_history(self.run_id, key)]
        return {(m.key, m.step): m.value for m in sorted(history, key=lambda m: m.timestamp)}

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = {(k, step): v for k, v in values.items() if self._held.get((k, step)) != v}
        if points:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, s) for (k, s), v in points.items()])
            self._held.update(points)

    def log_generation(self, generation: int, metrics: Mapping[str, float]) -> None:
        self._metrics(_finite({f"generation/{k}": v for k, v in metrics.items()}), generation)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        self._metrics(_scores(evaluation), evaluation.id)

    def finish(self, run_dir: Path) -> None:
        rows = evaluation_rows(run_dir)
        self._metrics(held_out_metrics(rows), 0)
        self.client.log_dict(self.run_id, rows, "evaluations.json")
        for path in _existing(run_dir):
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")


class WandbTracker:
    """One W&B run per campaign; `offline` mode writes under the run folder for `wandb sync`."""

    label = "tracking.wandb"

    def __init__(self, spec: WandbSpec, run_dir: Path, campaign: Campaign):
        import wandb

        self.wandb = wandb
        ids = _RunIds(run_dir)
        run_id = ids.get("wandb") or uuid.uuid4().hex[:8]
        try:
            self.run = wandb.init(project=spec.project, entity=spec.entity, mode=spec.mode, dir=str(run_dir),
                                  id=run_id, resume="allow", name=campaign.name, config=flat_params(campaign),
                                  reinit="create_new")
        except wandb.errors.Error as exc:
            raise UserError(f"tracking.wandb: {first_line(exc)}") from None
        ids.set("wandb", run_id)
        self.run.define_metric("generation")
        self.run.define_metric("generation/*", step_metric="generation")
        self.run.define_metric("evaluation")
        self.run.define_metric("estimated/*", step_metric="evaluation")
        self.run.define_metric("measured/*", step_metric="evaluation")

    def log_generation(self, generation: int, metrics: Mapping[str, float]) -> None:
        self.run.log({**_finite({f"generation/{k}": v for k, v in metrics.items()}), "generation": generation})

    def log_evaluation(self, evaluation: Evaluation) -> None:
        self.run.log({**_scores(evaluation), "evaluation": evaluation.id})

    def finish(self, run_dir: Path) -> None:
        import pandas as pd

        rows = evaluation_rows(run_dir)
        self.run.summary.update(held_out_metrics(rows))
        self.run.log({"evaluations": self.wandb.Table(dataframe=pd.DataFrame(rows))})
        name = metric_name(self.run.name or "campaign").replace(" ", "_")
        artifact = self.wandb.Artifact(f"{name}-report", type="report")
        for path in _existing(run_dir):
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        self.run.finish()


class Trackers:
    """Several trackers as one (MLflow and W&B together); none is a valid, silent tracker.

    With a run folder, each evaluation's estimates and measurements are logged once: what was
    logged is noted in tracking.json (`logged`: evaluation id -> parts), so a resume, a run cut
    short while logging its final phase, or a search that measures every item (`kind: full`)
    logs nothing twice. An estimate refined later (an adaptive test continued before the final
    phase) is a new estimate and is logged too, so the tracker ends with the report's figures."""

    def __init__(self, trackers: Sequence[Tracker] = (), run_dir: Path | None = None):
        self.trackers = list(trackers)
        self._ids = _RunIds(run_dir) if run_dir is not None and self.trackers else None
        self._logged: dict[str, list[str]] = dict(self._ids.get("logged") or {}) if self._ids is not None else {}

    def _each(self, call: Callable[[Tracker], None]) -> None:
        """`call` each tracker; one that fails (a tracking server gone, its store removed) is named in
        one line and left out from then on: trackers only observe, and a run of hours goes on."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 (whatever a tracking backend raises)
                log.warning("%s: logging failed (%s); the run goes on without it, and it lacks what follows",
                            tracker.label, first_line(exc))
                self.trackers.remove(tracker)

    def log_generation(self, generation: int, metrics: Mapping[str, float]) -> None:
        self._each(lambda tracker: tracker.log_generation(generation, metrics))

    def log_evaluations(self, evaluations: Iterable[Evaluation]) -> None:
        """Log what each evaluation adds (its estimate, its measurement) that no tracker has yet,
        then note it in tracking.json once for the batch: a ledger rewritten per evaluation made a
        campaign's logging quadratic (188 s over 8,000 evaluations). A run killed inside a batch
        logs that batch again on resume (the trackers keep both values at the same step)."""
        added = False
        for evaluation in evaluations:
            done = set(self._logged.get(str(evaluation.id), ()))
            # an estimate is named by the items behind it: an adaptive test continued before the final
            # phase gives a new one, logged again (at the same step); a ledger written before kept "estimated"
            estimated = "estimated" if "estimated" in done else f"estimated@{evaluation.items_evaluated}"
            parts = {estimated: evaluation.estimates, "measured": evaluation.measured}
            new = {part for part, scores in parts.items() if scores and part not in done}
            if not new:
                continue
            shown = replace(evaluation, estimates=evaluation.estimates if estimated in new else None,
                            measured=evaluation.measured if "measured" in new else None)
            self._each(lambda tracker, shown=shown: tracker.log_evaluation(shown))
            self._logged[str(evaluation.id)] = sorted(done | new)
            added = True
        if added and self._ids is not None:  # read once at open (this process alone logs)
            self._ids.set("logged", self._logged)

    def finish(self, run_dir: Path) -> None:
        self._each(lambda tracker: tracker.finish(run_dir))
        if self._ids is not None:
            self._ids.set("finished", True)  # a later `resume` of the finished run has nothing to log


def follow_campaign(runner: Any) -> Trackers:
    """Open a `CampaignRunner`'s trackers and hook them to its study loop: as each generation
    ends, its evaluations and the generation's metrics; with the first, the calibration merges
    (base, endpoints, warm-ups), measured before the search. A resumed run replays its stored
    generations through the loop; those already logged (noted in tracking.json) are not logged twice,
    and a finished run logged to the end opens no tracker."""
    workspace = runner.workspace
    runner.followed = True
    ids = _RunIds(workspace.run_dir)
    if ids.get("finished"):  # everything was logged: no tracker run is reopened (W&B would start another file)
        return Trackers()
    tracker = open_tracker(workspace.campaign.tracking, workspace.run_dir, workspace.campaign)
    if not tracker.trackers:
        return tracker

    def on_generation(generation: int, evaluations: list[Evaluation]) -> None:
        logged = int(ids.get("generation") or 0)
        if generation <= logged:
            return
        if not logged:  # the calibration merges (base, endpoints, warm-ups) first, measured before the search:
            # the standard warm-ups are stored as baselines (the search seeds them, or never evaluates them)
            store = workspace.store
            evaluations = store.evaluations(CALIBRATION) + store.evaluations(BASELINE) + evaluations
        tracker.log_evaluations({e.id: e for e in evaluations}.values())
        tracker.log_generation(generation, recorded_metrics(workspace.store, runner.objectives, [generation])[0])
        ids.set("generation", generation)

    runner.on_generation.append(on_generation)
    return tracker


TRACKERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}  # a tracking key, named as its package


def _named(spec: TrackingSpec | None) -> list[str]:
    """The tracking keys the campaign sets."""
    return [] if spec is None else [key for key in TRACKERS if getattr(spec, key) is not None]


def check_tracker_packages(spec: TrackingSpec | None) -> None:
    """Each tracker the campaign names has its package: `run` (before any evaluation) and `plan`
    (which starts no tracker) refuse a campaign without it alike."""
    for key in _named(spec):
        try:
            __import__(key)
        except ImportError:
            raise UserError(f"tracking.{key}: the {key} package is not installed ({EXTRA})") from None


def open_tracker(spec: TrackingSpec | None, run_dir: str | Path, campaign: Campaign) -> Trackers:
    """The campaign's trackers, started (or continued) before any evaluation, so a missing package
    or an unreachable server stops the run before it spends anything."""
    check_tracker_packages(spec)
    return Trackers([TRACKERS[key](getattr(spec, key), Path(run_dir), campaign) for key in _named(spec)],
                    Path(run_dir))
