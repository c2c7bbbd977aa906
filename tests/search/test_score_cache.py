"""The score cache's file and keys: a score is served only under keys made of everything that
decides it; the kept items of a task are read and the others scored; a file that cannot serve is
said so and left, the run going on without it."""

import hashlib
import logging
import os
import sqlite3
from contextlib import closing

import pytest

from evo_merge.config import Campaign
from evo_merge.search import score_cache
from evo_merge.search.binding import config_fingerprint
from evo_merge.search.candidate import Candidate
from evo_merge.search.score_cache import CacheUnusable, KeptScores, ScoreCache, score_keys
from evo_merge.search.store import CampaignStore

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
    return score_keys(_digests(cache, models), settings, methods or {"task_arithmetic": ""}, tasks or {"t": (TASK, {})})


def _digests(cache, models):
    return [[(file.name, cache.file_digest(file)) for file in files] for files in models]


def test_the_kept_items_are_served_under_their_keys_and_the_rest_scored(tmp_path, models):
    cache = ScoreCache(tmp_path / "c" / "scores.sqlite")  # its folder made
    cache.keep("m", "t", {"a": 1.0, "b": 0.25})
    assert cache.scores("m", "t", ["b", "a"]) == {"b": 0.25, "a": 1.0}
    assert cache.scores("m", "t", ["a", "c"]) == {"a": 1.0}
    assert cache.scores("other", "t", ["a"]) == {} and cache.scores("m", "other", ["a"]) == {}
    cache.close()
    again = ScoreCache(tmp_path / "c" / "scores.sqlite")  # kept in the file
    assert again.scores("m", "t", ["a"]) == {"a": 1.0}
    kept = KeptScores(again, _keys(again, models, tasks={"t": (TASK, {}), "u": (TASK, {"limit": 10})}))
    kept.keep(TA, {"t": {"a": 1.0, "b": 0.0}})
    assert kept.split(TA, {"t": ["a", "c", "b"], "u": ["a"]}) == ({"t": {"a": 1.0, "b": 0.0}}, {"t": ["c"], "u": ["a"]})
    assert kept.split(TA, {"t": ["b"]}) == ({"t": {"b": 0.0}}, {})


def test_a_file_that_cannot_be_a_score_cache_is_said_so_naming_it(tmp_path):
    """Another program's database, a run's own state.sqlite named by mistake, a folder, a file that
    is no database: never written into, and named (the run goes on without a cache)."""
    (tmp_path / "text.sqlite").write_text("not a database, but long enough to be read as one" * 20)
    with pytest.raises(CacheUnusable, match=r"text.sqlite: file is not a database"):
        ScoreCache(tmp_path / "text.sqlite")
    foreign = tmp_path / "foreign.sqlite"
    with closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE scores (student TEXT, grade REAL)")
    before = foreign.read_bytes()
    with pytest.raises(CacheUnusable, match=r"foreign.sqlite is a database of something else \(tables: scores\)"):
        ScoreCache(foreign)
    assert foreign.read_bytes() == before
    CampaignStore(tmp_path / "run").close()
    with pytest.raises(CacheUnusable, match=r"state.sqlite is a database of something else"):
        ScoreCache(tmp_path / "run" / "state.sqlite")
    with pytest.raises(CacheUnusable, match=r"is a folder: name a file"):
        ScoreCache(tmp_path / "run")


def test_a_damaged_value_is_said_once_and_the_cache_left(tmp_path, models, caplog):
    path = tmp_path / "scores.sqlite"
    cache = ScoreCache(path)
    kept = KeptScores(cache, _keys(cache, models))
    kept.keep(TA, {"t": {"a": 1.0, "b": 0.0}})
    cache.db.execute("UPDATE scores SET score = 'many' WHERE item = 'a'")
    with pytest.raises(CacheUnusable, match=rf"{path} keeps 'many' as item 'a'"):
        cache.scores(kept.keys.model(TA), kept.keys.tasks["t"], ["a"])
    with caplog.at_level(logging.WARNING, logger="evo_merge"):
        assert kept.split(TA, {"t": ["a", "b"]}) == ({}, {"t": ["a", "b"]})
        assert kept.split(TA, {"t": ["b"]}) == ({}, {"t": ["b"]})  # left: not read again
    assert [r.getMessage() for r in caplog.records] == [
        f"evaluator.score_cache: {path}: reading failed ({path} keeps 'many' as item 'a''s score, not a finite "
        "number (the file was edited or damaged)); this run reads and keeps no more there"]


