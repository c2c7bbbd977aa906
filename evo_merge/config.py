"""The campaign schema (`evo-merge run CAMPAIGN.yaml`), with errors that name the key.

Merge recipes have their own schema beside the merge engine (`evo_merge.merge.recipe`).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evo_merge.align.methods import NEEDS_DATA, AlignMethod
from evo_merge.dtype_names import NAMES, dtype_key, float32_refusal
from evo_merge.errors import UserError
from evo_merge.irt.kinds import (
    ADAPTIVE,
    ANCHOR_ALLOCATIONS,
    ANCHOR_METHODS,
    AUTOMATIC_ANCHOR_METHODS,
    BACKEND_NAMES,
    BALANCED_ANCHOR_METHODS,
    CAMPAIGN_ESTIMATOR_KINDS,
    DEFAULT_ANCHOR_BALANCE,
    DEFAULT_ANCHOR_METHOD,
    DEFAULT_ESTIMATOR_KIND,
    FULL_EVALUATION,
    MAX_ANCHOR_BALANCE,
    MIN_CLUSTER_SUBJECTS,
)
from evo_merge.markup import TERMINAL_CONTROL
from evo_merge.schema import Strict, is_path_like, load_yaml, refuse_other_kind, validate
from evo_merge.shipped import shipped_benchmark, shipped_dir
from evo_merge.user_paths import expand_home

# Names that become file or folder names in a run (IRT models, exported picks): no separators,
# no `..`, no leading dot or dash, so a config can never reach outside its run folder; at most 100
# characters, so `best-<task>` and its hidden temporary sibling stay within a file name's 255.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def is_safe_name(value: str) -> bool:
    """Whether `value` may name a file or folder the tool writes (a task's, a pick's): one name, no
    path, no `..`, nothing a shell or another file system reads otherwise."""
    return bool(SAFE_NAME.fullmatch(value)) and ".." not in value


def check_safe_name(value: str) -> str:
    """`value` if it may become a path component, else ValueError (validators add the key path)."""
    if not is_safe_name(value):
        raise ValueError(f"{value!r} is not a safe name: use up to 100 letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit, without '..'")
    return value


def check_printable(value: str) -> str:
    """`value` if it holds no character that drives a terminal, else ValueError: a run prints its
    name and its models as named, where an escape sequence retitled, recoloured or overwrote the
    terminal of whoever looked (audit 116). What a run folder already records is shown as text
    when read (`markup.visible`), not refused."""
    if bad := TERMINAL_CONTROL.search(value):
        raise ValueError(f"{value!r} holds the control character {bad[0]!r}")
    return value


PrintableText = Annotated[str, AfterValidator(check_printable)]


class _Checked(Strict):
    """A campaign section: every float must be finite (`.inf` or `.nan` is refused at load)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


DEFAULT_METHODS = {"task_arithmetic": {}, "ties": {}, "dare_ties": {}, "tsv": {}}


Direction = Literal["maximize", "minimize"]  # a task's score: higher or lower is better


class TaskSpec(_Checked):
    """One objective: a shipped benchmark name, an lm-eval task, a local YAML/folder or `module:attr`."""

    task: str
    name: str | None = None
    direction: Direction = "maximize"
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="keyword arguments for the task (plugin factory or lm-eval adapter)")

    @property
    def label(self) -> str:
        return self.name or Path(self.task.split(":")[-1]).stem

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return None if value is None else check_safe_name(value)

    @model_validator(mode="after")
    def _safe_label(self) -> TaskSpec:
        if self.name is None and not is_safe_name(self.label):  # the label names IRT and model folders
            raise ValueError(f"task {self.task!r}: its label {self.label!r} is not a safe folder name; give a `name`")
        return self


def _what_is_scored(spec: TaskSpec, root: Path | None = None) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """A task as what it scores, with its options: a shipped benchmark by its folder's name
    (`evo_arith`, and the absolute path of its folder or YAML, are `arith`); a path as its normal
    form, a relative one against `root`, the campaign file's folder, where the run reads it
    (`./x`, `x/`, `x` and `/abs/x` are one); anything else as written."""
    task = spec.task
    benchmarks = shipped_dir("benchmarks")
    if is_path_like(task):
        path = Path(os.path.normpath((root or Path()) / expand_home(task)))
        where, shipped = path.resolve(), benchmarks.resolve() if benchmarks is not None else None
        inside = shipped is not None and path.is_absolute() and where.is_relative_to(shipped)
        parts = where.relative_to(shipped).parts if inside else ()
        task = parts[0] if parts and (len(parts) == 1 or parts[-1].endswith((".yaml", ".yml"))) else str(path)
    elif (name := shipped_benchmark(task)) is not None:
        task = name
    return task, tuple(sorted(spec.options.items()))


