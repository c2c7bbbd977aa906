"""Block-group coefficients (`coefficients.granularity`): genome size, key stability, the in-place
merge against the file merge of the exported recipe, and campaigns that run, resume and export."""

import shutil
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from test_campaign import campaign, tensors_of  # a sibling module: its tiny campaign, its reader

from evo_merge.cli import cli
from evo_merge.config import Coefficients
from evo_merge.merge.groups import group_setting, n_groups, tensor_weights
from evo_merge.merge.plan import plan_from_recipe
from evo_merge.merge.stream import stream_merge
from evo_merge.search.candidate import Candidate, grouped_candidate
from evo_merge.search.kinds import STATIC, candidate_recipe
from evo_merge.search.space import SearchSpace, coefficient_groups
from evo_merge.search.workbench import Workbench
from evo_merge.weights import Checkpoint
from evo_merge.zoo.tiny import save_tiny_family

TWELVE = ["model.embed_tokens.weight", *(f"model.layers.{i}.mlp.weight" for i in range(12)), "model.norm.weight",
          "lm_head.weight"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2, noise=0.08)  # 2 blocks


def test_group_count_is_one_outside_plus_one_per_started_group():
    assert [n_groups(12, size) for size in (1, 4, 5, 12, 20)] == [13, 4, 4, 2, 2]


