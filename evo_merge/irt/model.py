"""The fitted IRT model: item parameters, training abilities and responses, stored in a folder.

A model folder holds `model.json` (format version, backend, D, ids, scenarios, thresholds,
settings, validation errors) and `params.npz` (α, β, θ, the training responses, and the item
parameters of two fold fits, each without one random half of the subjects, so that
estimators measure their errors on subjects the item parameters never saw). Anchors are stored
beside them (see `anchors.py`). Format 1 folders (one split-half fit) still load, as one fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evo_merge.errors import UserError
from evo_merge.files import held_temporary_folder, parse_json, put_new, sweep_unheld, writing
from evo_merge.irt.ability import map_logistic
from evo_merge.irt.anchor_files import refuse_link, remove_anchor_sets
from evo_merge.irt.backends import BACKENDS, THETA_SD, matrix_options
from evo_merge.irt.responses import (
    ResponseMatrix,
    accuracy_preserving_threshold,
    binarise,
    validate_responses,
)
from evo_merge.irt.twopl import prob_2pl
from evo_merge.progress import Progress, no_progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SAVING = ".saving-"  # the prefix of the folder a save stages its files in, inside the model's
MODEL_KIND = "evo-merge-irt"  # model.json's "kind": what tells an IRT model folder from other folders
MIN_SUBJECTS = 4
SUBJECTS_PER_DIM = 6  # D <= n_subjects / 6: 8-11 subjects fit one dimension, 12-17 at most two
DIMS_GRID = (1, 2, 3, 4)
DIMS_TOLERANCE = 0.005  # relative: the smallest D whose held-out log-loss is within 0.5% of the best
ABILITY_PRIOR_SD = 1.5  # weak prior for new subjects' θ (wider than the training prior N(0, 1))
FIT_STAGE = "fitting IRT"  # the progress stage of `IRTModel.fit`
FOLDS = 2  # the cross-fit's folds: cv_alpha, cv_beta and cv_held stack one array per fold
NPY_HEADER_ROOM = 1 << 16  # bytes an array's .npy header may take (numpy's own limit is 10,000)
NPZ_KEYS = ("alpha", "beta", "theta", "responses", "cv_alpha", "cv_beta", "cv_held")
V1_KEYS = ("alpha", "beta", "theta", "responses", "val_alpha", "val_beta", "val_subjects")


def is_model_meta(meta: Any) -> bool:
    """Whether a parsed model.json is an evo-merge IRT model's."""
    return isinstance(meta, dict) and meta.get("kind") == MODEL_KIND