GRANULARITY = re.compile(r"model|layer|blocks:[1-9][0-9]*")


def block_size(granularity: str) -> int | None:
    """Blocks per weight group of a checked granularity; None for one weight per endpoint."""
    return None if granularity == "model" else int(granularity.removeprefix("blocks:"))


class Coefficients(_Checked):
    """The endpoint coefficients' range, and how finely they vary over the model: `model` (one per
    endpoint), `blocks:N` (one per endpoint per group of N transformer blocks, plus one for the
    tensors outside the blocks), `layer` (= `blocks:1`)."""

    low: float = 0.0
    high: float = 1.5
    granularity: str = "model"

    @field_validator("low", "high")
    @classmethod
    def _scales_float32(cls, value: float) -> float:
        """A span of +/-1e308 overflowed, and the search explored nothing (audit 96)."""
        if why := float32_refusal(value):
            raise ValueError(why)
        return value

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        match = GRANULARITY.fullmatch(value)
        if match is None:
            raise ValueError(f"expected model, layer or blocks:N with N >= 1, got {value!r}")
        return "blocks:1" if value == "layer" else value  # one spelling per genome, one candidate key

    @property
    def block_size(self) -> int | None:
        return block_size(self.granularity)

    @model_validator(mode="after")
    def _nonempty(self) -> Coefficients:
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        return self


# the estimator settings that apply to some kinds only (EstimatorSpec.ignored_settings)
_ANCHOR_SETTINGS = frozenset({"anchors", "anchor_method", "anchor_allocation", "anchor_sets", "anchor_balance"})
_ADAPTIVE_SETTINGS = frozenset({"target_se", "max_items"})
_FIT_SETTINGS = frozenset({"backend", "lr", "epochs", "dims", "warmup_merges", "warmup_standard"})


class EstimatorSpec(_Checked):
    """How candidates are scored: `full` scores every item (the expensive baseline)."""

    kind: Literal[CAMPAIGN_ESTIMATOR_KINDS] = DEFAULT_ESTIMATOR_KIND
    anchors: int = Field(20, ge=1, description="anchor items per task scenario (on average, with neyman)")
    anchor_method: Literal[ANCHOR_METHODS] = Field(
        DEFAULT_ANCHOR_METHOD, description=f"auto: stratified-irt with enough calibration subjects "
        f"({MIN_CLUSTER_SUBJECTS}), stratified below; a campaign's base, endpoints and warm-up merges are usually "
        "fewer. auto-kmeans: kmeans-irt with enough")
    anchor_allocation: Literal[ANCHOR_ALLOCATIONS] = Field(
        "neyman", description="neyman: a task's anchors (anchors x its scenarios) go where they cut the error "
        "of its score most; equal: `anchors` in each scenario")
    anchor_sets: int = Field(
        8, ge=1, le=1000, description="anchor sets drawn per task (each of `anchors` per scenario); each candidate "
        "is scored on one, chosen by its key: with few anchors, one set shared by every candidate makes the same "
        "errors for all of them and the front follows that set's luck")
    anchor_balance: int = Field(
        DEFAULT_ANCHOR_BALANCE, ge=1, le=MAX_ANCHOR_BALANCE, description="stratified and stratified-irt anchors: "
        "draws per set, the one whose anchors estimate the calibration subjects' own scores best kept (1: one draw)")
    irt_model: str | None = Field(None, description="fitted IRT folder per task name; None: fit from calibration")
    backend: Literal[BACKEND_NAMES] = "torch"
    lr: float | None = Field(None, gt=0, description="pyirt backend learning rate (None: its default)")
    epochs: int | None = Field(None, ge=1, description="pyirt backend training epochs (None: its default)")
    dims: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="IRT dimensions; auto: chosen on held-out subjects")
    warmup_merges: int = Field(8, ge=0, description="merges evaluated on every search item to calibrate IRT with "
                               "the base and the endpoints (see warmup_standard)")
    warmup_standard: bool = Field(
        True, description="the first warm-up merges are the standard merges the genome expresses, where they are "
        "candidates (final.baselines): measured whole once, they calibrate IRT and compete exactly measured; "
        "the rest are random")
    target_se: float = Field(0.03, gt=0, lt=1, description="adaptive: stop a task's test once its scenarios' "
                             "standard errors are below this")
    max_items: int = Field(50, ge=1, description="adaptive: at most this many items per scenario and candidate")

    @property
    def whole(self) -> bool:
        """Every candidate scored on every search item (`kind: full`): no estimator, no IRT."""
        return self.kind == FULL_EVALUATION

    @property
    def adaptive(self) -> bool:
        """Each candidate's items chosen from its answers so far, not fixed anchor sets."""
        return self.kind == ADAPTIVE

    @property
    def fits_irt(self) -> bool:
        """An IRT model is fitted on the calibration's responses here (none given by `irt_model`)."""
        return not self.whole and self.irt_model is None

    @property
    def reads_irt_model(self) -> bool:
        """The IRT models `irt_model` gives are read (a full evaluation reads none: it is said unused)."""
        return not self.whole and self.irt_model is not None

    def ignored_settings(self) -> list[str]:
        """The keys this file sets that its estimator never reads (`max_items` with `kind: gpirt`,
        `anchors` with `kind: full`, `dims` beside a fitted `irt_model`), each with the reason: a
        user who set one expects it to act. Said, not refused: a run folder's own campaign.yaml may
        carry one, and a resume must not fail on a key that changes nothing."""
        # set to something other than its default: a run folder's campaign.yaml writes every default out,
        # and each resume of a gpirt run said max_items and target_se were not used
        given = {key for key in self.model_fields_set - {"kind"}
                 if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)}
        unused: dict[str, str] = {}
        if self.whole:
            unused |= dict.fromkeys(given, "kind: full scores every item, no estimator")
        elif self.adaptive:
            unused |= dict.fromkeys(given & _ANCHOR_SETTINGS, "kind: adaptive picks each candidate's items itself")
        else:
            unused |= dict.fromkeys(given & _ADAPTIVE_SETTINGS, f"only for kind: adaptive, not {self.kind}")
            if self.anchor_method not in (*BALANCED_ANCHOR_METHODS, *AUTOMATIC_ANCHOR_METHODS):
                unused |= dict.fromkeys(given & {"anchor_balance"}, f"{self.anchor_method} anchors are not drawn "
                                        f"in strata: only {' and '.join(BALANCED_ANCHOR_METHODS)} ones are balanced")
        if self.reads_irt_model:
            unused |= dict.fromkeys(given & _FIT_SETTINGS, "irt_model gives a fitted IRT model: none is fitted here")
        by_reason: dict[str, list[str]] = {}
        for key, reason in sorted(unused.items()):
            by_reason.setdefault(reason, []).append(key)
        return [f"estimator: {', '.join(keys)} not used ({reason})" for reason, keys in by_reason.items()]

    @model_validator(mode="after")
    def _backend_settings(self) -> EstimatorSpec:
        """The torch backend's fit (L-BFGS) has neither: accepted, they failed the run after calibration."""
        given = next((key for key in ("lr", "epochs") if getattr(self, key) is not None), None)
        if given is not None and self.backend != "pyirt":
            raise ValueError(f"{given}: applies to backend: pyirt only (the {self.backend} backend's fit has none)")
        return self


