"""zoo.json: what the builders write is what the readers get; a broken one is a one-line error."""

import json

import pytest

from evo_merge.errors import UserError
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.zoo.manifest import ZooManifest, has_zoo, read_zoo, write_zoo


def test_the_built_zoo_names_its_endpoints(tiny_zoo):
    meta = read_zoo(tiny_zoo)
    assert meta.kind == "tiny-lm" and meta.models == ["base", *FAMILIES] and meta.endpoints == list(FAMILIES)
    assert meta.key == json.loads((tiny_zoo / "zoo.json").read_text())["key"] and len(meta.key) == 12


def test_round_trip_and_errors(tmp_path):
    assert not has_zoo(tmp_path)
    with pytest.raises(UserError, match="no zoo.json"):
        read_zoo(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")  # an mnist zoo: was told to build a zoo, which it is
    with pytest.raises(UserError, match="an mnist zoo .*this takes a tiny-lm or smollm2 zoo"):
        read_zoo(tmp_path)
    write_zoo(tmp_path, ZooManifest(kind="custom", models=["base", "a", "b"]))
    assert has_zoo(tmp_path) and read_zoo(tmp_path).endpoints == ["a", "b"]
    (tmp_path / "zoo.json").write_text(json.dumps({"kind": "custom", "models": "base"}))
    with pytest.raises(UserError, match=r"zoo.json: models: Input should be a valid list"):
        read_zoo(tmp_path)
    (tmp_path / "zoo.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_zoo(tmp_path)
