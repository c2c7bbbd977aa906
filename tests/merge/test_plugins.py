"""Merge methods of one's own found through entry points: a broken plugin, a method registered twice."""

from __future__ import annotations

import logging
import sys

import pytest

from evo_merge.errors import UserError
from evo_merge.merge import get_method, list_methods, register_method, registry

METHOD = '''
from evo_merge.merge import register_method


@register_method("{name}")
def method(base, deltas, weights, params, name):
    return base + sum(w * d for w, d in zip(weights, deltas))
'''


def install(site, package: str, entry_points: dict[str, str], module_text: str | None = None) -> None:
    """A package as pip installs it: its module (unless None: a stale entry point) and a dist-info
    folder whose entry points name modules (found by importlib.metadata, nothing patched)."""
    if module_text is not None:
        (site / f"{package}.py").write_text(module_text)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh registry (evo-merge's own methods only) over a folder on sys.path; what the test
    imports from there is forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_entry_point_errors", {}, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("evo_plugin_test"):
            del sys.modules[name]


def test_a_stale_entry_point_leaves_the_other_plugins_methods_found(site, caplog):
    """One entry point naming a module since removed raised a bare ModuleNotFoundError from the
    first lookup, and every later lookup called the working plugin's method unknown."""
    install(site, "evo_plugin_test_stale", {"evo_test_gone": "evo_plugin_test_renamed_away"})
    install(site, "evo_plugin_test_good", {"evo_test_good": "evo_plugin_test_good"},
            METHOD.format(name="evo_test_good"))
    with caplog.at_level(logging.WARNING, logger="evo_merge.merge"):
        assert get_method("evo_test_good").name == "evo_test_good"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "evo_test_gone = evo_plugin_test_renamed_away (package evo_plugin_test_stale 0.1) " \
        "cannot be loaded (ModuleNotFoundError: No module named 'evo_plugin_test_renamed_away')" in warned[0]
    assert "evo_test_good" in list_methods() and get_method("evo_test_good").name == "evo_test_good"
    with pytest.raises(UserError, match=r"^merge method 'evo_test_gone': its entry point evo_test_gone = "
                       r"evo_plugin_test_renamed_away \(package evo_plugin_test_stale 0.1\) cannot be loaded "
                       r"\(ModuleNotFoundError: No module named 'evo_plugin_test_renamed_away'\)$"):
        get_method("evo_test_gone")
    with pytest.raises(UserError, match="unknown merge method 'nope'"):
        get_method("nope")


def test_a_method_registered_in_process_and_installed_too_is_no_error_from_a_lookup(site, caplog):
    """A notebook cell registering the method its package installs as well: the lookup of any name
    not yet registered loaded the package, whose decorator raised ValueError from inside it."""

    @register_method("evo_test_twice")
    def mine(base, deltas, weights, params, name):
        return base

    install(site, "evo_plugin_test_twice", {"evo_test_twice": "evo_plugin_test_twice"},
            METHOD.format(name="evo_test_twice"))
    with caplog.at_level(logging.WARNING, logger="evo_merge.merge"), \
            pytest.raises(UserError, match="unknown merge method 'ties_typo'"):
        get_method("ties_typo")
    assert "merge method 'evo_test_twice' of the entry point evo_test_twice = evo_plugin_test_twice" in caplog.text
    assert get_method("evo_test_twice").fn is mine  # the one registered first is kept
    with pytest.raises(ValueError, match=r"already registered \(replace=True replaces it\)"):
        register_method("evo_test_twice")(mine)
    register_method("evo_test_twice", replace=True)(mine)  # a cell run again