def test_block_filters_give_each_block_its_groups_weight():
    values = [0.1, 0.2, 0.3, 0.4]  # outside, blocks 0-3, 4-7, 8-11
    weights = tensor_weights([group_setting(TWELVE, 4, values)], TWELVE)
    expected = {name: (0.1,) for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
    expected.update({f"model.layers.{i}.mlp.weight": (values[1 + i // 4],) for i in range(12)})
    assert weights == expected  # block 1 is not caught by block 11's filter, nor the reverse


def test_wrong_number_of_group_weights_is_refused():
    with pytest.raises(ValueError, match="expected 4 group weights"):
        group_setting(TWELVE, 4, [0.1, 0.2])


def test_genome_size_follows_the_granularity(zoo):
    base, _ = zoo
    ranges = {"ties": {"density": (0.1, 0.9)}}
    sizes = {}
    for granularity in ("model", "blocks:1", "blocks:2", "blocks:7"):
        groups = coefficient_groups(Coefficients(granularity=granularity).block_size, base)
        space = SearchSpace(ranges, 2, (0.0, 1.0), granularity, groups)
        sizes[granularity] = len(space.variables())
    # method + density + 2 endpoints x (1 | outside + 2 blocks | outside + 1 group | outside + 1 group)
    assert sizes == {"model": 4, "blocks:1": 8, "blocks:2": 6, "blocks:7": 6}


def test_model_granularity_keys_are_unchanged():
    """Runs stored before granularity existed resume: their keys are the same JSON."""
    candidate = SearchSpace({"ties": {"density": (0.1, 0.9)}}, 2, (0.0, 1.0)).decode(
        {"method": "ties", "c0": 0.25, "c1": 1.0, "ties.density": 0.5})
    assert candidate.key == '["ties", [0.25, 1.0], [["density", 0.5]]]'
    assert Candidate.from_key(candidate.key) == candidate


def test_grouped_keys_round_trip_and_equal_groups_are_the_model_candidate():
    grouped = grouped_candidate("ties", [[0.1, 0.2, 0.3], [1.0, 1.0, 0.5]], (("density", 0.5),), "blocks:1")
    assert grouped.key.endswith('"blocks:1"]') and Candidate.from_key(grouped.key) == grouped
    assert grouped.endpoint_weights(2) == [(0.1, 0.2, 0.3), (1.0, 1.0, 0.5)]
    flat = grouped_candidate("ties", [[0.4] * 3, [0.7] * 3], (("density", 0.5),), "blocks:1")
    assert flat == Candidate("ties", (0.4, 0.7), (("density", 0.5),))  # builds the same model: one key


def test_a_grouped_space_expresses_the_standard_merges(zoo):
    """Seeds and reference candidates are model-granularity: a block-group genome encodes them exactly."""
    space = SearchSpace({"task_arithmetic": {"lambda": (0.2, 1.0)}}, 2, (0.0, 1.0), "blocks:1", 3)
    seed = Candidate("task_arithmetic", (1.0, 0.0), (("lambda", 0.5),))
    assert [space.decode(x) for x in space.expressible([seed])] == [seed]
    assert all(c.method == "task_arithmetic" for c in space.sample(4, seed=0))


def _file_merge(candidate, base, models):
    plan = plan_from_recipe(candidate_recipe(candidate, base, models, "float32"))
    _, tensors = stream_merge(plan)
    return dict(tensors)


@pytest.mark.parametrize("method, params", [
    ("task_arithmetic", (("lambda", 0.8),)),
    ("tsv", (("alpha", 1.0),)),  # the cached-pieces path
    ("breadcrumbs_ties", (("density", 0.7), ("gamma", 0.02), ("lambda", 1.0))),
    ("della", (("density", 0.6), ("epsilon", 0.1), ("lambda", 1.0))),  # seeded per tensor
])
def test_inplace_group_merge_equals_the_file_merge_of_its_recipe(zoo, method, params):
    base, fts = zoo
    candidate = grouped_candidate(method, [[0.3, 0.9, 0.1], [1.2, 0.0, 0.6]], params, "blocks:1")
    bench = Workbench.open(base, fts, device="cpu")
    module = STATIC.build(bench, candidate)
    built = {k: v.detach().clone() for k, v in module.state_dict().items()}
    from_file = _file_merge(candidate, base, fts)
    floats = [k for k, v in from_file.items() if v.is_floating_point()]
    assert floats and all(torch.equal(built[k], from_file[k]) for k in floats)


def test_task_arithmetic_groups_weigh_each_block_by_hand(zoo):
    """An independent expectation: base + lambda * (w_1 delta_1 + w_2 delta_2), w by the tensor's group."""
    base, fts = zoo
    weights = [[0.3, 0.9, 0.1], [1.2, 0.0, 0.6]]
    candidate = grouped_candidate("task_arithmetic", weights, (("lambda", 1.0),), "blocks:1")
    merged = _file_merge(candidate, base, fts)
    with Checkpoint.open(base) as b, Checkpoint.open(fts[0]) as f1, Checkpoint.open(fts[1]) as f2:
        for name, group in (("model.embed_tokens.weight", 0), ("model.layers.0.mlp.up_proj.weight", 1),
                            ("model.layers.1.self_attn.q_proj.weight", 2), ("lm_head.weight", 0)):
            theta = b.tensor(name)
            expected = theta + (weights[0][group] * (f1.tensor(name) - theta)
                                + weights[1][group] * (f2.tensor(name) - theta))
            torch.testing.assert_close(merged[name], expected, rtol=1e-6, atol=1e-6)


def _campaign(tmp_path, zoo, **overrides):
    """test_campaign's tiny campaign, searching new methods over block-group coefficients."""
    settings = {"methods": {"della": {}, "breadcrumbs_ties": {}, "model_stock": {}},
                "coefficients": {"low": 0.0, "high": 1.2, "granularity": "blocks:1"},
                "algorithm": {"population": 6, "generations": 2, "seed": 5}, "final": {"evaluate_top": 2}}
    return campaign(tmp_path, zoo, **{**settings, **overrides})


def _keys(run):
    return sorted(k for (k,) in sqlite3.connect(run / "state.sqlite").execute("SELECT key FROM evaluations"))


def _drop_generation(run, generation):
    """What a kill during `generation` leaves: the store without that generation's evaluations."""
    db = sqlite3.connect(run / "state.sqlite")
    with db:
        ids = [i for (i,) in db.execute("SELECT id FROM evaluations WHERE generation = ?", (generation,))]
        db.executemany("DELETE FROM item_scores WHERE evaluation_id = ?", [(i,) for i in ids])
        db.execute("DELETE FROM evaluations WHERE generation = ?", (generation,))
        db.execute("DELETE FROM generations WHERE generation >= ?", (generation,))
    db.close()
    return len(ids)


def test_block_campaign_with_new_methods_runs_resumes_and_exports_rebuildable_recipes(tmp_path, zoo):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(_campaign(tmp_path, zoo)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    keys = _keys(run)
    assert any(k.endswith('"blocks:1"]') for k in keys)  # the search really varied the groups
    searched = {Candidate.from_key(k).method for k in keys} - {"task_arithmetic"}  # references are task arithmetic
    assert searched and searched <= {"della", "breadcrumbs_ties", "model_stock"}

    exported = sorted((run / "models").iterdir())
    assert exported
    for folder in exported:
        rebuilt = tmp_path / f"rebuilt-{folder.name}"
        result = CliRunner().invoke(cli, ["merge", str(folder / "merge_recipe.yaml"), "--out", str(rebuilt)])
        assert result.exit_code == 0, result.output
        a, b = tensors_of(folder), tensors_of(rebuilt)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "models")
    assert _drop_generation(resumed, 2) > 0
    result = CliRunner().invoke(cli, ["resume", str(resumed)])
    assert result.exit_code == 0, result.output
    assert _keys(resumed) == keys  # generation 1 replayed from the store, generation 2 asked for again


@pytest.mark.parametrize("value", ["blocks:0", "blocks:x", "rows", "blocks:-1"])
def test_bad_granularity_is_a_one_line_error(tmp_path, zoo, value):
    path = _campaign(tmp_path, zoo, coefficients={"granularity": value})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "coefficients.granularity" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_layer_is_blocks_1():
    assert Coefficients(granularity="layer").granularity == "blocks:1"
    assert Coefficients(granularity="layer").block_size == 1 and Coefficients().block_size is None


def test_a_method_that_cannot_merge_the_campaigns_endpoints_is_refused(tmp_path, zoo):
    """slerp and nearswap merge exactly one model into the base: with two endpoints every candidate would fail."""
    path = _campaign(tmp_path, zoo, methods={"della": {}, "slerp": {}})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "methods: slerp: merges exactly 1 model(s)" in result.output
    assert not (tmp_path / "run").exists()


def test_near_duplicates_compare_across_granularities():
    """The final phase's duplicate check lays a model-granularity weight over its endpoint's groups."""
    from evo_merge.search.front import Distinct

    space = SearchSpace({"ties": {"density": (0.0, 1.0)}}, 2, (0.0, 1.0), "blocks:1", 3)
    flat = Candidate("ties", (0.5, 0.2), (("density", 0.5),))
    assert space.coefficients(flat) == [0.5, 0.5, 0.5, 0.2, 0.2, 0.2]
    close = grouped_candidate("ties", [[0.5, 0.51, 0.5], [0.2, 0.2, 0.21]], (("density", 0.5),), "blocks:1")
    far = grouped_candidate("ties", [[0.5, 0.9, 0.5], [0.2, 0.2, 0.2]], (("density", 0.5),), "blocks:1")
    distinct = Distinct(space, tolerance=0.05)
    assert distinct.same(flat, close) and not distinct.same(flat, far)
