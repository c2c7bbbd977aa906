"""`irt fit --out` into a folder fitted before: anchors chosen on the old model do not survive."""

from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities


def irt(*args):
    result = CliRunner().invoke(cli, ["irt", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_refit_into_the_same_folder_drops_the_old_anchors(tmp_path):
    for seed, name in ((1, "first.csv"), (4, "second.csv")):  # two different item sets
        gen = make_synthetic_irt(60, dims=1, n_scenarios=1, seed=seed)
        theta, ids = synthetic_abilities(30, dims=1, seed=seed + 1)
        table = gen.sample(theta, ids, seed=seed + 2)
        table["item"] = [f"{name[:-4]}-{item}" for item in table["item"]]
        table.to_csv(tmp_path / name, index=False)
    irt("fit", tmp_path / "first.csv", "--out", tmp_path / "m", "--dims", "1")
    irt("anchors", tmp_path / "m", "--budget", "5")
    assert list((tmp_path / "m" / "anchors").glob("*.json"))
    irt("fit", tmp_path / "second.csv", "--out", tmp_path / "m", "--dims", "1")
    assert not (tmp_path / "m" / "anchors").exists()  # they named items of the first model
    result = CliRunner().invoke(cli, ["irt", "estimate", str(tmp_path / "m"), "--responses", str(tmp_path / "second.csv")])
    assert result.exit_code == 2 and "irt anchors" in result.output, result.output
