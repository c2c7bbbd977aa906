"""Turn a task string from a config or the command line into a `FitnessTask`.

Accepted, in this order: a `module:attribute` plugin string; a name registered under the
entry-point group `evo_merge.tasks`; a path to an lm-eval task YAML or folder (`schema.is_path_like`:
with a `/` or a YAML suffix, so `./mytask` for a folder beside you); the name of a benchmark
shipped with evo-merge (`arith` or `evo_arith`; see `evo_merge.shipped`); an lm-eval registry
task name. A name is looked up as a name first: the working directory decided before, and a
folder named `lang` there (the demo zoo has one) silently replaced the shipped benchmark. Only a
name no task has is still read as a folder or file of the working directory, with a warning.
A plugin attribute is either a `FitnessTask` or a callable returning one (called with the
settings). Resolved tasks are cached per process, so the search builds each task once; a task
the user's own files define is built again at each resolve and the cached one kept only while
what it says is the same (a notebook that edits a task's data and runs again gets the edit).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from evo_merge.code_files import files_digest, source_file
from evo_merge.errors import UserError, described
from evo_merge.schema import is_path_like
from evo_merge.shipped import shipped_benchmark, shipped_benchmarks, shipped_dir
from evo_merge.tasks.base import FitnessTask
from evo_merge.user_paths import expand_home

ENTRY_POINT_GROUP = "evo_merge.tasks"
BENCHMARKS_DIR = shipped_dir("benchmarks")
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_CACHE: dict[tuple[str, str], FitnessTask] = {}  # (task string, its settings as JSON) -> the task built

log = logging.getLogger(__name__)


def _made(factory: Callable[..., FitnessTask], spec: str, settings: dict[str, Any], *args: Any) -> FitnessTask:
    """`factory(*args, **settings)`, an option it does not take named first, from its signature
    (calling it to find out would run the task's code, and a TypeError from inside is no user's)."""
    try:
        params = list(inspect.signature(factory).parameters.values())[len(args):]
    except (TypeError, ValueError):  # no signature to read (a builtin): the call says
        return factory(*args, **settings)
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if positional := [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]:
        raise UserError(f"task {spec!r}: needs {positional[0]!r}, which options cannot give (a positional-only "
                        "argument); is it a function or class that makes a FitnessTask?")
    unknown = [k for k in settings if k not in names]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
        # a campaign gives every task evaluator.batch_size unless its options set one: say so, the user wrote neither
        source = "; a campaign passes evaluator.batch_size to every task" if unknown[0] == "batch_size" else ""
        raise UserError(f"task {spec!r}: no option {unknown[0]!r} (it takes: {', '.join(names) or 'none'}{source})")
    if missing := [p.name for p in params if p.default is p.empty and p.name not in settings
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]:
        raise UserError(f"task {spec!r}: needs option {missing[0]!r}, which its options do not give (it takes: "
                        f"{', '.join(names)}); is it a function or class that makes a FitnessTask?")
    return factory(*args, **settings)


# what a campaign and `eval` give every task, whatever it is: a ready-made task object has its own
EVALUATOR_SETTINGS = frozenset({"batch_size"})


def _from_plugin(obj: Any, spec: str, settings: dict[str, Any]) -> FitnessTask:
    # a class whose attributes are declared on it passes the protocol's check as the class itself
    made = callable(obj) and (isinstance(obj, type) or not isinstance(obj, FitnessTask))
    if not made and (given := sorted(set(settings) - EVALUATOR_SETTINGS)):
        # were dropped without a word (`eval --device` left the model on the CPU); said, not refused: a
        # run folder's campaign may hold them, and removing them is an edit of the campaign it was started with
        log.warning("task %r is a ready-made task object, which takes no options: %s not used; name a function or "
                    "class that makes the task to pass it options", spec, ", ".join(given))
    try:
        task = _made(obj, spec, settings) if made else obj if isinstance(obj, FitnessTask) else None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001  the plugin's own code (a data file missing, its import inside)
        raise UserError(f"task plugin {spec!r}: making the task raised {described(exc)} (--debug shows "
                        "where)") from exc
    if not isinstance(task, FitnessTask):
        raise UserError(f"task plugin {spec!r} is not a FitnessTask nor a callable returning one")
    ids = list(task.item_ids)
    if bad := [i for i in ids if not isinstance(i, str)]:  # stored as text, matched as given
        raise UserError(f"task plugin {spec!r}: item ids must be strings, not {type(bad[0]).__name__} ({bad[0]!r})")
    if not ids:  # scored, it gave a NaN score that the store then called damaged
        raise UserError(f"task plugin {spec!r}: no items (its item_ids are empty)")
    if len(set(ids)) != len(ids):
        raise UserError(f"task plugin {spec!r}: item ids must be unique ({len(ids) - len(set(ids))} repeated)")
    scenarios = task.scenarios or {}
    if not isinstance(scenarios, Mapping):  # a list: a traceback in `eval` and in a campaign's first split
        raise UserError(f"task plugin {spec!r}: scenarios must map item ids to scenario names (or be None), not a "
                        f"{type(scenarios).__name__}")
    if scenarios and (left := [i for i in ids if i not in scenarios]):  # their own scenario: said, not silent
        log.warning("task plugin %r: its scenarios name %d of its %d items; the other %d (%r first) form a scenario "
                    "named after the task", spec, len(ids) - len(left), len(ids), len(left), left[0])
    return task


def _import_hint(module_name: str, exc: ImportError) -> str:
    """What to do when the plugin's own module is not found: the `evo-merge` command does not
    import from the working directory, so a `my_tasks.py` beside the campaign is not found
    until its folder is on PYTHONPATH (or its package is installed)."""
    top = module_name.split(".")[0]
    if getattr(exc, "name", None) != top:  # the module was found; something it imports was not
        return ""
    here = Path.cwd()
    for path in (here / f"{top}.py", here / top / "__init__.py"):
        if path.is_file():
            return (f"; {path} is not on the import path: if you trust it (it runs as code: a run folder someone "
                    f"sent may hold one), run with PYTHONPATH={here}, or install its package")
    return "; a plugin module must be importable: add its folder to PYTHONPATH, or install its package"


def _import_attribute(spec: str) -> Any:
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _import_hint(module_name, exc)
        raise UserError(f"task plugin {spec!r}: cannot import module {module_name!r} ({exc}){hint}") from None
    except Exception as exc:  # noqa: BLE001  the plugin's own code as it is imported (a SyntaxError, a missing file)
        raise UserError(f"task plugin {spec!r}: importing module {module_name!r} raised {described(exc)} (--debug "
                        "shows where)") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"task plugin {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _build(spec: str, settings: dict[str, Any]) -> FitnessTask:
    from evo_merge.tasks.lmeval import LMEvalTask

    if _PLUGIN.match(spec):
        return _from_plugin(_import_attribute(spec), spec, settings)
    if (ep := _entry_point(spec)) is not None:
        package = f" of the package {ep.dist.name}" if ep.dist is not None else ""
        try:
            loaded = ep.load()
        except (ImportError, AttributeError) as exc:  # a package removed or renamed since it was installed
            raise UserError(f"task {spec!r}: its entry point{package} ({ep.value}) cannot be loaded ({exc}); "
                            "reinstall or remove that package") from None
        except Exception as exc:  # noqa: BLE001  the plugin's own code as it is imported (a SyntaxError)
            raise UserError(f"task {spec!r}: importing its entry point{package} ({ep.value}) raised "
                            f"{described(exc)} (--debug shows where)") from exc
        return _from_plugin(loaded, spec, settings)
    if is_path_like(spec):
        return _made(LMEvalTask, spec, settings, spec)
    if (name := shipped_benchmark(spec)) is not None:
        return _made(LMEvalTask, spec, settings, shipped_benchmarks()[name])
    try:
        return _made(LMEvalTask, spec, settings, spec)
    except UserError:
        if not Path(spec).exists():
            raise
    # no task has this name, but the working directory has a file or folder of it: read so, as names
    # were before they stopped being looked up there first (a run folder started so still resumes)
    log.warning("task %r: no task has that name; read as %s of the working directory, as before: write it as "
                "a path (with a /) so it does not depend on where you run", spec, Path(spec).absolute())
    return _made(LMEvalTask, spec, settings, Path(spec))


def code_it_runs(spec: str) -> str | None:
    """The code a task string makes evo-merge run besides its own, lm-eval's and what is installed
    for it: a plugin (any importable callable, imported and called) or an lm-eval task file (its
    YAML may name Python functions beside it), a bare name of the working directory's included
    (one an lm-eval registry name would have taken is counted too: the registry is not read here).
    None for an entry point, a shipped benchmark or an lm-eval registry name."""
    if _PLUGIN.match(spec):
        return f"the plugin {spec} (imported and called)"
    if _entry_point(spec) is not None:
        return None
    if is_path_like(spec):
        return f"the lm-eval task file {spec} (its YAML may run Python beside it)"
    if shipped_benchmark(spec) is None and Path(spec).exists():
        # read from the working directory where no registry name has it (`_build`'s last resort)
        return f"the lm-eval task file or folder {spec} of the working directory (its YAML may run Python beside it)"
    return None


def code_location(spec: str) -> str | None:
    """Where the code a task string runs (`code_it_runs`) is read from, found without running any:
    a plugin's top-level module file or folder on `sys.path` (a folder the command runs in can
    shadow an installed one), or a task file's resolved path. None for a task that runs none."""
    if code_it_runs(spec) is None:
        return None
    if _PLUGIN.match(spec):
        found = importlib.machinery.PathFinder.find_spec(spec.split(":")[0].split(".")[0])
        return None if found is None else str(found.origin or list(found.submodule_search_locations or []))
    return str(expand_home(spec).resolve())


