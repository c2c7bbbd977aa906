"""On a terminal the bars show the stages: StageLines (the lines for a log) stays silent there and
starts no watcher thread; a console whose file is closed is no terminal (no exception)."""

import threading
from io import StringIO

import pytest
from rich.console import Console

from evo_merge.cli.progress import StageLines, live


class Tty(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    log = Tty()
    console = Console(file=log)
    assert live(console)
    return console, log


def test_a_console_whose_file_is_closed_is_not_live():
    """A closed file's isatty() raises ValueError (a stderr closed under the run): no bars, no error."""
    log = StringIO()
    console = Console(file=log)
    log.close()
    assert live(console) is False


def test_stage_lines_say_nothing_on_a_terminal(terminal):
    console, log = terminal
    lines = StageLines(console, every=0.0)
    lines("calibration", 1, 2)
    lines("calibration", 2, 2)
    lines("search", 3, 3)
    assert log.getvalue() == ""


def test_watching_on_a_terminal_starts_no_thread_and_says_nothing(terminal):
    console, log = terminal
    lines = StageLines(console, every=0.0, quiet=0.0)
    before = {t.ident for t in threading.enumerate()}
    with lines.watching() as watched:
        assert watched is lines
        assert {t.ident for t in threading.enumerate()} == before
        lines("calibration", 1, 2)
        lines.check()
    assert log.getvalue() == ""