LEGACY_SEEDS = 2**32  # the seeds numpy's legacy generator takes (CMA-ES's and py-irt's draws)

# pymoo's MOEA/D is steady-state (one candidate per ask), which would evaluate one candidate at a
# time; NSGA-III and SMS-EMOA cover many objectives with a generation batched over the evaluator
MULTI_OBJECTIVE_ALGORITHMS = ("nsga2", "nsga3", "smsemoa")
SINGLE_OBJECTIVE_ALGORITHMS = ("ga", "cmaes")
AlgorithmName = Literal[MULTI_OBJECTIVE_ALGORITHMS + SINGLE_OBJECTIVE_ALGORITHMS]


class AlgorithmSpec(_Checked):
    """A pymoo algorithm by name: multi-objective (one objective per task) or single-objective
    (`ga`, `cmaes`: the weighted sum declared in `objective.weights`)."""

    name: AlgorithmName = "nsga2"
    population: int = Field(16, ge=2)
    generations: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    seed_standard_merges: bool = Field(
        True, description="start generation 1 with each endpoint alone (looked up from calibration; "
        "not for cmaes) and the standard merges of the configured methods (task arithmetic lambda "
        "0.3-1 within its range, TIES density 0.2, TSV-M alpha 1; weight 1 each), the rest random")


class ObjectiveSpec(_Checked):
    """A single weighted objective over the tasks, for single-objective algorithms (scores are
    oriented by each task's direction before weighting); every task is still estimated and stored."""

    weights: dict[str, float] | None = Field(None, description="task name -> weight")


# what dask.distributed connects to: an optional scheme, a host (IPv6 in brackets) and a port
_DASK_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d{1,5}$")


