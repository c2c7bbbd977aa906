"""Real response matrices from a zoo: every subject scored on every item, ready for IRT."""


import pandas as pd
from agreement_task import AgreementTask
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.irt import IRTModel, validate_responses
from evo_merge.search.responses import build_responses
from evo_merge.zoo.tiny import save_tiny_family


def test_build_responses_scores_base_endpoints_and_random_merges(tmp_path):
    base, fts = save_tiny_family(tmp_path, "llama", n_finetunes=2, noise=0.08)
    tasks = {f"agree{i}": AgreementTask(str(f), name=f"agree{i}", n_items=40, seed=i) for i, f in enumerate(fts)}
    table = build_responses(base, fts, tasks, n_merges=5, seed=1)
    assert table.subject.nunique() == 1 + 2 + 5
    assert len(table) == 8 * 80 and set(table.scenario) == {"agree0", "agree1"}
    endpoint = table[(table.subject == "endpoint-ft1") & (table.task == "agree0")]
    assert endpoint.score.mean() == 1.0  # an endpoint agrees with itself on every item
    again = build_responses(base, fts, tasks, n_merges=5, seed=1)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same merges, the same scores

    long = validate_responses(table[["subject", "item", "score", "scenario"]], "responses")
    model = IRTModel.fit(long, dims=1, seed=0)
    assert len(model.item_ids) == 80


def test_responses_build_never_replaces_a_file_unasked(tmp_path):
    """An existing --out is refused before any scoring (it was replaced without a word); with
    --overwrite the command goes on (here to the missing manifest)."""
    out = tmp_path / "r.csv"
    out.write_text("another matrix")
    args = ["responses", "build", "--zoo", str(tmp_path), "--tasks", "arith", "--out", str(out)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        f"error: --out {out}: already exists (--overwrite replaces it)") and out.read_text() == "another matrix"
    onwards = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert onwards.exit_code == 2 and "zoo.json" in onwards.output


def test_responses_build_needs_a_zoo_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["responses", "build", "--zoo", str(tmp_path), "--tasks", "arith",
                                      "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "zoo.json" in result.output
