"""Evaluate candidates on a dask.distributed cluster (`evaluator: {kind: dask, ...}`).

Each worker process holds one `LocalEvaluator`: the base, the endpoints and the tasks are loaded
on the worker's first job and kept, keyed by a fingerprint of what to load (`WorkerSpec`), so a
job ships only a candidate and its item ids and builds the model in place. Jobs are spread over
the workers; results come back to the driver, which alone writes the campaign store.

The progress of a job (its tensors merged, its items scored) is sent by the worker as dask events
on a topic of the call's own, at most every `RELAY_EVERY_S` seconds per part, and told to the
caller's `job_progress` on the driver's own thread, for one job at a time (once the job followed
has finished, the next running job to report), as in one process: several workers' jobs would
otherwise share one bar.

A worker that dies mid-evaluation: the scheduler re-runs its jobs on the other workers (the
nanny restarts the dead one, which reloads on its next job). A job whose workers died
`distributed.scheduler.allowed-failures` times comes back as `KilledWorker`; it is submitted once
more, then recorded as a failed candidate (a merge that crashes every worker that builds it).

dask is an optional extra: nothing here imports it until a cluster is needed, and without it a
dask config is a `UserError` naming the extra to install.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo_merge.config import Campaign
from evo_merge.errors import UserError, described, first_line
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import ITEMS, CandidateFailed, Items, Job, JobProgress, Result, task_settings
from evo_merge.search.local import LocalEvaluator

INSTALL = "pip install 'evo-merge[distributed]'"
WORKER_WAIT_S = 60  # how long a campaign waits for a worker to join a running scheduler
RELAY_EVERY_S = 0.5  # a worker sends a part's progress at most this often (and its start and end)
POLL_S = 0.1  # the driver's wait between looks for finished jobs and progress (dask's own wait is 0.1 s)
RESUBMITS = 1  # times a candidate whose workers died (`KilledWorker`) is submitted again before it fails
TaskSpecs = tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...]  # (label, task string, settings)


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UserError(f"evaluator: kind dask needs dask.distributed, which is not installed: {INSTALL}") from None
    return distributed


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads once: small, picklable, shipped with each job."""

    base: str
    models: tuple[str, ...]
    tasks: TaskSpecs
    device: str
    dtype: str
    # (dtype, placement, disk_dir): each worker keeps its own copy (`disk`: its own files there)
    storage: tuple[str, str, str | None] = ("auto", "device", None)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def build(self) -> LocalEvaluator:
        from evo_merge.merge.storage import Storage
        from evo_merge.tasks.registry import resolve_task

        tasks = {label: resolve_task(task, **dict(settings)) for label, task, settings in self.tasks}
        return LocalEvaluator.open(self.base, self.models, tasks, device=self.device, dtype=self.dtype,
                                   storage=Storage.parse(*self.storage))


# ---------------------------------------------------------------- worker side
_EVALUATORS: dict[str, LocalEvaluator] = {}
_LOCK = threading.Lock()  # one resident model per process: jobs on a multi-threaded worker take turns


def _worker_evaluator(spec: WorkerSpec) -> tuple[LocalEvaluator, float]:
    """This process's evaluator for `spec` (built on first use) and the seconds spent building it."""
    evaluator = _EVALUATORS.get(spec.fingerprint)
    if evaluator is not None:
        return evaluator, 0.0
    _EVALUATORS.clear()  # another campaign's models: free them first
    start = time.perf_counter()
    evaluator = _EVALUATORS[spec.fingerprint] = spec.build()
    return evaluator, time.perf_counter() - start


class _Relay:
    """A worker's `JobProgress` for job `index`: dask events on `topic`, each part's start and end
    and at most one every `RELAY_EVERY_S` seconds between (a 7B merge writes hundreds of tensors)."""

    def __init__(self, topic: str, index: int):
        from distributed import get_worker

        self.topic, self.index = topic, index
        self.send = get_worker().log_event  # made in the job, on its worker; called once per tensor
        self.sent: dict[str, float] = {}  # part -> when its last event went

    def __call__(self, done: int, total: int, part: str = ITEMS) -> None:
        now = time.monotonic()
        if done == 0 or done >= total or now - self.sent.get(part, -RELAY_EVERY_S) >= RELAY_EVERY_S:
            self.sent[part] = now
            self.send(self.topic, (self.index, done, total, part))


def _evaluate_job(spec: WorkerSpec, candidate: Candidate, items: Items,
                  relay: tuple[str, int] | None = None) -> tuple[Any, float]:
    with _LOCK:
        evaluator, _ = _worker_evaluator(spec)
        progress = None if relay is None else _Relay(*relay)
        _, outcome, seconds = next(evaluator.evaluate_many([(candidate, items)], progress))
    return outcome, seconds


def _load(spec: WorkerSpec) -> float:
    with _LOCK:
        return _worker_evaluator(spec)[1]


