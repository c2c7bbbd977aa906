"""`evaluator.score_cache` end to end, on a small build of the tiny-lm zoo (its benchmarks are
lm-eval tasks, which give the digests scores are kept under): a second campaign reads what the
first measured instead of merging and scoring again, and stores exactly what it would have
scored; a campaign of another seed reads the calibration's base and endpoints and scores its own
candidates."""

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.cli.template import campaign_text
from evo_merge.search.candidate import base_candidate, endpoint_candidate
from evo_merge.search.local import LocalEvaluator

COLUMNS = "key, phase, generation, method, status, estimates, estimate_se, measured, items_evaluated, items_measured"


def _campaign(folder: Path, zoo: Path, name: str, *, cache: bool = True, seed: int = 0) -> Path:
    config = yaml.safe_load(campaign_text(zoo, ["arith", "lang", "seq"], name=name, population=4, generations=2))
    config["algorithm"]["seed"] = seed
    if cache:
        config["evaluator"] = {**config.get("evaluator", {}), "score_cache": "cache/scores.sqlite"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, out: Path, monkeypatch) -> int:
    """`evo-merge run`, counting the candidates the local evaluator was asked to score."""
    asked = []
    evaluate = LocalEvaluator.evaluate
    monkeypatch.setattr(LocalEvaluator, "evaluate",
                        lambda self, candidate, *args, **kwargs: asked.append(candidate) or evaluate(
                            self, candidate, *args, **kwargs))
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return len(asked)


def _rows(run: Path) -> tuple[list, list]:
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        evaluations = db.execute(f"SELECT {COLUMNS} FROM evaluations ORDER BY id").fetchall()
        scores = db.execute("SELECT e.key, s.task, s.item, s.score FROM item_scores s JOIN evaluations e "
                            "ON s.evaluation_id = e.id ORDER BY e.id, s.task, s.item").fetchall()
    return evaluations, scores


@pytest.fixture(scope="module")
def first(tiny_zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cached")
    run = folder / "first"
    with pytest.MonkeyPatch.context() as monkeypatch:
        scored = _run(_campaign(folder, tiny_zoo, "first"), run, monkeypatch)
    return folder, run, scored


def test_a_second_campaign_reads_every_score_from_the_cache_and_stores_the_same(first, tiny_zoo, monkeypatch):
    folder, run, scored = first
    assert scored > 0 and (folder / "cache" / "scores.sqlite").is_file()
    again = folder / "again"
    assert _run(_campaign(folder, tiny_zoo, "again"), again, monkeypatch) == 0  # no candidate merged or scored
    assert _rows(again) == _rows(run)
    assert (again / "pareto.csv").read_text() == (run / "pareto.csv").read_text()
    status = CliRunner().invoke(cli, ["status", str(again)], terminal_width=200)
    n_scores = len(_rows(run)[1])
    assert f", {n_scores:,} of them read from the score cache" in status.output, status.output
    assert "score cache" not in CliRunner().invoke(cli, ["status", str(run)], terminal_width=200).output


def test_another_seed_reads_the_base_and_endpoints_and_scores_its_own_candidates(first, tiny_zoo, monkeypatch):
    """The follow-up a user runs most: same models and tasks, another search. What it stores is
    what a run without the cache stores."""
    folder, run, _ = first
    cached, plain = folder / "seed1", folder / "seed1-plain"
    scored = _run(_campaign(folder, tiny_zoo, "seed1", seed=1), cached, monkeypatch)
    alone = _run(_campaign(folder, tiny_zoo, "seed1-plain", seed=1, cache=False), plain, monkeypatch)
    assert _rows(cached) == _rows(plain)
    assert 0 < scored < alone  # the base and the endpoints (and any candidate the first run shared) were read
    keys = {base_candidate(3).key, *(endpoint_candidate(i, 3).key for i in range(3))}
    references = {row for row in _rows(cached)[1] if row[0] in keys}
    assert len({row[0] for row in references}) == 4 and references <= set(_rows(run)[1])
