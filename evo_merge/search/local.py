"""In-process evaluator: one workbench (resident model, in-place merger), the tasks built once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evo_merge.errors import UserError, described
from evo_merge.merge.storage import Storage
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import MERGING, PIECES, CandidateFailed, Items, ItemScores, Job, JobProgress, Result
from evo_merge.search.kinds import STATIC, candidate_kind
from evo_merge.search.workbench import Workbench
from evo_merge.tasks.base import FitnessTask, scores_in_parts
from evo_merge.weights.dtypes import all_finite

if TYPE_CHECKING:
    import pandas as pd

# what to change when scoring runs out of memory: the activations, which the memory plan sizes by
# these two settings (a base or endpoint failing so in calibration stops the run with this line)
EVALUATION_OOM_HINT = ("a smaller evaluator.batch_size needs less; the memory plan assumes sequences of "
                       "evaluator.sequence_tokens tokens")


class LocalEvaluator:
    def __init__(self, bench: Workbench, tasks: Mapping[str, FitnessTask]):
        self.bench = bench
        self.tasks = dict(tasks)

    @classmethod
    def open(cls, base: str | Path, models: Sequence[str | Path], tasks: Mapping[str, FitnessTask], *, device: str,
             dtype: str, storage: Storage) -> LocalEvaluator:
        """The base and endpoints loaded onto a workbench, scored on `tasks`: what this process
        evaluates with, and what each dask worker builds once."""
        return cls(Workbench.open(base, list(models), device=device, dtype=dtype, storage=storage), tasks)

    def workbench(self) -> Workbench:
        return self.bench

    def device_types(self) -> list[str]:
        return [self.bench.device.type]

    def build(self, candidate: Candidate, merged: Callable[[int, int], None] | None = None) -> torch.nn.Module:
        """The candidate's model on the workbench, checked for non-finite weights; `merged` is told
        (tensors written, tensors) as the in-place merger writes them (not by other kinds, MASS)."""
        self.bench.merger.on_tensor = merged
        try:
            model = candidate_kind(candidate.method).build(self.bench, candidate)
        except torch.cuda.OutOfMemoryError as exc:  # the cache is emptied once the failure is let go (`evaluate_many`)
            raise CandidateFailed(f"out of memory while merging: {exc}") from exc
        except UserError:
            raise
        except RuntimeError as exc:
            raise CandidateFailed(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001  a plugin method may raise anything: this candidate failed
            raise CandidateFailed(f"{candidate.method}: {described(exc)}") from exc
        finally:
            self.bench.merger.on_tensor = None
        bad = first_non_finite(model)
        if bad is not None:
            raise CandidateFailed(f"non-finite values in merged tensor {bad}")
        return model

    def evaluate(self, candidate: Candidate, items: Items, job_progress: JobProgress | None = None) -> ItemScores:
        """Build the candidate and score it on `items` per task (None: every item), telling
        `job_progress` as it starts (0 items: the merge is built), as the merge writes its tensors
        (a first TSV-M candidate decomposes each of them: minutes at 7B) and as the items are
        scored (`scores_in_parts`)."""
        asked = {name: list(self.tasks[name].item_ids if ids is None else ids) for name, ids in items.items()}
        total, before = sum(map(len, asked.values())), 0  # `before`: the items of the tasks scored already
        if job_progress is not None:
            job_progress(0, total)
        part = PIECES if candidate_kind(candidate.method) is STATIC and self.bench.merger.pieces_pending(
            candidate.method, candidate.param_dict) else MERGING
        model = self.build(candidate, None if job_progress is None else partial(job_progress, part=part))
        scores: ItemScores = {}
        try:
            for name, ids in asked.items():
                told = None if job_progress is None else lambda done, _, skip=before: job_progress(skip + done, total)
                series = self._scored(name, model, ids, told)
                scores[name] = {str(k): float(v) for k, v in series.items()}
                before += len(ids)
        except CandidateFailed as failed:
            raise CandidateFailed(str(failed), items_spent=before) from None
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:  # the cache is emptied in `evaluate_many`
            raise CandidateFailed(f"out of memory while evaluating ({EVALUATION_OOM_HINT}): {described(exc)}",
                                  items_spent=before) from exc
        return scores

    def _scored(self, name: str, model: torch.nn.Module, ids: list[str],
                told: Callable[[int, int], None] | None) -> pd.Series:
        """Task `name`'s scores of `ids` (`scores_in_parts`); what it raises names the task as the
        campaign labels it: a plugin's own `name` may be another (two tasks of one plugin), and a
        scorer's exception named no task at all."""
        task = self.tasks[name]
        try:
            return scores_in_parts(task, model, self.bench.tokenizer, ids, told)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise
        except UserError as error:
            raise error if task.name == name else UserError(f"tasks.{name}: {error}") from None
        except Exception as exc:  # noqa: BLE001 (a plugin's scorer may raise anything)
            raise CandidateFailed(f"task {name!r}: {described(exc)}") from None

    def evaluate_many(self, jobs: Sequence[Job], job_progress: JobProgress | None = None) -> Iterator[Result]:
        for index, (candidate, items) in enumerate(jobs):
            start = time.perf_counter()
            try:
                outcome: ItemScores | CandidateFailed = self.evaluate(candidate, items, job_progress)
            except UserError:  # a wrong config or a task breaking its contract: every candidate would fail alike
                raise
            except Exception as exc:  # noqa: BLE001  merge or evaluation failed (a plugin may raise anything)
                # a new exception, not `exc`: the traceback of `exc` (or of its cause) holds the frames of the
                # failed merge or forward pass, whose tensors would stay on the GPU while the next candidate runs
                outcome = CandidateFailed(str(exc), exc.items_spent) if isinstance(exc, CandidateFailed) else (
                    CandidateFailed(described(exc)))
            if self.bench.device.type == "cuda":  # free the candidate's activations before the next one
                torch.cuda.empty_cache()
            yield index, outcome, time.perf_counter() - start

    def close(self) -> None:
        """Let each task drop what it keeps of the model it scored (lm-eval's wrapper holds it): tasks
        are cached for the process, and outlived the evaluator, keeping a campaign's model resident
        while the next one loads (a whole extra model on a GPU)."""
        for task in self.tasks.values():
            if callable(release := getattr(task, "release", None)):
                release()


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The first parameter holding a NaN or an infinity, or None: `all_finite`'s sums (in float32,
    which a float16 model's own sums overflowed) checked at once (one device sync), and entries
    only of a parameter whose sum is not finite."""
    named = [(name, p.detach()) for name, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return None
    sums = torch.stack([p.sum(dtype=torch.float32) for _, p in named])
    if bool(torch.isfinite(sums).all()):
        return None
    return next((name for name, p in named if not all_finite(p)), None)
