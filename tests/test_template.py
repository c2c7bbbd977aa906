"""The example campaign `init` writes and `demo` runs: valid as written, and its evaluation batch
size is the one a campaign, and `eval`, use when none is given."""

from evo_merge.cli.eval import eval_
from evo_merge.cli.template import campaign_text
from evo_merge.config import Campaign, EvaluatorSpec


def test_the_template_is_a_valid_campaign_at_the_default_batch_size(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(campaign_text(tmp_path / "zoo", ["arith", "seq"], name="demo"))
    campaign = Campaign.load(path)
    assert [t.task for t in campaign.tasks] == ["arith", "seq"]
    assert campaign.evaluator.batch_size == EvaluatorSpec().batch_size == 32


def test_eval_scores_at_a_campaigns_default_batch_size():
    option = next(p for p in eval_.params if p.name == "batch_size")
    assert option.default == EvaluatorSpec().batch_size


def test_init_writes_the_command_it_prints_as_the_file_s_first_line(tmp_path, monkeypatch):
    """`init --out sub/x.yaml` printed `evo-merge run sub/x.yaml ...` but wrote `evo-merge run x.yaml ...`
    as the file's first line, which fails from where `init` ran."""
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.zoo.manifest import ZooManifest, write_zoo
    from evo_merge.zoo.tinylm import TinyLMSettings

    zoo = tmp_path / "zoo"
    for model in ("base", "arith", "lang"):  # a zoo as complete as `init` checks, not trained here
        (zoo / model).mkdir(parents=True)
        (zoo / model / "config.json").write_text("{}")
    (zoo / "table.csv").write_text("model\n")
    write_zoo(zoo, ZooManifest(kind="tiny-lm", models=["base", "arith", "lang"], key=TinyLMSettings().key()))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", "--out", "sub/x.yaml", "--zoo", str(zoo)])
    assert result.exit_code == 0, result.output
    assert "reusing it" in result.output  # nothing trained
    last = result.output.strip().splitlines()[-1]
    assert last == "wrote sub/x.yaml; run it with: evo-merge run sub/x.yaml --out runs/x"
    assert (tmp_path / "sub" / "x.yaml").read_text().splitlines()[0] == (
        "# evo-merge campaign: `evo-merge run sub/x.yaml --out runs/x`")


def test_the_template_reads_back_whatever_the_names_and_paths(tmp_path):
    """`init --out 2024.yaml` wrote `name: 2024`, refused as a number; a zoo under `z #1` was cut at
    the YAML comment, and one under `z: a` was malformed YAML."""
    for name, zoo in (("2024", tmp_path / "zoo"), ("yes", tmp_path / "z #1"), ("null", tmp_path / "z: a"),
                      ("demo", tmp_path / "it's")):
        path = tmp_path / "c.yaml"
        path.write_text(campaign_text(zoo, ["arith", "seq"], name=name))
        campaign = Campaign.load(path)
        assert campaign.name == name and campaign.models == [f"{zoo}/arith", f"{zoo}/seq"]
        assert campaign.base_model == f"{zoo}/base"
    plain = campaign_text(tmp_path / "zoo", ["arith"], name="demo")
    assert "name: demo\n" in plain and f"base_model: {tmp_path}/zoo/base\n" in plain  # quoted only where needed


def test_a_printed_command_pastes_as_one_argument_per_path():
    import shlex

    from evo_merge.cli.template import run_command

    command = run_command("sp ace/ü.yaml", "runs/my run")
    assert shlex.split(command) == ["evo-merge", "run", "sp ace/ü.yaml", "--out", "runs/my run"]


def test_init_refuses_an_out_it_cannot_write_before_the_zoo(tmp_path):
    """A path under a file was mkdir's "File exists", said after the zoo's minutes of training."""
    from click.testing import CliRunner

    from evo_merge.cli import cli

    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(cli, ["init", "--out", str(tmp_path / "f" / "x.yaml"), "--zoo", str(tmp_path / "zoo")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
    assert not (tmp_path / "zoo").exists()


def test_the_defaults_the_comments_name_are_the_schema_s():
    """The comments named the race, its tolerance, top_k, sequence_tokens and the holdout rule as
    written text, which drifted from the schema when a default changed (audit 102)."""
    import re

    from evo_merge.config import FinalSpec
    from evo_merge.irt.kinds import MIN_CLUSTER_SUBJECTS
    from evo_merge.search.holdout import AUTO_FRACTION, AUTO_MIN_ITEMS, holdout_size

    text = campaign_text("/zoo", ["arith"])
    final = FinalSpec()
    said = {key: re.search(pattern, text).group(1) for key, pattern in {
        "top_k": r"by estimate \(default (\d+)\)", "race": r"\(race, default (\[[^\]]*\])\)",
        "race_tolerance": r"race_tolerance \(([\d.]+)\)", "sequence_tokens": r"sequence_tokens \(default (\d+)\)",
        "holdout": r"default auto: (\d+)% of the", "holdout_from": r"tasks with (\d+)\+ items",
        "subjects": r"stratified-irt from (\d+) calibration subjects"}.items()}
    assert said == {"top_k": str(final.top_k), "race": str(final.race), "race_tolerance": str(final.race_tolerance),
                    "sequence_tokens": str(EvaluatorSpec().sequence_tokens), "holdout": str(round(AUTO_FRACTION * 100)),
                    "holdout_from": str(AUTO_MIN_ITEMS), "subjects": str(MIN_CLUSTER_SUBJECTS)}
    assert holdout_size("t", AUTO_MIN_ITEMS, "auto") == round(AUTO_FRACTION * AUTO_MIN_ITEMS)  # the rule as said
    assert holdout_size("t", AUTO_MIN_ITEMS - 1, "auto") == 0
