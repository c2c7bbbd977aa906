"""The agreement task, except that it SIGKILLs its own dask worker process the first time it
scores anchor items (a search-phase job), once per flag file: a worker dying mid-generation."""

from __future__ import annotations

import os
import signal

from agreement_task import AgreementTask


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


class DyingAgreementTask(AgreementTask):
    def __init__(self, reference: str, kill_flag: str, **settings):
        super().__init__(reference, **settings)
        self.kill_flag = kill_flag

    def evaluate(self, model, tokenizer=None, item_ids=None):
        if item_ids is not None and _in_dask_worker():
            try:
                fd = os.open(self.kill_flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate(model, tokenizer, item_ids)


def preload() -> None:
    """What a worker imports before its first job (a test warms its cluster with it)."""
    import evo_merge.search.distributed  # noqa: F401
