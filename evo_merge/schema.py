"""Loading and validating the YAML files users write, with errors that name the file and key.

Shared by the campaign schema (`evo_merge.config`) and the merge-recipe schema
(`evo_merge.merge.recipe`), so both report a bad key the same way: one line, exit code 2.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from evo_merge.errors import UserError, did_you_mean, first_line
from evo_merge.user_paths import expand_home

M = TypeVar("M", bound=BaseModel)


MAX_VALUES = 1_000_000  # far above any campaign or recipe; a YAML alias bomb is far above it


def is_path_like(value: str) -> bool:
    """Whether a string that may be a name (a task, an architecture) is a path instead: one with a
    `/`, a YAML suffix or a leading `~` (a home folder, which paths expand). Those are read as paths
    (a campaign makes them absolute against its file's folder); any other string is looked up as a
    name first, wherever the working directory is (a folder named `lang` there silently replaced the
    shipped benchmark)."""
    return value.endswith((".yaml", ".yml")) or "/" in value or value.startswith("~")


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file (`~` expanded); a missing file or a syntax error is a UserError with line and column."""
    path = expand_home(path)
    if path.is_dir():  # a run or model folder given for its campaign or recipe: name what it holds
        inside = sorted(f.name for f in path.glob("*.yaml"))
        raise UserError(f"{path}: a folder, not a YAML file" + (f" (it holds {', '.join(inside)})" if inside else ""))
    if not path.is_file():  # /dev/null, a pipe: said as what they are, not as missing
        raise UserError(f"{path}: " + ("not a regular file" if path.exists() else "no such file"))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
        if _expanded_size(data) > MAX_VALUES:
            raise UserError(f"{path}: holds more than {MAX_VALUES:,} values once its YAML aliases are expanded")
        return data
    except RecursionError:
        raise UserError(f"{path}: nested too deeply (or a YAML alias inside its own anchor)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except ValueError as exc:  # a scalar its loader cannot build: a 5000-digit integer, a 13th month's date
        problem = first_line(exc).split("; use sys.set_int_max_str_digits")[0]  # Python's advice is not the user's
        raise UserError(f"{path}: a value it holds cannot be read: {problem}") from None
    except yaml.YAMLError as exc:
        raise malformed_yaml(path, exc) from None


def malformed_yaml(path: Path, exc: yaml.YAMLError) -> UserError:
    """`FILE:LINE:COLUMN: malformed YAML: PROBLEM`, where the parser gave the place."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if problem == "but found another document":  # a `---` line: several files' worth in one
        return UserError(f"{where}: a second YAML document (after `---`): a file holds one campaign or recipe; "
                         "split them into a file each")
    return UserError(f"{where}: malformed YAML: {problem}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load` keeps the last of two equal keys: a `methods:` pasted above the one a
    template already has was ignored without a word. A key given twice is refused with both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` entries may be overridden: that is what merge keys are for
            key = self.construct_object(key_node)
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {lines[key]})", key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-5` and `1e5` as strings, where YAML 1.2 and mergekit's schema read
# numbers: mergekit recipes write `tol: 1e-5`, and "expected a number, got '1e-5'" made no sense
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _expanded_size(data: Any) -> int:
    """How many values `data` holds once YAML aliases are expanded: nine nested lists of ten
    aliases each load as nine small objects and hold 10⁹ values, which validating walks one by
    one. Counted once per shared object, so the count itself costs what the file does."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) not in sizes:
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    return size(data)


def refuse_other_kind(data: Any, source: str | Path, key: str, kind: str, command: str) -> None:
    """A file of the other kind (a merge recipe given for a campaign, or a campaign for a recipe),
    known by its `key`: named as such, with the command that takes it, instead of the first key
    the schema does not know."""
    if isinstance(data, dict) and key in data:
        raise UserError(f"{source}: {kind} (it has `{key}`), which `{command}` takes")


def validate(model: type[M], data: Any, source: str | Path, context: dict[str, Any] | None = None) -> M:
    """Build `model` from `data`; on failure name the first bad key path in one line. `context`: what
    the validators may read beside the data (a campaign's folder, which its relative paths name)."""
    if data is None:
        raise UserError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys at the top level, not {_kind(data)}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        path = _key_path(_first(errors, model)["loc"], model)
        # a value that fits no member of a union fails once per member: say what each would take
        msgs = [_message(e, model) for e in errors if _key_path(e["loc"], model) == path]
        key = ".".join(str(part) for part in path)
        where = f"{key}: " if key else ""  # a check of the whole campaign names its keys itself
        raise UserError(f"{source}: {where}{' | '.join(dict.fromkeys(msgs))}") from None


def _first(errors: list[dict], model: type[BaseModel]) -> dict:
    """The error to report: the first, unless a required key is missing beside an unknown one, which
    is then most likely its misspelling (`merge_methd`) and is reported, with the key it resembles."""
    missing = {_key_path(e["loc"], model)[:-1] for e in errors if e["type"] == "missing"}
    return next((e for e in errors if e["type"] == "extra_forbidden" and _key_path(e["loc"], model)[:-1] in missing),
                errors[0])


# pydantic names the union member a value was tried against after its key (`literal['auto']`, `int`)
_UNION_MEMBER = re.compile(r"^((?:tagged-union|literal|function-\w+)\[.*\]|constrained-\w+|int|float|str|bool)$")


def _key_path(loc: tuple, model: type[BaseModel]) -> tuple:
    """`loc` as the user's keys and positions: without the union members pydantic names after a key,
    dropped only where the schema holds a union of them (a pick or option the user named `int` was
    dropped too, and the error named another key, audit 140); by their names alone where the schema
    is not known that far down."""
    path: list = []
    kinds: list[Any] = [model]
    for part in loc:
        if isinstance(part, str) and _UNION_MEMBER.match(part) and (not kinds or any(_tagged(k) for k in kinds)):
            continue
        path.append(part)
        kinds = [inner for kind in kinds for inner in _inside(kind, part)]
    return tuple(path)


def _tagged(kind: Any) -> bool:
    """Whether pydantic names the member a value was tried against under a value of type `kind`: a
    union of two types or more (an optional type, `X | None`, is not named so)."""
    return get_origin(kind) in (Union, types.UnionType) and sum(arg is not type(None) for arg in get_args(kind)) > 1


def validator_message(error: dict) -> str:
    """One pydantic error's message as a validator wrote it, without pydantic's "Value error, "."""
    return error["msg"].removeprefix("Value error, ")


def _message(error: dict, model: type[BaseModel]) -> str:
    if error["type"] == "model_type":  # pydantic says "a valid dictionary or instance of TaskSpec"
        return f"expected a mapping of keys ({{key: value, ...}}), not {_kind(error['input'])}" + _as_mapping(
            error, model)
    if error["type"] == "dict_type":  # pydantic says "Input should be a valid dictionary"
        return f"expected a mapping of keys ({{key: value, ...}}), not {_kind(error['input'])}"
    if error["type"] == "list_type":  # `models: /path/arith` for `models: [/path/arith]`
        return f"expected a list ([a, b, ...]), not {_kind(error['input'])}" + _as_list(error, model)
    if error["type"] == "tuple_type":  # the schemas' tuples are ranges: [low, high], [start, end]
        return f"expected a list of two values ([low, high]), not {_kind(error['input'])}"
    if error["type"] != "extra_forbidden":
        return validator_message(error)
    path = _key_path(error["loc"], model)
    return "unknown key" + did_you_mean(str(path[-1]), _keys_at(model, path[:-1]))


def _as_mapping(error: dict, model: type[BaseModel]) -> str:
    """A value where a section of one required key goes, written as that section: `tasks: [arith]`
    is `tasks: [{task: arith}]`."""
    value = error["input"]
    required = {name for kind in _kinds_at(model, _key_path(error["loc"], model))
                if isinstance(kind, type) and issubclass(kind, BaseModel)
                for name, field in kind.model_fields.items() if field.is_required()}
    if len(required) != 1 or not _plain(value):
        return ""
    return f"; write it as {{{required.pop()}: {value}}}"


# text that reads back as itself written bare inside `[...]` or `{key: ...}`: no YAML indicator first,
# no flow or comment characters, no `: ` and no trailing space or colon
_PLAIN_TEXT = re.compile(r"[^\s\[\]{}:,#&*!|>'\"%@`-][^\[\]{},#]*(?<![\s:])")


def _plain(value: Any) -> bool:
    """Whether a hint may show `value` as it is (`''`, `a: b`, `[x` or `# note` would write other YAML)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    return not isinstance(value, str) or bool(_PLAIN_TEXT.fullmatch(value)) and ": " not in value


def _as_list(error: dict, model: type[BaseModel]) -> str:
    """One value where a list goes, written as a list of it (of its section, where an entry is one:
    `tasks: arith` is `tasks: [{task: arith}]`)."""
    value = error["input"]
    if not _plain(value):
        return ""
    entry = _as_mapping({**error, "loc": (*error["loc"], 0)}, model).removeprefix("; write it as ") or value
    return f"; write it as [{entry}]"


def _kind(value: Any) -> str:
    """What a YAML value is, in YAML's words: `tasks: [arith]` holds a string, not a mapping."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float, str)):
        return f"{'the string' if isinstance(value, str) else 'the number'} {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else type(value).__name__


def _keys_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys the schema section at `path` takes: a misspelt key (`method`, `populaton`) is named
    with the one it most resembles, as a new user cannot tell a typo from a key that does not exist."""
    return [name for kind in _kinds_at(model, path) for name in _fields(kind)]


def _kinds_at(model: type[BaseModel], path: tuple) -> list[Any]:
    """The types the schema allows at `path` (keys and list positions) below `model`."""
    kinds: list[Any] = [model]
    for part in path:
        kinds = [inner for kind in kinds for inner in _inside(kind, part)]
    return kinds


def _inside(kind: Any, part: str | int) -> list[Any]:
    """The types a value of type `kind` may hold at key or index `part`."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(part) if isinstance(part, str) else None
        return [field.annotation] if field is not None else []
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return [inner for arg in args for inner in _inside(arg, part)]
    if origin in (list, tuple, Sequence) and isinstance(part, int) and args:
        return [args[0]]
    if origin in (dict, Mapping) and len(args) == 2:
        return [args[1]]
    return []


def _fields(kind: Any) -> list[str]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    if get_origin(kind) in (Union, types.UnionType):
        return [name for arg in get_args(kind) for name in _fields(arg)]
    return []


class Strict(BaseModel):
    """A schema section where a misspelt key is an error, not silently ignored, and so is a
    `true`/`false` where a number goes (pydantic reads it as 1 or 0: `population: true` was
    refused as "greater than or equal to 2", which named no mistake the user made)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        found = _boolean_for_a_number(value, [cls.model_fields[info.field_name].annotation], "")
        if found is not None:
            where, boolean = found
            raise ValueError(f"a number or a name goes here, not the boolean {str(boolean).lower()}"
                             + (f" (at {where})" if where else ""))
        return value


def _boolean_for_a_number(value: Any, kinds: list[Any], where: str) -> tuple[str, bool] | None:
    """Where in `value` a boolean sits that none of `kinds` takes as itself, and the boolean, or None.
    Inside a mapping or a list of numbers too: `objective.weights: {lang: no}` was read as a weight of
    0.0 (audit 140). Only where the schema holds such a container: a section (a model, optional or
    not) checks its own fields, and a value of another shape is pydantic's to name."""
    if isinstance(value, bool):
        return (where, value) if kinds and not any(_admits_bool(kind) for kind in kinds) else None
    members = [member for kind in kinds for member in _members(kind)]
    if any(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return None
    if isinstance(value, dict):  # the value type of the mappings the schema takes here
        held, parts = [get_args(m)[-1] for m in members if get_origin(m) in (dict, Mapping) and get_args(m)], [
            (f"{where}.{key}", inner) for key, inner in value.items()]
    elif isinstance(value, list):  # the item type of the lists
        held, parts = [get_args(m)[0] for m in members if get_origin(m) in (list, tuple, Sequence) and get_args(m)], [
            (f"{where}[{index}]", inner) for index, inner in enumerate(value)]
    else:
        return None
    for below, inner in parts if held else ():
        if (found := _boolean_for_a_number(inner, held, below.lstrip("."))) is not None:
            return found
    return None


def _members(kind: Any) -> list[Any]:
    """The types a union (an optional type too) holds, or the type itself."""
    if get_origin(kind) in (Union, types.UnionType):
        return [member for arg in get_args(kind) for member in _members(arg)]
    return [kind]


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a boolean as itself (bool, Any, or a union or container holding one)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(arg) for arg in get_args(annotation))
