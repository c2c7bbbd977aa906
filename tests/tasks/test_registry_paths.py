"""A task string is a path only when it looks like one: the working directory never decides."""

import shutil

import pytest

from evo_merge.errors import UserError
from evo_merge.tasks.registry import BENCHMARKS_DIR, resolve_task


def test_a_folder_named_like_a_shipped_benchmark_does_not_replace_it(tmp_path, monkeypatch):
    """Run from a folder holding `lang/` (the demo zoo has one, a model), a campaign's `lang`
    objective was that folder: here a copy of the `seq` benchmark, scored with exit 0."""
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "lang")
    monkeypatch.chdir(tmp_path)
    assert resolve_task("lang").item_ids[0].startswith("lang-")
    assert resolve_task("./lang").item_ids[0].startswith("seq-")  # a path, as written


def test_a_task_folder_named_bare_is_told_to_be_given_as_a_path(tmp_path, monkeypatch):
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "my_bench")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"a task folder is given as a path: \./my_bench"):
        resolve_task("my_bench")
