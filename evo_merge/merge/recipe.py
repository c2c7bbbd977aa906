"""The merge-recipe schema: mergekit's YAML, validated with errors that name the key path.

A recipe merges whole models (`models:`) or stacks and merges layer ranges (`slices:`). Any
parameter may be a scalar, a gradient (a list of anchors interpolated over the layers of a
slice) or a list of `{filter, value}` conditions matched against the tensor name; see
`evo_merge.merge.settings` for how a setting becomes one value per tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from evo_merge.dtype_names import dtype_key, float32_refusal, unknown_dtype
from evo_merge.errors import UserError
from evo_merge.merge.chat_templates import chat_template_text
from evo_merge.schema import Strict, load_yaml, refuse_other_kind, validate

SCALARS = (bool, int, float, str)


def _numbers(value: Any) -> list[float]:
    """Every number in a setting: a scalar, a gradient's anchors, the values of its conditions."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return _numbers(value.get("value")) if isinstance(value, dict) else []


def check_setting(key: str, value: Any) -> None:
    """Raise ValueError unless `value` is a scalar, a non-empty gradient or a list of conditions,
    every number finite (a NaN weight would merge into NaN tensors) and within float32's range (a
    weight of 1e308 stopped the merge at its first tensor with a RuntimeError traceback)."""
    if why := next(filter(None, map(float32_refusal, _numbers(value))), None):
        raise ValueError(f"{key}: {why}")
    if isinstance(value, SCALARS):
        return
    if isinstance(value, dict):
        raise ValueError(f"{key}: a filtered value must be a list of {{filter, value}} entries")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key}: expected a value, a non-empty list of anchors, or a list of {{filter, value}}")
    if all(isinstance(v, SCALARS) for v in value):
        return
    for i, cond in enumerate(value):
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise ValueError(f"{key}.{i}: expected {{filter: NAME_PART, value: VALUE}}")
        if cond.get("filter") is not None and not isinstance(cond["filter"], str):
            raise ValueError(f"{key}.{i}.filter: expected a string")
        inner = cond["value"]
        if not isinstance(inner, SCALARS) and not (
                isinstance(inner, list) and inner and all(isinstance(v, SCALARS) for v in inner)):
            raise ValueError(f"{key}.{i}.value: expected a value or a non-empty list of anchors")


def _check_settings(value: dict[str, Any]) -> dict[str, Any]:
    for key, setting in value.items():
        check_setting(key, setting)
    return value


# a bare `parameters:` line is YAML's null, which mergekit takes for none (its own examples/ties.yml has one)
Parameters = Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value),
                       AfterValidator(_check_settings)]


class _WithParameters(Strict):
    parameters: Parameters = Field(default_factory=dict)


class ModelEntry(_WithParameters):
    """One input model (a folder, a Hub id `org/name[@rev]`, or either `+path/to/lora`)."""

    model: str


class SliceSource(_WithParameters):
    """Layers [start, end) of one model."""

    model: str
    layer_range: tuple[int, int]

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"expected [start, end) with 0 <= start < end, got {list(value)}")
        return value


class OutputSlice(_WithParameters):
    """Output layers made from equally long layer ranges of its sources, merged layer by layer."""

    sources: list[SliceSource] = Field(min_length=1)
    base_model: str | None = None
    residual_weight: float | None = Field(None, description="accepted for mergekit recipes; mergekit ignores it")


class ZeroEmbedding(Strict):
    kind: Literal["zero"]


class ModelTokenEmbedding(Strict):
    kind: Literal["model_token"]
    model: str
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelTokenEmbedding:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id and token")
        return self


def _source_kind(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


class TokenEmbedding(Strict):
    """Where an output token's embedding row comes from (a model, a model's other token, or zeros)."""

    # chosen by `kind`, so a bad source is told its own kind's problem, not another kind's
    source: Annotated[
        Annotated[ZeroEmbedding, Tag("zero")] | Annotated[ModelTokenEmbedding, Tag("model_token")],
        Discriminator(_source_kind, custom_error_type="token_source",
                      custom_error_message="a token source's kind is 'zero' or 'model_token'"),
    ] | str | None = None
    force: bool = False


class TokenizerSpec(Strict):
    source: str = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)


def _check_method(name: str, path: str | Path) -> None:
    """A recipe file's method no one registered is said under its key (`merge_method: unknown merge
    method 'tie' ...`), as a campaign's is under `methods:`; the merge found it without naming the
    key. Checked where a file is read, not in the schema: a recipe built in Python may name a plugin
    method registered later, or on another machine."""
    from evo_merge.merge.registry import get_method

    try:
        get_method(name)
    except UserError as exc:
        raise UserError(f"{path}: merge_method: {exc}") from None


class Recipe(Strict):
    """One merge, in mergekit's schema."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] | None = Field(None, min_length=1)
    slices: list[OutputSlice] | None = Field(None, min_length=1)
    parameters: Parameters = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        """A dtype name `weights.parse_dtype` takes (`dtype_key`), checked here to be named by its key;
        kept as the recipe wrote it."""
        if value is not None and dtype_key(value) is None:
            raise ValueError(unknown_dtype(value))
        return value

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        chat_template_text(value)  # the name is kept, as the recipe wrote it
        return value

    @model_validator(mode="before")
    @classmethod
    def _one_module(cls, data: Any) -> Any:
        """mergekit's `modules:` (a recipe per module of a multi-module model) is refused as
        unsupported, not as a typo of `models`."""
        if isinstance(data, dict) and "modules" in data:
            raise ValueError("modules: mergekit's recipes per module (of a model made of several) are not supported: "
                             "give `models` or `slices` for the one model")
        return data

    @model_validator(mode="after")
    def _inputs(self) -> Recipe:
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of `models` and `slices`")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give `tokenizer_source` or a `tokenizer` section, not both")
        return self

    def references(self) -> list[str]:
        """Every model the recipe names, in first-mention order (base first)."""
        names = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            names.append(entry.model)
        for out in self.slices or []:
            names += [out.base_model] if out.base_model else []
            names += [s.model for s in out.sources]
        return list(dict.fromkeys(names))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        data = load_yaml(path)
        refuse_other_kind(data, path, "tasks", "a campaign file, not a merge recipe",
                          "evo-merge plan / run CAMPAIGN.yaml")
        if isinstance(data, dict) and "experts" in data and "merge_method" not in data:  # was "gate_mode: unknown key"
            raise UserError(f"{path}: a mergekit-moe config (it has `experts`), which builds a mixture of experts: "
                            "evo-merge merges mergekit-yaml recipes (merge_method, models or slices); use mergekit-moe")
        recipe = validate(cls, data, path)
        _check_method(recipe.merge_method, path)
        return recipe

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True, exclude_defaults=True, mode="json"),
                              sort_keys=False)