class EvaluatorSpec(_Checked):
    """Where candidates are evaluated: in this process (`local`), or on a dask.distributed cluster
    (`dask`: an existing scheduler at `address`, or a LocalCluster of `n_workers` processes)."""

    kind: Literal["local", "dask"] = "local"
    batch_size: int = Field(32, ge=1, description="evaluation batch size passed to every task")
    sequence_tokens: int = Field(
        512, ge=1, description="the longest sequence the tasks score (prompt and continuation, in tokens): the "
        "memory plan sizes a batch's activations by it; it changes no result")
    address: str | None = Field(None, description="scheduler address (tcp://host:8786) of a running cluster")
    n_workers: int | None = Field(None, ge=1, description="start a LocalCluster of this many workers "
                                  "(one per GPU at most when evaluating on GPUs)")
    score_cache: str | None = Field(
        None, description="a file of item scores kept across runs: a later campaign on the same models, tasks and "
        "settings reads them instead of merging and scoring again (local evaluation only); None: no cache")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _DASK_ADDRESS.match(value):
            raise ValueError(f"{value!r} is not a dask scheduler address: [tcp|tls|ucx|ws|wss://]HOST:PORT, "
                             "e.g. tcp://head:8786")
        return value

    @property
    def remote(self) -> bool:
        """Evaluated on a running cluster's machines, which this one cannot measure or reach the files of."""
        return self.kind == "dask" and self.address is not None

    @model_validator(mode="after")
    def _placement(self) -> EvaluatorSpec:
        if self.kind == "local":
            extra = "address" if self.address is not None else "n_workers" if self.n_workers is not None else None
            if extra:
                raise ValueError(f"{extra}: only for kind: dask")
        elif self.score_cache is not None:  # a job's scores kept by the worker that scored them: not yet
            raise ValueError("score_cache: only for kind: local")
        elif (self.address is None) == (self.n_workers is None):
            both = "" if self.address is None else ", not both"
            raise ValueError(f"kind dask: give either `address` (a running scheduler) or `n_workers` (start a "
                             f"local cluster){both}")
        return self


class PickSpec(_Checked):
    """A user-named pick: the candidate with the best weighted sum of (direction-oriented) task scores."""

    weights: dict[str, float] = Field(min_length=1, description="task name -> weight")


class FinalSpec(_Checked):
    """After the search: which candidates race and are measured on every item, which are exported,
    and which items are held out of everything but that measurement."""

    evaluate_top: int = Field(
        8, ge=0, description="front members measured on every item: the best estimate per task, then as "
        "front_choice says")
    front_choice: Literal["hypervolume", "spread"] = Field(
        "hypervolume", description="how the front members past each task's best are chosen: hypervolume, the "
        "member whose estimates add the most hypervolume to those chosen; spread, the one farthest from them "
        "(the rule before defaults version 11). Exact hypervolume grows steeply with tasks once evaluate_top "
        "exceeds their number (a front of 200: 3.5 s with 12 tasks and evaluate_top 24, 200 s with 16): spread "
        "costs under a second there")
    top_k: int = Field(3, ge=1, description="distinct candidates measured per pick, best estimates first")
    pool_estimates: bool = Field(
        True, description="choose the finalists on estimates pooled over similar recipes (a Gaussian process over "
        "the genome, each estimate weighted by its standard error, measured candidates as exact) rather than on "
        "each candidate's own: with few anchors, a candidate's neighbours add to what its own anchors say")
    distinct: float = Field(
        0.02,
        ge=0,
        description="genomes closer than this (max difference in coordinates "
        "scaled to their ranges) count as one candidate when choosing what to measure",
    )
    export: list[Literal["best_per_task", "balanced", "front"]] = Field(
        default_factory=lambda: ["best_per_task", "balanced"]
    )
    picks: dict[str, PickSpec] = Field(default_factory=dict, description="named weightings, exported as models/<name>")
    holdout: Literal["auto"] | int | float | None = Field(
        "auto",
        description="items per task kept from calibration, anchors and search, measured for the report: "
        "a fraction in (0, 1), N items, null (none), or auto (20% of tasks with at least 500 items)",
    )
    baselines: bool = Field(
        True,
        description="evaluate the standard merges the genome can express (task "
        "arithmetic lambda grid, TIES density 0.2, TSV-M alpha 1) as part of the front",
    )
    race: list[float] = Field(
        default_factory=lambda: [0.125, 0.25],
        description="before measuring them on every item, score the finalists on these growing fractions of "
        "each task's search items; one that another finalist matches on every task (see race_tolerance) is not "
        "measured further. []: measure every finalist on every item",
    )
    measure_whole: Literal["picks", "survivors"] = Field(
        "picks",
        description="after a race, what is measured on every item: the picks only, chosen among the survivors on "
        "the race's last sample (the same items for all, so compared item by item), or every survivor",
    )
    race_tolerance: float = Field(
        0.01,
        ge=0,
        le=0.5,
        description="a finalist leaves the race when another is, with confidence (2.5 standard errors), at most "
        "this much worse on every task: it could add at most this much to any task's best",
    )

    @field_validator("race")
    @classmethod
    def _race(cls, stages: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in stages) or stages != sorted(set(stages)):
            raise ValueError(f"give increasing fractions in (0, 1), got {stages}")
        return stages

    @field_validator("holdout", mode="before")
    @classmethod
    def _holdout(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `false` turns it off; `true` says nothing about how many
            if value:
                raise ValueError("give a fraction in (0, 1), a number of items, auto, or null (none)")
            return None
        if isinstance(value, str) and value != "auto":  # "-3" was turned into -3 after the checks below
            try:  # `'1e3'`: the number it says, checked as numbers are
                number = float(value)
            except ValueError:
                raise ValueError(f"give a fraction in (0, 1), a number of items, auto, or null (none), not the text "
                                 f"{value!r}") from None
            value = int(number) if number.is_integer() and number >= 1 else number
        if isinstance(value, float) and value > 1 and value.is_integer():  # `1e3`, a float to YAML: 1,000 items
            value = int(value)  # (1.0 stays a fraction out of range: all of it, or one item?)
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a fraction must lie in (0, 1), got {value}")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"a number of items must be at least 0, got {value}")
        return value or None if value != "auto" else value

    @field_validator("picks")
    @classmethod
    def _pick_names(cls, picks: dict[str, PickSpec]) -> dict[str, PickSpec]:
        # the name becomes a folder under models/. Not `SAFE_NAME`'s rule: run folders hold the names
        # this one took since picks were first named (`..` inside a name is no path component)
        bad = next((name for name in picks if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name)), None)
        if bad is not None:
            raise ValueError(f"{bad!r}: a pick name is a folder name: letters, digits, '_', '.', '-', starting with "
                             "a letter or digit, up to 64 characters")
        return picks


