"""User mistakes at the CLI's edges: one line naming the key, option or file, exit 2, before any
work and without touching anything (found by a review that tried them one by one)."""

import shutil
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.merge.recipe import Recipe
from evo_merge.schema import validate
from evo_merge.tasks.registry import resolve_task
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("family"), "llama", n_finetunes=2)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code, output, *expected):
    """Exit 2 and one `error: ` line (warnings said before it are lines of their own), click's own
    refusals of an option included."""
    assert code == 2, output
    lines = [line for line in output.strip().splitlines() if not line.startswith("warning: ")]
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("error: "), output
    assert all(text in output for text in expected), output


@pytest.mark.parametrize(("args", "expected"), [
    (["mass", "build", "--base", "b", "--models", "m", "--out", "o", "--token", "first"],
     "error: Invalid value for '--token': 'first' is not one of 'mean', 'last' (see `evo-merge mass build --help`)"),
    (["merge"], "error: Missing argument 'RECIPE' (see `evo-merge merge --help`)"),
    (["rn"], "error: No such command 'rn'. Did you mean 'run'? (see `evo-merge --help`)"),
    (["--bogus", "status"], "error: No such option '--bogus' (see `evo-merge --help`)"),  # the top level's own
])
def test_an_option_click_refuses_is_one_error_line_as_the_commands_own(args, expected):
    """Click's usage errors were three lines (`Usage:`, `Try ... --help`, `Error: ...`) beside the
    commands' own one-line `error:` refusals of other options (audit 123)."""
    result = CliRunner().invoke(cli, args, prog_name="evo-merge")
    assert result.exit_code == 2 and result.output.strip() == expected, result.output


@pytest.mark.parametrize("args", [["irt"], ["merge", "--help"], ["--help"], ["--version"]])
def test_help_and_a_group_without_its_command_are_shown_as_click_shows_them(args):
    """Only refusals became one line: the help a group without a subcommand prints (click 8.2 raises
    it as a usage error), --help and --version are as they were."""
    result = CliRunner().invoke(cli, args, prog_name="evo-merge")
    assert "error:" not in result.output and "Traceback" not in result.output, result.output
    if args == ["--version"]:
        assert result.exit_code == 0 and result.output.startswith("evo-merge, version "), result.output
    else:
        assert result.output.startswith(f"Usage: evo-merge {args[0] if args[0] != '--help' else ''}".rstrip())
        assert ("Commands:" in result.output) == (args[0] in ("irt", "--help")), result.output


def campaign(tmp_path, family, **sections):
    base, fts = family
    config = {"base_model": str(base), "models": [str(f) for f in fts], "tasks": [{"task": "arith"}],
              "methods": {"task_arithmetic": {}}, "algorithm": {"population": 4, "generations": 1}}
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("section", "values", "expected"), [
    ("estimator", {"dims": -2}, "estimator.dims"),
    ("estimator", {"dims": 0}, "estimator.dims"),
    ("algorithm", {"seed": -1}, "algorithm.seed"),
    ("estimator", {"anchor_sets": 0}, "estimator.anchor_sets"),
    ("estimator", {"anchor_sets": 100000}, "estimator.anchor_sets"),  # an estimator per set: it would never start
    ("estimator", {"anchor_balance": 0}, "estimator.anchor_balance"),
    ("estimator", {"anchor_balance": 100001}, "estimator.anchor_balance"),  # minutes of draws per set
    ("estimator", {"anchor_balance": 2.5}, "estimator.anchor_balance"),
    ("final", {"picks": {"best-arith": {"weights": {"arith": 1}}}}, "final.picks.best-arith: the name of a built-in"),
    ("final", {"picks": {"balanced": {"weights": {"arith": 1}}}}, "final.picks.balanced"),
    # `export: [front]` writes front-<id> folders: a pick of that name would be replaced by one
    ("final", {"picks": {"front-2": {"weights": {"arith": 1}}}}, "final.picks.front-2: the name of a built-in"),
    # one folder on a case-insensitive file system (macOS, Windows): the built-in pick's, or another's
    ("final", {"picks": {"Balanced": {"weights": {"arith": 1}}}}, "final.picks.Balanced: the name of a built-in pick"),
    ("final", {"picks": {"mine": {"weights": {"arith": 1}}, "Mine": {"weights": {"arith": 2}}}},
     "final.picks.mine: differs from final.picks.Mine in case alone"),  # (the file lists them sorted)
    # a value no member of a union takes: the key path, then what each member would take
    ("estimator", {"dims": "all"}, "estimator.dims: Input should be a valid integer, unable to parse string as an "
     "integer | Input should be 'auto'"),
    ("final", {"holdout": "all"}, "final.holdout: give a fraction in (0, 1), a number of items, auto, or null (none), "
     "not the text 'all'"),
    # a key of the user's spelt as a union member pydantic names (`int`) is kept: the error named final.picks.weight
    ("final", {"picks": {"int": {"weight": {"arith": 1}}}}, "final.picks.int.weight: unknown key (did you mean "
     "'weights'?)"),
    ("methods", {"ties": None}, "methods.ties: expected a mapping of keys ({key: value, ...}), not an empty value"),
    # pydantic reads true as 1: the error was "greater than or equal to 2", about no value the user wrote
    ("algorithm", {"population": True}, "algorithm.population: a number or a name goes here, not the boolean true"),
    ("final", {"holdout": True}, "final.holdout: give a fraction in (0, 1), a number of items"),  # its own rule
    # inside a mapping or a list of numbers too: read as weights 1.0 / 0.0 and a race stage 0.0 (audit 140)
    ("objective", {"weights": {"arith": False}}, "objective.weights: a number or a name goes here, not the boolean "
     "false (at arith)"),
    ("final", {"picks": {"mine": {"weights": {"arith": True}}}}, "final.picks.mine.weights: a number or a name goes "
     "here, not the boolean true (at arith)"),
    ("final", {"race": [False, 0.5]}, "final.race: a number or a name goes here, not the boolean false (at [0])"),
    # an optional section checks its own fields, and a value of another shape is named as such (audit 143)
    ("align", {"arch": "mlp", "seed": True}, "align.seed: a number or a name goes here, not the boolean true"),
    ("objective", {"weights": [True]}, "objective.weights: expected a mapping of keys ({key: value, ...}), not a list"),
    # a race of one stage at the whole set measures every finalist whole and races nothing
    ("final", {"race": [1.0]}, "final.race: give increasing fractions in (0, 1), got [1.0]"),
    # a population of one has no parents to cross: a one-line refusal, not an error of the optimiser later
    ("algorithm", {"population": 1}, "algorithm.population: Input should be greater than or equal to 2"),
    # CMA-ES seeds numpy's legacy generator (32 bits): `plan` said "fits", the run failed after calibration
    ("algorithm", {"name": "cmaes", "seed": 2**32},
     "algorithm.seed: algorithm.name cmaes takes a seed below 4,294,967,296, got "),
    ("align", {"arch": "mlp", "seed": 2**64}, "align.seed: Input should be less than 18446744073709551616"),
    # no density of the searched range keeps DELLA's probabilities in (0, 1): every candidate failed after calibration
    ("methods", {"della": {"epsilon": 0.5}}, "methods: della: epsilon 0.5 must keep density 0.2 +/- epsilon in (0, 1) "
     "(0 < density - epsilon and density + epsilon < 1), at density 0.2, lambda 0.5 (ends of the searched ranges)"),
    # of the campaign's two endpoints: `plan` said "fits", `run` stopped after calibration naming a recipe's key,
    # and the folder refused the corrected file (audit 96); a fixed setting is refused at any corner, said once
    ("methods", {"tsv_c": {"task": 2}}, "methods: tsv_c: task 2 is not a model index (0..1)\n"),
])
def test_campaign_values_refused_when_the_file_is_read(tmp_path, family, section, values, expected):
    one_line_error(*invoke("plan", campaign(tmp_path, family, **{section: values})), expected)


