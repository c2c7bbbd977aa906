"""The score cache's file and keys: a score is served only under keys made of everything that
decides it, and only where every item asked of a task is kept."""

import hashlib
import logging
import os
import sqlite3

import pytest

from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.search.binding import config_fingerprint
from evo_merge.search.candidate import Candidate
from evo_merge.search.score_cache import KeptScores, ScoreCache, score_keys

TASK = "0123456789abcdef:fedcba9876543210"  # an lm-eval task's items_digest: <docs>:<definition>
SETTINGS = {"dtype": "float32", "storage": "float32", "device": "cpu", "batch_size": 32}
TA = Candidate("task_arithmetic", (0.5, 1.0), (("lambda", 1.0),))


@pytest.fixture
def models(tmp_path):
    """Two models' files: a weight file and a config each."""
    files = []
    for name in ("base", "ft"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(name.encode() * 100)
        (tmp_path / name / "config.json").write_text("{}")
        files.append([tmp_path / name / "model.safetensors", tmp_path / name / "config.json"])
    return files


def _keys(cache, models, settings=SETTINGS, methods=None, tasks=None):
    return score_keys(cache, models, settings, methods or {"task_arithmetic": ""}, tasks or {"t": (TASK, {})})


def test_scores_are_served_only_where_every_asked_item_is_kept(tmp_path):
    cache = ScoreCache(tmp_path / "c" / "scores.sqlite")  # its folder made
    cache.keep("m", "t", {"a": 1.0, "b": 0.25})
    assert cache.scores("m", "t", ["b", "a"]) == {"b": 0.25, "a": 1.0}
    assert cache.scores("m", "t", ["a", "c"]) is None
    assert cache.scores("other", "t", ["a"]) is None and cache.scores("m", "other", ["a"]) is None
    cache.close()
    again = ScoreCache(tmp_path / "c" / "scores.sqlite")  # kept in the file
    assert again.scores("m", "t", ["a"]) == {"a": 1.0}


def test_a_damaged_cache_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "scores.sqlite"
    cache = ScoreCache(path)
    cache.keep("m", "t", {"a": 1.0})
    cache.db.execute("UPDATE scores SET score = 'many'")
    with pytest.raises(UserError, match=rf"evaluator.score_cache: {path} keeps 'many' as item 'a'"):
        cache.scores("m", "t", ["a"])
    cache.db.execute("UPDATE scores SET score = ?", (float("inf"),))
    with pytest.raises(UserError, match="not a finite number"):
        cache.scores("m", "t", ["a"])
    (tmp_path / "text.sqlite").write_text("not a database, but long enough to be read as one" * 20)
    with pytest.raises(UserError, match=r"text.sqlite: cannot be used as a score cache"):
        ScoreCache(tmp_path / "text.sqlite").scores("m", "t", ["a"])


def test_a_file_is_hashed_whole_once_and_again_when_rewritten(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    file = tmp_path / "w.bin"
    file.write_bytes(b"a" * 4096)
    first = cache.file_digest(file)
    assert first == hashlib.sha256(b"a" * 4096).hexdigest()
    cache.db.execute("UPDATE files SET digest = 'remembered'")
    assert cache.file_digest(file) == "remembered"  # read by path, size and time, not hashed again
    file.write_bytes(b"b" * 4096)  # the same size, another time
    os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 1_000_000))
    assert cache.file_digest(file) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_every_part_of_a_key_changes_it(tmp_path, models):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    keys = _keys(cache, models)
    model, task = keys.model(TA), keys.tasks["t"]
    assert _keys(cache, models).model(TA) == model  # the same parts: the same key
    others = [_keys(cache, models, {**SETTINGS, part: value}).model(TA)
              for part, value in [("dtype", "bfloat16"), ("storage", "bfloat16"), ("device", "cuda"),
                                  ("batch_size", 16)]]
    others.append(keys.model(Candidate("task_arithmetic", (0.5, 1.0), (("lambda", 0.9),))))
    others.append(_keys(cache, models[::-1]).model(TA))  # the endpoint given as the base
    plugin = {"task_arithmetic": "", "mine": "abc"}
    others.append(_keys(cache, models, methods=plugin).model(TA))  # a method's code is part of the setup
    models[1][0].write_bytes(b"x" * 300)  # a fine-tune retrained in place
    others.append(_keys(cache, models).model(TA))
    assert len({model, *others}) == len(others) + 1
    assert _keys(cache, models, tasks={"t": ("0123456789abcdef:0000000000000000", {})}).tasks["t"] != task
    assert _keys(cache, models, tasks={"t": (TASK, {"metric": "acc_norm"})}).tasks["t"] != task


def test_what_nothing_would_tell_changed_is_never_kept(tmp_path, models):
    """A task that gives no digest of how it scores (a plugin's, or an old docs-only digest), and
    a method whose code no file holds (a notebook's)."""
    cache = ScoreCache(tmp_path / "scores.sqlite")
    keys = _keys(cache, models, methods={"task_arithmetic": "", "notebook": None},
                 tasks={"t": (TASK, {}), "plugin": (None, {}), "docs": ("0123456789abcdef", {})})
    assert set(keys.tasks) == {"t"}
    assert keys.model(Candidate("notebook", (1.0, 1.0))) is None
    kept = KeptScores(cache, keys)
    kept.keep(TA, {"t": {"a": 1.0}, "plugin": {"a": 0.0}})
    assert kept.split(TA, {"t": ["a"], "plugin": ["a"]}) == ({"t": {"a": 1.0}}, {"plugin": ["a"]})
    kept.keep(Candidate("notebook", (1.0, 1.0)), {"t": {"a": 1.0}})
    assert kept.split(Candidate("notebook", (1.0, 1.0)), {"t": ["a"]}) == ({}, {"t": ["a"]})


def test_a_cache_that_fails_to_keep_is_said_once_and_left(tmp_path, models, monkeypatch, caplog):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    kept = KeptScores(cache, _keys(cache, models))

    def full(*args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cache, "keep", full)
    with caplog.at_level(logging.WARNING, logger="evo_merge"):
        kept.keep(TA, {"t": {"a": 1.0}})
        kept.keep(TA, {"t": {"b": 1.0}})
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"evaluator.score_cache: {cache.path}: keeping scores failed (database or disk is full); this "
                    "run keeps no more there"]


def test_the_cache_is_not_part_of_what_a_run_computes(tmp_path):
    """A run started without the cache resumes with one (and back): where scores are read from
    changes none of them."""
    config = {"base_model": "b", "models": ["m"], "tasks": [{"task": "arith"}]}
    cached = {**config, "evaluator": {"score_cache": "scores.sqlite"}}
    assert config_fingerprint(Campaign(**cached)) == config_fingerprint(Campaign(**config))
    with pytest.raises(ValueError, match="score_cache: only for kind: local"):
        Campaign(**{**config, "evaluator": {"kind": "dask", "n_workers": 2, "score_cache": "scores.sqlite"}})
