"""Schemas for the YAML files users write (merge recipes; campaigns), with errors that name the key.

Recipes follow mergekit's schema for the methods both tools have, so an existing mergekit recipe
for linear, task_arithmetic, ties, dare_linear, dare_ties or slerp runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evo_merge.errors import UserError

M = TypeVar("M", bound=BaseModel)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: malformed YAML: {problem}") from None


def validate(model: type[M], data: Any, source: str | Path) -> M:
    """Build `model` from `data`; on failure name the first bad key path in one line."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{source}: {loc}: {msg}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _scalar_params(value: dict[str, Any]) -> dict[str, Any]:
    for key, v in value.items():
        if isinstance(v, (list, dict)):
            raise ValueError(f"{key}: per-layer gradients and tensor filters are not supported; give one value")
    return value


class ModelEntry(_Strict):
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _scalars(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _scalar_params(value)


class Recipe(_Strict):
    """One merge, in mergekit's schema (plus `out_dtype` and `tokenizer_source` as in mergekit)."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None

    @field_validator("parameters")
    @classmethod
    def _scalars(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _scalar_params(value)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return validate(cls, load_yaml(path), path)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False)