def test_an_align_spec_file_that_is_not_there_is_named_by_plan(tmp_path, family):
    """`plan` said "fits", `run` refused it without naming the key (audit 96)."""
    path = campaign(tmp_path, family)
    config = yaml.safe_load(path.read_text())
    del config["base_model"]
    path.write_text(yaml.safe_dump({**config, "align": {"arch": str(tmp_path / "nope.yaml")}}))
    one_line_error(*invoke("plan", path), f"{path}: align.arch: {tmp_path / 'nope.yaml'}: no such file")


def test_a_check_of_the_whole_campaign_names_its_key_without_a_top_level_marker(tmp_path, family):
    path = campaign(tmp_path, family, final={"picks": {"mine": {"weights": {"arth": 1}}}})
    one_line_error(*invoke("plan", path), f"{path}: final.picks.mine.weights.arth: not a task name (tasks: arith)")


def test_a_seed_py_irt_cannot_take_is_refused_when_the_file_is_read(tmp_path, family):
    """py-irt seeds numpy's legacy generator (32 bits): the run failed after calibration, its fit
    retried and reported as diverged (audit 143). The torch backend takes the seed."""
    from evo_merge.irt.backends import fit_pyirt

    big = {"algorithm": {"population": 4, "generations": 1, "seed": 2**32}}
    one_line_error(*invoke("plan", campaign(tmp_path, family, estimator={"backend": "pyirt"}, **big)),
                   "algorithm.seed: estimator.backend pyirt takes a seed below 4,294,967,296, got 4294967296")
    code, output = invoke("plan", campaign(tmp_path, family, **big))
    assert "seed" not in output, output
    with pytest.raises(UserError, match="seed 4294967296: py-irt takes a seed below 4,294,967,296"):
        fit_pyirt(np.zeros((4, 3)), 1, seed=2**32)  # from Python or `irt fit --backend pyirt --seed`


def test_task_names_that_differ_in_case_alone_are_refused(tmp_path, family):
    """`Arith` and `arith` have one irt/ folder and one models/best- folder on macOS and Windows."""
    path = campaign(tmp_path, family)
    config = yaml.safe_load(path.read_text())
    config["tasks"] = [{"task": "arith", "name": "Arith"}, {"task": "arith", "name": "arith"}]
    path.write_text(yaml.safe_dump(config))
    one_line_error(*invoke("plan", path), "tasks 'Arith' and 'arith' differ in case alone")


def test_one_benchmark_listed_twice_under_two_names_is_refused(tmp_path, family, monkeypatch):
    """`tasks: [arith, evo_arith]` scored one benchmark as two objectives, twice its weight in
    `balanced` and the hypervolume (audit 127); other options make it another task."""
    path = campaign(tmp_path, family)
    config = yaml.safe_load(path.read_text())
    for second in ({"task": "evo_arith"}, {"task": "arith", "name": "again"}):
        config["tasks"] = [{"task": "arith"}, second]
        path.write_text(yaml.safe_dump(config))
        one_line_error(*invoke("plan", path), f"tasks 'arith' and {second.get('name', 'evo_arith')!r} are the same "
                       "task with the same options")
    config["tasks"] = [{"task": "arith"}, {"task": "arith", "name": "first20", "options": {"limit": 20}}]
    path.write_text(yaml.safe_dump(config))
    assert "same task" not in invoke("plan", path)[1]
    # a path spelled otherwise, the shipped YAML's own path, options in another order: the same (audit 128)
    from evo_merge.config import Campaign
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    for first, second in [({"task": "arith"}, {"task": str(BENCHMARKS_DIR / "arith" / "evo_arith.yaml")}),
                          ({"task": "arith"}, {"task": f"{BENCHMARKS_DIR / 'arith'}/", "name": "b"}),
                          ({"task": "tasks/mine"}, {"task": "./tasks/mine", "name": "b"}),
                          ({"task": "arith", "options": {"limit": 5, "batch_size": 4}},
                           {"task": "arith", "name": "b", "options": {"batch_size": 4, "limit": 5}})]:
        with pytest.raises(ValueError, match="are the same task with the same options"):
            Campaign.model_validate({**config, "tasks": [first, second]})
    # a relative path and the absolute one it names: the relative one read against the campaign file's folder,
    # which the check did not know (the run reads it there)
    (tmp_path / "tasks" / "mine").mkdir(parents=True)
    config["tasks"] = [{"task": "tasks/mine"}, {"task": str(tmp_path / "tasks" / "mine"), "name": "b"}]
    path.write_text(yaml.safe_dump(config))
    one_line_error(*invoke("plan", path), "tasks 'mine' and 'b' are the same task with the same options")
    monkeypatch.chdir(tmp_path)  # the campaign named relatively, as `init` prints the command (audit 131)
    one_line_error(*invoke("plan", path.name), "tasks 'mine' and 'b' are the same task with the same options")


def test_a_task_name_too_long_for_its_pick_folder_is_refused_when_the_file_is_read(tmp_path, family):
    """`best-<task>` becomes a folder (and a hidden sibling while written): a 240-character name
    passed the plan and the whole search, then failed at export on every resume."""
    path = campaign(tmp_path, family)
    config = yaml.safe_load(path.read_text())
    config["tasks"] = [{"task": "arith", "name": "a" * 101}]
    path.write_text(yaml.safe_dump(config))
    one_line_error(*invoke("plan", path), "tasks.0.name", "up to 100")
    config["tasks"] = [{"task": "arith", "name": "a" * 100}]
    path.write_text(yaml.safe_dump(config))
    code, output = invoke("plan", path)
    assert code == 0, output