def _device_type(device: str) -> str:
    """Run on each worker: the type of the device its workbench is built on."""
    from evo_merge.weights.devices import resolve_device

    return resolve_device(device).type


def _worker_version() -> str:
    """Run on each worker before any job: it answers only where evo-merge can be imported."""
    from evo_merge import __version__

    return __version__


# ---------------------------------------------------------------- driver side
def cluster_gpus(device: str) -> list[int]:
    """GPUs the local cluster's workers are pinned to, one each (empty: CPU workers)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return []  # an explicit cuda without a GPU fails in the workers' resolve_device, with its message
    if device.startswith("cuda:"):
        return [int(device.split(":")[1])]
    return list(range(torch.cuda.device_count()))


def visible_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry that shows a worker the GPU this process calls cuda:`gpu`.
    A worker's variable names the machine's GPUs, not this process's: under
    CUDA_VISIBLE_DEVICES=2,3 this process's cuda:0 is the machine's GPU 2 (or a UUID), and a
    worker given 0 would run on a GPU this process was kept off."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [entry.strip() for entry in visible.split(",")] if visible is not None else []
    return entries[gpu] if gpu < len(entries) else str(gpu)


@contextmanager
def _ctrl_c_left_here() -> Iterator[None]:
    """Ctrl-C reaches every process of the terminal's group: each worker printed its KeyboardInterrupt
    traceback (60-80 lines before the run's own one line), though this process stops the workers as
    it closes. A process started while SIGINT is ignored keeps ignoring it (Python installs its
    handler only over the default), so the workers are started so; this process's handler is put
    back at once. (Only the main thread may set a handler: elsewhere the workers hear Ctrl-C.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_local_cluster(n_workers: int, gpus: Sequence[int] = ()) -> Any:
    """A cluster of worker processes on this machine, one thread each. With GPUs, at most one
    worker per GPU, each seeing only its own device (CUDA_VISIBLE_DEVICES, and a `GPU` resource)."""
    import dask

    distributed = import_distributed()
    # no memory limit: a worker holding the models must not be paused or restarted for its size
    worker = {"memory_limit": 0, "silence_logs": logging.ERROR}
    scheduler = {"host": "127.0.0.1", "dashboard": False, "dashboard_address": "127.0.0.1:0"}
    # dask's default MALLOC_TRIM_THRESHOLD_ (64 KiB) hands freed memory back to the OS at once: with
    # torch allocating activations batch after batch it made evaluation ~40% slower here
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), _ctrl_c_left_here():
        if not gpus:
            return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, **worker,
                                            dashboard_address=None, scheduler_kwargs=scheduler)
        workers = {i: {"cls": distributed.Nanny,
                       "options": {**worker, "nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": visible_device(gpu)},
                                   "resources": {"GPU": 1}}}
                   for i, gpu in enumerate(list(gpus)[:n_workers])}
        return distributed.SpecCluster(workers=workers, scheduler={"cls": distributed.Scheduler, "options": scheduler},
                                       silence_logs=logging.ERROR)


def _check_workers(client: Any, address: str) -> None:
    """A running scheduler has a worker that can run evo-merge, or the campaign stops here: jobs
    sent to a scheduler without one, or to workers that cannot unpickle them, would wait forever."""
    from evo_merge import __version__

    where = f"evaluator.address: the dask scheduler at {address}"
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise UserError(f"{where} has no worker (waited {WORKER_WAIT_S} s); start one where evo-merge is "
                        f"installed: dask worker {address}") from None
    try:
        versions = client.run(_worker_version)
    except Exception as exc:  # what a worker raised while unpickling or running the probe
        raise UserError(f"{where}: a worker cannot run evo-merge ({described(exc)}); "
                        "install it, and the campaign's task and method plugins, where the workers run") from None
    other = {worker: version for worker, version in versions.items() if version != __version__}
    if other:
        worker, version = next(iter(other.items()))
        raise UserError(f"{where}: worker {worker} runs evo-merge {version}, this process {__version__}")


