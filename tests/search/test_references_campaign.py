"""Campaign inputs as recipes name them: a Hub id from the user's cache (offline) as the base and
a fine-tune with a LoRA adapter folded in as an endpoint. The run searches them like folders and
its exports name the Hub id with its commit and the adapter, and rebuild bit for bit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from campaigns import campaign_config  # tests/search is on sys.path
from hub_layout import save_to_hub_cache  # tests/ is on sys.path (its conftest)
from safetensors.torch import load_file, save_file

from evo_merge.zoo.tiny import save_tiny_family

HERE = Path(__file__).parent
REPO, COMMIT = "tiny-org/tiny-base", "b" * 40


def lora_adapter(model_dir: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(out)


def evo_merge(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo_merge", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def test_a_hub_base_and_a_lora_endpoint_are_searched_and_exported_as_references(tmp_path):
    pytest.importorskip("peft")
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    save_to_hub_cache(tmp_path / "hub", base, REPO, COMMIT)
    lora_adapter(fts[1], tmp_path / "adapter")
    config = campaign_config(REPO, [fts[0], f"{fts[1]}+{tmp_path / 'adapter'}"],
                             tasks=campaign_config(base, fts)["tasks"],
                             algorithm={"population": 4, "generations": 1, "seed": 1})
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    done = evo_merge("run", tmp_path / "campaign.yaml", "--out", tmp_path / "run", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "endpoint ft2+adapter" in done.stdout  # was "endpoint ft2": the fine-tune without its adapter
    stored = yaml.safe_load((tmp_path / "run" / "campaign.yaml").read_text())
    assert stored["base_model"] == REPO  # kept as written, not made a path
    folder = tmp_path / "run" / "models" / "balanced"
    recipe = yaml.safe_load((folder / "merge_recipe.yaml").read_text())
    assert recipe["base_model"] == f"{REPO}@{COMMIT}"
    assert recipe["models"][1]["model"].endswith(f"+{tmp_path / 'adapter'}")

    done = evo_merge("merge", folder / "merge_recipe.yaml", "--out", tmp_path / "rebuilt", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(folder / "model.safetensors"), load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a later download moves refs/main to another commit: the run is refused, naming the commit it began
    # with, where it said only "its weights changed" and the commit was nowhere in the run (audit 137)
    repo_dir = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    newer = "e" * 40
    snapshot = shutil.copytree(base, repo_dir / "snapshots" / newer)
    save_file({k: t + 0.01 for k, t in load_file(base / "model.safetensors").items()}, snapshot / "model.safetensors")
    (repo_dir / "refs" / "main").write_text(newer)
    moved = evo_merge("resume", tmp_path / "run", env=env)
    assert moved.returncode == 2, moved.stderr[-2000:]
    assert (f"base_model ({REPO}@{newer}): its weights changed since this run folder was started; it was "
            f"{REPO}@{COMMIT} then: write that into the run folder's campaign.yaml as base_model to resume with it"
            ) in moved.stderr, moved.stderr
    stored["base_model"] = f"{REPO}@{COMMIT}"
    (tmp_path / "run" / "campaign.yaml").write_text(yaml.safe_dump(stored))
    pinned = evo_merge("resume", tmp_path / "run", env=env)
    assert pinned.returncode == 0, pinned.stderr[-2000:]


def test_a_hub_id_missing_from_the_cache_is_one_line_naming_the_key(tmp_path):
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign_config("nobody/nothing", fts)))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = evo_merge("run", tmp_path / "campaign.yaml", "--out", tmp_path / "run", env=env)
    assert done.returncode == 2 and ("base_model: no folder nobody/nothing beside the campaign file, and Hub model "
                                     "nobody/nothing") in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_tables_name_a_reference_as_the_campaign_does_not_by_the_folder_it_resolved_to(tmp_path):
    """A Hub id's snapshot folder is named by its commit hash, and `model+adapter` resolves to the
    model's folder: an endpoint read "endpoint 95ae2952…" or "endpoint base" (the base, it seemed)."""
    from evo_merge.weights.references import short_label

    (tmp_path / "base").mkdir()
    (tmp_path / "lora 1").mkdir()
    assert short_label(REPO) == REPO
    assert short_label(f"{REPO}@{COMMIT}") == REPO
    assert short_label(str(tmp_path / "base")) == "base"
    assert short_label(f"{tmp_path / 'base'}+{tmp_path / 'lora 1'}") == "base+lora 1"
    assert short_label(f"{REPO}+tiny-org/adapter@v2") == f"{REPO}+tiny-org/adapter"


