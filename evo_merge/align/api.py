"""Library entry point: align N models into one basis with a chosen method.

`align_models` aligns state dicts; `align_folders`, what the CLI and a campaign's `align:` step
call, loads model folders, aligns them and writes the aligned copies. Pairwise methods
(weight, activation, mudsc) map every model onto model 0; C2M3 maps all of them jointly into a
universe expressed in model 0's basis. Either way `Alignment.perms[m]` takes model m into the
common basis, and `aligned_states` applies them.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evo_merge.align.builders import ARCHS, check_arch, spec_for
from evo_merge.align.c2m3 import c2m3
from evo_merge.align.features import evaluated, forward
from evo_merge.align.io import Endpoint, check_data_path, load_data, load_endpoint, write_endpoint
from evo_merge.align.matching import activation_matching, mudsc_matching, weight_matching
from evo_merge.align.methods import METHODS, NEEDS_DATA
from evo_merge.align.spec import (
    Perms,
    PermSpec,
    State,
    apply_permutation,
    check_same_shapes,
    identity,
    load_spec_yaml,
    random_permutation,
)
from evo_merge.errors import UserError
from evo_merge.files import atomic_write

log = logging.getLogger(__name__)

F_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Alignment:
    """Per model, the permutations into the common basis; `f` is MuDSC's balance factor."""

    method: str
    perms: list[Perms]
    f: float | None = None

    def to_json(self, names: Sequence[str]) -> dict:
        return {
            "method": self.method,
            "f": self.f,
            "reference": names[0],
            "perms": {n: {g: p.tolist() for g, p in perms.items()} for n, perms in zip(names, self.perms)},
        }


