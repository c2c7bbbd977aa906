"""results.json and item_scores.parquet written by `write_results` for any folder."""

from __future__ import annotations

import json
import math

import pytest

from evo_merge.errors import UserError
from evo_merge.merge.results import ITEM_SCORES_FILE, RESULTS_FILE, write_results
from evo_merge.tasks.meta import TaskMeta

META = {"agree": TaskMeta(name="agree", dataset="agree")}


@pytest.mark.parametrize("score", [math.nan, math.inf, 5.0, -0.25, "high", None])
def test_a_score_no_task_can_give_is_refused_naming_the_file_task_and_item(tmp_path, score):
    """A NaN was written into results.json (not JSON: `json.loads` of strict parsers fails on it),
    and a 5.0 into a mean no task can score: every task's per-item scores lie in [0, 1]."""
    with pytest.raises(UserError) as caught:
        write_results(tmp_path, {"agree": {"a": 1.0, "b": score}}, META)
    assert str(caught.value).startswith(f"{tmp_path / RESULTS_FILE}: task 'agree' scored item 'b' as ")
    assert str(caught.value).endswith("in [0, 1]")
    assert not (tmp_path / RESULTS_FILE).exists() and not (tmp_path / ITEM_SCORES_FILE).exists()


def test_results_are_written_atomically_replacing_a_planted_link(tmp_path):
    """A plain write went through a link at results.json (a folder someone sent) to whatever it
    named; the files are now replaced as every other writer replaces its files."""
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("keep")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / RESULTS_FILE).symlink_to(elsewhere)
    written = write_results(folder, {"agree": {"a": 1.0, "b": 0.0}}, META)
    assert written == [folder / RESULTS_FILE, folder / ITEM_SCORES_FILE]
    assert elsewhere.read_text() == "keep" and not (folder / RESULTS_FILE).is_symlink()
    assert json.loads((folder / RESULTS_FILE).read_text())["results"]["agree"]["score,none"] == 0.5
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