def test_a_mass_pick_over_hub_ids_names_its_tasks_and_models_as_the_campaign_does(tmp_path):
    """A MASS pick of a campaign over Hub ids named its tasks by the snapshot folders' commit hashes
    and recorded those folders' paths on this machine as its models, which `push` then warned of
    (audit 123): its tasks are the models' names, its models their Hub ids at their commits."""
    from evo_merge.mass.model import MASS_JSON
    from evo_merge.report.upload import plan_upload

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2)  # fine-tunes near the base
    save_to_hub_cache(tmp_path / "hub", base, REPO, COMMIT)
    ids = [save_to_hub_cache(tmp_path / "hub", ft, f"tiny-org/{name}", c * 40)
           for ft, name, c in zip(fts, ("arith-ft", "lang-ft"), "cd")]
    config = campaign_config(REPO, [f"{repo}@{commit}" for repo, commit in ids],
                             tasks=campaign_config(base, fts)["tasks"], methods={"mass": {}},
                             algorithm={"population": 4, "generations": 1, "seed": 1},
                             final={"evaluate_top": 2, "export": ["best_per_task", "balanced"]})
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = evo_merge("run", tmp_path / "campaign.yaml", "--out", tmp_path / "run", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = [f.parent for f in (tmp_path / "run" / "models").glob(f"*/{MASS_JSON}")]
    assert folders, done.stdout  # a MASS pick among them
    for folder in folders:
        meta = json.loads((folder / MASS_JSON).read_text())
        assert meta["tasks"] == ["arith-ft", "lang-ft"]
        assert meta["models"] == [f"tiny-org/arith-ft@{'c' * 40}", f"tiny-org/lang-ft@{'d' * 40}"]
        card = (folder / "README.md").read_text()
        assert yaml.safe_load(card.split("---")[1])["mass_tasks"] == ["arith-ft", "lang-ft"]
        assert str(tmp_path) not in card
        assert not [w for w in plan_upload(folder).warnings if "local path" in w], plan_upload(folder).warnings
    # `export --pick` builds the MASS folder from the recorded names, with no workbench at hand
    table = pd.read_csv(tmp_path / "run" / "evaluations.csv")
    eid = int(table[(table.method == "mass") & (table.phase == "search")].id.iloc[-1])
    done = evo_merge("export", tmp_path / "run", "--pick", eid, "--out", tmp_path / "exported", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "exported" / MASS_JSON).read_text())
    assert meta["tasks"] == ["arith-ft", "lang-ft"]
    assert meta["models"] == [f"tiny-org/arith-ft@{'c' * 40}", f"tiny-org/lang-ft@{'d' * 40}"]


def test_a_campaign_s_folder_spelled_as_a_cached_hub_id_is_read_with_both_readings_said(tmp_path):
    """A campaign's relative `org/name` is the folder beside it wherever one exists: said for recipes
    only, as a campaign makes its folders absolute first (audit 139); once per command."""
    base, fts = save_tiny_family(tmp_path / "tiny-org", "llama", n_finetunes=2)
    save_to_hub_cache(tmp_path / "hub", base, "tiny-org/base", COMMIT)
    config = campaign_config("tiny-org/base", fts)
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    planned = evo_merge("plan", tmp_path / "campaign.yaml", env=env)
    assert planned.returncode == 0, planned.stderr[-2000:]
    said = [line for line in planned.stderr.splitlines() if "is read as the folder" in line]
    assert said == [f"warning: base_model: 'tiny-org/base' is read as the folder {base}, not as the Hub model "
                    "tiny-org/base in your cache; write tiny-org/base@main for the Hub model, or ./tiny-org/base to "
                    "say the folder is meant"], planned.stderr
    config["base_model"] = "./tiny-org/base"
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    planned = evo_merge("plan", tmp_path / "campaign.yaml", env=env)
    assert planned.returncode == 0 and "is read as the folder" not in planned.stderr, planned.stderr
