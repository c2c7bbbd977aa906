"""Where a new user learns the commands: a mistyped one is named with the one it resembles, and in
`evo-merge COMMAND --help` every option of every command says what it means (a review found
`demo --out`, `export --out/--overwrite` and a dozen others printed with their type alone)."""

import click

from evo_merge.cli import cli


def _commands(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, ctx, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_option_of_every_command_has_a_help_text():
    ctx = click.Context(cli)
    silent = [f"{name} {option.opts[0]}" for name, command in _commands(cli, ctx)
              for option in command.params if isinstance(option, click.Option) and not option.help]
    assert silent == []


def test_a_mistyped_command_is_named_with_the_one_it_resembles():
    """Commands load on first use, so click had none to guess from: `evo-merge statsu` said only
    "No such command"."""
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["statsu", "runs/c1"])
    assert result.exit_code == 2 and "No such command 'statsu'. Did you mean 'status'?" in result.output
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2 and "No such command 'frobnicate' (see" in result.output
    assert "Did you" not in result.output


def test_the_command_list_loads_no_fitting_code():
    """`evo-merge --help` loads every command for its one-line help: `irt` imported torch and
    scikit-learn with its module, 3.4 s before any help was printed (the module docstring of
    evo_merge.cli promises a fast --help)."""
    import subprocess
    import sys

    code = ("import sys\nfrom evo_merge.cli import cli\ntry:\n    cli(['--help'], standalone_mode=False)\n"
            "finally:\n    print('heavy:', sorted(m for m in ('torch', 'sklearn', 'lm_eval', 'transformers') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout and "irt" in done.stdout, done.stdout


def test_the_campaign_runner_loads_scikit_learn_only_to_cluster_or_pool():
    """scikit-learn (a second of imports) serves k-means anchors (30+ calibration subjects) and
    the final phase's pooled estimates alone: `plan`, `export --pick` of a measured pick and a
    finished run's `resume` imported it for nothing (audit 146: 5.1 s -> 3.8 s for such an export)."""
    import subprocess
    import sys

    code = ("import sys\nimport evo_merge.search.campaign, evo_merge.cli.campaign, evo_merge.irt.anchors\n"
            "print('heavy:', sorted(m for m in ('sklearn',) if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout, done.stdout


def test_the_report_loads_no_scoring_code():
    """`report` imported the export path, and with it the scorer and scikit-learn (1.8 s), for one
    note on how the search kept its candidates (`search.kinds.rounded_storage_note`)."""
    import subprocess
    import sys

    code = ("import sys\nimport evo_merge.report.campaign\n"
            "print('heavy:', sorted(m for m in ('sklearn', 'evo_merge.search.scoring', 'evo_merge.search.export') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout, done.stdout