class DaskEvaluator:
    """The `Evaluator` interface over a dask cluster, yielding results in completion order.

    The cluster (or the connection to `address`) starts on the first evaluation and stops at
    `close()`. Nothing here is ever pickled into the algorithm checkpoint."""

    def __init__(self, spec: WorkerSpec, *, address: str | None = None, n_workers: int | None = None,
                 gpus: Sequence[int] = ()):
        self._distributed = import_distributed()  # the missing-extra message comes before any work
        if (address is None) == (n_workers is None):
            raise UserError("evaluator: kind dask needs either `address` or `n_workers`")
        self.spec, self.address, self.n_workers, self.gpus = spec, address, n_workers, list(gpus)
        self._client: Any = None
        self._cluster: Any = None

    @classmethod
    def from_campaign(cls, campaign: Campaign, base: Path, models: Sequence[Path]) -> DaskEvaluator:
        spec = campaign.evaluator
        gpus = cluster_gpus(campaign.device) if spec.n_workers is not None else []
        tasks = tuple((t.label, t.task, tuple(sorted(task_settings(spec.batch_size, t.options).items())))
                      for t in campaign.tasks)
        worker = WorkerSpec(str(base), tuple(str(m) for m in models), tasks,
                            "cuda" if gpus else campaign.device, campaign.dtype,
                            (campaign.storage.dtype, campaign.storage.placement, campaign.storage.disk_dir))
        return cls(worker, address=spec.address, n_workers=spec.n_workers, gpus=gpus)

    @property
    def client(self) -> Any:
        if self._client is None:
            distributed = self._distributed
            if self.address is not None:
                try:
                    client = distributed.Client(self.address, timeout=30)
                except (OSError, ValueError) as exc:  # unreachable; an address dask cannot parse
                    where = f"evaluator.address: no dask scheduler reachable at {self.address}"
                    raise UserError(f"{where} ({first_line(exc)})") from None
                try:
                    _check_workers(client, self.address)
                except BaseException:
                    client.close()
                    raise
                self._client = client
            else:
                self._cluster = start_local_cluster(self.n_workers, self.gpus)
                try:
                    self._client = distributed.Client(self._cluster)
                except BaseException:
                    self._cluster.close()
                    self._cluster = None
                    raise
        return self._client

    def workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def warm_up(self) -> dict[str, float]:
        """Load the models on every worker now (in parallel): worker address -> seconds spent loading."""
        client = self.client
        client.wait_for_workers(self.n_workers or 1)
        workers = self.workers()
        futures = [client.submit(_load, self.spec, workers=[w], allow_other_workers=False, pure=False) for w in workers]
        return dict(zip(workers, client.gather(futures)))

    def evaluate_many(self, jobs: Sequence[Job], job_progress: JobProgress | None = None) -> Iterator[Result]:
        """Jobs run on the workers, several at once, yielded as they finish; `job_progress` follows
        one running job at a time (see the module's docstring), on this thread."""
        distributed, client = self._distributed, self.client
        spec = self.spec  # a few hundred bytes: sent with each job (scattered data dies with its workers)
        index: dict[str, int] = {}
        live: dict[str, Any] = {}
        deaths = [0] * len(jobs)
        topic = None if job_progress is None else f"evo-merge-progress-{uuid.uuid4().hex}"
        events: queue.SimpleQueue = queue.SimpleQueue()
        followed: int | None = None  # the job whose progress is told

        def submit(i: int) -> Any:
            candidate, items = jobs[i]
            relay = None if topic is None else (topic, i)
            future = client.submit(_evaluate_job, spec, candidate, dict(items), relay, pure=False)
            index[future.key], live[future.key] = i, future
            return future

        def tell() -> None:  # the events received since: in order, a finished job's late ones dropped
            nonlocal followed
            running = set(index.values())
            while True:
                try:
                    i, done, total, part = events.get_nowait()
                except queue.Empty:
                    return
                if i not in running:
                    continue
                if followed not in running:
                    followed = i
                if i == followed:
                    job_progress(done, total, part)

        if topic is not None:
            client.subscribe_topic(topic, lambda event: events.put(event[1]))  # called on dask's thread
        pending = distributed.as_completed([submit(i) for i in range(len(jobs))])
        try:
            while not pending.is_empty():
                if topic is not None:
                    tell()
                finished = pending.next_batch(block=topic is None)
                if not finished:
                    time.sleep(POLL_S)
                for future in finished:
                    i = index.pop(future.key)
                    live.pop(future.key)
                    try:
                        outcome, seconds = future.result()
                    except distributed.KilledWorker:
                        deaths[i] += 1
                        if deaths[i] <= RESUBMITS:
                            pending.add(submit(i))
                            continue
                        outcome, seconds = CandidateFailed(
                            "the dask workers evaluating it kept dying (out of memory or a crash in native code)"), 0.0
                    yield i, outcome, seconds
        finally:
            if topic is not None:
                client.unsubscribe_topic(topic)
            if live:  # the caller stopped early (an error, an interrupt): drop the rest
                client.cancel(list(live.values()))

    def workbench(self) -> None:
        """The models live in the workers: the driver holds none (export builds what it needs)."""
        return None

    def device_types(self) -> list[str]:
        """What the workers connected now build candidates on: each resolves the campaign's device
        itself (`auto` is cuda on a worker with a GPU, whatever the driver has)."""
        self.client.wait_for_workers(self.n_workers or 1)
        return sorted(set(self.client.run(_device_type, self.spec.device).values()))

    def __getstate__(self) -> dict:
        raise TypeError("a DaskEvaluator holds a cluster connection and cannot be pickled")

    def close(self) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def __enter__(self) -> DaskEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
