"""`evo-merge eval` on inputs that are wrong or damaged: one line and exit 2, never a score of nonsense."""

import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from test_lmeval import model_dirs  # noqa: F401  (a fixture)

from evo_merge.cli import cli


@pytest.fixture(scope="module")
def models(model_dirs, char_lm):  # noqa: F811
    model, tok = char_lm
    root = model_dirs  # holds "lm", a saved model folder
    (root / "pickled").mkdir()
    torch.save(model.state_dict(), root / "pickled" / "pytorch_model.bin")
    model.config.save_pretrained(root / "pickled")
    tok.save_pretrained(root / "pickled")
    shutil.copytree(root / "lm", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    shutil.copytree(root / "lm", root / "nan")
    tensors = load_file(root / "nan" / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"].view(-1)[7] = float("inf")  # a flipped exponent bit
    save_file(tensors, root / "nan" / "model.safetensors", metadata={"format": "pt"})
    (root / "items.txt").write_text("arith-test-00003\n")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "report.md").write_text("a run folder's report\n")
    (root / "empty.txt").write_text("item\n\n")
    return root


def evaluate(models, tmp_path, model, *extra, items="items.txt"):
    args = ["eval", "--model", models / model, "--task", "arith", "--items", models / items, *extra]
    result = CliRunner().invoke(cli, [str(a) for a in args] + (["--out", str(tmp_path / "s.csv")]
                                                                 if "--out" not in extra else []))
    return result.exit_code, result.output


@pytest.mark.parametrize(("model", "items", "message"), [
    ("lm", "empty.txt", "empty.txt: no item ids in it"),
    ("pickled", "items.txt", "pickled: no .safetensors weights (pickle weights need --allow-pickle)"),
    ("truncated", "items.txt", "model.safetensors: not a readable safetensors file (Error while deserializing header"),
    ("nan", "items.txt", "tensor model.layers.1.mlp.up_proj.weight holds NaN or Inf"),
    # a run folder, say: its advice was --allow-pickle
    ("not-a-model", "items.txt", "not-a-model: not a model folder (no config.json)"),
])
def test_bad_models_and_item_lists_are_one_line_exit_2(models, tmp_path, model, items, message):
    code, output = evaluate(models, tmp_path, model, items=items)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output
    assert output.startswith("error: ") and not (tmp_path / "s.csv").exists()
    if model != "lm":  # the model's errors name the option, as the others of `eval` do
        assert output.startswith("error: --model "), output


def test_a_model_folder_that_is_not_there_names_the_option(models, tmp_path):
    code, output = evaluate(models, tmp_path, "nowhere")
    assert code == 2 and output.strip() == f"error: --model {models / 'nowhere'}: no such folder", output


def test_a_hub_id_is_scored_from_the_cache_as_its_folder_named_by_its_name(models, tmp_path, monkeypatch):
    """`eval --model org/name` said "no such folder" where a campaign and `merge` take the Hub id
    (audit 123): the cache's snapshot is scored, its subject named by the id, not the commit hash."""
    from hub_layout import save_to_hub_cache  # tests/ is on sys.path (its conftest)
    from huggingface_hub import constants

    save_to_hub_cache(tmp_path / "hub", models / "lm", "tiny-org/char-lm", "e" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, output = evaluate(models, tmp_path, "lm", "--out", tmp_path / "folder.csv")
    assert code == 0, output
    args = ["eval", "--model", "tiny-org/char-lm", "--task", "arith", "--items", str(models / "items.txt")]
    hub = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "hub.csv")])
    assert hub.exit_code == 0, hub.output
    folder, scored = ((tmp_path / f).read_text().splitlines() for f in ("folder.csv", "hub.csv"))
    assert [line.split(",", 1)[1] for line in scored] == [line.split(",", 1)[1] for line in folder]  # the same scores
    assert scored[1].startswith("tiny-org/char-lm,arith-test-00003,"), scored
    adapted = CliRunner().invoke(cli, ["eval", "--model", f"tiny-org/char-lm+{models / 'lm'}", "--task", "arith",
                                       "--out", str(tmp_path / "a.csv")])
    assert adapted.exit_code == 2 and "eval scores a model, not a model with a LoRA adapter" in adapted.output


def test_out_naming_a_folder_is_one_line(models, tmp_path):
    code, output = evaluate(models, tmp_path, "lm", "--out", tmp_path)
    assert (
        code == 2 and output.strip() == f"error: --out {tmp_path}: is a folder; give the path of the CSV file to write"
    )


def test_existing_scores_are_kept_unless_overwrite(models, tmp_path):
    """Another model's scores in OUT are not replaced by a second command to the same path."""
    out = tmp_path / "s.csv"
    out.write_text("subject,item,score\nother,arith-test-00003,1.0\n")
    code, output = evaluate(models, tmp_path, "lm")
    assert code == 2 and output.strip() == f"error: --out {out}: already exists (--overwrite replaces it)", output
    assert out.read_text() == "subject,item,score\nother,arith-test-00003,1.0\n"
    code, output = evaluate(models, tmp_path, "lm", "--overwrite")
    assert code == 0 and out.read_text().splitlines()[1].startswith("lm,arith-test-00003,"), output


def test_pickle_weights_are_read_with_allow_pickle_and_score_as_safetensors(models, tmp_path):
    code, output = evaluate(models, tmp_path, "pickled", "--allow-pickle", "--out", tmp_path / "p.csv")
    assert code == 0, output
    code, output = evaluate(models, tmp_path, "lm", "--subject", "pickled", "--out", tmp_path / "s.csv")
    assert code == 0, output
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "s.csv").read_text()


def test_a_long_evaluation_reports_its_items_and_scores_them_as_one_call_would(models, tmp_path, monkeypatch):
    """At 7B one task takes minutes: `eval` scores it in parts, each told (a line in a log)."""
    from evo_merge.tasks import base

    (models / "many.txt").write_text("".join(f"arith-test-{i:05d}\n" for i in range(12)))
    code, output = evaluate(models, tmp_path, "lm", "--out", tmp_path / "whole.csv", items="many.txt")
    assert code == 0, output
    monkeypatch.setattr(base, "ITEMS_PER_CALL", 5)
    code, output = evaluate(models, tmp_path, "lm", "--out", tmp_path / "parts.csv", items="many.txt")
    assert code == 0, output
    assert (tmp_path / "parts.csv").read_text() == (tmp_path / "whole.csv").read_text()
    assert "scoring evo_arith: 12/12 in 0:00:" in output
