"""The campaign schema (`evo-merge run CAMPAIGN.yaml`), with errors that name the key.

Merge recipes have their own schema beside the merge engine (`evo_merge.merge.recipe`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from evo_merge.align.methods import AlignMethod
from evo_merge.errors import UserError
from evo_merge.schema import Strict, load_yaml, validate

ANCHOR_METHODS = ("kmeans-irt", "kmeans-correctness", "stratified", "random")
ESTIMATOR_KINDS = ("anchor", "pirt", "gpirt", "mpirt", "gmpirt", "full")
DEFAULT_METHODS = {"task_arithmetic": {}, "ties": {}, "dare_ties": {}, "tsv": {}}


class TaskSpec(Strict):
    """One objective: a shipped benchmark name, an lm-eval task, a local YAML/folder or `module:attr`."""

    task: str
    name: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="keyword arguments for the task (plugin factory or lm-eval adapter)")

    @property
    def label(self) -> str:
        return self.name or Path(self.task.split(":")[-1]).stem


class Coefficients(Strict):
    low: float = 0.0
    high: float = 1.5

    @model_validator(mode="after")
    def _nonempty(self) -> Coefficients:
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        return self


class EstimatorSpec(Strict):
    """How candidates are scored: `full` scores every item (the expensive baseline)."""

    kind: Literal["anchor", "pirt", "gpirt", "mpirt", "gmpirt", "full"] = "gpirt"
    anchors: int = Field(20, ge=1, description="anchor items per task scenario")
    anchor_method: Literal["kmeans-irt", "kmeans-correctness", "stratified", "random"] = "kmeans-irt"
    irt_model: str | None = Field(None, description="fitted IRT folder per task name; None: fit from calibration")
    backend: Literal["torch", "pyirt"] = "torch"
    dims: int | Literal["auto"] = "auto"
    warmup_merges: int = Field(8, ge=0, description="random merges evaluated on all items to calibrate IRT")


# pymoo's MOEA/D is steady-state (one candidate per ask), which would evaluate one candidate at a
# time; NSGA-III and SMS-EMOA cover many objectives with a generation batched over the evaluator
MULTI_OBJECTIVE_ALGORITHMS = ("nsga2", "nsga3", "smsemoa")
SINGLE_OBJECTIVE_ALGORITHMS = ("ga", "cmaes")
AlgorithmName = Literal["nsga2", "nsga3", "smsemoa", "ga", "cmaes"]


class AlgorithmSpec(Strict):
    """A pymoo algorithm by name: multi-objective (one objective per task) or single-objective
    (`ga`, `cmaes`: the weighted sum declared in `objective.weights`)."""

    name: AlgorithmName = "nsga2"
    population: int = Field(16, ge=2)
    generations: int = Field(8, ge=1)
    seed: int = 0
    seed_standard_merges: bool = Field(
        False, description="start generation 1 with the standard merges of the configured methods "
        "(task arithmetic lambda 0.3-1, TIES density 0.2, TSV-M alpha 1; weight 1 each), the rest random")


class ObjectiveSpec(Strict):
    """A single weighted objective over the tasks, for single-objective algorithms (scores are
    oriented by each task's direction before weighting); every task is still estimated and stored."""

    weights: dict[str, float] | None = Field(None, description="task name -> weight")


class EvaluatorSpec(Strict):
    """Where candidates are evaluated: in this process (`local`), or on a dask.distributed cluster
    (`dask`: an existing scheduler at `address`, or a LocalCluster of `n_workers` processes)."""

    kind: Literal["local", "dask"] = "local"
    batch_size: int = Field(32, ge=1, description="evaluation batch size passed to every task")
    address: str | None = Field(None, description="scheduler address (tcp://host:8786) of a running cluster")
    n_workers: int | None = Field(None, ge=1, description="start a LocalCluster of this many workers "
                                  "(one per GPU at most when evaluating on GPUs)")

    @model_validator(mode="after")
    def _placement(self) -> EvaluatorSpec:
        if self.kind == "local":
            extra = "address" if self.address is not None else "n_workers" if self.n_workers is not None else None
            if extra:
                raise ValueError(f"{extra}: only for kind: dask")
        elif (self.address is None) == (self.n_workers is None):
            raise ValueError("kind dask: give either `address` (a running scheduler) or `n_workers` "
                             "(start a local cluster), not both")
        return self


class FinalSpec(Strict):
    evaluate_top: int = Field(8, ge=1, description="front members evaluated on every item")
    export: list[Literal["best_per_task", "balanced", "front"]] = Field(default_factory=lambda: ["best_per_task", "balanced"])


class AlignSpec(Strict):
    """Align endpoints trained from different initialisations once, before the search."""

    method: AlignMethod = "weight"
    arch: str = Field(description="mlp, cnn, resnet, llama, gpt2, or a permutation-spec YAML file")
    data: str | None = Field(None, description="sample for activation-based methods (.safetensors x[,y] or text)")
    reference: Literal["first", "mean"] = Field("first", description="base of the task vectors after alignment")
    seed: int = 0


class MLflowSpec(Strict):
    uri: str | None = Field(None, description="tracking URI (http://host:5000, file:./mlruns); None: MLFLOW_TRACKING_URI")
    experiment: str = "evo-merge"


class WandbSpec(Strict):
    project: str
    mode: Literal["offline", "online"] = "offline"
    entity: str | None = None


class TrackingSpec(Strict):
    """Experiment trackers the campaign reports to (`pip install 'evo-merge[tracking]'`); they
    observe the run and never change what it computes."""

    mlflow: MLflowSpec | None = None
    wandb: WandbSpec | None = None


class Campaign(Strict):
    """A search campaign (`evo-merge run CAMPAIGN.yaml`). Relative paths are taken against the file's folder."""

    name: str = "campaign"
    base_model: str | None = Field(None, description="required unless `align` picks the reference")
    align: AlignSpec | None = None
    models: list[str] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    methods: dict[str, dict[str, tuple[float, float]]] = Field(default_factory=lambda: dict(DEFAULT_METHODS))
    coefficients: Coefficients = Field(default_factory=Coefficients)
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    final: FinalSpec = Field(default_factory=FinalSpec)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto (cuda when available) | cpu | cuda | cuda:N")
    tracking: TrackingSpec | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: dict[str, dict[str, tuple[float, float]]]) -> dict:
        from evo_merge.merge.kinds import kind_hyperparameters  # each kind declares its hyperparameters

        if not methods:
            raise ValueError("give at least one merge method")
        for name, ranges in methods.items():
            try:
                declared = {h.name: h for h in kind_hyperparameters(name) if h.searchable}
            except UserError as exc:
                raise ValueError(f"{name}: {exc}") from None
            for key, (low, high) in ranges.items():
                if key not in declared:
                    known = ", ".join(declared) or "none"
                    raise ValueError(f"{name}.{key}: not a searchable parameter of {name} (searchable: {known})")
                if not low < high:
                    raise ValueError(f"{name}.{key}: empty range [{low}, {high}]")
        return methods

    @model_validator(mode="after")
    def _base(self) -> Campaign:
        if self.base_model is None and self.align is None:
            raise ValueError("base_model: required (or give `align` to merge models from different initialisations)")
        return self

    @model_validator(mode="after")
    def _unique_tasks(self) -> Campaign:
        labels = [t.label for t in self.tasks]
        dup = next((label for label in labels if labels.count(label) > 1), None)
        if dup:
            raise ValueError(f"two tasks are named {dup!r}: give them distinct `name`s")
        return self

    @model_validator(mode="after")
    def _objectives(self) -> Campaign:
        labels = [t.label for t in self.tasks]
        weights = self.objective.weights
        if weights is not None:
            unknown = next((k for k in weights if k not in labels), None)
            if unknown is not None:
                raise ValueError(f"objective.weights.{unknown}: not a task name (tasks: {', '.join(labels)})")
            if not any(w > 0 for w in weights.values()):
                raise ValueError("objective.weights: give at least one positive weight")
        name = self.algorithm.name
        if name in SINGLE_OBJECTIVE_ALGORITHMS and weights is None and len(labels) > 1:
            raise ValueError(f"algorithm.name: {name} optimises one objective; declare objective.weights "
                             "(e.g. {task: 1, ...}) or pick a multi-objective algorithm")
        if name in MULTI_OBJECTIVE_ALGORITHMS and weights is not None:
            raise ValueError(f"objective.weights: {name} optimises every task; weights are for ga or cmaes")
        if name == "nsga3" and len(labels) < 2:
            raise ValueError(f"algorithm.name: {name} needs at least two tasks")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Campaign:
        return validate(cls, load_yaml(path), path)
