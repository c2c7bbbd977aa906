"""`MassModel`: a causal LM that picks, per input, which tasks' TSV-M merge answers it.

Pass 1 runs the TSV-M merge of all tasks up to the routing block only and captures the input
of its MLP; the router (`routing.py`) keeps a task set per row; pass 2 runs the TSV-M merge of
each row's task set. Rows are grouped by task set, so a batch costs one pass-2 forward per
distinct set. Merged weights are swapped into one resident HF module (no copies: the
parameters are pointed at cached tensors), with a bounded LRU cache of task sets.

A MASS folder holds `mass.json` (tasks, routing, tensor lists), the task factors in
safetensors, the tokenizer, a model card, and the base model in `base/` (or a path to it).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.pytorch_utils import Conv1D

from evo_merge.errors import UserError, first_line
from evo_merge.files import parse_json
from evo_merge.mass.card import mass_card, mass_inputs
from evo_merge.mass.factors import MassFactors, Track
from evo_merge.mass.routing import (
    RoutingConfig,
    residual_scores,
    routing_config,
    routing_probabilities,
    routing_weights,
    select_tasks,
)
from evo_merge.merge.kinds import MASS_SETTINGS, MASS_TOKENS
from evo_merge.merge.licenses import card_license
from evo_merge.merge.storage import Stash
from evo_merge.user_paths import expand_home
from evo_merge.weights import Checkpoint, check_compatible, is_hf_folder, load_model_folder, write_model_folder
from evo_merge.weights.checkpoint import copied_tokenizer_files, tokenizer_files
from evo_merge.weights.digest import weights_digest
from evo_merge.weights.export import MASS_JSON, check_output_folder, staged_folder
from evo_merge.weights.module_names import module_tensors
from evo_merge.weights.references import ModelRef, check_distinct, short_label

FORMAT = "evo-merge-mass"
BASE_FOLDER = "base"
# lm-eval right-pads causal inputs with 0 and passes no attention mask: without a mask, a
# trailing run of these ids (and of the model's pad id) is padding, not input
LM_EVAL_PAD_ID = 0

TaskSet = tuple[int, ...]


class _Captured(Exception):
    """Stops pass 1 as soon as the routed hidden state is captured."""


def real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_ids: Sequence[int]) -> torch.Tensor:
    """(batch, length) bool: the positions routing looks at (never empty)."""
    if attention_mask is not None:
        real = attention_mask.bool()
    else:
        pad = torch.isin(input_ids, torch.tensor(list(pad_ids), device=input_ids.device))
        trailing = pad.flip(1).long().cumprod(1).flip(1).bool()
        real = ~trailing
    real = real.clone()
    real[real.sum(1) == 0, 0] = True
    return real


def _rows(kwargs: dict[str, Any], index: torch.Tensor, batch: int) -> dict[str, Any]:
    """kwargs with per-row tensors (batch-first, at least 2-D) restricted to `index`."""
    def per_row(v: Any) -> bool:
        return torch.is_tensor(v) and v.dim() >= 2 and v.shape[0] == batch

    return {k: v[index] if per_row(v) else v for k, v in kwargs.items()}


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


def _load_module(folder: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The base as an HF causal LM (MASS serves `forward`/`generate` through it), in `dtype` as
    transformers loads it (None: as stored); a cast after loading would narrow its float32 buffers."""
    if not is_hf_folder(folder):
        raise UserError(
            f"base model folder {folder}: MASS needs a Hugging Face causal LM (config.json with model_type)"
        )
    return load_model_folder(folder, dtype=dtype)[0]


