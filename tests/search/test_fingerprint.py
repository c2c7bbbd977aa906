"""A run folder's fingerprint, setting by setting: each setting that changes what a run computes
changes it (an edited campaign resumed into a folder would mix two computations under one run),
and each that changes only where or how it runs leaves it (a run started locally resumes on a
cluster, with a score cache, or with its tensors on disk)."""

import pytest

from evo_merge.config import Campaign
from evo_merge.search.binding import config_fingerprint

BASE = {"base_model": "b", "models": ["m0", "m1"], "tasks": [{"task": "arith"}, {"task": "lang"}]}


def _fingerprint(**sections) -> str:
    return config_fingerprint(Campaign(**{**BASE, **sections}))


@pytest.mark.parametrize("sections", [
    {"dtype": "bfloat16"}, {"storage": {"dtype": "bfloat16"}}, {"device": "cpu"},
    {"algorithm": {"seed": 5}}, {"algorithm": {"population": 12}}, {"estimator": {"anchors": 7}},
    {"estimator": {"kind": "adaptive"}}, {"coefficients": {"high": 1.0}}, {"coefficients": {"granularity": "layer"}},
    {"methods": {"ties": {}}}, {"evaluator": {"batch_size": 8}}, {"final": {"holdout": 0.3}},
    {"final": {"race": []}}, {"algorithm": {"name": "ga"}, "objective": {"weights": {"arith": 1.0, "lang": 2.0}}},
    {"tasks": [{"task": "arith"}, {"task": "lang", "direction": "minimize"}]},
    {"tasks": [{"task": "arith", "options": {"limit": 10}}, {"task": "lang"}]},
    {"models": ["m1", "m0"]}, {"base_model": "b2"}, {"tasks": [{"task": "arith"}, {"task": "seq"}]},
], ids=repr)
def test_what_a_run_computes_changes_the_fingerprint(sections):
    assert _fingerprint(**sections) != _fingerprint()


@pytest.mark.parametrize("sections", [
    {"evaluator": {"kind": "dask", "n_workers": 2}}, {"evaluator": {"kind": "dask", "address": "tcp://head:8786"}},
    {"evaluator": {"sequence_tokens": 4096}}, {"evaluator": {"score_cache": "scores.sqlite"}},
    {"storage": {"placement": "disk", "disk_dir": "/scratch"}}, {"storage": {"host_budget_gib": 8.0}},
    {"storage": {"device_budget_gib": 20.0}}, {"tracking": {"mlflow": {"uri": "file:./mlruns"}}},
    {"algorithm": {"seed": 0}},  # a setting written out at its default
], ids=repr)
def test_where_and_how_it_runs_leaves_the_fingerprint(sections):
    assert _fingerprint(**sections) == _fingerprint()