def test_a_file_is_hashed_whole_once_and_again_when_rewritten(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    file = tmp_path / "w.bin"
    file.write_bytes(b"a" * 4096)
    first = cache.file_digest(file)
    assert first == hashlib.sha256(b"a" * 4096).hexdigest()
    cache.db.execute("UPDATE files SET digest = 'remembered'")
    assert cache.file_digest(file) == "remembered"  # read by path, size and time, not hashed again
    times = (file.stat().st_atime_ns, file.stat().st_mtime_ns)
    file.write_bytes(b"b" * 4096)  # the same size, and the time set back as `touch -r` or an archive sets it
    os.utime(file, ns=times)
    assert cache.file_digest(file) == hashlib.sha256(b"b" * 4096).hexdigest()  # its change time is another


def test_a_cache_that_cannot_be_written_still_hashes(tmp_path, monkeypatch):
    """A team's read-only cache: the digests are computed, not remembered."""
    cache = ScoreCache(tmp_path / "scores.sqlite")
    file = tmp_path / "w.bin"
    file.write_bytes(b"a" * 10)
    cache.db.close()
    cache.db = sqlite3.connect(f"file:{tmp_path / 'scores.sqlite'}?mode=ro", uri=True, isolation_level=None)
    assert cache.file_digest(file) == hashlib.sha256(b"a" * 10).hexdigest()


def test_every_part_of_a_key_changes_it(tmp_path, models, monkeypatch):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    keys = _keys(cache, models)
    model, task = keys.model(TA), keys.tasks["t"]
    assert _keys(cache, models).model(TA) == model  # the same parts: the same key
    others = [_keys(cache, models, {**SETTINGS, part: value}).model(TA)
              for part, value in [("dtype", "bfloat16"), ("storage", "bfloat16"), ("device", "cuda"),
                                  ("batch_size", 16)]]
    others.append(keys.model(Candidate("task_arithmetic", (0.5, 1.0), (("lambda", 0.9),))))
    others.append(_keys(cache, models[::-1]).model(TA))  # the endpoint given as the base
    with monkeypatch.context() as patched:  # evo-merge's own code edited (its version number stays)
        patched.setattr(score_cache, "source_digest", lambda: "another")
        others.append(_keys(cache, models).model(TA))
    models[1][0].write_bytes(b"x" * 300)  # a fine-tune retrained in place
    others.append(_keys(cache, models).model(TA))
    assert len({model, *others}) == len(others) + 1
    # a candidate's key holds its own method's code alone: another method list leaves it
    plugin = _keys(cache, models, methods={"task_arithmetic": "", "mine": "abc"})
    assert plugin.model(TA) == _keys(cache, models).model(TA)
    mine = Candidate("mine", (1.0, 1.0))
    assert plugin.model(mine) != _keys(cache, models, methods={"task_arithmetic": "", "mine": "abd"}).model(mine)
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
                    "run reads and keeps no more there"]


def test_the_cache_is_not_part_of_what_a_run_computes(tmp_path):
    """A run started without the cache resumes with one (and back): where scores are read from
    changes none of them."""
    config = {"base_model": "b", "models": ["m"], "tasks": [{"task": "arith"}]}
    cached = {**config, "evaluator": {"score_cache": "scores.sqlite"}}
    assert config_fingerprint(Campaign(**cached)) == config_fingerprint(Campaign(**config))
    with pytest.raises(ValueError, match="score_cache: only for kind: local"):
        Campaign(**{**config, "evaluator": {"kind": "dask", "n_workers": 2, "score_cache": "scores.sqlite"}})


def test_adaptive_steps_and_measurements_read_the_cache_as_the_first_scoring_does(tmp_path):
    """Through the ledger: a second store fed from the cache alone (its evaluator may not be made)
    holds what the first scored, step by step and measured whole, and counts what the cache answered;
    a task the cache does not keep is scored again, the others read."""
    from agreement_task import AgreementTask  # tests/search is on sys.path
    from test_adaptive_failures import Stepwise

    from evo_merge.search.ledger import EvaluationLedger
    from evo_merge.search.local import LocalEvaluator
    from evo_merge.search.store import FROM_CACHE_META, CampaignStore
    from evo_merge.search.workbench import Workbench
    from evo_merge.zoo.tiny import save_tiny_family

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    workbench = Workbench.open(base, fts, device="cpu")
    tasks = {f"agree{i}": AgreementTask(str(f), name=f"agree{i}", n_items=12, seed=i) for i, f in enumerate(fts)}
    cache = ScoreCache(tmp_path / "scores.sqlite")
    models = [[base / "model.safetensors"], [f / "model.safetensors" for f in fts]]
    keys = score_keys(_digests(cache, models), SETTINGS, {"task_arithmetic": ""}, {name: (TASK, {}) for name in tasks})
    candidates = [Candidate("task_arithmetic", (1.0, 0.0), (("lambda", 1.0),)),
                  Candidate("task_arithmetic", (0.3, 0.9), (("lambda", 1.0),))]
    first = {name: task.item_ids[:4] for name, task in tasks.items()}

    def campaign(folder, evaluator, kept):
        store = CampaignStore(folder)
        ledger = EvaluationLedger(store, evaluator, Stepwise(tasks), kept=kept)
        evaluations = ledger.evaluate(candidates, phase="search", generation=1, items=first, stage="search")
        ledger.measure(evaluations, "final")
        return store, [(e.key, e.status, e.estimates, e.measured, e.items_evaluated)
                       for e in store.evaluations()], [store.item_scores(c.key) for c in candidates]

    def nobody():
        raise AssertionError("the evaluator was made: something was not read from the cache")

    scored, rows, scores = campaign(tmp_path / "a", lambda: LocalEvaluator(workbench, tasks), KeptScores(cache, keys))
    assert all(len(s[name]) == 12 for s in scores for name in tasks)  # 4 first, 2 a step to 8, then measured whole
    assert scored.get_meta(FROM_CACHE_META) is None
    read, rows_read, scores_read = campaign(tmp_path / "b", nobody, KeptScores(cache, keys))
    assert (rows_read, scores_read) == (rows, scores)
    assert read.get_meta(FROM_CACHE_META) == 2 * 2 * 12  # every score the run holds
    one = score_keys(_digests(cache, models), SETTINGS, {"task_arithmetic": ""},
                     {"agree0": (TASK, {}), "agree1": (None, {})})
    evaluator = LocalEvaluator(workbench, tasks)
    asked = []
    evaluate = evaluator.evaluate
    evaluator.evaluate = lambda candidate, items, *rest: asked.append(dict(items)) or evaluate(candidate, items, *rest)
    half, rows_half, scores_half = campaign(tmp_path / "c", lambda: evaluator, KeptScores(cache, one))
    assert (rows_half, scores_half) == (rows, scores)
    assert asked and all(set(items) == {"agree1"} for items in asked)  # agree0 read, agree1 scored
    assert half.get_meta(FROM_CACHE_META) == 2 * 12
