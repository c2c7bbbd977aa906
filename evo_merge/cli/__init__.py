"""The `evo-merge` command. Only parses arguments and delegates to the library.

Subcommands live in sibling modules and are imported on first use, so `evo-merge --help`
stays fast and one command's heavy imports (torch, lm-eval, py-irt) never slow another.
"""

from __future__ import annotations

import difflib
import importlib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import click

from evo_merge import __version__
from evo_merge.cli.faults import Fault, as_fault, exit_cleanly_on_sigterm

# command name -> "module:attribute" under evo_merge.cli
COMMANDS: dict[str, str] = {
    "merge": "merge:merge",
    "demo": "demo:demo",
    "init": "demo:init",
    "run": "campaign:run",
    "resume": "campaign:resume",
    "status": "campaign:status",
    "report": "campaign:report",
    "export": "campaign:export",
    "responses": "responses:responses",
    "irt": "irt:irt",
    "align": "align:align",
    "eval": "eval:eval_",
    "zoo": "zoo:zoo",
    "mass": "mass:mass",
    "plan": "plan:plan",
    "push": "push:push",
}


# `evo-merge irt` alone shows the group's help, as click does (click 8.2 raises it as a usage error;
# earlier versions exit with the help printed, and have no such class)
_HELP_SHOWN = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextmanager
def _usage_in_one_line() -> Iterator[None]:
    """What click itself refuses (an option's value, a missing argument, a mistyped command) as one
    `error:` line naming the help, as the commands' own checks say theirs: click's three lines
    (`Usage:`, `Try ...`, `Error: ...`) stood beside them."""
    try:
        yield
    except _HELP_SHOWN:
        raise
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        raise Fault(exc.format_message().rstrip(".") + where) from None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"evo_merge.cli.{module}"), attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """A mistyped command is named with the one it resembles: click draws its guesses from the
        commands it has loaded, and this group loads none before one is chosen."""
        name = args[0] if args else ""
        close = difflib.get_close_matches(name, COMMANDS, n=1) if name not in COMMANDS else []
        if close and not name.startswith("-"):
            ctx.fail(f"No such command {name!r}. Did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _usage_in_one_line():  # `evo-merge --bogus`: the top level's own options, parsed before any command
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            with _usage_in_one_line():  # a command's option or argument click itself refused
                return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as exc:  # re-raised unless it has a one-line form
            fault = as_fault(exc)
            if fault is None:
                raise
            if ctx.params.get("debug"):  # the traceback too, and the exit code a script expects
                traceback.print_exc()
            raise fault from None


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="evo-merge")
@click.option("--debug", is_flag=True, help="Show the traceback of every error.")
def cli(debug: bool) -> None:
    """Evolutionary model-merge search with IRT-estimated fitness."""
    from evo_merge.cli.logs import print_log_lines

    print_log_lines()


def main() -> None:
    exit_cleanly_on_sigterm()
    cli(prog_name="evo-merge")