class AlignSpec(_Checked):
    """Align endpoints trained from different initialisations once, before the search."""

    method: AlignMethod = "weight"
    arch: str = Field(description="mlp, cnn, resnet, llama, gpt2, or a permutation-spec YAML file")
    data: str | None = Field(None, description="sample for activation-based methods (.safetensors x[,y] or text)")
    reference: Literal["first", "mean"] = Field("first", description="base of the task vectors after alignment")
    seed: int = Field(0, ge=0, lt=2**64)  # torch's generators take 64-bit seeds

    @model_validator(mode="after")
    def _sample_for_activations(self) -> AlignSpec:
        if self.method in NEEDS_DATA and self.data is None:  # refused by `run` once models loaded
            raise ValueError(f"method {self.method} matches the models' activations on a sample: give it as `data` "
                             "(.safetensors x[,y] or a text file), or use method: weight")
        return self


def _dtype_name(value: Any) -> Any:
    """A dtype as `merge` and recipes read it (`dtype_key`: any case, `torch.` or not, the short
    names `bf16`, `fp32`, `half`); `auto` and names it does not know go on to the Literal's check."""
    if not isinstance(value, str):
        return value
    return dtype_key(value) or value.strip().lower()


# `auto` (the base's own) or one of the floating dtypes of the table `weights.dtypes` maps to torch's
CampaignDtype = Annotated[Literal[("auto", *NAMES)], BeforeValidator(_dtype_name)]


class StorageSpec(_Checked):
    """How the search keeps the base and task vectors: dtype (auto: the checkpoints' own) and place
    (`host`: in host memory, streamed to the device per candidate; `disk`: in files mapped into
    memory, in `disk_dir`); budgets override the memory the plan sees."""

    dtype: CampaignDtype = "auto"
    placement: Literal["device", "host", "disk"] = "device"
    disk_dir: str | None = Field(None, description="folder of `disk` placement's files (default: the run folder)")
    host_budget_gib: float | None = Field(None, gt=0, description="host memory the run may use")
    device_budget_gib: float | None = Field(None, gt=0, description="GPU memory the run may use")


