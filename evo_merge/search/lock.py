"""One process at a time in a run folder: an OS file lock held while `run` or `resume` works.

Two processes writing one run folder would race on the same evaluations and both export and
report. The lock is `flock` on a file inside the folder: the kernel releases it when the holder
exits in any way (kill -9 included), so a lock left by a dead process is simply taken over,
without guessing from pids or timestamps. The holder's pid is written into the file only to
name it in the refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from evo_merge.errors import UserError

if TYPE_CHECKING:
    from typing_extensions import Self

LOCK_FILE = ".evo-merge.lock"


class RunLock:
    """`with RunLock(run_dir):` holds the run folder (created if missing) or raises UserError
    "run folder X is in use by pid N" at once, without waiting."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a run folder someone sent could point it at any file of the user's
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            what = "a link" if exc.errno == errno.ELOOP else exc.strerror
            raise UserError(f"{self.path}: cannot be the run folder's lock ({what}); remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"{self.path}: not a regular file, so not the run folder's lock; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"run folder {self.run_dir} is in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:  # the file stays: removing it would let a waiter lock a stale inode
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