@pytest.mark.parametrize("dims", [20, 7])
def test_more_irt_dimensions_than_calibration_subjects_are_refused_before_any_evaluation(tmp_path, family, dims):
    """The fit refuses a D above its subjects: after the whole calibration had been paid for; and
    `plan` said "fits" (audit 96)."""
    path = campaign(tmp_path, family, estimator={"kind": "gpirt", "dims": dims, "warmup_merges": 3})
    refusal = (f"{path}: estimator.dims: {dims} is more than the 6 calibration subjects (base, endpoints, warm-up "
               "merges) the IRT model is fitted on; at most 6, or `auto`")
    one_line_error(*invoke("plan", path), refusal)
    one_line_error(*invoke("run", path, "--out", tmp_path / "run"), refusal)
    if (tmp_path / "run" / "state.sqlite").exists():
        from evo_merge.search.store import CampaignStore
        store = CampaignStore(tmp_path / "run")
        assert store.items_evaluated() == 0  # nothing paid for
        store.close()


def test_as_many_irt_dimensions_as_calibration_subjects_are_planned(tmp_path, family):
    """The fit takes D up to its subjects: the bound refuses only what it refuses (audit 100)."""
    path = campaign(tmp_path, family, estimator={"kind": "gpirt", "dims": 6, "warmup_merges": 3})
    code, output = invoke("plan", path)
    assert code == 0 and "estimator.dims" not in output, output


def test_a_missing_irt_model_is_refused_before_calibration_and_leaves_no_folder(tmp_path, family):
    path = campaign(tmp_path, family, estimator={"irt_model": str(tmp_path / "nowhere")})
    one_line_error(*invoke("run", path, "--out", tmp_path / "run"), f"estimator.irt_model: {tmp_path / 'nowhere'}: "
                   "no such folder")
    assert not (tmp_path / "run").exists()
    # a run folder given where its irt/ was meant: the way there
    (tmp_path / "old-run" / "irt" / "arith").mkdir(parents=True)
    (tmp_path / "old-run" / "irt" / "arith" / "model.json").write_text("{}")
    path = campaign(tmp_path, family, estimator={"irt_model": str(tmp_path / "old-run")})
    one_line_error(*invoke("run", path, "--out", tmp_path / "run"), "no arith/model.json); a run's models are in "
                   f"its irt/: give {tmp_path / 'old-run' / 'irt'}")
    # one a full evaluation never reads is said unused, not refused as missing (audit 104)
    path = campaign(tmp_path, family, estimator={"kind": "full", "irt_model": str(tmp_path / "nowhere")})
    code, output = invoke("plan", path)
    assert code == 0 and "estimator: irt_model not used (kind: full scores every item, no estimator)" in output, output
    code, output = invoke("run", path, "--out", tmp_path / "full-run")
    assert code == 0, output
    assert not (tmp_path / "run").exists()


def test_an_endpoint_listed_twice_or_the_base_as_an_endpoint_is_refused_before_anything_runs(tmp_path, family):
    """A copy-paste slip in `models`: the same folder twice (or through a link), or the base
    itself, made a search over coefficients of a repeated or zero task vector, silently."""
    base, fts = family
    link = tmp_path / "same-ft"
    link.symlink_to(fts[0], target_is_directory=True)
    for models, expected in (([fts[0], fts[1], fts[0]], f"models.2 ({fts[0]}): the same model as models.0"),
                             ([fts[0], link], f"models.1 ({fts[0]}): the same model as models.0"),  # resolved
                             ([fts[0], base], f"models.1 ({base}): the base model; list each endpoint once")):
        path = campaign(tmp_path, family)
        path.write_text(path.read_text().replace(f"- {fts[1]}\n", "".join(f"- {m}\n" for m in models[1:])))
        assert yaml.safe_load(path.read_text())["models"] == [str(m) for m in models]
        for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
            one_line_error(*invoke(*args), expected)
        assert not (tmp_path / "run").exists()


def test_a_campaign_model_folder_without_weights_is_named_by_its_file_and_key(tmp_path, family):
    """It said only "no weights in FOLDER", where a missing folder names the campaign and the key."""
    empty = tmp_path / "empty"
    empty.mkdir()
    path = campaign(tmp_path, family)
    path.write_text(path.read_text().replace(f"- {family[1][1]}\n", f"- {empty}\n"))
    for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
        one_line_error(*invoke(*args), f"error: {path}: models.1: no weights in {empty}: expected model.safetensors")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_that_is_not_there_is_refused_by_the_plan_before_anything_loads(tmp_path, family):
    path = campaign(tmp_path, family)
    path.write_text(path.read_text() + "device: cuda\n")
    for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
        # named with its file, as the other keys are
        one_line_error(*invoke(*args), f"error: {path}: device: cuda asked for, but torch sees 0 CUDA device(s)")
    assert not (tmp_path / "run").exists()
    # `plan` can plan that GPU from here, against the budget it is told of, and says which (audit 129)
    one_line_error(*invoke("plan", path), "; to plan the campaign for a GPU machine from here, give its memory as "
                   "storage.device_budget_gib")
    assert "storage.device_budget_gib" not in invoke("run", path, "--out", tmp_path / "run")[1]


def test_an_endpoint_of_another_architecture_or_vocabulary_is_named_by_plan_and_run(tmp_path, family):
    """`plan` (and the plan `run` makes first) read every endpoint's headers: a gpt2 endpoint was
    `tensor 'lm_head.weight' not found`, and one with 8 more tokens "fit" and `run` stopped only
    once calibration had begun."""
    from evo_merge.weights.folder import save_model_folder
    from evo_merge.zoo.tiny import make_tiny_causal_lm
    from evo_merge.zoo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    gpt2 = save_tiny_family(tmp_path / "gpt2", "gpt2", n_finetunes=1)[1][0]
    wider = tmp_path / "wider"
    save_model_folder(wider, make_tiny_causal_lm("llama", vocab_size=len(tokenizer) + 8), tokenizer)
    for other, expected in ((gpt2, "'model_type' differs"), (wider, "'vocab_size' differs")):
        path = campaign(tmp_path, (family[0], [family[1][0], other]))
        for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
            one_line_error(*invoke(*args), expected, str(other))
        assert not (tmp_path / "run").exists()


