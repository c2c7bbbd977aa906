"""Every path a command takes has `~` expanded, as the shell leaves it in `--out=~/x`."""

import click
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.cli.paths import UserPath


def _commands(group: click.Group, ctx: click.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, parent=ctx, info_name=name))
        else:
            yield name, command


def test_every_path_parameter_expands_home():
    """Some writers expanded `~` and others did not: `run --out '~/r'` put its database in a folder
    named `~` under the working directory and its exported models in the home folder."""
    ctx = click.Context(cli, info_name="evo-merge")
    paths = [(name, p.name, type(p.type)) for name, command in _commands(cli, ctx) for p in command.params
             if isinstance(p.type, click.Path)]
    assert len(paths) > 30
    assert [p for p in paths if p[2] is not UserPath] == []


def test_a_tilde_path_is_the_home_folder_s(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["merge", "~/recipe.yaml", "--out", "~/merged"])
    assert result.exit_code == 2 and f"{tmp_path / 'recipe.yaml'}: no such file" in result.output, result.output


def test_task_and_spec_paths_expand_home_too(tmp_path, monkeypatch):
    """Task strings and `align --arch SPEC.yaml` are not path options: `eval --task '~/b/evo_seq.yaml'`
    said "task file ~/b/evo_seq.yaml not found"."""
    import shutil

    import pytest

    from evo_merge.errors import UserError
    from evo_merge.schema import load_yaml
    from evo_merge.tasks.registry import BENCHMARKS_DIR, resolve_task

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(BENCHMARKS_DIR / "seq", tmp_path / "b")
    assert resolve_task("~/b/evo_seq.yaml").item_ids[0].startswith("seq-")
    (tmp_path / "spec.yaml").write_text("params: {w: [h, null]}\n")
    assert load_yaml("~/spec.yaml") == {"params": {"w": ["h", None]}}
    with pytest.raises(UserError, match=f"{tmp_path}/nowhere.yaml: no such file"):
        load_yaml("~/nowhere.yaml")


def test_a_home_of_a_user_this_machine_does_not_know_is_left_as_written(tmp_path, monkeypatch):
    """pathlib's `expanduser` raises RuntimeError for `~nosuchuser/...`: a campaign naming such a path
    as a model, a task or itself ended in a traceback, exit 1 (audit 140). The shell leaves it as
    written, and so does evo-merge: the key's own "not found" names it."""
    import re
    from pathlib import Path

    import yaml

    from evo_merge.zoo.tiny import save_tiny_family

    base, tuned = save_tiny_family(tmp_path / "family", "llama", n_finetunes=2)
    monkeypatch.chdir(tmp_path)
    who = "~nosuchuser-evo-merge"
    campaign = {"base_model": str(base), "models": [f"{who}/a", f"{who}/b"], "tasks": [{"task": "arith"}]}
    Path("models.yaml").write_text(yaml.safe_dump(campaign))
    Path("task.yaml").write_text(yaml.safe_dump({**campaign, "models": [str(m) for m in tuned],
                                                 "tasks": [{"task": f"{who}/t.yaml"}]}))
    for args, expected in ((["plan", "models.yaml"], f"models.0: model path '{tmp_path}/{who}/a' does not exist"),
                           (["plan", "task.yaml"], f"tasks.0: task file {tmp_path}/{who}/t.yaml not found"),
                           (["plan", f"{who}/c.yaml"], f"{who}/c.yaml: no such file"),
                           (["eval", "--task", f"{who}/t.yaml", "--model", base, "--out", "e"],
                            f"task file {who}/t.yaml not found")):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output
    # the package reads every `~` through one helper (pathlib's raises)
    package = Path(__file__).parents[1] / "evo_merge"
    assert [p.name for p in package.rglob("*.py") if re.search(r"(?<!os\.path)\.expanduser\(", p.read_text())] == []