def _finite_number(value: Any) -> bool:
    """A number a float32 tensor can be scaled by: a range of +/-1e308 overflowed its span, and the
    search explored nothing (audit 96)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float32_refusal(value) is None


def _check_corners(name: str, settings: Mapping[str, Any], n_models: int | None) -> None:
    """The method's own refusal (`MergeMethod.check`: DELLA's density +/- epsilon inside (0, 1),
    TSV-C's `task` an endpoint's index) at every corner of its searched ranges, with its fixed
    settings, for the campaign's `n_models` endpoints (None: no models validated to count): a
    campaign whose candidates could not merge was accepted, then stopped after calibration,
    naming a tensor or a recipe's key instead of the setting."""
    from evo_merge.merge.kinds import MASS, declared_ranges
    from evo_merge.merge.registry import get_method

    method = None if name == MASS else get_method(name)
    if method is None or method.check is None:
        return
    ranges = declared_ranges(name, settings)
    fixed = {key: value for key, value in settings.items() if key not in ranges}
    n = n_models or (max(method.n_models[0], 2) if method.n_models[1] is None else method.n_models[1])
    refusals = []
    for corner in itertools.product(*ranges.values()):
        try:
            params = method.resolve({**fixed, **dict(zip(ranges, corner))}, n)
        except UserError:  # a corner another rule refuses, with its own message when it is drawn
            continue
        refusals.append((corner, method.check([1.0] * n, params)))
    refused = [(corner, why) for corner, why in refusals if why is not None]
    if not refused:
        return
    corner, why = refused[0]
    if len(refused) == len(refusals) and len({why for _, why in refused}) == 1:  # the fixed settings: any corner
        raise ValueError(f"{name}: {why}")
    at = ", ".join(f"{key} {value:g}" for key, value in zip(ranges, corner))
    ends = "an end of its searched range" if len(ranges) == 1 else "ends of the searched ranges"
    raise ValueError(f"{name}: {why}, at {at} ({ends})")


def _inside_domain(hyperparameter: Any, low: float, high: float, where: str) -> None:
    """A searched range must lie in the hyperparameter's declared domain: refused at load, not
    when the search first draws a value outside it (after calibration was paid)."""
    bottom = -float("inf") if hyperparameter.low is None else hyperparameter.low
    top = float("inf") if hyperparameter.high is None else hyperparameter.high
    if low < bottom or high > top:
        raise ValueError(
            f"{where}: range [{low}, {high}] leaves the domain of {hyperparameter.name} "
            f"[{hyperparameter.low}, {hyperparameter.high}]"
        )


class MLflowSpec(_Checked):
    uri: str | None = Field(
        None, description="tracking URI (http://host:5000, file:./mlruns); None: MLFLOW_TRACKING_URI"
    )
    experiment: str = "evo-merge"


class WandbSpec(_Checked):
    project: str
    mode: Literal["offline", "online"] = "offline"
    entity: str | None = None


class TrackingSpec(_Checked):
    """Experiment trackers the campaign reports to (`pip install 'evo-merge[tracking]'`); they
    observe the run and never change what it computes."""

    mlflow: MLflowSpec | None = None
    wandb: WandbSpec | None = None


# Defaults changed since run folders were first written: (section, setting) -> each former default
# with the defaults version that replaced it, oldest first. A run folder marked with an older version
# (no mark: 1) resumes with the value each setting changed after it had then (search.binding).
FORMER_DEFAULTS: dict[tuple[str, str], tuple[tuple[Any, int], ...]] = {
    # version 2's `auto` was kmeans-irt from 30 calibration subjects, stratified below (`auto-kmeans` since
    # version 8, whose `auto` is stratified-irt from 30)
    ("estimator", "anchor_method"): (("kmeans-irt", 2), ("auto-kmeans", 8)),
    ("algorithm", "seed_standard_merges"): ((False, 2),),
    ("estimator", "anchor_allocation"): (("equal", 3),),  # before: no such setting, every scenario `anchors`
    # version 4 added the race (before: every finalist measured on every item); 5 dropped its 50% stage
    ("final", "race"): (([], 4), ([0.125, 0.25, 0.5], 5)),
    ("final", "measure_whole"): (("survivors", 5),),  # before: no such setting, every survivor measured
    ("", "dtype"): (("float32", 6),),  # "" : a top-level setting; before 6, bf16 models were evaluated in float32
    ("estimator", "warmup_standard"): ((False, 7),),  # before 7, every warm-up merge was random
    ("estimator", "anchor_sets"): ((1, 9),),  # before 9, one anchor set for every candidate
    ("final", "pool_estimates"): ((False, 9),),  # before 9, finalists chosen on each candidate's own estimates
    ("estimator", "anchor_balance"): ((1, 10),),  # before 10, each anchor set one stratified draw
    ("final", "front_choice"): (("spread", 11),),  # before 11, front members farthest from those chosen
}
DEFAULTS_VERSION = 11


def _check_task_weights(weights: dict[str, float], labels: list[str], key: str) -> None:
    """Weights of task scores (`objective.weights`, a pick's): each naming a task, one of them positive."""
    unknown = next((k for k in weights if k not in labels), None)
    if unknown is not None:
        raise ValueError(f"{key}.{unknown}: not a task name (tasks: {', '.join(labels)})")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"{key}: give at least one positive weight")


