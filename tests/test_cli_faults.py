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


def test_a_write_that_fails_part_way_names_where_it_was_writing():
    """A write() that fails (a full disk) carries no file name; `writing` gives it the path, and
    leaves alone a fault that names its own file, or is no OS fault."""
    import pytest

    from evo_merge.files import writing

    with pytest.raises(OSError) as caught, writing("/runs/r/report.md"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert as_fault(caught.value).message == "/runs/r/report.md: No space left on device"
    with pytest.raises(OSError) as caught, writing("/runs/r"):
        raise PermissionError(errno.EACCES, "Permission denied", "/runs/r/x")
    assert caught.value.filename == "/runs/r/x"
    with pytest.raises(ValueError), writing("/runs/r"):
        raise ValueError("not an OS fault")


def test_a_file_written_whole_is_on_disk_with_its_name_before_the_write_returns(tmp_path, monkeypatch):
    """`atomic_write` synced the file's bytes but not the folder's new entry: after a power loss a
    file the command had said it wrote could be missing (audit 140). The folder is synced once the
    name is in place, for a replaced file and a new one alike."""
    import os

    from evo_merge import files

    synced = []

    def fsync(descriptor):
        synced.append(sorted(os.listdir(f"/proc/self/fd/{descriptor}")) if os.path.isdir(
            f"/proc/self/fd/{descriptor}") else "a file")

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.atomic_write(tmp_path / "report.md", "old")
    files.atomic_write(tmp_path / "report.md", "new")
    files.atomic_write(tmp_path / "new.csv", "a,b\n", replace=False)
    assert synced == ["a file", ["report.md"], "a file", ["report.md"], "a file", ["new.csv", "report.md"]]
    assert (tmp_path / "report.md").read_text() == "new"
