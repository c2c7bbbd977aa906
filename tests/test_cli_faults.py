"""Which exceptions the CLI prints as one line (and with which exit code), and which stay bugs."""

import errno
import sqlite3

from evo_merge.cli.faults import as_fault
from evo_merge.errors import UserError


def test_user_and_machine_faults_are_one_line_and_bugs_are_not():
    cases = {
        UserError("campaign.yaml: tasks.0.name: bad"): (2, "campaign.yaml: tasks.0.name: bad"),
        PermissionError(errno.EACCES, "Permission denied", "/ro/run"): (2, "/ro/run: Permission denied"),
        OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"): (2, "/a -> /b: Invalid cross-device link"),
        KeyboardInterrupt(): (130, "interrupted"),
        sqlite3.OperationalError("database or disk is full"): (2, "campaign database: database or disk is full"),
    }
    for exc, (code, message) in cases.items():
        fault = as_fault(exc)
        assert (fault.exit_code, fault.message) == (code, message), exc
    for bug in (ValueError("x"), KeyError("k"), sqlite3.OperationalError("near 'SELEC': syntax error"),
                BrokenPipeError(errno.EPIPE, "Broken pipe"), OSError("no errno")):
        assert as_fault(bug) is None, bug
