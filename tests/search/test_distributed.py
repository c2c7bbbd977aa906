"""Distributed evaluation: a 2-worker LocalCluster stores what the local evaluator stores, a worker
killed mid-generation loses and duplicates nothing, and a dask config without dask says what to install."""

import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evo_merge.cli import cli
from evo_merge.config import Campaign, validate
from evo_merge.errors import UserError
from evo_merge.zoo.tiny import save_tiny_family

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return save_tiny_family(root, "llama", n_finetunes=2, noise=0.08)


def campaign(folder: Path, zoo, *, evaluator=None, task="agreement_task:AgreementTask", device="cpu",
             **options) -> Path:
    """`device: cpu` unless told: on a GPU machine `auto` is CUDA, where the runs compared below
    are recorded as evaluated on the CPU."""
    base, fts = zoo
    config = {
        "name": "dist",
        "device": device,
        "base_model": str(base),
        "models": [str(f) for f in fts],
        "tasks": [{"task": task, "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i, **options}}
                  for i, f in enumerate(fts)],
        "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}, "tsv": {}},
        "estimator": {"kind": "gpirt", "anchors": 5, "warmup_merges": 4, "dims": 1},
        "algorithm": {"population": 8, "generations": 3, "seed": 5},
        "final": {"evaluate_top": 3},
        "evaluator": evaluator or {"kind": "local"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_campaign(config: Path, run: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output + repr(result.exception)


def stored(run: Path) -> dict:
    """key -> (phase, status, items evaluated, {task: {item: score}}): everything but ids and timings."""
    db = sqlite3.connect(run / "state.sqlite")
    out = {key: (phase, status, n, {}) for key, phase, status, n in
           db.execute("SELECT key, phase, status, items_evaluated FROM evaluations")}
    for key, task, item, score in db.execute(
            "SELECT e.key, s.task, s.item, s.score FROM item_scores s JOIN evaluations e ON e.id = s.evaluation_id"):
        out[key][3].setdefault(task, {})[item] = score
    return out


def front(run: Path) -> list:
    db = sqlite3.connect(run / "state.sqlite")
    return sorted(db.execute("SELECT key, measured FROM evaluations WHERE measured IS NOT NULL AND phase='search'"))


def exported(run: Path) -> dict:
    return {folder.name: {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
            for folder in sorted((run / "models").iterdir())}


def children() -> set:
    return {p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())}


def assert_no_new_processes(before: set) -> None:
    _, alive = psutil.wait_procs(list(children() - before), timeout=15)
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker LocalCluster for the campaign tests, reached through `evaluator.address`.
    Its workers import torch and evo_merge (the slow part, on 2 cores) while the local reference
    campaign runs; nothing of it may outlive the module."""
    distributed = pytest.importorskip("distributed")
    from dying_task import preload

    from evo_merge.search.distributed import start_local_cluster

    before, handler = children(), signal.getsignal(signal.SIGINT)
    local_cluster = start_local_cluster(2)
    with distributed.Client(local_cluster) as client:
        client.wait_for_workers(2)
        # Ctrl-C is this process's to handle (it stops the workers): each worker printed a KeyboardInterrupt
        # traceback (audit 125); the workers ignore SIGINT, this process's handler is put back
        assert set(client.run(lambda: int(signal.getsignal(signal.SIGINT))).values()) == {int(signal.SIG_IGN)}
        assert signal.getsignal(signal.SIGINT) is handler
        warming = [client.submit(preload, workers=[w], pure=False) for w in client.scheduler_info()["workers"]]
        yield local_cluster.scheduler_address
        del warming
    local_cluster.close()
    assert_no_new_processes(before)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, zoo, cluster):  # after `cluster`: its workers warm up meanwhile
    folder = tmp_path_factory.mktemp("local")
    run_campaign(campaign(folder, zoo), folder / "run")
    return folder / "run"


def test_two_worker_cluster_stores_the_local_evaluations_and_front(tmp_path, zoo, local_run, cluster):
    run = tmp_path / "run"
    run_campaign(campaign(tmp_path, zoo, evaluator={"kind": "dask", "address": cluster}), run)

    local, dask = stored(local_run), stored(run)
    assert sum(1 for v in local.values() if v[0] == "search") >= 12
    assert dask == local  # same keys, statuses and per-item scores
    assert front(run) == front(local_run) and front(run)
    a, b = exported(run), exported(local_run)
    assert a.keys() == b.keys() and all(torch.equal(a[m][t], b[m][t]) for m in a for t in a[m])
    assert not (run / "checkpoint.pkl").exists()
    # where the workers built the candidates, asked of them (a dask run recorded none: an export on
    # another device type than its GPU workers' drew other DARE drops without a word)
    from evo_merge.search.store import EVALUATED_ON_META, CampaignStore

    store = CampaignStore(run)
    assert store.get_meta(EVALUATED_ON_META) == ["cpu"]
    store.close()


def test_a_worker_killed_mid_generation_loses_and_duplicates_nothing(tmp_path, zoo, local_run, cluster):
    flag = tmp_path / "killed.pid"
    run = tmp_path / "run"
    config = campaign(tmp_path, zoo, evaluator={"kind": "dask", "address": cluster},
                      task="dying_task:DyingAgreementTask", kill_flag=str(flag))
    run_campaign(config, run)

    assert flag.is_file() and int(flag.read_text()) != os.getpid()  # a worker process did die
    db = sqlite3.connect(run / "state.sqlite")
    assert db.execute("SELECT COUNT(*) FROM evaluations WHERE status != 'ok'").fetchone()[0] == 0
    assert stored(run) == stored(local_run)  # every evaluation there once, with the local scores
    assert front(run) == front(local_run)


def test_n_workers_starts_a_local_cluster_and_close_stops_it(tmp_path, zoo, monkeypatch):
    """The `n_workers` path (the campaign runs above reach their cluster by address): the
    evaluator starts its cluster on first use and leaves no process behind; without a GPU the
    workers are plain CPU workers, and with GPUs each is pinned to one device (checked without
    a GPU: the layout, not CUDA)."""
    pytest.importorskip("distributed")
    from distributed import Client

    from evo_merge.search.distributed import DaskEvaluator, start_local_cluster
    from evo_merge.search.workspace import Workspace

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the CPU layout, on any machine
    before = children()
    spec = Campaign.load(campaign(tmp_path, zoo, evaluator={"kind": "dask", "n_workers": 2}, device="auto"))
    workspace = Workspace.open(spec, tmp_path, tmp_path / "run")
    evaluator = DaskEvaluator.from_campaign(spec, workspace.base, workspace.models)
    try:
        assert evaluator.spec.device == "auto" and not evaluator.gpus
        evaluator.client.wait_for_workers(2)
        assert len(evaluator.workers()) == 2
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(evaluator)
    finally:
        evaluator.close()
    assert_no_new_processes(before)

    with start_local_cluster(3, gpus=[0, 1]) as gpu_cluster, Client(gpu_cluster) as client:
        client.wait_for_workers(2)
        seen = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert sorted(seen.values()) == ["0", "1"]
    assert resources == [{"GPU": 1}, {"GPU": 1}]
    assert_no_new_processes(before)


def test_without_dask_a_dask_config_says_what_to_install(tmp_path, zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    config = campaign(tmp_path, zoo, evaluator={"kind": "dask", "n_workers": 2})
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "pip install 'evo-merge[distributed]'" in result.output and "Traceback" not in result.output

    # and nothing imports dask before a dask evaluator is asked for
    code = ("import sys, evo_merge.cli.campaign, evo_merge.search.campaign, evo_merge.search.distributed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize("evaluator, device, message", [
    ({"kind": "dask"}, "auto", "or `n_workers` (start a local cluster)"),
    ({"kind": "dask", "n_workers": 2, "address": "tcp://127.0.0.1:8786"}, "auto", "not both"),
    ({"kind": "dask", "n_workers": 0}, "auto", "evaluator.n_workers"),
    ({"kind": "local", "n_workers": 2}, "auto", "n_workers: only for kind: dask"),
    ({"kind": "dask", "workers": 2}, "auto", "evaluator.workers: unknown key"),
    ({"kind": "ray"}, "auto", "evaluator.kind"),
    ({"kind": "dask", "address": "http://127.0.0.1:8786"}, "auto", "is not a dask scheduler address"),
    ({"kind": "local"}, "gpu", "device: expected auto, cpu, cuda or cuda:N"),
])
def test_evaluator_and_device_settings_are_validated(tmp_path, zoo, evaluator, device, message):
    config = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    config.update(evaluator=evaluator, device=device)
    with pytest.raises(UserError, match=re.escape(message)):
        validate(Campaign, config, "campaign.yaml")


def test_a_scheduler_without_a_worker_that_can_run_evo_merge_is_refused_in_one_line(tmp_path, zoo, monkeypatch):
    """Jobs sent to such a scheduler would wait forever: no worker, or one that cannot import
    evo_merge (it cannot unpickle a job)."""
    distributed = pytest.importorskip("distributed")
    import evo_merge.search.distributed as dist

    monkeypatch.setattr(dist, "WORKER_WAIT_S", 2)
    before = children()
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as scheduler:
        config = campaign(tmp_path, zoo, evaluator={"kind": "dask", "address": scheduler.scheduler_address})
        result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and "has no worker (waited 2 s)" in result.output, result.output
        assert not (tmp_path / "run").exists()

        broken = tmp_path / "site" / "evo_merge"
        broken.mkdir(parents=True)
        (broken / "__init__.py").write_text("raise ImportError('evo_merge is not installed here')\n")
        env = {**os.environ, "PYTHONPATH": str(broken.parent)}
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", scheduler.scheduler_address,
                                   "--nthreads", "1", "--no-nanny"], env=env, cwd=tmp_path,  # not the checkout
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(scheduler.scheduler_address) as client:
                client.wait_for_workers(1, timeout=60)
            result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert result.exit_code == 2 and "a worker cannot run evo-merge" in result.output, result.output
    error = result.output.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("error: evaluator.address:") and "evo_merge is not installed here" in error
    assert_no_new_processes(before)


def test_workers_running_another_evo_merge_version_are_refused(cluster, monkeypatch):
    """A cluster's workers run the evo-merge installed where they run: another version might
    merge or score differently from the run so far."""
    import evo_merge
    from evo_merge.search.distributed import DaskEvaluator, WorkerSpec

    monkeypatch.setattr(evo_merge, "__version__", "0.0.0-driver")  # the workers are other processes
    evaluator = DaskEvaluator(WorkerSpec("b", (), (), "cpu", "float32"), address=cluster)
    with pytest.raises(UserError, match=r"runs evo-merge .*, this process 0\.0\.0-driver"):
        _ = evaluator.client  # connecting runs the worker check
    assert evaluator._client is None  # the connection was closed, not kept


def test_gpu_workers_are_pinned_to_the_gpus_this_process_sees(monkeypatch):
    """cluster_gpus counts GPUs as this process sees them; under CUDA_VISIBLE_DEVICES=2,3 its
    cuda:0 and cuda:1 are the machine's GPUs 2 and 3, and the workers' variable must name those
    (0 and 1 would put them on GPUs this process was kept off). Checked without a GPU: the layout."""
    from types import SimpleNamespace

    from evo_merge.search import distributed

    started = {}
    fake = SimpleNamespace(Nanny=object, Scheduler=object,
                           SpecCluster=lambda workers, **_: started.update(workers) or "cluster")
    monkeypatch.setattr(distributed, "import_distributed", lambda: fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-5f3c")
    assert distributed.start_local_cluster(2, gpus=[0, 1]) == "cluster"
    assert [w["options"]["env"]["CUDA_VISIBLE_DEVICES"] for w in started.values()] == ["2", "GPU-5f3c"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    distributed.start_local_cluster(1, gpus=[1])
    assert started[0]["options"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_cluster_tells_each_jobs_merge_and_items_on_this_thread(tmp_path, zoo, cluster):
    """A 7B job spends minutes merging and scoring on a worker: its progress comes back as it goes,
    told on the driver's thread (the bars are not thread-safe), one job at a time, every part from
    its start, and nothing of a job already yielded."""
    from evo_merge.search.candidate import standard_merges
    from evo_merge.search.distributed import DaskEvaluator
    from evo_merge.search.evaluator import ITEMS, MERGING
    from evo_merge.search.workspace import Workspace

    spec = Campaign.load(campaign(tmp_path, zoo, evaluator={"kind": "dask", "address": cluster}, delay=0.3))
    workspace = Workspace.open(spec, tmp_path, tmp_path / "run")
    told, yielded = [], set()
    jobs = [(c, {"agree0": None, "agree1": None}) for c in list(standard_merges(2).values())[:3]]

    def progress(done, total, part=ITEMS):
        told.append((threading.current_thread() is threading.main_thread(), done, total, part, frozenset(yielded)))

    with DaskEvaluator.from_campaign(spec, workspace.base, workspace.models) as evaluator:
        for index, outcome, _ in evaluator.evaluate_many(jobs, progress):
            assert isinstance(outcome, dict), outcome
            yielded.add(index)
    assert told and all(on_main for on_main, *_ in told)
    parts = {part: [(done, total) for _, done, total, p, _ in told if p == part] for part in (MERGING, ITEMS)}
    assert parts[MERGING] and parts[ITEMS]
    assert {total for _, total in parts[ITEMS]} == {240}  # 120 items of each task
    assert all(0 <= done <= total for part in parts.values() for done, total in part)
    assert told[0][1:4] == (0, 240, ITEMS)  # the first job followed from its start
    # one job at a time: a part's count goes back only when the next job is followed, which is
    # after a job was yielded (a finished job's late events are dropped)
    for before, after in zip(told, told[1:]):
        if after[3] == before[3] and after[1] < before[1]:
            assert after[4] > before[4], (before, after)


def test_a_worker_relays_each_parts_start_and_end_and_at_most_two_events_a_second_between(monkeypatch):
    """A 7B merge writes hundreds of tensors: each would be an event through the scheduler."""
    distributed = pytest.importorskip("distributed")
    from evo_merge.search import distributed as relays
    from evo_merge.search.evaluator import ITEMS, MERGING

    sent, now = [], [0.0]

    class Worker:  # where the events go: recorded, on a clock of the test's own
        def log_event(self, topic, message):
            sent.append((topic, now[0], *message))

    monkeypatch.setattr(distributed, "get_worker", Worker)
    monkeypatch.setattr(relays.time, "monotonic", lambda: now[0])
    relay = relays._Relay("topic", 7)
    relay(0, 240)  # the job starts
    for done, at in [(1, 0.0), (2, 0.1), (3, 0.4), (4, 0.6), (5, 0.7), (6, 1.2), (9, 1.3)]:
        now[0] = at
        relay(done, 9, MERGING)
    relay(120, 240)  # another part's clock: sent, though a merging event just went
    relay(240, 240)  # an end always goes
    assert [(t, done, part) for _, t, _, done, _, part in sent] == [
        (0.0, 0, ITEMS), (0.0, 1, MERGING), (0.6, 4, MERGING), (1.2, 6, MERGING), (1.3, 9, MERGING),
        (1.3, 120, ITEMS), (1.3, 240, ITEMS)]
    assert {(topic, index) for topic, _, index, *_ in sent} == {("topic", 7)}