def max_dims(n_subjects: int) -> int:
    """The largest D worth trying on this many subjects (at least 1)."""
    return max(1, n_subjects // SUBJECTS_PER_DIM)


def dims_tried(n_subjects: int, dims: int | str, dims_grid: Sequence[int] = DIMS_GRID) -> list[int]:
    """The D values `IRTModel.fit` cross-fits on this many subjects: the grid capped by `max_dims`
    with "auto", else `dims` alone."""
    cap = max_dims(n_subjects)
    return sorted({min(d, cap) for d in dims_grid}) if dims == "auto" else [dims]


def fit_count(n_subjects: int, dims: int | str, dims_grid: Sequence[int] = DIMS_GRID) -> int:
    """How many fits `IRTModel.fit` runs (two per D tried, then the chosen D on every subject):
    what its progress counts, and what a caller fitting several models adds up beforehand."""
    return 2 * len(dims_tried(n_subjects, dims, dims_grid)) + 1


def positive_count(value: Any) -> int | None:
    """`value` as an int where it is a positive whole number of any integer type (numpy's too: a
    count read from an array was refused as "not a positive integer, not np.int64(5)"), else None.
    A bool is not a count."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    return None


def _log_loss(prob: np.ndarray, binary: np.ndarray) -> float:
    observed = ~np.isnan(binary)
    p = np.clip(prob[observed], 1e-9, 1 - 1e-9)
    y = binary[observed]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _held_out_loss(params: Any, binary: np.ndarray, seen: np.ndarray) -> float:
    """Log-loss on the unseen items of subjects outside the fit, their θ fitted on the seen items."""
    d = params.alpha.shape[1]
    y_seen = np.where(seen, binary, np.nan)
    theta = map_logistic(params.alpha, params.beta, y_seen, np.zeros(d), np.eye(d) / ABILITY_PRIOR_SD**2)
    return _log_loss(prob_2pl(theta, params.alpha, params.beta)[:, ~seen], binary[:, ~seen])


def _checked_fit_inputs(responses: Any, backend: str, dims: int | str) -> tuple[int | str, ResponseMatrix]:
    """`IRTModel.fit`'s arguments checked at the edge: D as "auto" or a plain int (model.json records
    it), and the response table as a matrix of enough subjects for that D."""
    if backend not in BACKENDS:
        raise UserError(f"unknown IRT backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if dims != "auto":
        if (count := positive_count(dims)) is None:
            raise UserError(f"dims must be 'auto' or a positive integer, not {dims!r}")
        dims = count
    if not isinstance(responses, pd.DataFrame):  # a path was a TypeError deep in the pivot
        raise UserError(f"IRTModel.fit takes a response table (a pandas DataFrame), not "
                        f"{type(responses).__name__}; read a file with load_responses(path)")
    # checked here too: an unchecked table failed inside (KeyError 'scenario') or fitted duplicates and
    # out-of-range scores as they came (about 9 s on a leaderboard's 8 million rows, against minutes of fits)
    matrix = ResponseMatrix.from_long(validate_responses(responses))
    n_subj = len(matrix.subjects)
    if n_subj < MIN_SUBJECTS:
        raise UserError(f"need at least {MIN_SUBJECTS} subjects to fit an IRT model, got {n_subj}")
    if dims != "auto" and dims > n_subj:  # a dimension per subject and more: nothing to learn, hours to fit
        raise UserError(f"dims {dims} is more than the {n_subj} subjects it is fitted on; at most {n_subj} "
                        f"(`auto` tries up to {max_dims(n_subj)} with this many)")
    return dims, matrix


def _cross_fits(binary: np.ndarray, grid: Sequence[int], seed: int, *, fit: Callable[[np.ndarray, int], Any],
                done: Callable[[int], None]) -> tuple[np.ndarray, dict[int, list], dict[int, float]]:
    """The subjects split in two folds (by `seed`) and each D of `grid` fitted twice, each time
    without one fold, and judged by the held-out fold's log-loss on a random half of the items (its
    abilities fitted on the other half). Returns the fold of each subject, the fits per D and their
    held-out losses; `done(k)` is told after the k-th fit."""
    rng = np.random.default_rng(seed)
    n_subj, n_items = binary.shape
    fold = np.zeros(n_subj, dtype=int)
    fold[rng.permutation(n_subj)[: n_subj // 2]] = 1
    seen = np.zeros(n_items, dtype=bool)
    seen[rng.permutation(n_items)[: n_items // 2]] = True
    fold_fits: dict[int, list] = {}
    errors: dict[int, float] = {}
    for i, d in enumerate(grid):
        fold_fits[d] = []
        for f in (0, 1):
            fold_fits[d].append(fit(binary[fold != f], d))
            done(2 * i + f + 1)
        errors[d] = float(np.mean([_held_out_loss(p, binary[fold == f], seen) for f, p in enumerate(fold_fits[d])]))
    return fold, fold_fits, errors


def _check_declared_sizes(npz: Any, meta: dict, path: Path) -> None:
    """Refuse, before any array is read, a params.npz holding an array larger than a model of
    model.json's items, subjects and dimensions holds: compressed, a received folder's few megabytes
    could otherwise claim terabytes (audit 95). Each member's unpacked size (which bounds what
    reading it can take, its .npy header included: zipfile stops there) is checked first, then its
    header's declared length (numpy reads that much before checking it), then its shape. The
    dimensions are bounded by the subjects, as a fit bounds them: model.json's own word for them
    let a 2 MB file take gigabytes (audit 116)."""
    items, subjects = len(meta.get("item_ids") or ()), len(meta.get("subject_ids") or ())
    dims = meta.get("dims") if isinstance(meta.get("dims"), int) and meta["dims"] > 0 else 1
    if dims > max(subjects, *DIMS_GRID):
        raise UserError(f"{path.parent}: model.json declares {dims} ability dimensions for {subjects} subjects; a "
                        f"fit has at most one per subject")
    # responses, theta, cv_alpha, cv_held, beta
    largest = max(subjects * items, subjects * dims, FOLDS * items * dims, FOLDS * subjects, items)
    for info in npz.zip.infolist():
        name = info.filename.removesuffix(".npy")
        if info.file_size > largest * np.dtype(np.float64).itemsize + NPY_HEADER_ROOM:
            raise UserError(f"{path.parent}: model.json and params.npz disagree on the model's shape (params.npz's "
                            f"array {name!r} unpacks to {info.file_size} bytes, more than a model of {items} items "
                            f"and {subjects} subjects holds)")
        with npz.zip.open(info) as member:  # not an array: read_magic's ValueError, a corrupt file
            version = np.lib.format.read_magic(member)
            start = member.tell()
            # the header's declared length, before numpy reads that many bytes to check it (audit 117)
            length = int.from_bytes(member.read(2 if version == (1, 0) else 4), "little")
            if length > NPY_HEADER_ROOM:
                raise UserError(f"{path}: corrupt parameter file (array {name!r} declares a header of {length} bytes)")
            member.seek(start)  # numpy's reader reads the length again
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(member)[0]
        if math.prod(shape) > largest:
            raise UserError(f"{path.parent}: model.json and params.npz disagree on the model's shape (params.npz's "
                            f"array {name!r} has shape {list(shape)}, more than a model of {items} items and "
                            f"{subjects} subjects holds)")


def _from_v1(npz: Any) -> dict[str, np.ndarray]:
    """Format 1 stored one split-half fit (val_*): it becomes fold 0, its held-out half fold 0's subjects."""
    arrays = {k: npz[k] for k in V1_KEYS}
    held = np.zeros((1, arrays["responses"].shape[0]), dtype=bool)
    held[0, arrays.pop("val_subjects")] = True
    cv = {"cv_alpha": arrays.pop("val_alpha")[None], "cv_beta": arrays.pop("val_beta")[None], "cv_held": held}
    return {**arrays, **cv}


