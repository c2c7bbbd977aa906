"""A disk that refuses a write, for a child process: files may not grow past a limit, and a write
past it fails with EFBIG (instead of killing the process), as a full disk fails one with ENOSPC."""

import resource
import signal
from collections.abc import Callable


def file_size_limit(limit: int) -> Callable[[], None]:
    """A `preexec_fn` for subprocess: the child's files stop at `limit` bytes."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limited
