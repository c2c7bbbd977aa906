"""docs/architecture.md is the map a newcomer reads first: a module it does not name is one they
will not find. Every module of the package must be named there (its file name)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_is_named_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = sorted(p.relative_to(ROOT / "evo_merge") for p in (ROOT / "evo_merge").rglob("*.py")
                     if p.name != "__init__.py")
    assert len(modules) > 100
    assert [str(m) for m in modules if m.name not in page] == []
