"""docs/campaigns.md's table of campaign keys against the schema it documents: every key a
campaign file may hold has a row, and the row's default and allowed values are the schema's.
A default changed in `config.py` without its row fails here, not in a user's campaign."""

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from evo_merge.config import Campaign

DOC = Path(__file__).resolve().parents[1] / "docs" / "campaigns.md"
ROW = re.compile(r"^\| `([^`]+)`(?: / `\.([^`]+)`)? \| ([^|]*) \| ([^|]*) \|")


def _doc_rows() -> dict[str, tuple[str, str]]:
    """key -> (default cell, allowed-values cell); `a.low` / `.high` rows split their defaults."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := ROW.match(line.replace(r"\|", "/")):  # an escaped pipe is inside a cell
            key, other, default, allowed = m.group(1), m.group(2), m.group(3).strip(), m.group(4).strip()
            if other:
                first, second = (d.strip() for d in default.split(" / "))
                rows[key] = (first, allowed)
                rows[f"{key.rsplit('.', 1)[0]}.{other}"] = (second, allowed)
            else:
                rows[key] = (default, allowed)
    return rows


def _section(annotation) -> type[BaseModel] | None:
    for arg in (*typing.get_args(annotation), annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        if typing.get_origin(arg) is list and (section := _section(typing.get_args(arg)[0])):
            return section
    return None


def _keys(model: type[BaseModel], prefix: str = ""):
    """(dotted key as the table writes it, field) for every key that holds a value, not a section."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        section = _section(field.annotation)
        if section is None or typing.get_origin(field.annotation) is dict:
            yield key, field
        elif typing.get_origin(field.annotation) is list:
            yield key, field
            yield from _keys(section, f"{key}[].")
        else:  # a section, optional (align, tracking.mlflow) or not: its keys have the rows
            yield from _keys(section, f"{key}.")


def _literals(annotation) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


KEYS = list(_keys(Campaign))
DERIVED = {"tasks[].name": "the task's label"}  # no fixed default: the row says what it is derived from
ROWS = _doc_rows()


def test_every_key_a_campaign_may_hold_has_a_row():
    missing = [key for key, _ in KEYS if key not in ROWS]
    assert not missing, f"docs/campaigns.md has no row for {missing}"


DOCUMENTED = [(key, field) for key, field in KEYS if key in ROWS]


@pytest.mark.parametrize(("key", "field"), DOCUMENTED, ids=[key for key, _ in DOCUMENTED])
def test_a_rows_default_and_allowed_values_are_the_schemas(key, field):
    default_cell, allowed_cell = ROWS[key]
    default = field.default_factory() if field.default_factory is not None else field.default
    if default is PydanticUndefined:
        assert default_cell.startswith("required"), f"{key}: the schema requires it; the table says {default_cell!r}"
    elif default is None:
        assert default_cell.startswith(DERIVED.get(key, "none")), \
            f"{key}: the schema's default is none; the table says {default_cell!r}"
    else:
        written = re.match(r"`([^`]*)`", default_cell)
        assert written, f"{key}: the table gives no default ({default_cell!r}); the schema's is {default!r}"
        if isinstance(default, BaseModel):
            default = default.model_dump()
        assert yaml.safe_load(written.group(1)) == default, f"{key}: the table says {written.group(1)}"
    for value in _literals(field.annotation):
        assert f"`{value}`" in allowed_cell, f"{key}: allowed value {value!r} is missing from its row"
