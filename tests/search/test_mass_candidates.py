"""MASS as a search candidate: genome, scores equal to a MassModel built by hand, export as a MASS folder."""

import json
import sqlite3

import pytest
import yaml
from agreement_task import AgreementTask  # tests/search is on sys.path (pytest's rootdir import mode)
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.mass import MassModel, load_mass
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory, zoo):
    base, fts = zoo
    root = tmp_path_factory.mktemp("mass-run")
    config = {
        "base_model": str(base),
        "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"mass": {"threshold": [0.05, 0.6]}, "task_arithmetic": {}},
        "estimator": {"kind": "full"},
        "algorithm": {"population": 8, "generations": 2, "seed": 1},
        "final": {"evaluate_top": 2, "export": ["balanced"]},
    }
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", str(root / "campaign.yaml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run"


def mass_rows(run):
    """(id, key, {task: {item: score}}) of every MASS evaluation."""
    db = sqlite3.connect(run / "state.sqlite")
    rows = []
    for eid, key in db.execute("SELECT id, key FROM evaluations WHERE method='mass' AND status='ok' ORDER BY id"):
        scores = {}
        for task, item, score in db.execute("SELECT task, item, score FROM item_scores WHERE evaluation_id=?", (eid,)):
            scores.setdefault(task, {})[item] = score
        rows.append((eid, key, scores))
    return rows


def test_mass_candidates_carry_routing_settings_and_no_endpoint_weights(run, zoo):
    rows = mass_rows(run)
    assert rows, "the search never tried a MASS candidate"
    n_layers = MassModel.from_checkpoints(zoo[0], zoo[1]).module.config.num_hidden_layers
    for _, key, _ in rows:
        method, weights, params = json.loads(key)
        params = dict(params)
        assert weights == [1.0, 1.0]
        assert set(params) == {"layer", "threshold", "max_tasks"}
        assert 0 <= params["layer"] < n_layers and 0.05 <= params["threshold"] <= 0.6 and params["max_tasks"] >= 1


def test_mass_candidate_scores_equal_a_hand_built_mass_model(run, zoo):
    base, fts = zoo
    _, key, stored = mass_rows(run)[0]
    params = dict(json.loads(key)[2])
    model = MassModel.from_checkpoints(base, fts, **params)
    for i, ft in enumerate(fts):
        task = AgreementTask(str(ft), name=f"agree{i}", seed=i)
        expected = task.evaluate(model).to_dict()
        assert stored[f"agree{i}"] == pytest.approx(expected)


def test_exported_mass_candidate_is_a_labelled_mass_folder(run, tmp_path):
    eid, key, items = mass_rows(run)[0]
    out = tmp_path / "mass-pick"
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, _ = load_mass(out)
    params = dict(json.loads(key)[2])
    assert (model.routing.layer, model.routing.threshold, model.routing.max_tasks) == (
        params["layer"], params["threshold"], params["max_tasks"])
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["merge_method"] == "mass" and "needs evo-merge" in card
    assert "model-index" not in front  # the Hub cannot run a MASS folder: scores stay in the prose
    for task, scores in items.items():  # measured on every item: with its SE, as a merged model's card (it had none)
        values = list(scores.values())
        mean = sum(values) / len(values)
        se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
        assert f"| {task} | {mean:.4f} ± {se:.4f} |" in card, card
    # `estimator.kind: full` estimates nothing: no column said to come from anchors and an IRT model
    assert "| estimated |" not in card and "Estimated scores" not in card
    assert "factors kept in" not in card  # kept in float32 as the folder keeps the base's float32


def test_a_mass_pick_s_card_gives_its_estimate_with_the_estimate_s_standard_error(tmp_path, zoo):
    """A MASS candidate scored on anchors: its card shows the estimate ± the SE the store holds, as a
    merged model's card does (audit 97: no test reached a MASS card with an estimate)."""
    base, fts = zoo
    config = {
        "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"mass": {}, "task_arithmetic": {}},
        "estimator": {"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1},
        "algorithm": {"population": 6, "generations": 1, "seed": 1}, "final": {"evaluate_top": 1, "export": []},
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "campaign.yaml"), "--out", str(run)])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(run / "state.sqlite")
    eid, estimates, errors = db.execute(
        "SELECT id, estimates, estimate_se FROM evaluations WHERE method = 'mass' AND status = 'ok' "
        "AND measured IS NULL AND estimate_se IS NOT NULL").fetchone()
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "pick")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "pick" / "README.md").read_text()
    estimates, errors = json.loads(estimates), json.loads(errors)
    for task, value in estimates.items():
        assert f"| {task} | {value:.4f} ± {errors[task]:.4f} |" in card, card
    assert "with the estimate's standard error" in card


def test_a_mass_pick_kept_otherwise_than_its_folder_says_so_on_its_card(tmp_path, zoo):
    """bf16 checkpoints searched with `storage.dtype: float32`: the folder keeps the factors in bf16,
    so it is not the MASS the search scored, and the card and the report say so."""
    from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)

    base, fts = bf16_copies(*zoo, tmp_path / "bf16")
    config = {
        "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"mass": {}}, "estimator": {"kind": "full"}, "storage": {"dtype": "float32"},
        "algorithm": {"population": 4, "generations": 1, "seed": 1},
        "final": {"evaluate_top": 1, "export": ["balanced"]},
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "campaign.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    note = "were measured with the base and the factors kept in float32"
    assert f"scores of mass candidates {note}" in (tmp_path / "run" / "report.md").read_text()
    from evo_merge.mass.model import MASS_JSON

    cards = [card for card in (tmp_path / "run").rglob("README.md") if (card.parent / MASS_JSON).exists()]
    assert cards and all(f"Scores {note}" in card.read_text() for card in cards)


@pytest.mark.parametrize("layer", [5, [0, 5]])
def test_a_routing_block_the_base_lacks_is_refused_before_anything_is_evaluated(tmp_path, zoo, layer):
    """`mass: {layer: 5}` on a 2-block model: `plan` said it fits, and `run` measured the base and the
    endpoints before every MASS candidate failed; the folder then could not be resumed or reused."""
    base, fts = zoo
    config = {
        "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": "agree0",
                   "options": {"reference": str(fts[0]), "name": "agree0", "seed": 0}}],
        "methods": {"mass": {"layer": layer}}, "estimator": {"kind": "full"},
        "algorithm": {"population": 4, "generations": 1, "seed": 1},
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    for command in (["plan", str(tmp_path / "campaign.yaml")],
                    ["run", str(tmp_path / "campaign.yaml"), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        line, = result.output.strip().splitlines()
        assert f"methods.mass.layer: 5 is not a block of the base {base}, whose MLP blocks are 0 to 1" in line
    assert not (tmp_path / "run").exists()
