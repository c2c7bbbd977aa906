"""`evo-merge demo` end to end, on a small build of the tiny-lm zoo: the first command a new user
runs writes its campaign beside the run folder, runs it to its picks and report, and a second
`demo` resumes the finished run instead of starting another."""

import sqlite3
from contextlib import closing
from pathlib import Path

from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from evo_merge.cli import cli


def _scored(run: Path) -> tuple[int, int]:
    """(evaluations, item scores) the run's database holds."""
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("evaluations", "item_scores"))


def test_demo_runs_its_campaign_to_picks_and_a_rerun_resumes_it(tiny_zoo, tmp_path):
    run = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--zoo", str(tiny_zoo), "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = tmp_path / "demo.yaml"
    assert config.read_text().startswith(f"# evo-merge campaign: `evo-merge run {config} --out {run}`\n")
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    picks = dict(line.removeprefix("model ").split(": ") for line in result.output.splitlines()
                 if line.startswith("model "))
    assert set(picks) == {"best-arith", "best-lang", "best-seq", "balanced"}, result.output
    base_type = AutoModelForCausalLM.from_pretrained(tiny_zoo / "base").config.model_type
    for folder in map(Path, set(picks.values())):
        assert folder.parent == run / "models" and (folder / "merge_recipe.yaml").is_file()
        assert AutoModelForCausalLM.from_pretrained(folder).config.model_type == base_type  # a Hugging Face folder
    scored, report = _scored(run), (run / "report.md").read_text()
    assert min(scored) > 0

    again = CliRunner().invoke(cli, ["demo", "--zoo", str(tiny_zoo), "--out", str(run)])
    assert again.exit_code == 0, again.output
    assert _scored(run) == scored and (run / "report.md").read_text() == report  # resumed: nothing scored again
    assert dict(line.removeprefix("model ").split(": ") for line in again.output.splitlines()
                if line.startswith("model ")) == picks