class MassModel(nn.Module):
    """An HF causal LM look-alike (`forward`, `generate`, `config`, `device`) over MASS storage."""

    def __init__(
        self,
        module: PreTrainedModel,
        factors: MassFactors,
        routing: RoutingConfig,
        tasks: Sequence[str],
        base_path: Path,
        models: Sequence[str] = (),
    ):
        super().__init__()
        if routing.weight not in factors.lowrank:
            raise UserError(f"routing weight {routing.weight!r} has no stored task factors")
        self.module = module.eval()
        self.factors = factors
        self.routing = routing
        self.tasks = list(tasks)
        self.models = list(models) or list(tasks)
        self.base_path = base_path
        self._targets = module_tensors(module).whole()  # by the checkpoints' names, swapped whole (`_use`)
        missing = next((n for n in factors.base if n not in self._targets), None)
        if missing is not None:
            raise UserError(f"tensor {missing} has no counterpart in the {type(module).__name__} module")
        self._bind_router()
        pad = module.config.pad_token_id
        self._pad_ids = sorted({LM_EVAL_PAD_ID} | ({pad} if isinstance(pad, int) else set()))
        self._cache: OrderedDict[TaskSet, dict[str, torch.Tensor]] = OrderedDict()
        self._current: TaskSet | None = None
        self._pinned: TaskSet | None = None

    @property
    def _router(self) -> nn.Module:
        """The routing block's first MLP layer (looked up, not held: a held one would register twice)."""
        return self.module.get_submodule(self.routing.weight.removesuffix(".weight"))

    def _bind_router(self) -> None:
        conv = isinstance(self._router, Conv1D)  # GPT-2 stores (in, out): input space is U's
        self._router_bases = [u if conv else vt.T for u, _, vt in self.factors.lowrank[self.routing.weight]]

    def set_routing(self, layer: int | None = None, **settings: Any) -> None:
        """Change the routing block (None: keep it) and any of threshold, max_tasks, token,
        cache_size; the stored factors serve every block, so nothing is recomputed."""
        current = self.routing.model_dump(exclude={"layer", "weight"})
        try:
            self.routing = routing_config(
                list(self.factors.base), self.routing.layer if layer is None else layer, **{**current, **settings}
            )
        except ValidationError as err:
            raise UserError(f"MASS routing settings: {_first_error(err)}") from None
        self._bind_router()

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> MassModel:
        """Every move or cast (`to`, `cuda`, `bfloat16`, `half`) comes here: the factors follow the
        module to its device (`load_mass(device=)`, lm-eval's and evo-merge's tasks move a model so;
        they are not parameters, and left behind they made every routing merge run on the CPU), and
        the merged task sets cached in the old device or dtype are dropped (the next set swapped in
        put the float32 weights back into a model cast to bfloat16). The module keeps its current
        set, cast; a move to where it already is drops nothing."""
        before = [(t.device, t.dtype) for t in self._targets.values()]
        super()._apply(fn, recurse)
        self._targets = module_tensors(self.module).whole()  # a move may give the module new parameters
        if self.factors.stash.device != self.device:
            self.factors.follow(self.device)
        if [(t.device, t.dtype) for t in self._targets.values()] != before:
            self._cache.clear()
        return self

    def clear_cache(self) -> None:
        """Drop the merged task sets (the module keeps the weights it holds now)."""
        self._cache.clear()
        self._current = None

    # --- what HF-model consumers (lm-eval's HFLM, the project's tasks) read ---------------------
    @property
    def config(self):
        return self.module.config

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    @property
    def name_or_path(self) -> str:
        return str(self.base_path)

    def tie_weights(self) -> None:
        """Nothing to tie: the router writes every weight."""

    # --- task sets --------------------------------------------------------------------------
    @property
    def all_tasks(self) -> TaskSet:
        return tuple(range(len(self.tasks)))

    def task_set(self, tasks: Sequence[str | int]) -> TaskSet:
        """Sorted task indices from names or indices."""
        out = set()
        for t in tasks:
            if isinstance(t, str):
                if t not in self.tasks:
                    raise UserError(f"unknown MASS task {t!r} (tasks: {', '.join(self.tasks)})")
                t = self.tasks.index(t)
            if not 0 <= t < len(self.tasks):
                raise UserError(f"task index {t} is out of range (0..{len(self.tasks) - 1})")
            out.add(int(t))
        if not out:
            raise UserError("a task set needs at least one task")
        return tuple(sorted(out))

    def pin(self, tasks: Sequence[str | int] | None) -> None:
        """Serve every input with this task set (an oracle or an ablation); None: route again."""
        self._pinned = None if tasks is None else self.task_set(tasks)

    def merged_tensors(self, tasks: Sequence[str | int]) -> dict[str, torch.Tensor]:
        """The weights serving a task set (TSV-M of its stored factors), in the module's dtype."""
        key = self.task_set(tasks)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = {}
        for name, merged in self.factors.merged(key):
            target = self._targets[name]
            entry[name] = merged.to(device=target.device, dtype=target.dtype)
        self._cache[key] = entry
        if len(self._cache) > self.routing.cache_size:
            self._cache.popitem(last=False)
        return entry

    @torch.no_grad()
    def _use(self, key: TaskSet) -> None:
        if key == self._current:
            return
        for name, tensor in self.merged_tensors(key).items():
            target = self._targets[name]
            target.data = tensor if tensor.device == target.device else tensor.to(target.device)
        self._current = key

    # --- routing ----------------------------------------------------------------------------
    @torch.no_grad()
    def routed_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pass 1: (batch, d) hidden state entering the routing block's MLP, pooled over tokens."""
        self._use(self.all_tasks)
        captured: list[torch.Tensor] = []

        def hook(_module, args):
            captured.append(args[0])
            raise _Captured

        handle = self._router.register_forward_pre_hook(hook)
        try:
            self.module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        hidden = captured[0].float()
        real = real_tokens(input_ids, attention_mask, self._pad_ids).to(hidden.device)
        if self.routing.token == "mean":
            weights = real.float().unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1)
        positions = torch.arange(1, real.shape[1] + 1, device=real.device)
        last = (real.long() * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    @torch.no_grad()
    def route(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[TaskSet]]:
        """Per row: routing probabilities over tasks (batch, T) and the kept task set."""
        z = self.routed_state(input_ids, attention_mask)
        residuals = residual_scores(z, [v.to(z.device, z.dtype) for v in self._router_bases])
        probs = routing_probabilities(residuals)
        return probs, select_tasks(probs, self.routing.threshold, self.routing.max_tasks)

    def _task_sets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[TaskSet]:
        if self._pinned is not None:
            return [self._pinned] * input_ids.shape[0]
        return self.route(input_ids, attention_mask)[1]

    # --- pass 2 -----------------------------------------------------------------------------
    def _grouped(
        self,
        sets: list[TaskSet],
        forward: Callable[..., Any],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> CausalLMOutputWithPast:
        """One forward per distinct task set over its rows; logits reassembled in row order."""
        groups: dict[TaskSet, list[int]] = {}
        for row, key in enumerate(sets):
            groups.setdefault(key, []).append(row)
        batch = input_ids.shape[0]
        kwargs = {k: v for k, v in kwargs.items() if k not in ("use_cache", "past_key_values", "return_dict")}
        logits = None
        for key, rows in groups.items():
            self._use(key)
            index = torch.tensor(rows, device=input_ids.device)
            mask = None if attention_mask is None else attention_mask[index]
            out = forward(
                input_ids=input_ids[index], attention_mask=mask, use_cache=False, **_rows(kwargs, index, batch)
            )
            if logits is None:
                logits = out.logits.new_empty((batch, *out.logits.shape[1:]))
            logits[index] = out.logits
        return CausalLMOutputWithPast(logits=logits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Logits like the wrapped model's. When all rows share one task set this is exactly the
        wrapped model's output; otherwise only `logits` is filled (no cache, no loss)."""
        sets = self._task_sets(input_ids, attention_mask)
        if len(set(sets)) == 1:
            self._use(sets[0])
            return self.module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._grouped(sets, self.module, input_ids, attention_mask, kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """HF `generate`, each row served by the task set its prompt routes to.

        One task set: the wrapped model's own generate. Several: one batch (so batch-wide
        stopping criteria still see every row) decoded without a KV cache, each step's forward
        split by task set.
        """
        sets = self._task_sets(input_ids, attention_mask)
        if len(set(sets)) == 1:
            self._use(sets[0])
            return self.module.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        module = self.module
        plain_forward = type(module).forward.__get__(module)

        def grouped_forward(input_ids, attention_mask=None, **kw):
            # beams and return sequences: generate repeats each prompt's row in place (repeat_interleave),
            # so row r is prompt r // copies; the prompts' own sets served 2 of 6 rows right, the rest garbage
            copies, rest = divmod(input_ids.shape[0], len(sets))
            if rest:
                raise RuntimeError(f"MASS generate: {input_ids.shape[0]} rows for {len(sets)} prompts")
            rows = [key for key in sets for _ in range(copies)]
            return self._grouped(rows, plain_forward, input_ids, attention_mask, kw)

        module.forward = grouped_forward  # an instance attribute, removed right after
        try:
            return module.generate(input_ids=input_ids, attention_mask=attention_mask, **{**kwargs, "use_cache": False})
        finally:
            del module.forward

    # --- storage ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoints(
        cls,
        base: str | Path,
        models: Sequence[str | Path],
        *,
        layer: int | None = None,
        threshold: float = MASS_SETTINGS["threshold"].default,
        max_tasks: int = MASS_SETTINGS["max_tasks"].default,
        token: str = MASS_TOKENS[0],
        cache_size: int = RoutingConfig.model_fields["cache_size"].default,
        track: Track | None = None,
        stash: Stash | None = None,
        dtype: torch.dtype | None = None,
        names: Sequence[str] | None = None,
    ) -> MassModel:
        """Decompose the fine-tuned `models` of `base` (a model folder). `names`: how the models are
        referred to, where their folders say less (a Hub id's snapshot folder is a commit hash):
        recorded as the folder's models, and each task named by the last part of its name's label
        (`org/arith@sha` is `arith`); by default the folders. `layer` None routes on the middle block.
        `stash` keeps the factors (storage dtype and placement; default float32 on the CPU); the
        module is in `dtype` (None: the base's own)."""
        if not models:
            raise UserError("MASS needs at least one fine-tuned model besides the base")
        # a campaign refuses these; a routed task of zeros or twice over was built without a word
        check_distinct({"base": ModelRef(str(base), Path(base)),
                        **{f"model {i + 1}": ModelRef(str(m), Path(m)) for i, m in enumerate(models)}}, "base")
        base_ckpt = Checkpoint.open(base)
        endpoints = [Checkpoint.open(m) for m in models]
        if base_ckpt.folder is None:
            raise UserError(f"base {base} must be a model folder (MASS needs its config.json)")
        check_compatible([base_ckpt, *endpoints])
        try:
            routing = routing_config(
                base_ckpt.names, layer, threshold=threshold, max_tasks=max_tasks, token=token, cache_size=cache_size
            )
        except ValidationError as err:
            raise UserError(f"MASS routing settings: {_first_error(err)}") from None
        named = [str(m) for m in models] if names is None else list(names)
        labels = [Path(m).resolve().name for m in models] if names is None else [
            short_label(n).rsplit("/", 1)[-1] for n in named]
        tasks = [n if labels.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(labels)]
        factors = MassFactors.build(base_ckpt, endpoints, track, stash)
        module = _load_module(base_ckpt.folder, dtype)
        return cls(module, factors, routing, tasks, base_ckpt.folder.resolve(), named)

    def save(
        self,
        out: str | Path,
        *,
        copy_base: bool = True,
        overwrite: bool = False,
        scores: Mapping[str, Mapping[str, float]] | None = None,
        chosen_as: Sequence[str] = (),
        scores_note: str | None = None,
        errors: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Path:
        """Write a MASS folder (atomically: it appears complete or not at all, and an existing one
        is replaced only when `overwrite`). `copy_base` False stores the base's absolute path
        instead of a copy; `scores` (e.g. estimated / measured per task) and `chosen_as` (the
        campaign picks it is) go in the card, with `scores_note` where the scores were measured otherwise
        and their standard errors `errors` (kind -> task -> SE, `score_errors`)."""
        out = expand_home(out)
        check_output_folder(out, overwrite)
        meta = {
            "format": FORMAT,
            "version": 1,
            "tasks": self.tasks,
            "models": self.models,
            "base": BASE_FOLDER if copy_base else str(self.base_path),
            # a linked base's identity: a zoo rebuilt in place would give the factors another base
            **({} if copy_base else {"base_digest": weights_digest(ModelRef(str(self.base_path), self.base_path))}),
            "routing": self.routing.model_dump(),
            "lowrank": list(self.factors.lowrank),
            "dense": list(self.factors.dense),
        }
        extra = {f.name: f.read_bytes() for f in copied_tokenizer_files(self.base_path)}
        extra[MASS_JSON] = json.dumps(meta, indent=2) + "\n"
        licenses = card_license(mass_inputs(str(self.base_path), self.models))  # read once: the card and its files
        extra["README.md"] = mass_card(self.tasks, self.models, str(self.base_path), self.routing, scores, chosen_as,
                                       licenses, scores_note, errors)
        extra.update(licenses.files)
        with staged_folder(out, overwrite=overwrite) as folder:
            write_model_folder(folder, self.factors.stored(), extra_files=extra)
            if copy_base:
                base = Checkpoint.open(self.base_path)
                write_model_folder(
                    folder / BASE_FOLDER, ((n, base.tensor(n)) for n in base.names), copy_from=self.base_path
                )
        return out


def read_mass_meta(path: Path) -> dict[str, Any]:
    """mass.json of a MASS folder, checked for the keys the loader needs."""
    file = path / MASS_JSON
    if not file.is_file():
        raise UserError(f"{path} is not a MASS folder (no {MASS_JSON})")
    try:
        meta = parse_json(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{file}: not an evo-merge MASS description (format must be {FORMAT!r})")
    missing = next((k for k in ("tasks", "base", "routing", "lowrank", "dense") if k not in meta), None)
    if missing is not None:
        raise UserError(f"{file}: key {missing!r} is missing")
    for key in ("tasks", "lowrank", "dense"):
        if not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            raise UserError(f"{file}: {key!r} is not a list of names, as evo-merge writes it")
    if not meta["tasks"]:
        raise UserError(f"{file}: 'tasks' names no task")
    if not isinstance(meta["routing"], dict):
        raise UserError(f"{file}: 'routing' is not a mapping, as evo-merge writes it")
    if not (meta["base"] == BASE_FOLDER or isinstance(meta["base"], str) and Path(meta["base"]).is_absolute()):
        raise UserError(f"{file}: 'base' is {meta['base']!r}: {BASE_FOLDER!r} (the base copied in) or the absolute "
                        "path of a linked base, as evo-merge writes it")
    return meta


def _check_stored(path: Path, meta: dict[str, Any], store: Checkpoint, base: Checkpoint,
                  routing: RoutingConfig) -> None:
    """mass.json against what the folder stores and the base it names: an edited or damaged one
    served another model with exit 0 (a task dropped, a tensor left at the base's weights, routing
    reported at one block and done at another)."""
    file = path / MASS_JSON
    stored = {tuple(key.split("::")[:2]) for key in store.names if "::" in key}
    tasks = {task for task, _ in stored}
    if tasks != {f"task{t}" for t in range(len(meta["tasks"]))}:
        raise UserError(f"{file}: 'tasks' names {len(meta['tasks'])} tasks, and the folder stores the factors of "
                        f"{len(tasks)}; a damaged or edited MASS folder: build it again")
    listed = {*meta["lowrank"], *meta["dense"]}
    if (names := {name for _, name in stored}) != listed:
        odd = sorted(names ^ listed)[0]
        raise UserError(f"{file}: tensor {odd!r} is {'stored' if odd in names else 'listed'} but not "
                        f"{'listed' if odd in names else 'stored'}; a damaged or edited MASS folder: build it again")
    if "base_digest" in meta and meta["base_digest"] != weights_digest(ModelRef(str(base.path), base.path)):
        raise UserError(f"{file}: the linked base {base.path} is not the model this folder was built on (its weights "
                        "changed since: a zoo built again?); build the MASS folder again")
    if routing_weights(base.names).get(routing.layer) != routing.weight:
        raise UserError(f"{file}: 'routing' names block {routing.layer} and weight {routing.weight!r}, which is not "
                        "that block's MLP input in the base; a damaged or edited MASS folder: build it again")


def load_mass(path: str | Path, *, device: str | torch.device | None = None) -> tuple[MassModel, Any]:
    """(MassModel, tokenizer) from a MASS folder written by `MassModel.save`."""
    from transformers import AutoTokenizer

    path = expand_home(path)
    meta = read_mass_meta(path)
    base_dir = path / meta["base"] if not Path(meta["base"]).is_absolute() else Path(meta["base"])
    if not base_dir.is_dir():
        raise UserError(f"{path / MASS_JSON}: base model folder {base_dir} not found")
    try:
        routing = RoutingConfig(**meta["routing"])
    except (TypeError, ValidationError) as err:
        raise UserError(f"{path / MASS_JSON}: bad 'routing' ({first_line(err)})") from None
    store, base = Checkpoint.open(path), Checkpoint.open(base_dir)
    _check_stored(path, meta, store, base, routing)
    factors = MassFactors.load(store, base, meta["lowrank"], meta["dense"], len(meta["tasks"]))
    model = MassModel(_load_module(base_dir), factors, routing, meta["tasks"], base_dir, meta.get("models", ()))
    if device is not None:
        model.to(device)
    # none where the base had none, as `load_model_folder` gives: transformers failed, blaming sentencepiece
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False) if tokenizer_files(path) else None
    return model, tokenizer
