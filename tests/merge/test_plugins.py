"""Merge methods of one's own found through entry points: a broken plugin, a method registered twice."""

from __future__ import annotations

import logging
import re
import sys

import pytest

from evo_merge.errors import UserError
from evo_merge.merge import get_method, list_methods, register_method, registry
from evo_merge.merge.registry import Hyperparameter

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


INTERRUPTED_ONCE = '''
from pathlib import Path

from evo_merge.merge import register_method

FLAG = Path(__file__).with_suffix(".interrupted")
if not FLAG.exists():  # the first import only: Ctrl-C while a slow dependency imports
    FLAG.write_text("once")
    raise KeyboardInterrupt


@register_method("evo_test_late")
def method(base, deltas, weights, params, name):
    return base
'''


def test_a_load_interrupted_by_ctrl_c_is_tried_again_by_the_next_lookup(site):
    install(site, "evo_plugin_test_late", {"evo_test_late": "evo_plugin_test_late"}, INTERRUPTED_ONCE)
    with pytest.raises(KeyboardInterrupt):
        get_method("evo_test_late")
    assert get_method("evo_test_late").name == "evo_test_late"


def test_a_plugin_whose_import_fails_with_any_error_leaves_the_others_found(site, caplog):
    """A plugin's import can raise anything (a RuntimeError of a dependency's setup), not only ImportError."""
    install(site, "evo_plugin_test_boom", {"evo_test_boom": "evo_plugin_test_boom"},
            'raise RuntimeError("boom")\n')
    install(site, "evo_plugin_test_fine", {"evo_test_fine": "evo_plugin_test_fine"},
            METHOD.format(name="evo_test_fine"))
    with caplog.at_level(logging.WARNING, logger="evo_merge.merge"):
        assert get_method("evo_test_fine").name == "evo_test_fine"
    with pytest.raises(UserError) as failed:
        get_method("evo_test_boom")
    assert str(failed.value).startswith("merge method 'evo_test_boom': its entry point evo_test_boom = ")
    assert str(failed.value).endswith("cannot be loaded (RuntimeError: boom)")
    # a campaign's methods said "unknown merge method", the entry point being installed (audit 135)
    from evo_merge.merge.kinds import kind_hyperparameters

    with pytest.raises(UserError) as in_campaign:
        kind_hyperparameters("evo_test_boom")
    assert str(in_campaign.value) == str(failed.value)


def test_entry_points_are_loaded_once_a_process(site, caplog):
    """Each lookup of a name no method has loaded the plugins again, and warned of a stale one again."""
    install(site, "evo_plugin_test_stale", {"evo_test_gone": "evo_plugin_test_renamed_away"})
    with caplog.at_level(logging.WARNING, logger="evo_merge.merge"):
        for typo in ("tiez", "linaer"):
            with pytest.raises(UserError, match=f"unknown merge method '{typo}'"):
                get_method(typo)
    assert [r.getMessage() for r in caplog.records if "evo_test_gone" in r.getMessage()] == [
        "merge-method entry point evo_test_gone = evo_plugin_test_renamed_away (package evo_plugin_test_stale 0.1) "
        "cannot be loaded (ModuleNotFoundError: No module named 'evo_plugin_test_renamed_away'); its methods are "
        "unavailable"]


@pytest.mark.parametrize(("name", "hyperparameters", "message"), [
    ("test_bad", [Hyperparameter("h", 1.0, 2.0, 0.5)], "hyperparameter 'h': low 2.0 is above high 0.5"),
    ("test_bad", [Hyperparameter("g", 5.0, 0.0, 2.0)], "hyperparameter 'g': its default 5.0 is outside [0.0, 2.0]"),
    ("test_bad", [Hyperparameter("mode", "fast")], "hyperparameter 'mode': its default 'fast' is not a finite number"),
    ("test_bad", [Hyperparameter("g", float("nan"))], "hyperparameter 'g': its default nan is not a finite number"),
    ("test_bad", [Hyperparameter("g", 1.0), Hyperparameter("g", 2.0)], "hyperparameter 'g' is declared twice"),
    ("test_bad", [Hyperparameter("weight", 1.0)], "'weight' is each model's coefficient in a recipe"),
    ("test_bad", [Hyperparameter("g", 0.5, 0.0, 1.0, search_range=(0.5, 2.0))], "search_range (0.5, 2.0) is not"),
    ("mass", [], "merge method name 'mass' is a campaign's MASS kind"),
])
def test_a_declaration_no_merge_can_use_is_refused_when_registered(name, hyperparameters, message):
    """register_method took any declaration and each slip surfaced late: low above high was a numpy
    traceback in a campaign, a string default failed after calibration naming neither method nor
    plugin, a default outside its range refused a recipe key the recipe did not hold, a `weight`
    hyperparameter changed the models' coefficients, a method named `mass` meant MASS in a campaign
    and the plugin in `merge` (audit 135)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        register_method(name, hyperparameters=hyperparameters, replace=True)(lambda base, deltas, *rest: base)
    assert name not in list_methods()


def test_a_method_a_function_of_no_module_defines_is_one_of_your_own(site):
    """A function `exec(code, {})` makes has no `__module__`: it registered, and a campaign then ended
    in "'NoneType' object has no attribute 'split'" (audit 142)."""
    namespace: dict = {}
    exec(METHOD.format(name="nomodule"), namespace)  # the test's own text
    method = get_method("nomodule")
    assert namespace["method"].__module__ is None and not method.is_builtin
    assert registry.method_code("nomodule") is None  # no file holds it, as a notebook cell's
    assert registry.method_origin("nomodule") == "code of no module (made by exec)"
