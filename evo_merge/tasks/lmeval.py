"""lm-eval adapter: any lm-eval task or group (registry name, YAML file or folder) as a `FitnessTask`.

The lm-eval task objects are built once and reused for every candidate; each `evaluate` call
only builds the requests of the asked items, runs them through lm-eval's HF wrapper around
the in-memory model, and reads per-item scores from the logged samples.

Only lm-eval's public API is used (TaskManager, Task's config and `higher_is_better`, HFLM,
`evaluator.evaluate`) except in three functions, each pinned by a test in tests/tasks so that an
lm-eval release that changes what they rely on fails there: `_read_task_yaml` (lm-eval has no
public YAML reader that resolves `!function` and `include`), `_pin_eval_docs` (no public way
to serve a task's evaluation docs from memory) and `_fix_fewshot_contexts` (no public way to give
each doc the few-shot examples a full lm-eval run gives it, whichever docs are asked).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import random
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evo_merge.errors import UserError, described, did_you_mean, first_line
from evo_merge.schema import is_path_like, malformed_yaml
from evo_merge.shipped import shipped_benchmark
from evo_merge.tasks.base import ItemTable, score_series
from evo_merge.user_paths import expand_home

_LOGGERS = ("lm_eval", "lm-eval", "datasets")
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's and datasets' chatter off while lm-eval works: their log lines, and the 'Generating
    test split' bars datasets draws the first time it reads a task's data (the commands draw their
    own bars). All of it is put back on the way out: set for good, a notebook that resolved a task
    lost datasets' bars and warnings for whatever it did next."""
    import datasets

    registry = "lm_eval.api.registry"
    levels = {name: logging.getLogger(name).level for name in (*_LOGGERS, registry)}
    bars, counts = datasets.is_progress_bar_enabled(), datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # its one error: a metric it cannot find, logged once per lookup before our own one-line refusal
    logging.getLogger(registry).setLevel(logging.CRITICAL)  # (`_check_metric_loads`)
    if bars:
        datasets.disable_progress_bars()
    # datasets counts each load of its own json/csv loaders with a request to its S3 bucket: a local
    # task's only network call (an audit saw it under `export --dry-run`), counting nothing of ours.
    # Read when a dataset is loaded, which lm-eval does only inside this block (building a task).
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
        if bars:
            datasets.enable_progress_bars()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _Truncations(logging.Filter):
    """Notes lm-eval's line for a request cut to the model's context, and keeps it off the console."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen |= "Truncating" in record.getMessage()
        return False


@contextlib.contextmanager
def _truncations() -> Iterator[_Truncations]:
    """lm-eval's HF wrapper cuts a request longer than the model's context from the left, saying so
    in a warning per request, which `_quiet` hides with the rest of its chatter: counted here, so
    that a task can say it once."""
    logger, counter = logging.getLogger("lm_eval.models.huggingface"), _Truncations()
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(counter)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(level)


@cache
def _registry_manager(name: str) -> Any:
    """A TaskManager over only the lm-eval task folders whose YAML files mention `name`
    (None when none does): a text scan takes about 3 s, indexing all 14,000 built-in task
    files about 100 s on a busy 2-core machine."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.tasks.__file__).parent
    needle = name.encode()
    folders = sorted({str(p.parent) for p in root.rglob("*.yaml") if needle in p.read_bytes()})
    return TaskManager(include_path=folders, include_defaults=False) if folders else None


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for ext in ("*.yaml", "*.yml") for p in path.glob(ext))
        if not files:
            raise UserError(f"task folder {path} holds no YAML file")
        return files
    return [path]