def task_code(spec: str, task: FitnessTask) -> tuple[str, str] | None:
    """(the files defining a plugin task, a digest of their text), for a run folder to see the
    task's code change between a run and its resume: the module its `module:attr` or entry point
    names and the module of the task's class, where they are not evo-merge's own (those change
    with evo-merge; a task built from an lm-eval file has its `items_digest`). None for a task
    that is no plugin, or whose code no file holds (a notebook's)."""
    if _PLUGIN.match(spec):
        module = spec.split(":")[0]
    elif (ep := _entry_point(spec)) is not None:
        module = ep.module
    else:
        return None
    package = Path(__file__).resolve().parents[1]
    files = {file for defining in (sys.modules.get(module), inspect.getmodule(type(task)))
             if defining is not None and (file := source_file(defining)) is not None
             and not Path(file).resolve().is_relative_to(package)}
    return None if not files or (digest := files_digest(files)) is None else (", ".join(sorted(files)), digest)


def _entry_point(name: str) -> EntryPoint | None:
    """The installed entry point of the task group named `name`; None."""
    return next((ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None)


def resolve_task(spec: str | Path | FitnessTask, **settings: Any) -> FitnessTask:
    """The task a string names (see the module doc); settings (batch_size, device, metric for
    lm-eval tasks) go to the task's constructor or the plugin's factory."""
    if isinstance(spec, FitnessTask):
        return spec
    try:  # options as a campaign file gives them (scalars, lists, mappings): one task per value
        key = (str(spec), json.dumps(settings, sort_keys=True))
    except TypeError:  # an object given from Python (an array, a tensor): built anew, never taken for another's
        return _build(str(spec), settings)
    cached = _CACHE.get(key)
    if cached is not None and not _defined_by_files(str(spec)):
        return cached
    task = _build(str(spec), settings)
    if cached is None or _digest(cached) is None or _digest(cached) != _digest(task):
        _CACHE[key] = cached = task
    return cached


def _defined_by_files(spec: str) -> bool:
    """Whether the user's own files define the task (a task file or folder, one of the working
    directory's): they may change within a process, a notebook's above all. The cached task served
    the data as it was before an edit, and a new run recorded that as its data (audit 142). A
    plugin is a module, which Python itself imports once per process."""
    return not _PLUGIN.match(spec) and code_it_runs(spec) is not None


def _digest(task: FitnessTask) -> str | None:
    """What a task's items say and how they are scored (`items_digest`), where the task gives it."""
    digest = getattr(task, "items_digest", None)
    return digest if isinstance(digest, str) else None
