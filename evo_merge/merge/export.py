"""Run a merge plan to an HF model folder with its model card and rebuilding recipe."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from evo_merge.errors import UserError
from evo_merge.files import parse_json
from evo_merge.merge.apply import MethodFailed
from evo_merge.merge.card import Scores, model_card, recipe_license, score_errors
from evo_merge.merge.host import free_disk
from evo_merge.merge.plan import MergePlan
from evo_merge.merge.results import ItemScores, results_files
from evo_merge.merge.stream import stream_merge
from evo_merge.tasks.meta import TaskMeta
from evo_merge.user_paths import expand_home
from evo_merge.weights import write_model_folder
from evo_merge.weights.checkpoint import PICKLE_SUFFIXES, weight_files
from evo_merge.weights.digest import weights_digest
from evo_merge.weights.dtypes import all_finite
from evo_merge.weights.export import DEFAULT_MAX_SHARD_BYTES, ExtraFile, NonFiniteTensor, check_output_folder
from evo_merge.weights.references import open_reference

RECIPE_FILE = "merge_recipe.yaml"
# beside the recipe: a digest of each input's weights (`weights_digest`), which `merge` checks, so a
# rebuild from inputs changed since (a zoo built again, a Hub model at another file) is said
INPUTS_FILE = "merge_inputs.json"
Tracker = Callable[[Iterable, int], Iterable]


def export_merge(
    plan: MergePlan,
    out: str | Path,
    *,
    tensors: Iterator[tuple[str, torch.Tensor]] | None = None,
    overwrite: bool = False,
    scores: Scores | None = None,
    title: str | None = None,
    track: Tracker | None = None,
    tasks: Mapping[str, TaskMeta] | None = None,
    item_scores: ItemScores | None = None,
    chosen_as: Sequence[str] = (),
    device: torch.device | str = "cpu",
    scores_note: str | None = None,
    estimate_se: Mapping[str, float] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the merged folder atomically. `tensors` (e.g. from the in-place merger) replaces the
    streaming merge when given; they must be the plan's tensors.

    `tasks` describes each scored task for the card's `model-index`; `item_scores` (task -> item ->
    score, every item of a measured pick) adds `results.json` and `item_scores.parquet`, written
    in the same atomic step as the weights so the card never names results that are missing;
    `estimate_se`, the standard error of each estimated score, shown with it.
    The streaming merge combines each tensor on `device` (`stream_merge`); the card says so.
    `max_shard_bytes`: the size the weights are split at (one shard is held in memory at a time)."""
    inputs = [r.path for r in plan.refs] + [r.lora for r in plan.refs if r.lora is not None]
    check_output_folder(expand_home(out), overwrite, inputs)
    on_host: list[str] = []  # tensors the device had no memory for
    if tensors is None:
        total, tensors = stream_merge(plan, device=device, on_host=on_host,
                                      room=lambda nbytes: _check_disk_room(expand_home(out), nbytes))
        if track is not None:
            tensors = track(tensors, total)
    recipe = plan.recipe()
    folder = plan.donor_path if plan.donor_path.is_dir() else None  # a bare state dict has none
    config = dict(plan.config)
    extra: dict[str, ExtraFile] = {}
    if plan.tokens is not None:
        config["vocab_size"] = plan.tokens.rows
        extra.update(plan.tokens.files)
    errors = score_errors(item_scores, estimate_se)
    licenses = recipe_license(recipe)
    extra["README.md"] = lambda: model_card(  # made once the tensors are written: where each was merged
        recipe, title=title or Path(out).name, scores=scores, tasks=tasks, errors=errors, chosen_as=chosen_as,
        device=torch.device(device).type, on_host=on_host, scores_note=scores_note, licenses=licenses,
        pickled=plan.allow_pickle and any(f.suffix in PICKLE_SUFFIXES for r in plan.refs for f in weight_files(r.path)))
    extra.update(licenses.files)
    extra[RECIPE_FILE] = recipe.to_yaml()
    extra[INPUTS_FILE] = json.dumps({"weights": _input_digests(plan)}, indent=2) + "\n"
    if item_scores:
        extra.update(results_files(item_scores, tasks or {}))
    try:
        return write_model_folder(
            out,
            tensors,
            copy_from=folder,
            config=config or None,
            dtype=plan.out_dtype,
            extra_files=extra,
            copy_tokenizer=plan.tokens is None,
            overwrite=overwrite,
            max_shard_bytes=max_shard_bytes,
        )
    except NonFiniteTensor as exc:
        raise UserError(f"{exc}; {_non_finite_inputs(plan, exc.name)}") from None
    except MethodFailed as exc:
        raise UserError(f"merge method {exc}") from None


DISK_SLACK = 64 * 2**20  # the card, recipe and config files, and the file system's own blocks


def _check_disk_room(out: Path, nbytes: int) -> None:
    """Refuse an output whose weights (`nbytes`) the disk that will hold `out` has no room for,
    before the merge: found while writing, it came after the whole merge (audit 126). The old folder
    an `--overwrite` replaces is removed only once the new one is written, so it is no room."""
    free = free_disk(str(out.parent))  # the nearest folder that exists; None where none can be read
    if free is not None and nbytes + DISK_SLACK > free:
        raise UserError(f"cannot write {out}: the merged weights take {nbytes / 2**30:.2f} GiB and the disk of "
                        f"{out.parent} has {free / 2**30:.2f} GiB free; free some space there, or write it to another "
                        "disk")


def _input_digests(plan: MergePlan) -> dict[str, str]:
    """Each input's weights digest, by its name in the written recipe."""
    digests = {}
    for ref in plan.refs:
        try:
            digests[ref.name] = weights_digest(ref)
        except UserError:  # a reference the digest cannot read is merged all the same: not recorded
            continue
    return digests


def changed_inputs(plan: MergePlan, recipe: Path) -> list[str]:
    """The inputs whose weights are not those `recipe` (a folder's `merge_recipe.yaml`) was merged
    from, by the `merge_inputs.json` beside it; none where there is no such record."""
    record = recipe.parent / INPUTS_FILE
    if recipe.name != RECIPE_FILE or not record.is_file():
        return []
    try:
        recorded = parse_json(record.read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError, TypeError):  # not one a merge wrote: nothing to compare
        return []
    if not isinstance(recorded, dict):
        return []
    return [ref.name for ref in plan.refs if isinstance(recorded.get(ref.name), str)
            and recorded[ref.name] != weights_digest(ref)]


def _non_finite_inputs(plan: MergePlan, name: str) -> str:
    """Which inputs hold NaN or Inf where output tensor `name` comes from: with several inputs of
    many GB, "a corrupt input" left the user to scan them all. Its own job names them: a slice's
    layers are renumbered and a tied head is read from the embedding, so the output's name may
    be another tensor, or none, in an input. None of them: the merge itself made it."""
    job = next((j for j in plan.jobs if j.name == name), None)
    sources = [] if job is None else ([job.reference] if job.reference else []) + job.inputs
    bad = []
    for model, tensor in sources:
        ref = plan.refs[model]
        with open_reference(ref, plan.allow_pickle) as checkpoint:
            if not all_finite(checkpoint.tensor(tensor)):
                bad.append(ref.name if tensor == name else f"{ref.name} (its {tensor})")
    if bad:
        return f"it is not finite in {', '.join(bad)}"
    return ("every input is finite there: the merge made it (a result out of the output dtype's range, or a "
            "division by 0)")
