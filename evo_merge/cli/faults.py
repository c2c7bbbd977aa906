"""How a command ends on a fault a user can cause or meet: one line on stderr and an exit code.

Mistakes in input (`UserError`) and faults of the machine (a read-only folder, a full disk, a
path under a file) are exit 2 with the file named; Ctrl-C is 130, SIGTERM 143 and SIGHUP (the
terminal of a run started without nohup closed) 129, as shells expect, after `finally` blocks
have cleaned up. Everything else is a bug and keeps its
traceback, as does every fault under `evo-merge --debug`.
"""

from __future__ import annotations

import errno
import signal
import sqlite3
from types import FrameType

import click

from evo_merge.errors import UserError

# SQLite's words for faults of the machine, not of the code
_SQLITE_FAULTS = ("database or disk is full", "readonly database", "disk I/O error", "unable to open database file")


class Fault(click.ClickException):
    """A fault reported as `error: MESSAGE` on one line, without usage text or traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class Interrupted(Fault):
    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's preemption, `kill`) or SIGHUP (a closed terminal), raised where
    Ctrl-C raises KeyboardInterrupt: the same cleanup, the same line saying how to go on, and the
    exit code of the signal (128 + its number)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


class TerminatedFault(Interrupted):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def stopped(exc: KeyboardInterrupt, rest: str = "") -> Interrupted:
    """The line a command stopped by Ctrl-C, SIGTERM or SIGHUP ends with: "interrupted" or
    "terminated", then `rest` (when it was stopped, how to go on)."""
    if isinstance(exc, Terminated):
        return TerminatedFault("terminated" + rest, exc.signum)
    return Interrupted("interrupted" + rest)


def as_fault(exc: BaseException) -> Fault | None:
    """The one-line form of `exc`, or None when it is a bug (it keeps its traceback)."""
    if isinstance(exc, UserError):
        return Fault(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return stopped(exc)
    if isinstance(exc, OSError) and exc.errno not in (None, errno.EPIPE):  # click handles a closed pipe
        where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        return Fault(f"{where}: {exc.strerror}" if where else exc.strerror or str(exc))
    if isinstance(exc, sqlite3.OperationalError) and any(words in str(exc) for words in _SQLITE_FAULTS):
        hint = " (a full disk, a file-size limit such as `ulimit -f`, or a failing disk)" if "I/O" in str(exc) else ""
        return Fault(f"campaign database: {exc}{hint}")
    return None


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated(signum)  # unwinds: temporary folders are removed, the run lock released


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM and SIGHUP into an exception, so the cleanup a kill would skip still runs. A
    SIGHUP ignored already (`nohup`) stays ignored."""
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminate)
