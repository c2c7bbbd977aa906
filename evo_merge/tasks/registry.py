"""Turn a task string from a config or the command line into a `FitnessTask`.

Accepted, in this order: a `module:attribute` plugin string; a name registered under the
entry-point group `evo_merge.tasks`; a path to an lm-eval task YAML or folder; the name of a
benchmark shipped with evo-merge (`arith` or `evo_arith`; see `evo_merge.shipped`); an lm-eval registry task name.
A plugin attribute is either a `FitnessTask` or a callable returning one (called with the
settings). Resolved tasks are cached per process, so the search builds each task once.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from evo_merge.errors import UserError
from evo_merge.shipped import shipped_dir
from evo_merge.tasks.base import FitnessTask

ENTRY_POINT_GROUP = "evo_merge.tasks"
BENCHMARKS_DIR = shipped_dir("benchmarks")
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], FitnessTask] = {}


def shipped_benchmarks() -> dict[str, Path]:
    """Shipped benchmark name (folder name, e.g. `arith`) -> its folder."""
    if BENCHMARKS_DIR is None:
        return {}
    return {p.name: p for p in sorted(BENCHMARKS_DIR.iterdir()) if any(p.glob("*.yaml"))}


def _from_plugin(obj: Any, spec: str, settings: dict[str, Any]) -> FitnessTask:
    task = obj if isinstance(obj, FitnessTask) else obj(**settings) if callable(obj) else None
    if not isinstance(task, FitnessTask):
        raise UserError(f"task plugin {spec!r} is not a FitnessTask nor a callable returning one")
    return task


def _import_attribute(spec: str) -> Any:
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"task plugin {spec!r}: cannot import module {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"task plugin {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _build(spec: str, settings: dict[str, Any]) -> FitnessTask:
    from evo_merge.tasks.lmeval import LMEvalTask

    if _PLUGIN.match(spec) and not Path(spec).exists():
        return _from_plugin(_import_attribute(spec), spec, settings)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _from_plugin(ep.load(), spec, settings)
    if Path(spec).exists() or spec.endswith((".yaml", ".yml")) or "/" in spec:
        return LMEvalTask(spec, **settings)
    shipped = shipped_benchmarks()
    name = spec.removeprefix("evo_")
    if name in shipped:
        return LMEvalTask(shipped[name], **settings)
    return LMEvalTask(spec, **settings)


def _constructed(build: Callable[[], FitnessTask], spec: str, settings: dict[str, Any]) -> FitnessTask:
    """A task built with the campaign's options: one the task does not take is a user error naming it."""
    try:
        return build()
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        name = str(exc).rsplit("argument", 1)[1].strip(" '\"")
        known = ", ".join(sorted(settings)) or "none"
        raise UserError(f"task {spec!r}: no option {name!r} (given: {known})") from None


def resolve_task(spec: str | Path | FitnessTask, **settings: Any) -> FitnessTask:
    """The task a string names (see the module doc); settings (batch_size, device, metric for
    lm-eval tasks) go to the task's constructor or the plugin's factory."""
    if isinstance(spec, FitnessTask):
        return spec
    key = (str(spec), tuple(sorted(settings.items())))
    if key not in _CACHE:
        _CACHE[key] = _constructed(lambda: _build(str(spec), settings), str(spec), settings)
    return _CACHE[key]