def test_a_task_or_an_adapter_run_would_refuse_is_named_by_plan_as_run_names_it(tmp_path, family):
    """`plan` printed "fits" for a campaign `run` then refused: an unknown task, a `model+folder`
    whose folder is no adapter, an adapter whose matrices do not fit the model's tensors, an IRT
    model folder without the task's model."""
    import json

    import torch
    from safetensors.torch import save_file

    base, fts = family
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": torch.zeros(2, 3), f"{module}.lora_B.weight": torch.zeros(5, 2)},
              adapter / "adapter_model.safetensors")
    good = yaml.safe_load(campaign(tmp_path, family).read_text())
    cases = {
        "task": ({"tasks": [{"task": "arith"}, {"task": "nosuch"}]}, ["tasks.1: unknown task 'nosuch'"]),
        "not-adapter": ({"models": [str(fts[0]), f"{base}+{fts[1]}"]}, ["models.1: ", "expected adapter_config.json"]),
        "wrong-shape": ({"models": [str(fts[0]), f"{fts[1]}+{adapter}"]},
                        ["models.1: ", "adapter for model.layers.0.self_attn.q_proj.weight has shape [5, 3]"]),
        "irt-model": ({"estimator": {"irt_model": str(adapter)}}, ["estimator.irt_model: ", "no arith/model.json"]),
        # more held out than a task holds: `plan` said "fits"
        "holdout": ({"final": {**good.get("final", {}), "holdout": 2000}},
                    ["final.holdout: 2000 leaves no search items in task 'arith'"]),
    }
    for name, (change, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**good, **change}))
        for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
            one_line_error(*invoke(*args), str(path), *expected)
        assert not (tmp_path / "run").exists()
    code, output = invoke("plan", campaign(tmp_path, family))
    assert code == 0 and "tasks: arith (1,200 items, 240 held out)" in output, output
    # a task too small for `holdout: auto` holds none: the report said so after the run (audit 89)
    code, output = invoke("plan", _small_task_campaign(tmp_path, family))
    assert code == 0 and ("tasks: arith (80 items, none held out: fewer than 500, so its picks are scored on the "
                          "items the search chose on)") in " ".join(output.split()), output


def _small_task_campaign(tmp_path, family):
    path = campaign(tmp_path, family)
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "tasks": [{"task": "arith", "options": {"limit": 80}}]}))
    return path


def test_the_plan_counts_the_items_a_campaign_asks_for(tmp_path, family):
    """`warmup_merges: 1e15` (each one a full evaluation) was "fits": the plan said nothing of cost."""
    scenarios = len(set(resolve_task("arith").scenarios.values()))
    code, output = invoke("plan", campaign(tmp_path, family, estimator={"warmup_merges": 3, "anchors": 5}))
    # 1,200 arith items, 240 held out (final.holdout auto); base, 2 endpoints and 3 warm-ups; 4 x 1 candidates
    assert code == 0 and (f"items: calibration 6 models x 960 search items = 5,760; search at most 4 candidates x "
                          f"{5 * scenarios} (anchors) = {4 * 5 * scenarios} (every item: 3,840)") in output, output
    # the standard merges past the warm-ups are scored as candidates are, on the anchors (it said on every item)
    assert "the standard merges not among the warm-ups (on the anchors, as any candidate)" in output, output
    code, output = invoke("plan", campaign(tmp_path, family, estimator={"kind": "full", "warmup_merges": 3}))
    assert "the standard merges not among the warm-ups (on every search item)" in output, output
    assert "calibration 3 models x 960 search items = 2,880; search at most 4 candidates x 960 (every search item)" \
        in output, output
    code, output = invoke("plan", campaign(tmp_path, family, estimator={"kind": "adaptive", "max_items": 30}))
    each = min(30 * scenarios, 960)  # each scenario's test stops at max_items at the latest
    assert f"calibration 11 models x 960 search items = 10,560; search at most 4 candidates x {each} (at most, " \
           f"adaptive) = {4 * each:,}" in output, output
    assert "the standard merges not among the warm-ups (on an adaptive test, as any candidate)" in output, output
    # IRT models given: no warm-up merges measured to fit one (audit 104)
    from types import SimpleNamespace

    from evo_merge.cli.plan import item_budget
    from evo_merge.config import Campaign

    given = Campaign.load(campaign(tmp_path, family, estimator={"irt_model": "irt_models", "warmup_merges": 3}))
    arith = resolve_task("arith")
    line = item_budget(given, {"arith": SimpleNamespace(item_ids=arith.item_ids, scenarios=arith.scenarios)}, 2,
                       {"arith": 240})
    assert line.startswith("items: calibration 3 models x 960 search items = 2,880;"), line


