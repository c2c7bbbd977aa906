"""One process at a time in a run folder: an OS file lock held while `run` or `resume` works.

Two processes writing one run folder would race on the same evaluations and both export and
report. The lock is `flock` on the folder itself: the kernel releases it when the holder exits in
any way (kill -9 included), so a lock left by a dead process is simply taken over, without
guessing from pids or timestamps. It was on a file inside the folder, which a user could delete
while a run held it, and a second run then locked a new file and wrote beside the first. The
holder's pid is written into that file (`LOCK_FILE`) to name it in the refusal, and the file is
locked too: versions before the folder lock lock only the file, so a campaign such a version is
still running when evo-merge is upgraded keeps the folder to itself.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from evo_merge.errors import UserError

if TYPE_CHECKING:
    from typing_extensions import Self

LOCK_FILE = ".evo-merge.lock"
LOCK_TRIES, LOCK_WAIT_S = 5, 0.05  # a lock held longer than 0.2 s is another run's


class RunLock:
    """`with RunLock(run_dir):` holds the run folder (created if missing) or raises UserError
    "run folder X is in use by pid N" within 0.2 s, without waiting for the other run."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fds: list[int] = []  # the folder's and the lock file's, locked while held

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        opened = [os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            self._take(opened)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        self._fds = opened
        return self

    def _take(self, opened: list[int]) -> None:
        """Lock the folder (`opened[0]`), then open, lock and write the pid file (appended to `opened`)."""
        if not _locked(opened[0], self.run_dir):
            pid = _pid(self.run_dir)
            who = f"pid {pid}" if pid != "unknown" else f"another process (its pid unknown: no {LOCK_FILE} names it)"
            raise UserError(f"run folder {self.run_dir} is in use by {who}")
        try:  # never through a link: a run folder someone sent could point it at any file of the user's
            opened.append(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # nothing to remove: the folder is not writable
                raise UserError(f"run folder {self.run_dir}: cannot be written ({exc.strerror}); a command that "
                                "records in it needs a writable folder (copy it elsewhere)") from None
            what = "a link" if exc.errno == errno.ELOOP else exc.strerror
            raise UserError(f"{self.path}: cannot be the run folder's lock ({what}); remove it") from None
        fd = opened[1]
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{self.path}: not a regular file, so not the run folder's lock; remove it")
        if not _locked(fd, self.path):  # an older evo-merge's run, which locks the file alone
            raise UserError(f"run folder {self.run_dir} is in use by pid {_pid(self.run_dir)} (an evo-merge from "
                            "before this version's folder lock)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the only descriptor releases its flock
        self._fds = []


def _locked(fd: int, where: Path) -> bool:
    """Whether this process took `fd`'s lock, trying for 0.2 s: `holder` (status) takes it shared
    for an instant. A file system without locks (some network mounts) is said, not a traceback."""
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < LOCK_TRIES - 1:
                time.sleep(LOCK_WAIT_S)
        except OSError as exc:
            raise UserError(f"{where}: cannot be locked ({exc.strerror}): a run folder needs a file system that "
                            "locks files, so that two runs never write it at once (put it on a local disk)") from None
    return False


def holder(run_dir: str | Path) -> str | None:
    """The pid of the `run` or `resume` working in `run_dir` now, or None when none is (a process
    that died released the lock). Looks without taking the lock for longer than the look, and
    without creating anything: `status` reads a folder another process may be writing."""
    try:
        folder = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:  # non-blocking: a crafted folder's FIFO would hold `status` on the open
        file: int | None = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none (or a link, which no run writes): the folder's lock alone
        file = None
    if file is not None and not stat.S_ISREG(os.fstat(file).st_mode):
        os.close(file)
        file = None
    try:
        for fd in (folder, file):  # the file: locked alone by a run of an older evo-merge
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _pid(Path(run_dir))
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(folder)
        if file is not None:
            os.close(file)


def _pid(run_dir: Path) -> str:
    """The pid the lock's holder wrote into `LOCK_FILE` (`unknown` in the instant before it does,
    or where the file was removed or is not one a run writes)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "unknown"
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)
