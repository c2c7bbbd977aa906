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


def test_a_task_folder_named_bare_is_still_read_with_a_warning(tmp_path, monkeypatch, caplog):
    """No task has the name: the folder of the working directory is read, as before, so a run folder
    started with `task: my_bench` still resumes; a warning says to write it as a path."""
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "my_bench")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="evo_merge"):
        task = resolve_task("my_bench")
    assert task.item_ids[0].startswith("seq-")
    assert "task 'my_bench': no task has that name; read as" in caplog.text and "write it as a path" in caplog.text
    with pytest.raises(UserError, match="unknown task 'no_such_bench'"):
        resolve_task("no_such_bench")