def test_mass_over_a_lora_endpoint_is_refused_by_plan_as_by_run(tmp_path, family):
    """MASS decomposes model folders: `plan` said "fits" and `run` refused it once the models loaded."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base, fts = family
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(fts[1]),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    path = campaign(tmp_path, (base, [fts[0], f"{fts[1]}+{tmp_path / 'adapter'}"]))
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "methods": {"task_arithmetic": {}, "mass": {}}}))
    for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
        one_line_error(*invoke(*args), "methods.mass: MASS decomposes model folders")
    assert not (tmp_path / "run").exists()


def test_too_few_calibration_subjects_are_refused_before_calibration_naming_the_key(tmp_path, family):
    """The base, 2 endpoints and no warm-up: `run` calibrated on every item, then stopped with
    "need at least 4 subjects"; `plan` said it fits."""
    path = campaign(tmp_path, family, estimator={"warmup_merges": 0})
    for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
        one_line_error(*invoke(*args), "estimator.warmup_merges: 0 gives 3 calibration subjects", "set it to 1")
    assert not (tmp_path / "run").exists()
    full = campaign(tmp_path, family, estimator={"warmup_merges": 0, "kind": "full"})  # no IRT: nothing to fit
    assert invoke("plan", full)[0] == 0
    enough = campaign(tmp_path, family, estimator={"warmup_merges": 1})  # what the refusal asks for (audit 104)
    assert invoke("plan", enough)[0] == 0


def test_a_pickled_endpoint_in_a_campaign_is_not_told_to_use_an_option_run_does_not_have(tmp_path, family):
    """`plan` and `run` said "pass --allow-pickle", which neither has: a campaign reads safetensors only."""
    import torch
    from safetensors.torch import load_file

    pickled = shutil.copytree(family[1][0], tmp_path / "pickled", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(family[1][0] / "model.safetensors"), pickled / "pytorch_model.bin")
    path = campaign(tmp_path, (family[0], [pickled, family[1][1]]))
    for args in (("plan", path), ("run", path, "--out", tmp_path / "run")):
        one_line_error(*invoke(*args), "pickled/pytorch_model.bin is a pickle checkpoint",
                       "a campaign reads safetensors only")
    assert not (tmp_path / "run").exists()


def test_demo_refuses_a_folder_of_other_files_before_building_the_zoo(tmp_path, monkeypatch):
    """`demo --out` built the zoo first (minutes), then ran the campaign into a folder of other
    files, left a `state.sqlite` among them and told the user to restore it from a backup; `--out .`
    was a ValueError traceback. It is checked as `run --out` is, before anything is built."""
    other, zoo = tmp_path / "notes", tmp_path / "zoo"
    other.mkdir()
    (other / "report.md").write_text("mine")
    one_line_error(*invoke("demo", "--out", other, "--zoo", zoo), "not empty and not a run folder")
    monkeypatch.chdir(other)
    one_line_error(*invoke("demo", "--out", ".", "--zoo", zoo), "not empty and not a run folder")
    assert [p.name for p in other.iterdir()] == ["report.md"] and not zoo.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_demo_keeps_a_campaign_file_it_did_not_write_and_names_its_own_run_folder(tmp_path, monkeypatch):
    """`demo --out DIR` wrote DIR.yaml over whatever was there (a user's notes; a demo campaign
    edited since), and its first line named `--out runs/DIR` wherever the run folder was."""
    from evo_merge.cli import campaign as campaign_cli
    from evo_merge.cli import demo as demo_cli

    config, zoo = tmp_path / "mine.yaml", tmp_path / "zoo"
    config.write_text("my notes\n")
    one_line_error(*invoke("demo", "--out", tmp_path / "mine", "--zoo", zoo), f"{config} exists and is not",
                   f"evo-merge run {config} --out {tmp_path / 'mine'}")
    assert config.read_text() == "my notes\n" and not zoo.exists()  # refused before the zoo's minutes

    started = []
    monkeypatch.setattr(demo_cli, "_zoo", lambda zoo: ["arith", "seq"])  # a zoo's endpoints, without training it
    monkeypatch.setattr(campaign_cli, "start_campaign", lambda path, out: started.append((path, out)))
    config.unlink()
    assert invoke("demo", "--out", tmp_path / "mine", "--zoo", zoo)[0] == 0
    written = config.read_text()
    assert written.splitlines()[0] == f"# evo-merge campaign: `evo-merge run {config} --out {tmp_path / 'mine'}`"
    assert invoke("demo", "--out", tmp_path / "mine", "--zoo", zoo)[0] == 0  # a rerun: the same file, resumed
    assert started == [(config, tmp_path / "mine")] * 2
    config.write_text(written.replace("population: 10", "population: 12"))
    one_line_error(*invoke("demo", "--out", tmp_path / "mine", "--zoo", zoo), "edited since?")
    assert "population: 12" in config.read_text() and len(started) == 2


def test_demo_refuses_a_run_folder_of_another_campaign_before_writing_its_file(tmp_path, family):
    """`demo --out` a folder another campaign runs in wrote OUT.yaml, then `run` refused it with advice
    (resume it with its own campaign.yaml) that did not apply to the demo."""
    from evo_merge.cli.demo import _check_run_is_the_demo
    from evo_merge.search.workspace import Workspace

    path = campaign(tmp_path, family)
    Workspace.open(Campaign.load(path), tmp_path, tmp_path / "run").store.close()  # bound, nothing evaluated
    text = path.read_text()
    _check_run_is_the_demo(tmp_path / "run", text, path)  # its own campaign: goes on (a rerun resumes it)
    other = yaml.safe_dump({**yaml.safe_load(text), "algorithm": {"population": 6, "generations": 1}})
    with pytest.raises(UserError, match=r"holds the run of another campaign \(changed: algorithm.population\); "
                                        r"give the demo another --out"):
        _check_run_is_the_demo(tmp_path / "run", other, path)


@pytest.mark.parametrize(("edit", "expected"), [
    ({"method": {"ties": {}}}, "method: unknown key (did you mean 'methods'?)"),
    ({"algorithm": {"populaton": 8}}, "algorithm.populaton: unknown key (did you mean 'population'?)"),
    ({"tasks": [{"task": "arith", "option": {"limit": 3}}]}, "tasks.0.option: unknown key (did you mean 'options'?)"),
    ({"final": {"picks": {"mine": {"weight": {"arith": 1}}}}},
     "final.picks.mine.weight: unknown key (did you mean 'weights'?)"),
    ({"tracking": {"mlflow": {"url": "./mlruns"}}}, "tracking.mlflow.url: unknown key (did you mean 'uri'?)"),
    ({"storage": {"xyz": 1}}, "storage.xyz: unknown key"),  # nothing like it: no guess
])
def test_a_misspelt_key_is_named_with_the_key_it_resembles(tmp_path, family, edit, expected):
    """A new user cannot tell a typo from a key that does not exist: `method: unknown key` said neither."""
    path = campaign(tmp_path, family)
    config = {**yaml.safe_load(path.read_text()), **edit}
    with pytest.raises(UserError) as error:
        validate(Campaign, config, "c.yaml")
    assert str(error.value) == f"c.yaml: {expected}"


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the file is empty"),
    ("- arith\n", "expected a mapping of keys at the top level, not a list"),
    # the README writes {task: arith}; a bare name was "a valid dictionary or instance of TaskSpec"
    ("base_model: {base}\nmodels: [{ft}]\ntasks: [arith]\n",
     "tasks.0: expected a mapping of keys ({{key: value, ...}}), not the string 'arith'; write it as {{task: arith}}"),
    # one value where a list goes: written as a list of it, of its section where an entry is one (audit 122)
    ("base_model: {base}\nmodels: {ft}\ntasks: [{{task: arith}}]\n",
     "models: expected a list ([a, b, ...]), not the string '{ft}'; write it as [{ft}]"),
    ("base_model: {base}\nmodels: [{ft}]\ntasks: arith\n",
     "tasks: expected a list ([a, b, ...]), not the string 'arith'; write it as [{{task: arith}}]"),
    ("base_model: {base}\nmodels: {{a: {ft}}}\ntasks: [{{task: arith}}]\n",
     "models: expected a list ([a, b, ...]), not a mapping"),
    # no hint that would write other YAML (audit 124): empty text, text holding `: `
    ("base_model: {base}\nmodels: ''\ntasks: [{{task: arith}}]\n",
     "models: expected a list ([a, b, ...]), not the string ''"),
    ("base_model: {base}\nmodels: [{ft}]\ntasks: 'my: task'\n",
     "tasks: expected a list ([a, b, ...]), not the string 'my: task'"),
    ("base_model: {base}\nmodels: [{ft}]\ntasks: [{{task: arith}}]\nestimator: gpirt\n",
     "estimator: expected a mapping of keys ({{key: value, ...}}), not the string 'gpirt'"),
    # one value fixes a hyperparameter; a mapping there is neither a range nor a value
    ("base_model: {base}\nmodels: [{ft}]\ntasks: [{{task: arith}}]\nmethods: {{ties: {{density: {{low: 0.1}}}}}}\n",
     "methods: ties.density: expected a number, got {{'low': 0.1}}"),
])
def test_a_value_where_a_section_belongs_is_named_in_yaml_words(tmp_path, family, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text.format(base=family[0], ft=family[1][0]))
    one_line_error(*invoke("plan", path), "c.yaml: " + expected.format(ft=family[1][0]))


@pytest.mark.parametrize(("key", "typo", "expected"), [
    ("parameters", "paramters", "models.0.paramters: unknown key (did you mean 'parameters'?)"),
    # a required key misspelt: the misspelling, not `merge_method: Field required`
    ("merge_method", "merge_methd", "merge_methd: unknown key (did you mean 'merge_method'?)"),
])
def test_a_misspelt_recipe_key_is_named_with_the_key_it_resembles(family, key, typo, expected):
    recipe = {"merge_method": "task_arithmetic", "base_model": str(family[0]),
              "models": [{"model": str(family[1][0]), "parameters": {"weight": 1.0}}]}
    text = yaml.safe_dump(recipe).replace(f"{key}:", f"{typo}:")
    with pytest.raises(UserError) as error:
        validate(Recipe, yaml.safe_load(text), "r.yaml")
    assert str(error.value) == f"r.yaml: {expected}"


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81")
    for command in ("plan", "merge"):
        args = (command, path) if command == "plan" else (command, path, "--out", tmp_path / "o")
        one_line_error(*invoke(*args), "not a UTF-8 text file")


@pytest.mark.parametrize(("value", "shown"), [
    (".nan", "nan"), (".NaN", "nan"), (".inf", "inf"),
    # beyond float32: a RuntimeError traceback at the first tensor (audit 96)
    ("1e308", "1e+308"), ("-3.5e38", "-3.5e+38"), ("[0.5, 1e39]", "1e+39"),
    (str(10**40), "an integer of about 41 digits"), (str(10**400), "an integer of about 401 digits")])
def test_a_recipe_parameter_that_is_not_finite_is_named(tmp_path, family, value, shown):
    base, fts = family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\n"
                      f"models: [{{model: {fts[0]}, parameters: {{weight: {value}}}}}]\n")
    one_line_error(*invoke("merge", recipe, "--out", tmp_path / "o"), "models.0.parameters",
                   f"weight: expected a finite number within float32's range (±3.403e+38), got {shown}")


def test_merge_refuses_to_overwrite_one_of_its_inputs_and_a_bad_dtype_names_the_option(tmp_path, family):
    base, fts = family
    target = shutil.copytree(fts[0], tmp_path / "ft")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{{model: {target}}}, "
                      f"{{model: {fts[1]}}}]\n")
    before = sorted(p.name for p in target.iterdir())
    one_line_error(*invoke("merge", recipe, "--out", target, "--overwrite"), "which this command reads")
    assert sorted(p.name for p in target.iterdir()) == before
    one_line_error(*invoke("merge", recipe, "--out", tmp_path / "o", "--dtype", "float8"), "--dtype", "float8")


def test_options_out_of_range_are_click_errors(tmp_path):
    for args in (["irt", "anchors", tmp_path, "--budget", "3", "--seed", "-1"],
                 ["responses", "build", "--zoo", tmp_path, "--tasks", "arith", "--n-merges", "-3", "--out", "r.csv"],
                 ["responses", "build", "--zoo", tmp_path, "--tasks", "arith", "--out", tmp_path],
                 ["responses", "build", "--zoo", tmp_path, "--tasks", ",", "--out", "r.csv"],
                 ["zoo", "build", "--out", __file__]):
        one_line_error(*invoke(*args))


def test_a_zoo_whose_build_did_not_finish_is_named_so(tmp_path):
    """A zoo build stopped by Ctrl-C leaves its folder marked as being built; `responses build`
    then took `zz/base` for a Hub id missing from the cache (audit 96)."""
    from evo_merge.zoo.manifest import claim_zoo_folder

    claim_zoo_folder(tmp_path / "zz", "tiny-lm", "key")  # as the build does before its first model
    one_line_error(*invoke("responses", "build", "--zoo", tmp_path / "zz", "--tasks", "arith", "--out",
                           tmp_path / "r.csv"),
                   f"{tmp_path / 'zz'}: a tiny-lm zoo whose build did not finish (interrupted, or still running); "
                   f"build it again with `evo-merge zoo build --kind tiny-lm --out {tmp_path / 'zz'}`, which "
                   "starts over")
    # a finished manifest without a key (written by hand, or by an older version) lists its models: read
    from evo_merge.zoo.manifest import ZooManifest, finished_zoo, write_zoo

    write_zoo(tmp_path / "zz", ZooManifest(kind="tiny-lm", models=["base", "arith"]))
    assert finished_zoo(tmp_path / "zz").models == ["base", "arith"]


def test_eval_names_a_device_that_is_not_one(family, tmp_path):
    one_line_error(*invoke("eval", "--model", family[0], "--task", "arith", "--device", "banana",
                           "--out", tmp_path / "e.csv"), "--device", "banana")


def test_a_file_given_for_a_run_folder_and_a_folder_for_a_yaml_file_are_named_as_such(tmp_path, family):
    """`resume campaign.yaml` said "not a campaign run folder (no campaign.yaml)", and `run RUN`,
    `plan RUN` or `merge MODEL_FOLDER` said "no such file" of a folder that is there."""
    config = campaign(tmp_path, family)
    for command in ("resume", "status", "report"):
        one_line_error(*invoke(command, config), f"{config}: a file, not a run folder")
    (tmp_path / "notes.txt").write_text("")
    for args in (("plan", tmp_path), ("run", tmp_path, "--out", tmp_path / "run"),
                 ("merge", tmp_path, "--out", tmp_path / "o")):
        one_line_error(*invoke(*args), f"{tmp_path}: a folder, not a YAML file (it holds campaign.yaml)")
    one_line_error(*invoke("plan", "/dev/null"), "/dev/null: not a regular file")  # was "no such file"


def test_export_of_a_mistyped_run_folder_creates_nothing(tmp_path):
    one_line_error(*invoke("export", tmp_path / "typo", "--pick", "1", "--out", tmp_path / "x"),
                   f"{tmp_path / 'typo'}: no such folder")  # not "not a campaign run folder", as if one were there
    assert not (tmp_path / "typo").exists()
    for command in ("resume", "status", "report"):
        one_line_error(*invoke(command, tmp_path / "typo"), f"{tmp_path / 'typo'}: no such folder")


def test_a_task_option_the_task_does_not_take_is_named(monkeypatch):
    """Read from the constructor's or the plugin factory's signature, before any task code runs."""
    import types

    takes = r"\(it takes: metric, batch_size, device, limit, fewshot_seed\)"
    with pytest.raises(UserError, match=r"task 'arith': no option 'bogus' " + takes):
        resolve_task("arith", bogus=1)
    ran = []

    def factory(reference=None):
        ran.append(reference)
        return _Plugin(0.5)

    monkeypatch.setitem(sys.modules, "user_plugin", types.SimpleNamespace(make=factory))
    with pytest.raises(UserError, match=r"task .user_plugin:make.: no option .refrence. \(it takes: reference\)"):
        resolve_task("user_plugin:make", refrence="x")
    with pytest.raises(UserError, match=r"no option 'batch_size' \(it takes: reference; a campaign passes "
                                        r"evaluator.batch_size to every task\)"):  # the user wrote neither
        resolve_task("user_plugin:make", batch_size=8)
    assert ran == []


def test_responses_build_refuses_tasks_that_would_share_a_name_or_an_item(tmp_path):
    """Keyed by file name, the second of two `tiny.yaml` tasks replaced the first; two tasks with the
    same item ids gave a matrix `irt fit` refuses. Both are found before any model is scored."""
    from evo_merge.tasks.registry import shipped_benchmarks

    copies = [shutil.copytree(shipped_benchmarks()["arith"], tmp_path / name) for name in ("a", "b", "c")]
    (copies[1] / "evo_arith.yaml").rename(copies[1] / "other.yaml")
    cases = {f"{copies[0]}/evo_arith.yaml,{copies[2]}/evo_arith.yaml": "two tasks named 'evo_arith'",
             f"{copies[0]}/evo_arith.yaml,{copies[1]}/other.yaml": "is in both 'evo_arith' and 'other'",
             "arith, arith": "two tasks named 'arith'"}  # spaces after commas are read as the irt options read them
    for tasks, expected in cases.items():
        code, out = invoke("responses", "build", "--zoo", tmp_path, "--tasks", tasks, "--out", tmp_path / "r.csv")
        one_line_error(code, out, "--tasks", expected)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda text: text.replace("doc_to_choice: choices", "doc_to_choice: [choices"),
     r"evo_arith.yaml:\d+:\d+: malformed YAML: did not find expected ',' or '\]'"),  # where, as a campaign's errors say
    (lambda text: text.replace("doc_to_choice: choices\n", ""), "a multiple_choice task needs doc_to_choice"),
    (lambda text: text.replace("output_type: multiple_choice", "output_type: bogus"), "lm-eval cannot build it"),
    # lm-eval raises a TypeError without a message here: the error names its type (`errors.first_line`)
    (lambda text: text.replace("doc_to_target: answer\n", ""), r"lm-eval cannot build it \(TypeError\)"),
])
def test_a_broken_task_yaml_is_one_user_error(tmp_path, edit, expected):
    from evo_merge.tasks.registry import shipped_benchmarks

    folder = shutil.copytree(shipped_benchmarks()["arith"], tmp_path / "t")
    path = folder / "evo_arith.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=expected):
        resolve_task(str(path))


def test_an_items_file_with_an_id_twice_or_not_utf8_or_a_folder_is_named(tmp_path):
    from evo_merge.tasks.scoring import read_item_ids

    with pytest.raises(UserError, match="is a folder; give the file of item ids"):  # was "not found"
        read_item_ids(tmp_path)
    with pytest.raises(UserError, match="/dev/null is not a regular file"):  # there: was "not found" too
        read_item_ids("/dev/null")
    with pytest.raises(UserError, match="missing.txt not found"):
        read_item_ids(tmp_path / "missing.txt")

    (tmp_path / "twice.txt").write_text("item\na\nb\na\n")
    with pytest.raises(UserError, match="item 'a' is listed twice"):
        read_item_ids(tmp_path / "twice.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x81")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        read_item_ids(tmp_path / "binary.txt")


class _Plugin:
    """A plugin task as a user may write one: it answers whatever it is asked, NaN included."""

    name = "plug"
    item_ids = ["a", "b"]
    scenarios = None

    def __init__(self, score):
        self.score = score

    def evaluate(self, model, tokenizer=None, item_ids=None):
        import pandas as pd

        ids = list(item_ids or self.item_ids)
        return pd.Series([self.score] * len(ids), index=ids)


def test_a_plugin_tasks_scores_are_checked_like_the_built_in_ones():
    from evo_merge.tasks.scoring import score_table

    assert list(score_table(_Plugin(0.5), None, None, "m", ["b"]).item) == ["b"]
    with pytest.raises(UserError, match="item 'zzz' is not in task 'plug'"):
        score_table(_Plugin(0.5), None, None, "m", ["a", "zzz"])
    with pytest.raises(UserError, match="scores must lie in"):
        score_table(_Plugin(float("nan")), None, None, "m")


def test_a_scored_table_reports_its_start_before_any_item_is_scored():
    """`evo-merge eval` showed nothing while it scored (at 7B, minutes) and then "80/80 in 0:00:00":
    its stage heard of the items only once the first call of up to 512 had returned. It is told
    (0, n) before the task is asked anything, then after each call."""
    from evo_merge.tasks.scoring import score_table

    events = []

    class Slow(_Plugin):
        def evaluate(self, model, tokenizer=None, item_ids=None):
            events.append(("asked", len(item_ids or self.item_ids)))
            return super().evaluate(model, tokenizer, item_ids)

    score_table(Slow(0.5), None, None, "m", None, lambda done, total: events.append(("told", done, total)))
    assert events == [("told", 0, 2), ("asked", 2), ("told", 2, 2)]
    events.clear()
    score_table(Slow(0.5), None, None, "m", ["b"], lambda done, total: events.append(("told", done, total)))
    assert events == [("told", 0, 1), ("asked", 1), ("told", 1, 1)]


def test_errors_about_a_config_name_its_file_once(tmp_path):
    """`naming_file` puts the config's path before a key-only message, and leaves a message that
    already starts with a path alone (a run folder's, the config's own)."""
    from evo_merge.errors import naming_file

    config, run = tmp_path / "c.yaml", tmp_path / "run"
    run.mkdir()
    cases = {"models.1: no folder x": f"{config}: models.1: no folder x",
             f"{run}: holds a different campaign": f"{run}: holds a different campaign",
             f"{config}: tasks.0: unknown": f"{config}: tasks.0: unknown",
             # a YAML error names the file with its line and column: it was named twice
             f"{config}:2:1: malformed YAML: x": f"{config}:2:1: malformed YAML: x",
             "unknown task 'x'": f"{config}: unknown task 'x'",
             # text before its first ": " that no file could be named by: checking it raised ENAMETOOLONG,
             # and the user saw that instead of the error (audit 140)
             f"unknown task '{'x' * 300}': not found": f"{config}: unknown task '{'x' * 300}': not found",
             "a\0b: c": f"{config}: a\0b: c"}
    for raised, shown in cases.items():
        with pytest.raises(UserError) as caught, naming_file(config):
            raise UserError(raised)
        assert str(caught.value) == shown


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, family):
    """PyYAML keeps the last of two equal keys: a `methods:` pasted above the template's own was
    ignored without a word. Merge keys (`<<: *defaults`) may still be overridden."""
    from evo_merge.schema import load_yaml

    path = campaign(tmp_path, family)
    path.write_text("methods: {ties: {density: [0.1, 0.5]}}\n" + path.read_text())
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("methods:") and i > 1)
    one_line_error(*invoke("plan", path),
                   f"campaign.yaml:{line}:1: malformed YAML: key 'methods' given twice (first on line 1)")
    merged = tmp_path / "merged.yaml"
    merged.write_text("a: &defaults {b: 1, c: 2}\nd: {<<: *defaults, b: 3}\n")
    assert load_yaml(merged) == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}


def test_a_value_yaml_cannot_build_is_one_line_naming_the_file(tmp_path, family):
    """PyYAML raises ValueError for a 5000-digit integer (Python's conversion limit) or a 13th month's
    date: `plan`, `status` and `resume` printed a traceback (audit 95)."""
    path = campaign(tmp_path, family)
    path.write_text(path.read_text().replace("population: 4", "population: " + "9" * 5000))
    code, output = invoke("plan", path)
    one_line_error(code, output, f"{path}: a value it holds cannot be read: Exceeds the limit (4300 digits)")
    assert "set_int_max_str_digits" not in output  # Python's advice, not the user's
    path.write_text(path.read_text().replace("9" * 5000, "4") + "started: 2026-13-01\n")
    one_line_error(*invoke("plan", path), f"{path}: a value it holds cannot be read: month must be in 1..12")


def test_numbers_in_exponent_form_are_numbers_as_in_mergekit(tmp_path, family):
    """PyYAML reads `1e-5` (no dot) as a string, mergekit's schema as a number: a mergekit recipe with
    `tol: 1e-5` was refused with "expected a number, got '1e-5'". A quoted one stays a string."""
    from evo_merge.schema import load_yaml

    path = tmp_path / "numbers.yaml"
    path.write_text("a: 1e-5\nb: -2E+3\nc: 1.0e-8\nd: '1e-5'\ne: 7\nf: 1e\n")
    assert load_yaml(path) == {"a": 1e-5, "b": -2000.0, "c": 1e-8, "d": "1e-5", "e": 7, "f": "1e"}
    base, fts = family
    recipe = tmp_path / "karcher.yaml"
    recipe.write_text(f"merge_method: karcher\nmodels: [{{model: {fts[0]}}}, {{model: {fts[1]}}}]\n"
                      "parameters: {tol: 1e-5, max_iter: 10}\n")
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["merge", "plan"])
def test_a_yaml_alias_bomb_or_a_deep_nesting_is_one_line_at_once(tmp_path, command):
    """672 bytes of aliases expand to 10⁹ values, which validation walked (minutes and gigabytes
    before it named an unknown key); 5,000 nested lists were a RecursionError traceback."""
    lines = ["a0: &a0 [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmerge_method: linear\nparameters: {weight: *a8}\nextra: 1\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("merge_method: linear\nparameters: {weight: " + "[" * 5000 + "1" + "]" * 5000 + "}\n")
    args = {"merge": ["--out", str(tmp_path / "out")], "plan": []}[command]
    one_line_error(*invoke(command, bomb, *args), f"{bomb}: holds more than 1,000,000 values")
    one_line_error(*invoke(command, deep, *args), f"{deep}: nested too deeply")


def test_a_recipe_given_for_a_campaign_and_a_campaign_for_a_recipe_are_named_with_their_command(tmp_path, family):
    """`plan recipe.yaml` said `merge_method: unknown key (did you mean 'methods'?)`: a new key to
    look up, where the file was of the other kind."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(family[1][0])}]}))
    for command in ("plan", "run"):
        args = [command, recipe] + (["--out", tmp_path / "run"] if command == "run" else [])
        one_line_error(*invoke(*args), f"{recipe}: a merge recipe, not a campaign file (it has `merge_method`), "
                                       "which `evo-merge merge RECIPE --out DIR` takes")
    path = campaign(tmp_path, family)
    one_line_error(*invoke("merge", path, "--out", tmp_path / "m"),
                   f"{path}: a campaign file, not a merge recipe (it has `tasks`), which `evo-merge plan / run "
                   "CAMPAIGN.yaml` takes")
    assert not (tmp_path / "run").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize(("option", "value"), [("--max-tasks", "0"), ("--layer", "-1"), ("--threshold", "1.5")])
def test_mass_build_names_the_option_of_a_value_out_of_range(tmp_path, option, value):
    """`--max-tasks 0` was "MASS routing settings: max_tasks: ...", `--layer -1` "layer -1 is out of
    range", said after the models were read; now refused as the option's value, before (the folders
    here do not exist: they would be named first otherwise)."""
    code, out = invoke("mass", "build", "--base", tmp_path / "base", "--models", tmp_path / "a", tmp_path / "b",
                       "--out", tmp_path / "o", option, value)
    one_line_error(code, out, f"error: {option} {value}: ")


def test_a_missing_irt_models_folder_names_the_shipped_one(tmp_path, family):
    """`estimator: {irt_model: irt_models}`, as the docs write it, is a checkout's folder: run
    elsewhere (a wheel install) it was only "no such folder"; the installed copy's path is said."""
    from evo_merge.shipped import shipped_dir

    shipped = shipped_dir("irt_models")
    assert shipped is not None and (shipped / "arith" / "model.json").is_file()
    path = campaign(tmp_path, family, estimator={"irt_model": "irt_models"})
    one_line_error(*invoke("plan", path), f"estimator.irt_model: {tmp_path / 'irt_models'}: no such folder; the IRT "
                   f"models shipped with evo-merge are in {shipped}")
    path = campaign(tmp_path, family, estimator={"irt_model": "elsewhere"})  # another name: no guess
    code, output = invoke("plan", path)
    one_line_error(code, output, "no such folder")
    assert "shipped" not in output


@pytest.mark.parametrize("section, missing, expected", [
    ({"evaluator": {"kind": "dask", "n_workers": 1}}, "distributed",
     "evaluator: kind dask needs dask.distributed, which is not installed: pip install 'evo-merge[distributed]'"),
    ({"tracking": {"mlflow": {}}}, "mlflow",
     "tracking.mlflow: the mlflow package is not installed (pip install 'evo-merge[tracking]')"),
    ({"tracking": {"wandb": {"project": "p", "mode": "offline"}}}, "wandb",
     "tracking.wandb: the wandb package is not installed (pip install 'evo-merge[tracking]')"),
])
def test_plan_refuses_a_campaign_whose_extra_is_missing_as_run_does(tmp_path, family, monkeypatch, section,
                                                                     missing, expected):
    """`plan` said `fits` (exit 0) for a campaign `run` then refused at once: the same line now."""
    monkeypatch.setitem(sys.modules, missing, None)  # importing it raises ImportError
    path = campaign(tmp_path, family, **section)
    one_line_error(*invoke("plan", path), expected)
    one_line_error(*invoke("run", path, "--out", tmp_path / "run"), expected)
    assert not (tmp_path / "run").exists()


def test_a_recipe_s_unknown_method_is_named_by_its_key(tmp_path, family):
    """A campaign says `methods: tie: unknown merge method ...`; a recipe said the same without its key."""
    base, fts = family
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump({"merge_method": "tie", "base_model": str(base),
                                      "models": [{"model": str(f)} for f in fts]}))
    one_line_error(*invoke("merge", recipe, "--out", tmp_path / "out"),
                   f"error: {recipe}: merge_method: unknown merge method 'tie' (did you mean 'ties'?)")
    assert not (tmp_path / "out").exists()
