"""SIGTERM and SIGHUP end a command through its cleanup (cli.faults), but a SIGHUP ignored already
(`nohup evo-merge run ...`) stays ignored: closing the terminal must not stop a run started so."""

import signal
import subprocess
import sys

import pytest

from evo_merge.cli.faults import Terminated, _terminate, exit_cleanly_on_sigterm


@pytest.fixture
def handlers():
    """The process's own handlers, put back after the test."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in kept.items():
        signal.signal(s, handler)


def test_an_ignored_sighup_stays_ignored(handlers):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    exit_cleanly_on_sigterm()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is _terminate
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's SIGHUP, not ignored: cleaned up like SIGTERM
    exit_cleanly_on_sigterm()
    assert signal.getsignal(signal.SIGHUP) is _terminate


def test_a_caught_signal_ignores_its_own_repeat_while_the_cleanup_runs(handlers):
    """A second SIGHUP (or SIGTERM) must not cut short the cleanup the first started; the other
    signal keeps its handler."""
    exit_cleanly_on_sigterm()
    with pytest.raises(Terminated) as hup:
        _terminate(signal.SIGHUP, None)
    assert hup.value.signum == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is _terminate
    exit_cleanly_on_sigterm()
    with pytest.raises(Terminated) as term:
        _terminate(signal.SIGTERM, None)
    assert term.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


NOHUP_CHILD = """
import os, signal
from evo_merge.cli.faults import Terminated, exit_cleanly_on_sigterm
exit_cleanly_on_sigterm()
os.kill(os.getpid(), signal.SIGHUP)  # the terminal closed: ignored under nohup
print("still running", flush=True)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()
except Terminated as exc:
    raise SystemExit(128 + exc.signum)
"""


def test_a_process_started_under_nohup_outlives_its_terminal_and_still_ends_on_sigterm():
    proc = subprocess.run([sys.executable, "-c", NOHUP_CHILD], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert proc.stdout.splitlines() == ["still running"], proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