@dataclass
class IRTModel:
    """Multidimensional 2PL, P(correct | l, i) = σ(α_iᵀθ_l − β_i), fitted on a response matrix."""

    item_ids: list[str]
    item_scenarios: list[str]
    subject_ids: list[str]
    alpha: np.ndarray
    beta: np.ndarray
    theta: np.ndarray
    responses: np.ndarray  # training scores (subjects × items), NaN = not evaluated
    thresholds: dict[str, float]
    cv_alpha: np.ndarray  # (folds, items, D): fold f's item parameters, fitted without its subjects
    cv_beta: np.ndarray  # (folds, items)
    cv_held: np.ndarray  # (folds, subjects) bool: the subjects fold f's fit did not see
    backend: str = "torch"
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    dims_errors: dict[int, float] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return int(self.alpha.shape[1])

    @property
    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(self.item_scenarios))

    def scenario_items(self) -> dict[str, np.ndarray]:
        """Item indices of each scenario, in scenario order."""
        scen = np.asarray(self.item_scenarios)
        return {s: np.flatnonzero(scen == s) for s in self.scenarios}

    def item_thresholds(self, items: np.ndarray | None = None) -> np.ndarray:
        scen = np.asarray(self.item_scenarios)
        thr = np.array([self.thresholds[s] for s in scen])
        return thr if items is None else thr[items]

    def without_items(self, items: Collection[str]) -> IRTModel:
        """The model restricted to the items not in `items` (itself where none of them is its):
        a model fitted on every item then chooses anchors and estimates among the search items only.
        Every per-item field is cut here, beside the fields, so a field added is not missed."""
        dropped = frozenset(items)
        keep = np.array([i for i, item in enumerate(self.item_ids) if item not in dropped], dtype=int)
        if len(keep) == len(self.item_ids):
            return self
        return replace(self, item_ids=[self.item_ids[i] for i in keep],
                       item_scenarios=[self.item_scenarios[i] for i in keep], alpha=self.alpha[keep],
                       beta=self.beta[keep], responses=self.responses[:, keep], cv_alpha=self.cv_alpha[:, keep],
                       cv_beta=self.cv_beta[:, keep])

    def item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        lookup = {item: j for j, item in enumerate(self.item_ids)}
        missing = [i for i in item_ids if i not in lookup]
        if missing:
            raise UserError(f"item {missing[0]} is not in the IRT model")
        return np.array([lookup[i] for i in item_ids], dtype=int)

    def predict(self, theta: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """P(correct) for abilities theta (S, D) on the given items (all by default)."""
        alpha, beta = (self.alpha, self.beta) if items is None else (self.alpha[items], self.beta[items])
        return prob_2pl(theta, alpha, beta)

    def fit_abilities(self, scores: np.ndarray, items: np.ndarray, prior_sd: float = ABILITY_PRIOR_SD) -> np.ndarray:
        """MAP θ (S, D) of subjects from their scores (S, n) on `items`, item parameters fixed."""
        binary = binarise(scores, self.item_thresholds(items))
        prec = np.eye(self.dims) / prior_sd**2
        return map_logistic(self.alpha[items], self.beta[items], binary, np.zeros(self.dims), prec)

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        responses: pd.DataFrame,
        backend: str = "torch",
        dims: int | str = "auto",
        seed: int = 0,
        dims_grid: Sequence[int] = DIMS_GRID,
        progress: Progress = no_progress,
        **backend_options: Any,
    ) -> IRTModel:
        """Fit on a response table: a long one (subject,item,score[,scenario]) or a wide one, checked
        as `validate_responses` checks it (a long table without scenarios is one scenario). A file is
        read with `load_responses(path)` first.

        The subjects are split in two halves and each half's item parameters are fitted on the
        other (cross-fitting): "auto" D is judged by the log-loss of held-out subjects' unseen
        items. The two fold fits of the chosen D stay in the model so that estimators can measure
        their errors on subjects the item parameters never saw. (Folds of the weaker and the
        stronger half, measuring extrapolation, were tried: on bench_irt.py's out-of-distribution
        subjects they changed nothing beyond noise and cost 7% of gp-IRT's accuracy on ordinary
        ones.) "auto" D is capped by the number of subjects (`max_dims`): a handful of subjects cannot
        support many ability dimensions. A D given explicitly is fitted as asked, with a warning
        when it is above that cap. `progress` counts the fits (two per D tried, then the chosen D on
        every subject): on a leaderboard of hundreds of models and tens of thousands of items each
        takes a minute or more.
        """
        dims, matrix = _checked_fit_inputs(responses, backend, dims)
        scen = np.asarray(matrix.item_scenarios)
        thresholds = {s: accuracy_preserving_threshold(matrix.scores[:, scen == s]) for s in dict.fromkeys(scen)}
        binary = binarise(matrix.scores, np.array([thresholds[s] for s in scen]))
        fit_fn = BACKENDS[backend]
        backend_options = {**matrix_options(backend, binary), **backend_options}
        n_subj = len(matrix.subjects)
        cap = max_dims(n_subj)
        if dims != "auto" and dims > cap:
            log.warning("D=%d with %d subjects: 'auto' would allow at most %d (held-out abilities overfit)",
                        dims, n_subj, cap)
        grid, total = dims_tried(n_subj, dims, dims_grid), fit_count(n_subj, dims, dims_grid)
        progress(FIT_STAGE, 0, total)
        fold, fold_fits, errors = _cross_fits(
            binary, grid, seed, fit=lambda b, d: fit_fn(b, d, seed=seed, **backend_options),
            done=lambda k: progress(FIT_STAGE, k, total))
        best = min(errors.values())
        chosen = min(d for d, e in errors.items() if e <= best * (1 + DIMS_TOLERANCE))
        full = fit_fn(binary, chosen, seed=seed, **backend_options)
        progress(FIT_STAGE, total, total)
        settings = {"dims": dims, "dims_grid": grid, "theta_prior_sd": THETA_SD, **backend_options}
        if full.lr is not None:  # py-irt: each fit restarts at `lr` and may retry lower, so say what each used
            settings |= {"lr_used": full.lr, "cv_lr_used": [p.lr for p in fold_fits[chosen]],
                         "epochs_used": full.epochs, "cv_epochs_used": [p.epochs for p in fold_fits[chosen]]}
        return cls(
            item_ids=matrix.items,
            item_scenarios=matrix.item_scenarios,
            subject_ids=matrix.subjects,
            alpha=full.alpha,
            beta=full.beta,
            theta=full.theta,
            responses=matrix.scores,
            thresholds=thresholds,
            cv_alpha=np.stack([p.alpha for p in fold_fits[chosen]]),
            cv_beta=np.stack([p.beta for p in fold_fits[chosen]]),
            cv_held=np.stack([fold == 0, fold == 1]),
            backend=backend,
            seed=seed,
            settings=settings,
            dims_errors=errors,
        )

    # ---- storage -------------------------------------------------------------------------
    def save(self, directory: str | Path, *, overwrite: bool = True) -> Path:
        """Write the model into `directory`. Over another model its stored anchor sets are removed,
        as `irt fit --overwrite` does: chosen on the model replaced, `load_anchors` would hand them
        out for this one. An `anchors/` that is a link is refused before anything is written.
        `overwrite=False`: a model another process saved there meanwhile (two fits into one new
        folder) is kept, this one refused with FileExistsError: its `model.json` is put in place only
        where none is (`files.put_new`), before its parameters."""
        directory = Path(directory)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": MODEL_KIND,
            "backend": self.backend,
            "dims": self.dims,
            "seed": self.seed,
            "item_ids": self.item_ids,
            "item_scenarios": self.item_scenarios,
            "subject_ids": self.subject_ids,
            "thresholds": self.thresholds,
            "settings": self.settings,
            "dims_errors": {str(d): e for d, e in self.dims_errors.items()},
        }
        arrays = {k: getattr(self, k) for k in NPZ_KEYS}
        meta["params_digest"] = params_digest(arrays)  # a model.json beside another save's params.npz is told
        replacing = (overwrite and any((directory / name).exists() for name in ("model.json", "params.npz"))
                     and not _holds(directory, meta, arrays))  # saved again where it was loaded from: its sets stay
        if replacing:
            refuse_link(directory / "anchors")  # its sets would be removed wherever it points
        directory.mkdir(parents=True, exist_ok=True)
        sweep_unheld(directory.glob(f"{SAVING}*"))  # what a save killed half-way left
        with writing(directory), held_temporary_folder(directory, SAVING) as tmp:
            np.savez(Path(tmp) / "params.npz", **arrays)
            (Path(tmp) / "model.json").write_text(json.dumps(meta, indent=1))
            for name in ("params.npz", "model.json"):  # on disk before either replaces the old (a power cut)
                with open(Path(tmp) / name, "rb") as written:
                    os.fsync(written.fileno())
            if replacing:  # once the new files are safe on disk: a failed write leaves the old model its sets
                remove_anchor_sets(directory)
            if not overwrite:  # the model.json claims the folder: the loser of two fits touches nothing
                put_new(Path(tmp) / "model.json", directory / "model.json")
                os.replace(Path(tmp) / "params.npz", directory / "params.npz")
                return directory
            for name in ("params.npz", "model.json"):  # both written first: a full disk leaves the old model whole
                os.replace(Path(tmp) / name, directory / name)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> IRTModel:
        directory = Path(directory)
        meta_path, npz_path = directory / "model.json", directory / "params.npz"
        for p in (meta_path, npz_path):
            if not p.is_file():
                raise UserError(f"{directory}: not an IRT model folder ({p.name} missing)")
        try:
            meta = parse_json(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{meta_path}: corrupt model file ({exc})") from None
        if not is_model_meta(meta):
            raise UserError(f"{meta_path}: not an evo-merge IRT model")
        version = meta.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise UserError(f"{meta_path}: format version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:  # opened here: np.load leaves its own file open when the zip cannot be read (`_holds`)
            with open(npz_path, "rb") as fh, np.load(fh) as npz:
                _check_declared_sizes(npz, meta, npz_path)
                arrays = {k: npz[k] for k in NPZ_KEYS} if version == FORMAT_VERSION else _from_v1(npz)
        except KeyError as exc:
            raise UserError(f"{directory}: incomplete IRT model (missing {exc.args[0]!r})") from None
        except (TypeError, AttributeError) as exc:  # model.json's sizes of another kind: `"item_ids": 5`
            raise UserError(f"{meta_path}: not an IRT model as evo-merge writes it ({exc})") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            # numpy reads a file that is no zip as one pickled array, and refuses it advising to unpickle
            why = "not an .npz archive of arrays" if "pickle" in str(exc) else str(exc).splitlines()[0]
            raise UserError(f"{npz_path}: corrupt parameter file ({why})") from None
        try:
            model = cls(
                item_ids=list(meta["item_ids"]),
                item_scenarios=list(meta["item_scenarios"]),
                subject_ids=list(meta["subject_ids"]),
                thresholds={str(k): float(v) for k, v in meta["thresholds"].items()},
                backend=meta["backend"],
                seed=int(meta["seed"]),
                settings=dict(meta["settings"]),
                dims_errors={int(d): float(e) for d, e in meta["dims_errors"].items()},
                **arrays,
            )
            declared_dims = meta["dims"]
        except KeyError as exc:
            raise UserError(f"{directory}: incomplete IRT model (missing {exc.args[0]!r})") from None
        except (TypeError, AttributeError, ValueError) as exc:  # a value of another kind than save writes: "seed": "x"
            raise UserError(f"{meta_path}: not an IRT model as evo-merge writes it ({exc})".splitlines()[0]) from None
        n_items, n_subj = len(model.item_ids), len(model.subject_ids)
        consistent = (
            model.alpha.ndim == 2 and model.alpha.shape[0] == n_items and model.beta.shape == (n_items,)
            and model.theta.shape == (n_subj, model.dims) and model.responses.shape == (n_subj, n_items)
            and len(model.item_scenarios) == n_items and declared_dims == model.dims
            and model.cv_alpha.shape[1:] == model.alpha.shape
            and model.cv_held.shape == (model.cv_alpha.shape[0], n_subj)
            and set(model.thresholds) == set(model.item_scenarios)
        )
        if not consistent:
            raise UserError(f"{directory}: model.json and params.npz disagree on the model's shape")
        _check_values(arrays, npz_path)
        digest = meta.get("params_digest") if version == FORMAT_VERSION else None  # older saves kept none
        if digest is not None and digest != params_digest(arrays):
            raise UserError(f"{directory}: model.json and params.npz are of two different saves (a save cut short, "
                            "or an edit)")
        return model


def _check_values(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse parameters no fit writes: a NaN or infinite one (every estimate from it is NaN, written
    as blanks with exit 0), or a calibration response outside [0, 1] (a missing one is NaN)."""
    for name in ("alpha", "beta", "theta", "cv_alpha", "cv_beta"):
        if arrays[name].size and not np.isfinite(arrays[name]).all():
            raise UserError(f"{path}: {name} holds NaN or infinite values, which no fit writes (a damaged or "
                            "edited model); fit it again")
    responses = arrays["responses"][~np.isnan(arrays["responses"])]
    if responses.size and (responses.min() < 0 or responses.max() > 1):
        raise UserError(f"{path}: responses holds scores outside [0, 1], which no fit takes (a damaged or edited "
                        "model); fit it again")


def params_digest(arrays: dict[str, np.ndarray]) -> str:
    """Hex digest of the parameters' names, dtypes, shapes and values (not of the zip around them),
    which model.json records: its two files are replaced one after the other, and a kill between the
    two left one fit's parameters under another's model.json, loaded as one model where shapes agreed."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()[:16]


def _holds(directory: Path, meta: dict, arrays: dict[str, np.ndarray]) -> bool:
    """Whether `directory` holds this model already (model.json and params.npz as `save` writes them):
    a damaged or different one is not it, and the new model replaces it. Read as `load` reads a
    model (its sizes checked before its arrays, its digest against its parameters): it read the
    arrays of whatever folder it was given, a compressed bomb's included."""
    try:
        stored, expected = parse_json((directory / "model.json").read_text()), json.loads(json.dumps(meta))
        if "params_digest" not in stored:  # saved before model.json kept one: the parameters are compared below
            expected.pop("params_digest", None)
        if stored != expected:
            return False
        held = IRTModel.load(directory)  # checks a recorded digest against the parameters it reads
    except (UserError, OSError, ValueError):
        return False
    # with a digest recorded, `stored == expected` compared it with these parameters' already
    return "params_digest" in stored or params_digest({k: getattr(held, k) for k in NPZ_KEYS}) == params_digest(arrays)
