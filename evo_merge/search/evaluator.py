"""In-process evaluator: one resident model, the in-place merger, the tasks built once."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from evo_merge.errors import UserError
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.merge.kinds import MASS
from evo_merge.merge.storage import Stash, Storage
from evo_merge.search.space import Candidate
from evo_merge.tasks.base import FitnessTask
from evo_merge.tasks.scoring import load_causal_lm
from evo_merge.weights import Checkpoint, parse_dtype

ItemScores = dict[str, dict[str, float]]  # task -> item -> score
Items = Mapping[str, Sequence[str] | None]  # task -> item ids (None: every item)
Job = tuple[Candidate, Items]


class CandidateFailed(Exception):
    """The candidate could not be built or scored (NaN weights, OOM, an exception in a task)."""


Result = tuple[int, "ItemScores | CandidateFailed", float]  # (job index, scores or failure, seconds)


def load_model(folder: Path) -> tuple[torch.nn.Module, object | None]:
    """(module, tokenizer or None): an HF causal LM, or a plain network described by its config.json."""
    import json

    config = folder / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        return load_causal_lm(folder)
    from evo_merge.align.io import load_endpoint

    endpoint = load_endpoint(folder)
    if endpoint.module is None:
        raise UserError(f"{folder}: config.json does not say how to build the model (no model_type or arch)")
    return endpoint.module.eval(), None


def resolve_device(device: str) -> torch.device:
    """auto (cuda when available) | cpu | cuda | cuda:N; a GPU that is not there is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise UserError(f"device: {device} asked for, but torch sees {count} CUDA device(s)")
    return resolved


def task_settings(campaign, spec) -> dict:
    """Constructor settings of a campaign task: the evaluator's batch size unless its options say otherwise."""
    return {"batch_size": campaign.evaluator.batch_size, **spec.options}


def make_evaluator(campaign, paths, tasks: Mapping[str, FitnessTask]):
    """The campaign's evaluator: in this process (`local`), or over a dask cluster (`dask`, imported
    only then). Either has `evaluate_many(jobs)` and `close()`."""
    if campaign.evaluator.kind == "dask":
        from evo_merge.search.distributed import DaskEvaluator

        return DaskEvaluator.from_campaign(campaign, paths)
    return LocalEvaluator(paths.base, paths.models, tasks, device=campaign.device, dtype=campaign.dtype,
                          storage=Storage.of(campaign.storage))


class LocalEvaluator:
    def __init__(
        self,
        base: Path,
        models: Sequence[Path],
        tasks: Mapping[str, FitnessTask],
        *,
        device: str = "auto",
        dtype: str = "float32",
        storage: Storage = Storage(),
    ):
        """`dtype` is the evaluated module's; `storage` how the merger and MASS keep what they hold."""
        self.tasks = dict(tasks)
        self.base, self.models = base, list(models)
        self.device, self.dtype = resolve_device(device), parse_dtype(dtype)
        self.storage = storage
        self.model, self.tokenizer = load_model(base)
        self.model.to(device=self.device, dtype=self.dtype)
        self.merger = InPlaceMerger(
            self.model, Checkpoint.open(base), [Checkpoint.open(m) for m in models], device=self.device,
            storage=storage,
        )
        self._mass = None

    @property
    def mass(self):
        """The MASS model over the base and endpoints (its factors computed once, on first use)."""
        if self._mass is None:
            from evo_merge.mass import MassModel

            stash = Stash(self.storage, self.device)
            self._mass = MassModel.from_checkpoints(self.base, self.models, stash=stash).to(device=self.device,
                                                                                            dtype=self.dtype)
        return self._mass

    def build(self, candidate: Candidate) -> torch.nn.Module:
        """The candidate's model: merged in place into the resident module, or MASS routing with its settings."""
        if candidate.method == MASS:
            self.mass.set_routing(**candidate.param_dict)
            return self.mass
        try:
            model = self.merger.apply(candidate.method, candidate.weights, candidate.param_dict)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise CandidateFailed(f"out of memory while merging: {exc}") from exc
        except MemoryError as exc:
            raise CandidateFailed(f"out of host memory while merging: {exc}") from exc
        except RuntimeError as exc:
            raise CandidateFailed(str(exc)) from exc
        bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise CandidateFailed(f"non-finite values in merged tensor {bad}")
        return model

    def evaluate_many(self, jobs: Sequence[Job]) -> Iterator[Result]:
        """Evaluate jobs one after the other, yielding each result as soon as it is known.

        This is the evaluator interface the campaign uses: a distributed evaluator yields the
        same results in completion order."""
        for index, (candidate, items) in enumerate(jobs):
            start = time.perf_counter()
            try:
                outcome: ItemScores | CandidateFailed = self.evaluate(candidate, items)
            except (CandidateFailed, RuntimeError, ValueError, FloatingPointError, MemoryError) as exc:
                outcome = exc if isinstance(exc, CandidateFailed) else CandidateFailed(f"{type(exc).__name__}: {exc}")
            if self.device.type == "cuda":  # free the candidate's activations before the next one
                torch.cuda.empty_cache()
            yield index, outcome, time.perf_counter() - start

    def close(self) -> None:
        """Nothing to release in-process (the interface a cluster evaluator shares)."""

    def evaluate(self, candidate: Candidate, items: Items) -> ItemScores:
        """Build the candidate in place and score it on `items` per task (None: every item)."""
        model = self.build(candidate)
        scores: ItemScores = {}
        try:
            for name, item_ids in items.items():
                series = self.tasks[name].evaluate(model, self.tokenizer, item_ids)
                scores[name] = {str(k): float(v) for k, v in series.items()}
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise CandidateFailed(f"out of memory while evaluating: {exc}") from exc
        return scores