def average(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """Weighted average of aligned state dicts (integer buffers come from the first)."""
    weights = list(weights) if weights is not None else [1.0 / len(states)] * len(states)
    out = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            out[name] = sum(w * s[name] for w, s in zip(weights, states)).to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def average_folders(folders: Sequence[Path], out: Path) -> Path:
    """The plain average of aligned model folders, written to `out` (a campaign's `universe-mean`
    reference), a tensor at a time; integer buffers come from the first folder. Summed in each
    tensor's own dtype, as it always was: a run folder records the mean's digest, and a mean built
    again (its `aligned/` removed) must be the one recorded; a float32 sum would round bfloat16
    models otherwise."""
    from contextlib import ExitStack

    from evo_merge.weights import Checkpoint, write_model_folder

    def tensors(checkpoints: list[Checkpoint]):
        for name in checkpoints[0].names:
            if checkpoints[0].dtype(name).is_floating_point:
                yield name, sum(c.tensor(name) for c in checkpoints) / len(checkpoints)
            else:
                yield name, checkpoints[0].tensor(name)

    with ExitStack() as stack:
        checkpoints = [stack.enter_context(Checkpoint.open(f)) for f in folders]
        return write_model_folder(out, tensors(checkpoints), copy_from=folders[0])


def with_state(model: nn.Module, state: State) -> nn.Module:
    """A copy of `model` holding `state`."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(state)
    return clone.eval()


@torch.no_grad()
def merge_score(
    merged: nn.Module, endpoints: Sequence[nn.Module], data: torch.Tensor, labels: torch.Tensor | None
) -> float:
    """Accuracy on `labels`, or (no labels) how often the merge's argmax agrees with each endpoint's
    (the models in eval mode)."""
    with evaluated([merged, *endpoints]):
        pred = forward(merged, data).argmax(-1)
        if labels is not None:
            return float((pred == labels).double().mean())
        return float(np.mean([(pred == forward(m, data).argmax(-1)).double().mean() for m in endpoints]))


def search_f(
    spec: PermSpec,
    ref: nn.Module,
    other: nn.Module,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> float:
    """MuDSC's balance factor: the grid value whose aligned average scores best on `data`."""
    best, best_score = F_GRID[0], -np.inf
    for f in F_GRID:
        perms = mudsc_matching(spec, ref, other, data, f, seed=seed)
        merged = with_state(ref, average([ref.state_dict(), apply_permutation(spec, other.state_dict(), perms)]))
        score = merge_score(merged, [ref, other], data, labels)
        if score > best_score:
            best, best_score = f, score
    return best


def align_models(
    spec: PermSpec,
    states: Sequence[State],
    method: str,
    *,
    modules: Sequence[nn.Module] | None = None,
    data: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    f: float | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> Alignment:
    """Find, per model, the permutations that take it into the common basis.

    `states` are plain state dicts; `modules` (the same models, runnable) and `data` (a batch of
    inputs) are needed by the activation-based methods; `labels` (optional) guide MuDSC's
    search for `f` when it is not given.
    """
    names = list(names or [f"model {i}" for i in range(len(states))])
    if len(states) < 2:
        raise UserError("alignment needs at least two models")
    check_method(method, data is not None)
    check_same_shapes(list(states), names)
    split = [spec.split(s) for s in states]
    sizes = spec.sizes(split[0])
    if method == "c2m3":
        return Alignment(method, c2m3(spec, split, seed=seed))
    if method in NEEDS_DATA and modules is None:
        raise UserError(f"alignment method {method} needs runnable models and --data")
    if method == "mudsc" and f is None:
        f = search_f(spec, modules[0], modules[1], data, labels, seed=seed)
    if f is not None and not 0.0 <= f <= 1.0:
        raise UserError(f"MuDSC balance factor f={f} is not in [0, 1]")
    perms = [identity(sizes)]
    for m in range(1, len(states)):
        if method == "weight":
            perms.append(weight_matching(spec, split[0], split[m], seed=seed))
        elif method == "activation":
            perms.append(activation_matching(spec, modules[0], modules[m], data, seed=seed))
        else:
            perms.append(mudsc_matching(spec, modules[0], modules[m], data, f, seed=seed))
    return Alignment(method, perms, f if method == "mudsc" else None)


def check_method(method: str, data_given: bool, data_key: str = "--data") -> None:
    if method not in METHODS:
        raise UserError(f"alignment method {method!r} is not one of {METHODS}")
    if method in NEEDS_DATA and not data_given:
        raise UserError(f"alignment method {method} needs runnable models and {data_key}")


def aligned_states(spec: PermSpec, states: Sequence[State], alignment: Alignment) -> list[State]:
    """Every model's state dict mapped into the common basis."""
    return [apply_permutation(spec, s, p) for s, p in zip(states, alignment.perms)]


def align_folders(
    paths: Sequence[str | Path],
    arch: str,
    method: str,
    out: str | Path,
    *,
    data: str | Path | None = None,
    f: float | None = None,
    seed: int = 0,
    arch_key: str = "--arch",
    data_key: str = "--data",
) -> Alignment:
    """Load model folders, align them, write each under `out` plus `permutations.json` (errors
    about `arch` and `data` name `arch_key` and `data_key`, the option or campaign key each came from)."""
    if arch not in ARCHS:  # a mistyped built-in (`lama`) was read as a spec file that did not exist
        check_arch(arch, None, arch_key)
    check_method(method, data is not None, data_key)  # said before N models are loaded, as the path below
    if data is not None:
        check_data_path(data, data_key)
    written = None if arch in ARCHS else load_spec_yaml(arch)
    endpoints = [load_endpoint(p) for p in paths]
    names = _unique_names([e.path for e in endpoints])
    runnable = all(e.module is not None for e in endpoints)
    if endpoints[0].module is None and arch in ARCHS:
        raise UserError(f"{endpoints[0].path}: {arch_key} {arch} needs a config.json describing the model")
    spec = written or spec_for(arch, endpoints[0].module, arch_key)
    x, y = load_data(data, endpoints[0], data_key) if data is not None else (None, None)
    if written is not None:
        check_keeps_function(written, endpoints[0], x, f"{arch_key} {arch}", seed)
    alignment = align_models(
        spec,
        [e.state for e in endpoints],
        method,
        modules=[e.module for e in endpoints] if runnable else None,
        data=x,
        labels=y,
        f=f,
        names=names,
        seed=seed,
    )
    out = Path(out)
    for endpoint, name, state in zip(endpoints, names, aligned_states(spec, [e.state for e in endpoints], alignment)):
        write_endpoint(endpoint, state, out / name)
    # whole or not at all: a run folder's aligned/ is reused by its record, and a kill mid-write left one
    # that every resume failed to read
    atomic_write(out / PERMUTATIONS_FILE, json.dumps(alignment.to_json(names)))
    return alignment


PERMUTATIONS_FILE = "permutations.json"
FUNCTION_TOLERANCE = 1e-3  # of the largest output: float32 sums in another order move it by about 1e-6


def check_keeps_function(spec: PermSpec, endpoint: Endpoint, data: torch.Tensor | None, where: str,
                         seed: int = 0) -> None:
    """A hand-written spec must move every axis its groups touch: one that left a tensor's input
    axis out wrote "aligned" models computing another function (34% of argmax predictions kept)
    with exit code 0. Model 0 permuted at random by the spec must compute what it did, on a few
    rows of `data`, or on random token ids for a language model; a model that cannot be run, or
    given no input, is not checked (said in a warning)."""
    module = endpoint.module
    vocab = getattr(getattr(module, "config", None), "vocab_size", None)
    if data is not None:
        probe = data[:4]
    elif isinstance(vocab, int):
        probe = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(seed))
    else:
        probe = None
    if module is None or probe is None:
        log.warning("%s: not checked against the model (%s); a spec that misses an axis writes models computing "
                    "another function", where, "no config.json to run it" if module is None else "give --data")
        return
    sizes = spec.sizes(spec.split(endpoint.state))
    permuted = apply_permutation(spec, endpoint.state, random_permutation(spec, sizes, np.random.default_rng(seed)))
    want, got = (_outputs(module, state, probe) for state in (endpoint.state, permuted))
    error, scale = float((got - want).abs().max()), float(want.abs().max())
    if not error <= FUNCTION_TOLERANCE * scale + 1e-6:
        raise UserError(f"{where}: the spec does not keep the model's function: model 0 permuted by it at random "
                        f"computes outputs up to {error:.3g} away (of {scale:.3g}); every axis a group moves must be "
                        "named, the input axis of the tensors reading a group as well as the output axis of those "
                        "writing it")


def _outputs(module: nn.Module, state: State, probe: torch.Tensor) -> torch.Tensor:
    """The module's outputs (logits) on `probe` with its tensors taken from `state`."""
    with torch.no_grad(), evaluated([module]):
        out = torch.func.functional_call(module, state, (probe,))
    out = getattr(out, "logits", out)
    return (out[0] if isinstance(out, tuple) else out).float()


def check_alignment_output(out: Path, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """`align --out`: a new folder, or an earlier alignment's with --overwrite; never a folder that
    holds an input (the aligned copies would replace the originals) or other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to write the aligned models into")
    target = out.resolve()
    for source in inputs:
        if Path(source).resolve().is_relative_to(target):
            raise UserError(f"--out {out} holds the input {source}: its aligned copy would replace it; "
                            "write the alignment somewhere else")
    if out.exists() and any(out.iterdir()):
        check_alignment_folder(out)
        if not overwrite:
            raise UserError(f"--out {out} holds an earlier alignment (--overwrite replaces it)")


def check_alignment_folder(out: Path) -> None:
    """Only an alignment's own output is replaced whole (`replace_folder`)."""
    if out.exists() and any(out.iterdir()) and not (out / PERMUTATIONS_FILE).is_file():
        raise UserError(f"--out {out} is not an alignment's output (no {PERMUTATIONS_FILE}); refusing to replace it")


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    return [n if names.count(n) == 1 else f"{i}-{n}" for i, n in enumerate(names)]