def _read_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as lm-eval reads it: `include`s merged, `!function` tags imported.

    Private lm-eval API (`lm_eval.tasks._yaml_loader`, lm-eval >= 0.4.12): lm-eval's own CLI
    reads task files with it and there is no public equivalent."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(path, resolve_func=True)
    except yaml.YAMLError as exc:  # where in the file, as a campaign's own YAML errors say
        raise malformed_yaml(path, exc) from None
    except (OSError, ValueError, ImportError, AttributeError) as exc:
        raise UserError(f"cannot read task file {path}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001  the task's own code as `!function` imports it (a SyntaxError)
        raise UserError(f"cannot read task file {path}: importing its code raised {described(exc)} (--debug shows "
                        "where)") from exc


def _local_config(path: Path) -> dict[str, Any]:
    """A task YAML as a config dict, its local data files made absolute (lm-eval resolves them
    against the working directory, not the YAML's folder)."""
    cfg = _read_task_yaml(path)
    if "task" not in cfg:
        raise UserError(f"task file {path} has no 'task' key")
    _check_templates(cfg, path)
    return _with_absolute_files(cfg, path)


TEMPLATE_KEYS = ("description", "doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix")


def _check_templates(cfg: dict[str, Any], path: Path) -> None:
    """Each Jinja template of a task file compiled as lm-eval compiles it: lm-eval's own error
    (`TemplateSyntaxError: unexpected end of template`) names neither the file nor the key.
    `lm_eval.utils.env` is the environment lm-eval renders templates with (its filters too)."""
    from jinja2 import TemplateError
    from lm_eval.utils import env

    for key in TEMPLATE_KEYS:
        if isinstance(template := cfg.get(key), str):
            try:
                env.from_string(template)
            except TemplateError as exc:
                raise UserError(f"task file {path}: {key}: not a valid Jinja template ({described(exc)})") from None


def _with_absolute_files(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        cfg["dataset_kwargs"]["data_files"] = _absolute(files, path.parent, path)
    return cfg


def _local_configs(first: Path) -> tuple[str, list[dict[str, Any]]]:
    """The task configs a local YAML (a folder's first) names, and the name they go by: one task,
    or a group YAML's members (`group: g`, `task: [a, b, ...]`), each a task YAML
    found by its `task` name under the group's folder (a member group's own members in turn),
    or written inline. Members are read as task files are: lm-eval would read their local data
    files against the working directory."""
    cfg = _local_config(first)
    if not isinstance(cfg["task"], list):
        return str(cfg["task"]), [cfg]
    named: dict[str, Path] = {}
    for file in sorted(p for ext in ("*.yaml", "*.yml") for p in first.parent.rglob(ext)):
        if (name := _task_name(file)) is not None:
            named.setdefault(name, file)

    def members(group: dict[str, Any], where: Path, within: tuple[Path, ...]) -> list[dict[str, Any]]:
        out = []
        for member in group["task"]:
            if isinstance(member, dict):
                out.append(_with_absolute_files(dict(member), where))
                continue
            file = named.get(str(member))
            if file is None:
                raise UserError(f"group {where}: task {member!r} is in no task YAML under {first.parent}")
            if file in within:  # a group that contains itself would be read forever
                raise UserError(f"group {where}: member {member!r} is the group {file} itself, or contains it")
            found = _local_config(file)
            out += members(found, file, (*within, file)) if isinstance(found["task"], list) else [found]
        return out

    return str(cfg.get("group") or first.stem), members(cfg, first, (first,))


def _task_name(path: Path) -> str | None:
    """The `task` (or a group's `group`) a YAML file names, read as text: member files are found by
    name without importing every `!function` of the folder."""
    try:
        data = yaml.load(path.read_text(), Loader=_NamesOnly)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8, a scalar its loader cannot build
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("group") if isinstance(data.get("task"), list) else data.get("task")
    return str(name) if isinstance(name, (str, int)) else None


class _NamesOnly(yaml.SafeLoader):
    """A YAML loader that reads lm-eval's `!function` tags as plain strings."""


_NamesOnly.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _absolute(files: Any, root: Path, yaml_path: Path) -> Any:
    if isinstance(files, dict):
        return {k: _absolute(v, root, yaml_path) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, root, yaml_path) for v in files]
    full = (root / files).resolve()
    if "://" not in str(files) and not any(ch in str(files) for ch in "*?["):
        if not full.exists():
            raise UserError(f"data file {files!r} named in {yaml_path} not found (looked for {full})")
        if full.is_file() and full.stat().st_size == 0:  # lm-eval's loader would fail with a bare StopIteration
            raise UserError(f"data file {files!r} named in {yaml_path} is empty: the task has no items")
    return str(full)


def _batch_size(value: object) -> bool:
    """A batch size lm-eval's HFLM takes: a positive whole number, `auto` (the largest that fits,
    found by trying) or `auto:N` (found again N times over the run)."""
    if isinstance(value, str):
        return re.fullmatch(r"auto(:[1-9][0-9]*)?", value) is not None
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _shipped_name(path: Path) -> str | None:
    """The shipped benchmark a missing task path names (`benchmarks/seq`, `benchmarks/seq/evo_seq.yaml`,
    as a checkout's paths read): what to give outside a checkout, `seq`."""
    return next(filter(None, (shipped_benchmark(part) for part in (path.stem, path.parent.name))), None)


@contextlib.contextmanager
def _callers_random_kept() -> Iterator[None]:
    """Python's global `random` as the caller left it: lm-eval draws from it building a task (a task
    id, eagerly), so a seeded script drew otherwise after opening a campaign, and otherwise again
    where the task was built already (audit 142)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


@_quiet()  # lm-eval's registry and datasets' loading, quiet for the call
@_callers_random_kept()
def load_lm_eval_tasks(spec: str | Path) -> tuple[str, dict[str, Any]]:
    """The lm-eval Task objects a spec names, by task name, and the name they go by: one task from
    a registry name, a task YAML or a folder of task YAMLs (a `Path`, or a string with a `/` or a
    YAML suffix; the first YAML names it; the folder is the include path), or a group's tasks (a
    registry group such as `mmlu`, or a group YAML)."""
    from lm_eval.tasks import TaskManager

    path, label = expand_home(spec), str(spec)  # `eval --task ~/t.yaml`: the shell leaves ~ in a quoted path
    if isinstance(spec, Path) or is_path_like(str(spec)):  # a bare name is a name, whatever folder is here
        if not path.exists():
            shipped = _shipped_name(path)
            hint = f" (the shipped benchmark is named {shipped})" if shipped else ""
            raise UserError(f"task file {path} not found{hint}")
        files = _yaml_files(path)
        first = files[0]
        if len(files) > 1:  # one task per folder: the others were passed over without a word
            log.warning("task folder %s holds %d YAML files (%s): read as %s, the first; name a file to take "
                        "another", path, len(files), ", ".join(f.name for f in files), first.name)
        name, to_load = _local_configs(first)
        root = path if path.is_dir() else path.parent
        if path.is_dir():  # which of its files lm-eval could not build
            label = f"{spec} (read as {first.name}, the folder's first YAML)"
        manager = TaskManager(include_path=str(root), include_defaults=False)
    else:
        manager = _registry_manager(str(spec))
        known = [] if manager is None else manager.all_tasks + manager.all_groups + manager.all_tags
        if str(spec) not in known:
            from evo_merge.tasks.synthetic import FAMILIES  # the shipped benchmarks, whose names typos miss

            raise UserError(f"unknown task {spec!r}: not a file, a folder, a plugin, a shipped benchmark "
                            f"({', '.join(FAMILIES)}) or an lm-eval task{did_you_mean(str(spec), [*FAMILIES, *known])}")
        name, to_load = str(spec), [str(spec)]
    try:
        tasks = manager.load(to_load)["tasks"]
    except FileNotFoundError as exc:
        raise UserError(f"task {label}: data file not found: {exc}") from None
    except Exception as exc:  # whatever lm-eval and datasets raise for a config or data they cannot use: a
        # missing doc_to_target, a split the data lacks (KeyError), a corrupt data file, a dataset not cached
        hint = ": a split or a field its data does not have?" if isinstance(exc, KeyError) else ""
        raise UserError(f"task {label}: lm-eval cannot build it ({described(exc)}{hint})") from None
    if not tasks:
        raise UserError(f"task {label}: names no lm-eval task")
    return (next(iter(tasks)) if len(tasks) == 1 else name), dict(sorted(tasks.items()))


def _as_json(value: Any) -> Any:
    """A doc's field JSON has no form for, in one that is the same in every process: arrays and
    numpy scalars as lists and numbers, bytes as hex, anything else by its type alone (the text of
    an image object names its address in memory, which would differ on every run)."""
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()
    return type(value).__name__


_WHERE_NOT_WHAT = ("dataset_path", "dataset_kwargs", "metadata")  # where the data lives, not what it says
# the version of how a task's definition is digested: raise it with any change to it, so a run folder
# recorded under the one before is checked on its docs and its definition recorded anew, where it
# would be refused as a task scored otherwise (an evo-merge upgrade is not the user's edit).
# 2: the few-shot prompts count (their examples come from another split's data, which the docs'
# part does not read); a task without shots digests as under 1, and says 1 (`digest_scheme`)
DEFINITION_SCHEME = 2


def _scoring_definition(name: str, task: Any) -> str:
    """A task's lm-eval config as text that is the same in every process: each function it names
    (its prompt, a filter's `filter_fn`, a metric) as its source, with the whole file of a function
    of the task's own (a `utils.py` helper it calls changes the scoring too); and only what differs
    from lm-eval's defaults, so an lm-eval release that adds a setting (at its default) leaves a
    run's digest as it was. Where the data lives is left out: a shipped benchmark's data sits
    wherever the package is installed, and what the data says is the docs' part of the digest."""
    with _quiet():  # lm-eval warns of the generation settings a bare config lacks
        defaults = type(task.config)().to_dict(keep_callable=True)
    config = {key: value for key, value in task.config.to_dict(keep_callable=True).items()
              if key not in _WHERE_NOT_WHAT}
    text = json.dumps([name, _with_code(_beyond(config, defaults))], sort_keys=True, default=_as_json)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # a callable without source, named by its text


def _beyond(value: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """The entries of `value` that differ from `defaults`, nested dicts compared entry by entry."""
    defaults = defaults if isinstance(defaults, dict) else {}
    return {key: _beyond(item, defaults.get(key)) if isinstance(item, dict) else item
            for key, item in value.items() if key not in defaults or defaults[key] != item}


def _with_code(value: Any) -> Any:
    """`value` with each callable in it, however deep, replaced by its code (`_code_text`)."""
    if isinstance(value, dict):
        return {key: _with_code(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_with_code(item) for item in value]
    return _code_text(value) if callable(value) else value


def _code_text(function: Any) -> str:
    """A function's source; for one outside lm-eval (a task's `utils.py`), its whole file's, where
    the helpers it calls are."""
    import inspect

    import lm_eval

    try:
        source, file = inspect.getsource(function), inspect.getsourcefile(function)
    except (TypeError, OSError):  # a builtin, a partial: its text
        return repr(function)
    library = Path(lm_eval.__file__).resolve().parent
    if file is not None and not Path(file).resolve().is_relative_to(library):
        source += Path(file).read_text(encoding="utf-8", errors="replace")
    return source


def _pin_eval_docs(task: Any, limit: int | None = None) -> list[Any]:
    """Serve the (first `limit`) evaluation docs from a list: lm-eval otherwise re-reads its HF
    dataset row by row (about 0.5 ms a row) twice per call, whatever the number of items asked.

    Private use: replaces the task's `test_docs` / `validation_docs` methods, which lm-eval's
    `eval_docs` and `doc_iterator` read (there is no public hook for a document cache)."""
    docs = list(task.eval_docs)[:limit]
    if task.has_test_docs():
        task.test_docs = lambda: docs
    else:
        task.validation_docs = lambda: docs
    return docs


def _fix_fewshot_contexts(task: Any, docs: list[Any], seed: int | None = None, where: str = "task") -> None:
    """Each doc's few-shot prompt as lm-eval's own full run builds it: drawn once, in doc order,
    from the sampler seeded as `simple_evaluate` seeds it (`seed`, its `fewshot_random_seed`;
    None: lm-eval's default few-shot seed).

    lm-eval's sampler is one random stream consumed doc by doc and `evaluator.evaluate` never
    seeds it, so otherwise a doc's examples would change from call to call and with which docs
    are asked before it (anchors against all items), and its score with them.

    Private use: replaces the task's `fewshot_context` method, which `build_all_requests` calls
    once per doc with the doc object served by `_pin_eval_docs` (and, as here, no chat template
    or system instruction)."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    shots = task.config.num_fewshot or 0
    if shots == 0:
        return
    task.set_fewshot_seed(DEFAULT_OTHER_SEED if seed is None else seed)
    try:
        contexts = [(doc, task.fewshot_context(doc, num_fewshot=shots, gen_prefix=task.doc_to_prefix(doc)))
                    for doc in docs]
    except Exception as exc:  # noqa: BLE001  a malformed row of the few-shot split (the asked ones are checked)
        raise UserError(f"{where}: its {shots}-shot prompts cannot be built from its few-shot examples "
                        f"({described(exc)})") from None
    task.fewshot_context = _FixedContexts(contexts)


def _shot_prompts(task: Any) -> list[str] | None:
    """Each asked doc's few-shot prompt as shown (`_fix_fewshot_contexts`); None for a task without shots."""
    contexts = task.fewshot_context
    return [context for _, context in contexts.pairs] if isinstance(contexts, _FixedContexts) else None


class _FixedContexts:
    """Each pinned doc's few-shot prompt, found by the doc object lm-eval passes back. A copy of
    the task (pickled, deep-copied) holds copies of the docs: its lookup is keyed by those, not by
    the originals' ids (a KeyError on the first few-shot item scored)."""

    def __init__(self, pairs: list[tuple[Any, str]]) -> None:
        self.pairs = pairs
        self._by_doc = {id(doc): context for doc, context in pairs}

    def __call__(self, doc: Any, **_: Any) -> str:
        return self._by_doc[id(doc)]

    def __getstate__(self) -> dict[str, Any]:
        return {"pairs": self.pairs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["pairs"])


ENCODINGS_KEPT = 1 << 20  # strings whose tokens a task's lm-eval wrapper keeps (4 bytes a token)


def _remembered_encodings(encode: Callable[..., list[int]]) -> Callable[..., list[int]]:
    """lm-eval's `tok_encode`, each string's tokens kept: it builds and encodes every request again
    for each candidate (the same tokenizer, merged into one model in place), a fifth of a small
    model's scoring time. The wrapper lives as long as its tokenizer."""
    kept: dict[tuple[str, bool | None, int | None], array] = {}

    def tok_encode(string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        key = (string, add_special_tokens, left_truncate_len)
        if kwargs or key not in kept:
            ids = encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs)
            if kwargs or len(kept) >= ENCODINGS_KEPT:
                return ids
            kept[key] = array("i", ids)
        return kept[key].tolist()

    return tok_encode


def _doc_items(docs: list[Any]) -> tuple[list[str], list[str] | None]:
    """(item ids, scenarios or None) of a task's docs: their `id` fields where every doc has a
    distinct one (else their positions), their `scenario` fields where every doc has one. A field
    the data loader filled with None for a doc that lacks it counts as missing (a scenario "None")."""
    def every(field: str) -> bool:
        return bool(docs) and all(isinstance(d, dict) and d.get(field) is not None for d in docs)

    ids = [str(d["id"]) for d in docs] if every("id") else []
    if ids and len(set(ids)) < len(ids):  # items named by position: anchors and --items lists by id would not match
        twice = next(i for i, n in Counter(ids).items() if n > 1)
        log.warning("task items are named by their position: id %r is given to more than one document", twice)
    elif not ids and (named := sum(isinstance(d, dict) and d.get("id") is not None for d in docs)):
        log.warning("task items are named by their position: %d of %d documents have no id", len(docs) - named,
                    len(docs))
    scenarios = [str(d["scenario"]) for d in docs] if every("scenario") else None
    if scenarios is None and (given := sum(isinstance(d, dict) and d.get("scenario") is not None for d in docs)):
        # anchors are spread over scenarios: one row without drops them for every item
        log.warning("task items have no scenarios: %d of %d documents have none (a scenario for every row, or for "
                    "none)", len(docs) - given, len(docs))
    return ids if len(set(ids)) == len(docs) else [str(i) for i in range(len(docs))], scenarios


def _check_docs(spec: str | Path, name: str, task: Any, docs: list[Any], ids: list[str]) -> None:
    """Every doc rendered as lm-eval renders it when scoring, at load: a malformed row (a null
    question, choices missing) failed with lm-eval's traceback mid-campaign, or on the held-out
    items alone in the final phase; others were scored wrong without a word (an answer that is none
    of its choices, or a second copy of an earlier choice, scores 0 whatever the model says)."""
    _check_field_names(spec, name, task)
    choice = task.config.output_type == "multiple_choice"
    listed = None  # whether the answers are lists: lm-eval reads every item's as its first test item's
    for doc, item in zip(docs, ids):
        where = f"task {spec}: {name}: item {item}"
        text = _rendered(task.doc_to_text, doc, where, "doc_to_text")
        target = _rendered(task.doc_to_target, doc, where, "doc_to_target")
        if choice:
            choices = _rendered(task.doc_to_choice, doc, where, "doc_to_choice")
            if not isinstance(choices, list) or not choices or any(c is None for c in choices):
                raise UserError(f"{where}: doc_to_choice gives {choices!r}, not a list of choices (a missing or "
                                "empty field in its row?)")
        # one continuation, a context per choice (winogrande): doc_to_text is the answer's index
        if choice and getattr(task, "multiple_input", 0):
            _check_answer(where, text, choices)
        elif not isinstance(text, str):
            raise UserError(f"{where}: doc_to_text gives {text!r}, not text (a missing or empty field in its row?)")
        elif target is None:
            raise UserError(f"{where}: doc_to_target gives None (a missing or empty field in its row?)")
        elif choice:
            listed = isinstance(target, list) if listed is None else listed
            if isinstance(target, list) != listed:
                raise UserError(f"{where}: doc_to_target gives {target!r}, where the first item's is "
                                f"{'a list of answers' if listed else 'one answer'}: lm-eval reads every item's "
                                "answers as it reads the first's (a list of choice indices, or one answer each)")
            if listed and not all(map(_is_index, target)):
                raise UserError(f"{where}: doc_to_target gives {target!r}: a list of answers holds choice indices "
                                "(lm-eval compares its entries with the chosen index)")
            for gold in target if listed else [target]:
                _check_answer(where, gold, choices)


def _rendered(render: Any, doc: Any, where: str, key: str) -> Any:
    try:
        return render(doc)
    except Exception as exc:  # noqa: BLE001  whatever a template or a task's function raises on this row
        raise UserError(f"{where}: {key} cannot be rendered ({described(exc)})") from None


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_answer(where: str, gold: Any, choices: list[Any]) -> None:
    """A multiple-choice answer (an index or a choice's text) is one of the choices, and not a
    second copy of an earlier one: the model's tie goes to the first copy."""
    index = _is_index(gold)
    if not (0 <= gold < len(choices) if index else gold in choices):
        raise UserError(f"{where}'s answer {gold!r} is none of its {len(choices)} choices (doc_to_target against "
                        "doc_to_choice): it would score 0 whatever the model says")
    if index and choices[gold] in choices[:gold]:
        raise UserError(f"{where}'s answer {gold} is a second copy of choice {choices.index(choices[gold])} "
                        f"({choices[gold]!r}): the model's tie goes to the first, so it would score 0 whatever "
                        "the model says")


def _check_field_names(spec: str | Path, name: str, task: Any) -> None:
    """A doc_to_text or doc_to_target that names no field of the rows and holds no template is the
    same literal text for every item (`doc_to_text: questoin`): every item was scored on that."""
    features = getattr(task, "features", None)  # a ConfigurableTask's; a task class of its own has none
    if getattr(task, "prompt", None) is not None or not features:
        return
    for key in ("doc_to_text", "doc_to_target"):
        value = getattr(task.config, key, None)
        if (isinstance(value, str) and value and value not in features and "{{" not in value
                and "{%" not in value and not (key == "doc_to_target" and value.strip().isdigit())):
            raise UserError(f"task {spec}: {name}: {key}: {value!r} is neither a field of its rows ("
                            f"{', '.join(map(str, features))}) nor a template: every item would be given that "
                            f"text{did_you_mean(value, list(map(str, features)))}")


def _metric_key(task: Any, metric: str | None) -> tuple[str, str]:
    """(metric, filter) from 'acc', 'exact_match,strip' or None (the task's first of each).

    The metrics are the keys of the task's public `higher_is_better()`; the filters are the
    configured `filter_list`, or lm-eval's default filter "none"."""
    metrics = list(task.higher_is_better())
    filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
    name, _, filt = (metric or metrics[0]).partition(",")
    filt = filt or filters[0]
    if name not in metrics or filt not in filters:
        keys = [f"{m},{f}" for m in metrics for f in filters]
        raise UserError(f"task {task.config.task!r} has no metric {metric!r} (its `metric` option); choose one of "
                        f"{', '.join(keys)}")
    return name, filt


def _check_metric_loads(spec: str | Path, config: Any, name: str) -> None:
    """lm-eval accepts a `metric_list` metric it cannot find (it logs an error) and fails with a
    KeyError when scoring: after the calibration models were evaluated on every item. Checked here,
    with lm-eval's public registry lookup, unless the task scores with its own process_results."""
    from lm_eval.api.registry import get_metric

    if config.process_results is not None:
        return
    entry = next((m for m in config.metric_list or [] if m.get("metric") == name), {})
    if isinstance(entry.get("metric", name), str) and get_metric(name, bool(entry.get("hf_evaluate"))) is None:
        raise UserError(f"task {spec}: metric_list: metric {name!r} is neither lm-eval's nor in the evaluate library")


def _check_per_item_score(spec: str | Path, task: Any, name: str) -> None:
    """A fitness is the mean of per-item scores: a metric lm-eval aggregates otherwise (perplexity,
    bleu, f1, mcc: per-item values that are log-likelihoods or pairs) failed after the calibration
    models were scored. Read from the task's public `aggregation()`."""
    from lm_eval.api.registry import get_aggregation

    aggregations = task.aggregation()
    if unknown := next((metric for metric, function in aggregations.items() if not callable(function)), None):
        # lm-eval aggregates every metric of the task, the one scored or not: a TypeError when first scored
        raise UserError(f"task {spec}: metric_list: metric {unknown!r} has an aggregation lm-eval does not know")
    aggregate = aggregations[name]
    if aggregate is not get_aggregation("mean"):
        raise UserError(
            f"task {spec}: metric {name!r} is aggregated by {getattr(aggregate, '__name__', aggregate)}, not "
            "averaged over items; a fitness needs a per-item score in [0, 1] such as acc or exact_match"
        )


def _check_options(spec: str | Path, limit: int | None, batch_size: int | str, fewshot_seed: int | None) -> None:
    """A task's options, refused before lm-eval is asked to load anything."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"task {spec}: limit must be a positive whole number of items, not {limit!r}")
    if not _batch_size(batch_size):  # 0 and -5 ran
        raise UserError(f"task {spec}: batch_size must be a positive whole number, or auto (auto:N) as lm-eval "
                        f"takes it, not {batch_size!r}")
    if fewshot_seed is not None and (isinstance(fewshot_seed, bool) or not isinstance(fewshot_seed, int)):
        raise UserError(f"task {spec}: fewshot_seed must be a whole number, not {fewshot_seed!r}")


def _common_metric(spec: str | Path, tasks: dict[str, Any], metric: str | None) -> tuple[str, str]:
    """The (metric, filter) every task of a group scores with, each checked to load and to give a
    score per item: a group is one fitness, the mean over all its items, so its tasks must score
    alike. A multiple-choice task without choices is refused here, not found out mid-scoring."""
    keys = {}
    for name, task in tasks.items():
        config = task.config
        if config.output_type == "multiple_choice" and config.doc_to_choice is None:
            raise UserError(f"task {spec}: {name}: a multiple_choice task needs doc_to_choice")
        keys[name] = _metric_key(task, metric)
        _check_metric_loads(spec, config, keys[name][0])
        _check_per_item_score(spec, task, keys[name][0])
    first = keys[next(iter(tasks))]
    if other := next((n for n, k in keys.items() if k != first), None):
        raise UserError(f"task {spec}: {other} scores with {','.join(keys[other])}, another of its tasks with "
                        f"{first[0]},{first[1]}; name a metric they all have (`metric:` in the task's "
                        "options), or give them as tasks of their own")
    return first


class LMEvalTask(ItemTable):
    """A `FitnessTask` over one lm-eval task, or a group of them.

    One task's item ids are its docs' `id` field (else their index), its scenarios their
    `scenario` field where every doc has one. A group's items are `<task>/<id>` and each of its
    tasks is a scenario (MMLU's subjects, as tinyBenchmarks treats them), scored with the same
    metric; its fitness is the mean over all its items (lm-eval's group score with
    `weight_by_size`)."""

    @_quiet()  # the metric checks, the docs' rendering and the few-shot prompts call into lm-eval too
    def __init__(
        self,
        spec: str | Path,
        *,
        metric: str | None = None,
        batch_size: int | str = 64,
        device: str | None = None,
        limit: int | None = None,
        fewshot_seed: int | None = None,
    ) -> None:
        """`limit`: keep only the first `limit` docs of each task (lm-eval's `--limit`), e.g. to
        run a slow model on a subset; the shipped benchmarks cycle through their scenarios, so a
        prefix of up to about 600 items covers each about equally (past that the smaller ones run
        out). `fewshot_seed`: the seed drawing a few-shot task's examples, as lm-eval's `--seed`
        (its fourth value) or `simple_evaluate(fewshot_random_seed=)` sets it; None: lm-eval's
        default."""
        _check_options(spec, limit, batch_size, fewshot_seed)
        self.name, self.tasks = load_lm_eval_tasks(spec)
        self.metric, self.filter = _common_metric(spec, self.tasks, metric)
        self.batch_size, self.device, self.limit = batch_size, device, limit
        grouped = len(self.tasks) > 1  # a group: ids <task>/<id>, each task a scenario
        ids, scenarios, self._where = [], [], []
        self.dataset_items = 0  # before the limit: what a card says the limited items are of
        for name, task in self.tasks.items():
            self.dataset_items += len(task.eval_docs)
            docs = _pin_eval_docs(task, limit)
            if not docs:
                raise UserError(f"task {spec}: {name} has no items in its evaluation split")
            own_ids, own_scenarios = _doc_items(docs)
            _check_docs(spec, name, task, docs, own_ids)  # before the few-shot prompts, which render every doc
            _fix_fewshot_contexts(task, docs, fewshot_seed, f"task {spec}: {name}")
            ids += [f"{name}/{i}" for i in own_ids] if grouped else own_ids
            scenarios += [name] * len(docs) if grouped else own_scenarios or []
            self._where += [(name, k) for k in range(len(docs))]
        self._set_items(ids, scenarios or None)
        self._lm: Any = None
        self._said_truncated = False

    @cached_property
    def items_digest(self) -> str:
        """What the items say and how they are scored, for a run to see either change under the
        same ids: `<docs>:<definition>`, a digest of every evaluation doc (as JSON) and one of the
        task's lm-eval config (templates, choices, delimiters, shots, metrics and filters, with the
        source of each function it names: the prompt and answer a YAML edit or a `utils.py` edit
        changes). Computed when a run asks, not each time the task is built (a dask worker builds
        it too). A run recorded before the definition was part of it holds the docs' part alone."""
        docs, definition = hashlib.sha256(), hashlib.sha256()
        for name, task in self.tasks.items():
            docs.update(json.dumps([name, list(task.eval_docs)], sort_keys=True, default=_as_json).encode())
            definition.update(_scoring_definition(name, task).encode())
            if (prompts := _shot_prompts(task)) is not None:
                definition.update(json.dumps(prompts).encode())
        return f"{docs.hexdigest()[:16]}:{definition.hexdigest()[:16]}"

    @property
    def digest_scheme(self) -> int:
        """How `items_digest`'s definition part is computed (`DEFINITION_SCHEME`): the first scheme
        that gives it, so a task without few-shot prompts keeps the digest and scheme it had."""
        shots = any(_shot_prompts(task) is not None for task in self.tasks.values())
        return DEFINITION_SCHEME if shots else 1

    @property
    def higher_is_better(self) -> bool:
        """Whether the task's metric is better higher, as lm-eval's `higher_is_better` says."""
        return bool(next(iter(self.tasks.values())).higher_is_better()[self.metric])

    @property
    def lm_eval_config(self) -> dict[str, Any]:
        """The task's lm-eval config as a dict (what a card and a results file describe it by); a
        group's: its name and tasks, and the dataset, split and shots its tasks share."""
        configs = [task.config.to_dict() for task in self.tasks.values()]
        if len(configs) == 1:
            return configs[0]
        shared = {key: configs[0].get(key) for key in ("dataset_path", "dataset_name", "test_split", "num_fewshot")
                  if all(c.get(key) == configs[0].get(key) for c in configs)}
        return {"task": self.name, "group": self.name, "tasks": list(self.tasks), **shared}

    def _wrap(self, model: Any, tokenizer: Any) -> Any:
        """lm-eval's HF wrapper, kept while the same model and tokenizer objects come back
        (the search merges in place into one model object)."""
        from lm_eval.models.huggingface import HFLM

        if tokenizer is None:
            raise UserError(f"task {self.name!r} needs a tokenizer to evaluate a language model")
        if self.device is not None and str(model.device) != str(self.device):
            model.to(self.device)
        lm = self._lm
        if lm is None or lm.model is not model or lm.tokenizer is not tokenizer or lm.device != model.device:
            with _quiet():
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            lm.tok_encode = _remembered_encodings(lm.tok_encode)
            # resolved from the config once, not for every request (2% of a small model's scoring):
            # candidates are merged into this model in place, its config never changes
            lm._max_length = lm.max_length
            self._lm = lm
        return lm

    def release(self) -> None:
        """Drop lm-eval's wrapper, which holds the model last scored: an evaluator closing calls it."""
        self._lm = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lm": None}  # the wrapper holds a model: never ship it

    def _named(self, name: str) -> str:
        return self.name if name == self.name else f"{self.name}: {name}"  # a group's task, or the task

    def _check_generation_room(self, lm: Any, names: Iterable[str]) -> None:
        """A generation task asks for up to max_gen_toks new tokens (lm-eval's default 256) and
        keeps the rest of the context for the prompt: at or past the model's context, lm-eval
        stops on an AssertionError when it first generates."""
        from lm_eval.models.utils import normalize_gen_kwargs

        for name in names:
            config = self.tasks[name].config
            if config.output_type != "generate_until" or getattr(lm, "backend", "causal") != "causal":
                continue
            wanted = normalize_gen_kwargs(dict(config.generation_kwargs or {}), lm.max_gen_toks)["max_gen_toks"]
            if wanted >= lm.max_length:
                raise UserError(f"task {self._named(name)} generates up to {wanted} tokens (generation_kwargs."
                                f"max_gen_toks, lm-eval's default 256), which leaves no room for a prompt in this "
                                f"model's {lm.max_length}-token context: set max_gen_toks below {lm.max_length}")

    def evaluate(self, model: Any, tokenizer: Any = None, item_ids: Sequence[str] | None = None) -> pd.Series:
        """Per-item scores (the task's metric under its filter) for `item_ids`, in that order."""
        from lm_eval.evaluator import evaluate

        positions = self._positions(item_ids)
        if not positions:
            return score_series(self.name, [], [])
        model.eval()
        lm = self._wrap(model, tokenizer)
        asked: dict[str, set[int]] = {}
        for p in positions:
            name, doc = self._where[p]
            asked.setdefault(name, set()).add(doc)
        self._check_generation_room(lm, asked)
        # one run over every task asked (lm-eval batches their requests together); it pairs the k-th
        # selected doc with the k-th index, so indices are sorted. Its progress bars would print
        # lines for every candidate: they go to a dropped buffer.
        with contextlib.redirect_stderr(io.StringIO()), _quiet(), _truncations() as truncated:
            result = evaluate(
                lm,
                {"tasks": {name: self.tasks[name] for name in asked}, "groups": {}, "group_map": {}},
                samples={name: sorted(docs) for name, docs in asked.items()},
                bootstrap_iters=0,
                log_samples=True,
            )
        if truncated.seen and not self._said_truncated:  # once: the same items are cut for every candidate
            log.warning("task %s: some items are longer than the model's context and were cut from the left "
                        "(lm-eval's truncation): they are scored on their ends", self.name)
            self._said_truncated = True
        samples = [(name, s) for name in asked for s in result["samples"][name] if s["filter"] == self.filter]
        if unscored := next(((n, s) for n, s in samples if self.metric not in s), None):
            name, sample = unscored  # metric_list named a metric this output type does not score
            given = f" (it gave {', '.join(sample['metrics'])})" if sample.get("metrics") else ""
            kind = self.tasks[name].config.output_type
            raise UserError(f"task {self._named(name)}: lm-eval scores no {self.metric!r} for a {kind} item{given}: "
                            f"name a metric of that output type in metric_list (acc, for multiple_choice)")
        by_doc = {(name, s["doc_id"]): s[self.metric] for name, s in samples}
        return score_series(self.name, [self._ids[p] for p in positions], [by_doc[self._where[p]] for p in positions])