class Campaign(_Checked):
    """A search campaign (`evo-merge run CAMPAIGN.yaml`). Relative paths are taken against the file's folder."""

    name: PrintableText = "campaign"
    base_model: PrintableText | None = Field(None, description="required unless `align` picks the reference")
    align: AlignSpec | None = None
    models: list[PrintableText] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(DEFAULT_METHODS),
        description="method -> {hyperparameter: [low, high] searched, or one value fixed for every candidate}")
    coefficients: Coefficients = Field(default_factory=Coefficients)
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    final: FinalSpec = Field(default_factory=FinalSpec)
    dtype: CampaignDtype = Field(
        "auto", description="the evaluation module's dtype, and the exported picks': auto = the base's own")
    device: str = Field("auto", description="auto (cuda when available) | cpu | cuda | cuda:N")
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec | None = None
    # the folder of the file it was loaded from, which its relative paths were checked against (None:
    # built in Python); not part of the campaign: a run folder's copy names the same models
    _folder: Path | None = PrivateAttr(None)

    @property
    def folder(self) -> Path | None:
        """The folder its relative paths are read from: its file's (`Campaign.load`), None for a campaign
        built in Python (read from the working directory, or the `root` given the runner)."""
        return self._folder

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: dict[str, dict[str, Any]]) -> dict:
        """Each setting a [low, high] range of a searchable hyperparameter, or one value any of the
        method's hyperparameters is fixed at (`dare_ties: {seed: 7}`), checked as a recipe's is."""
        from evo_merge.merge.kinds import kind_hyperparameters  # each kind declares its hyperparameters

        if not methods:
            raise ValueError("give at least one merge method")
        for name, settings in methods.items():
            try:
                declared = {h.name: h for h in kind_hyperparameters(name)}
            except UserError as exc:
                raise ValueError(f"{name}: {exc}") from None
            for key, value in settings.items():
                where = f"{name}.{key}"
                if key not in declared:
                    known = ", ".join(declared) or "none"
                    raise ValueError(f"{where}: not a parameter of {name} (parameters: {known})")
                if not isinstance(value, (list, tuple)):
                    try:
                        settings[key] = declared[key].coerce(value, where)
                    except UserError as exc:
                        raise ValueError(str(exc)) from None
                    continue
                if len(value) != 2 or not all(_finite_number(v) for v in value):
                    raise ValueError(f"{where}: expected a range of two finite numbers within float32's range "
                                     f"[low, high] or one value, not {list(value)}")
                settings[key] = low, high = float(value[0]), float(value[1])
                if not declared[key].searchable or declared[key].kind is bool:
                    raise ValueError(f"{where}: {key} is not searched; give one value to fix it, not a range")
                if not low < high:
                    raise ValueError(f"{where}: empty range [{low}, {high}]")
                _inside_domain(declared[key], low, high, where)
        return methods

    def ignored_settings(self) -> list[str]:
        """What the file sets that this campaign never reads, one line each (`plan`, `run` and
        `resume` say them; see EstimatorSpec.ignored_settings)."""
        unread = ["base_model: not used (align builds the base from the aligned models: align.reference)"
                  ] if self.align is not None and self.base_model is not None else []
        if self.storage.disk_dir is not None and self.storage.placement != "disk":
            unread.append(f"storage: disk_dir not used (only for placement: disk, not {self.storage.placement})")
        return unread + self.estimator.ignored_settings()

    @model_validator(mode="after")
    def _legacy_seed(self) -> Campaign:
        """CMA-ES and py-irt draw from numpy's legacy generator, which takes 32-bit seeds: a larger
        `algorithm.seed` was accepted and failed the run after its calibration (audits 140, 143). The
        other settings take any seed, and run folders holding one still load."""
        users = [name for name, uses in (("algorithm.name cmaes", self.algorithm.name == "cmaes"),
                                         ("estimator.backend pyirt", self.estimator.backend == "pyirt")) if uses]
        if users and self.algorithm.seed >= LEGACY_SEEDS:
            raise ValueError(f"algorithm.seed: {users[0]} takes a seed below {LEGACY_SEEDS:,}, "
                             f"got {self.algorithm.seed}")
        return self

    @model_validator(mode="after")
    def _base(self) -> Campaign:
        if self.base_model is None and self.align is None:
            raise ValueError("base_model: required (or give `align` to merge models from different initialisations)")
        if self.align is not None and len(self.models) < 2:
            raise ValueError(f"models: align needs at least two models to put into one basis, got {len(self.models)}")
        return self

    @field_validator("methods")
    @classmethod
    def _endpoint_counts(cls, methods: dict, info: ValidationInfo) -> dict:
        """A method that cannot merge this many endpoints (slerp, nearswap: exactly one), or whose
        settings refuse them (`_check_corners`), would fail every candidate; refuse it before any
        evaluation. With `align` every aligned model is an endpoint: an aligned campaign of slerp
        was refused only after its alignment and calibration (audit 99)."""
        from evo_merge.merge.kinds import MASS
        from evo_merge.merge.registry import get_method

        n = len(info.data.get("models") or [])
        for name, settings in methods.items():
            low, high = (0, None) if name == MASS else get_method(name).n_models
            if n and (n < low or (high is not None and n > high)):
                want = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
                raise ValueError(f"{name}: merges {want} model(s) besides the base; the campaign has {n}")
            _check_corners(name, settings, n or None)
        return methods

    @model_validator(mode="after")
    def _unique_tasks(self, info: ValidationInfo) -> Campaign:
        labels = [t.label for t in self.tasks]
        dup = next((label for label in labels if labels.count(label) > 1), None)
        if dup:
            raise ValueError(f"two tasks are named {dup!r}: give them distinct `name`s")
        # their IRT folders and best-<task> picks are one folder on a case-insensitive file system (macOS, Windows)
        folded = [label.lower() for label in labels]
        if same := next((label for label, key in zip(labels, folded) if folded.count(key) > 1), None):
            other = next(label for label in labels if label.lower() == same.lower() and label != same)
            raise ValueError(f"tasks {same!r} and {other!r} differ in case alone: their folders (irt/, models/best-) "
                             "are one on macOS and Windows; give them distinct `name`s")
        # the report's columns are est_<task> and est_se_<task>: tasks `a` and `se_a` would share one
        clash = next((label for label in labels if label.startswith("se_") and label[3:] in labels), None)
        if clash:
            raise ValueError(f"tasks {clash[3:]!r} and {clash!r}: their report columns would clash "
                             f"(est_se_{clash[3:]}); give one another `name`")
        # `arith` and `evo_arith` (or a second `name`) are one benchmark scored twice: twice its weight in
        # `balanced` and the hypervolume, twice its calibration items
        scored = [_what_is_scored(t, (info.context or {}).get("root")) for t in self.tasks]
        if twice := next((i for i, key in enumerate(scored) if scored.index(key) != i), None):
            first = labels[scored.index(scored[twice])]
            raise ValueError(f"tasks {first!r} and {labels[twice]!r} are the same task with the same options "
                             f"({self.tasks[twice].task}): list it once (`objective.weights` weighs a task more)")
        return self

    @model_validator(mode="after")
    def _objectives(self) -> Campaign:
        labels = [t.label for t in self.tasks]
        weights = self.objective.weights
        if weights is not None:
            _check_task_weights(weights, labels, "objective.weights")
        name = self.algorithm.name
        if name in SINGLE_OBJECTIVE_ALGORITHMS and weights is None and len(labels) > 1:
            raise ValueError(
                f"algorithm.name: {name} optimises one objective; declare objective.weights "
                "(e.g. {task: 1, ...}) or pick a multi-objective algorithm"
            )
        if name in MULTI_OBJECTIVE_ALGORITHMS and weights is not None:
            raise ValueError(f"objective.weights: {name} optimises every task; weights are for ga or cmaes")
        if name == "nsga3" and len(labels) < 2:
            raise ValueError(f"algorithm.name: {name} needs at least two tasks")
        return self

    @model_validator(mode="after")
    def _pick_weights(self) -> Campaign:
        labels = [t.label for t in self.tasks]
        built_in = {"balanced", *(f"best-{label}".lower() for label in labels)}
        seen: dict[str, str] = {}
        for name, pick in self.final.picks.items():  # each a folder: told apart on case-insensitive file systems too
            if name.lower() in built_in or re.fullmatch(r"front-\d+", name, re.IGNORECASE):
                raise ValueError(f"final.picks.{name}: the name of a built-in pick (final.export), in any case; "
                                 "choose another")
            if (other := seen.setdefault(name.lower(), name)) != name:
                raise ValueError(f"final.picks.{name}: differs from final.picks.{other} in case alone (one folder on "
                                 "macOS and Windows); choose another")
            _check_task_weights(pick.weights, labels, f"final.picks.{name}.weights")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Campaign:
        data = load_yaml(path)
        refuse_other_kind(data, path, "merge_method", "a merge recipe, not a campaign file",
                          "evo-merge merge RECIPE --out DIR")
        folder = expand_home(path).absolute().parent
        campaign = validate(cls, data, path, context={"root": folder})
        campaign._folder = Path(os.path.abspath(folder))  # as the runner compares a root given it
        return campaign
