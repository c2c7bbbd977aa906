"""Run folders across processes: the lock, a checked database, no pickle, no clobbering, clean faults."""

import gc
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from test_campaign import EVO_MERGE, all_keys, campaign, env, front_keys, zoo  # noqa: F401  (zoo: a fixture)

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.search.front import candidates
from evo_merge.search.lock import LOCK_FILE, RunLock, holder
from evo_merge.search.store import CampaignStore

HOLD_LOCK = "import sys, time\nfrom evo_merge.search.lock import RunLock\nwith RunLock(sys.argv[1]):\n" \
            "    print('held', flush=True)\n    time.sleep(120)\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, zoo):  # noqa: F811
    """A finished run (3 generations) and its campaign file; tests work on copies."""
    root = tmp_path_factory.mktemp("finished")
    config = campaign(root, zoo)
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    gc.collect()  # the command's own connection: closed, so the log is folded into state.sqlite
    with closing(sqlite3.connect(root / "run" / "state.sqlite")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return root / "run", config


@pytest.fixture
def copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    return run


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code, output, *expected):
    assert code == 2, output
    assert output.startswith("error: ") and len(output.strip().splitlines()) == 1, output
    assert all(text in output for text in expected), output


def slow_campaign(tmp_path, zoo):  # noqa: F811
    return campaign(tmp_path, zoo, tasks=[
        {"task": "agreement_task:AgreementTask", "name": f"agree{i}",
         "options": {"reference": str(f), "name": f"agree{i}", "seed": i, "delay": 0.05}}
        for i, f in enumerate(zoo[1])])


def start_and_wait(config, run, generation):
    """`evo-merge run` in a subprocess, returned once an evaluation of `generation` is stored."""
    # as from a terminal: a shell's background job (CI under `&`) passes SIGINT on ignored, and
    # Python then never turns Ctrl-C into KeyboardInterrupt; a suite run under `nohup` passes SIGHUP
    # on ignored, which the run then keeps ignoring, as a run started with nohup should
    def as_from_a_terminal():
        for signum in (signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)

    proc = subprocess.Popen([*EVO_MERGE, "run", str(config), "--out", str(run)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:  # closed at once: a reader left open would keep the killed writer's log index alive
            with closing(sqlite3.connect(run / "state.sqlite")) as db:
                if db.execute("SELECT COUNT(*) FROM evaluations WHERE generation IS ?", (generation,)).fetchone()[0]:
                    return proc
        except sqlite3.OperationalError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no evaluation stored in time")


# ---------------------------------------------------------------- the lock

def test_a_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, zoo):  # noqa: F811
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"run folder {run} is in use by pid {process.pid}$"):
            RunLock(run).__enter__()
        code, out = invoke("run", campaign(tmp_path, zoo), "--out", run)
        one_line_error(code, out, f"is in use by pid {process.pid}")
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert holder(run) is None  # `status` sees the dead holder's lock released
    with RunLock(run):  # the kernel released the dead holder's lock: taken over at once
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with RunLock(run):  # and released again on exit
        pass


# how evo-merge locked a run folder before the folder lock: flock on the file alone, its pid written in
HOLD_FILE_LOCK = ("import fcntl, os, sys, time\nos.makedirs(sys.argv[1], exist_ok=True)\n"
                  "fd = os.open(os.path.join(sys.argv[1], '.evo-merge.lock'), os.O_RDWR | os.O_CREAT, 0o644)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.write(fd, f'{os.getpid()}\\n'.encode())\n"
                  "print('held', flush=True)\ntime.sleep(120)\n")


def test_a_run_of_an_older_version_still_working_in_the_folder_is_seen_and_kept_alone(tmp_path):
    """Upgraded with a campaign in flight: the older version's run locks the file alone, and a
    `resume` of this version went on beside it (`status` saying "not running"), both writing."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD_FILE_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        assert holder(run) == str(process.pid)
        with pytest.raises(UserError, match=re.escape(f"run folder {run} is in use by pid {process.pid} (an "
                                                      "evo-merge from before this version's folder lock)")):
            RunLock(run).__enter__()
        assert (run / LOCK_FILE).read_text() == f"{process.pid}\n"  # its pid left as it wrote it
    finally:
        process.kill()
        process.wait()
    assert holder(run) is None
    with RunLock(run):  # this version's lock, held: an older version's run is refused in turn
        older = subprocess.run([sys.executable, "-c", HOLD_FILE_LOCK, str(run)], capture_output=True, text=True)
        assert older.returncode != 0 and "BlockingIOError" in older.stderr


def test_a_file_system_without_locks_is_said_and_leaves_nothing_open(tmp_path, monkeypatch):
    """On some network mounts flock fails with ENOLCK (not "held"): that was a traceback."""
    import errno

    import evo_merge.search.lock as lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'run'}: cannot be locked (No locks available): a "
                                                  "run folder needs a file system that locks files")):
        RunLock(tmp_path / "run").__enter__()
    assert len(os.listdir("/proc/self/fd")) == before  # the folder's descriptor closed


def test_a_lock_file_deleted_while_a_run_holds_the_folder_lets_no_second_run_in(tmp_path):
    """`rm RUN/.evo-merge.lock` during a `resume`: a second `resume` locked a new file and both wrote
    the folder to the end, `status` saying "finished" meanwhile. The lock is the folder's own."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        (run / LOCK_FILE).unlink()
        with pytest.raises(UserError, match=f"run folder {run} is in use by another process \\(its pid unknown: no "
                                            f"{LOCK_FILE} names it\\)$"):
            RunLock(run).__enter__()
        assert holder(run) == "unknown"
    finally:
        process.kill()
        process.wait()
    with RunLock(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("target", ["victim.txt", "missing.txt"])
def test_the_lock_never_opens_a_link_planted_as_its_file(tmp_path, target):
    """A run folder someone sent may hold `.evo-merge.lock` as a link to any file of the user's:
    the lock itself (not only the commands' checks of the folder before it) refuses it, and the
    file it points at is neither truncated to a pid nor created."""
    run, victim = tmp_path / "run", tmp_path / target
    run.mkdir()
    if target == "victim.txt":
        victim.write_text("precious\n")
    (run / LOCK_FILE).symlink_to(victim)
    with pytest.raises(UserError, match=re.escape(f"{run / LOCK_FILE}: cannot be the run folder's lock (a link); "
                                                  "remove it")):
        RunLock(run).__enter__()
    assert victim.read_text() == "precious\n" if target == "victim.txt" else not victim.exists()
    assert holder(run) is None  # the folder's lock was given back


def test_a_read_only_run_folder_is_said_to_be_one(tmp_path, monkeypatch):
    """On a read-only mount the lock file cannot be made: "cannot be the run folder's lock
    (Read-only file system); remove it" asked for what cannot be done. (The tests run as root,
    whom permissions do not stop: the file system's refusal is given by the open call.)"""
    import errno

    import evo_merge.search.lock as lock

    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(UserError, match=f"run folder {run}: cannot be written \\(Read-only file system\\); a command "
                                        "that records in it needs a writable folder"):
        RunLock(run).__enter__()


def test_status_of_a_read_only_run_folder_says_it_is_one(copy, monkeypatch):
    """`status` and `report` said "cannot open the campaign database (unable to open database file)"
    on a read-only mount: read as a damaged or missing database. (Root is not stopped by
    permissions: the mount's refusal is given as SQLite and the access check meet it.)"""
    import evo_merge.search.store as store

    real_connect, real_access = store.sqlite3.connect, store.os.access

    def connect(path, *args, **kwargs):
        if str(path).startswith(str(copy)):
            raise store.sqlite3.OperationalError("unable to open database file")
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(store.sqlite3, "connect", connect)
    monkeypatch.setattr(store.os, "access", lambda path, mode: real_access(path, mode) and not (
        mode & os.W_OK and str(path) == str(copy)))
    for command in ("status", "report"):
        one_line_error(*invoke(command, copy), f"run folder {copy}: cannot be written (read-only); its database is "
                       "opened to read and record alike: copy the folder elsewhere to look at it")


def test_status_says_whether_a_run_is_working_in_the_folder(copy, tmp_path):
    """A user checking on a campaign learns whether it is still running, and which process, or
    stopped (interrupted, killed, died), and how to go on; looking creates no lock file."""
    assert holder(tmp_path / "nothing") is None and not (tmp_path / "nothing").exists()
    starting = tmp_path / "starting"
    with RunLock(starting):  # a run that has taken its folder and written nothing else yet
        said = {command: invoke(*args) for command, args in (
            ("status", ["status", starting]), ("resume", ["resume", starting]),
            ("export", ["export", starting, "--pick", 1, "--out", tmp_path / "pick"]))}
    for code, out in said.values():  # resume and export said the run had stopped, as if killed (audit 112)
        one_line_error(code, out, f"{starting}: a run is starting here (pid {os.getpid()}); it has not written its "
                                  "campaign yet")
    code, out = invoke("resume", starting)  # and once none is working there, that it stopped
    one_line_error(code, out, f"{starting}: a run stopped before it recorded its campaign")
    with RunLock(copy):  # a `resume` working in the folder, its search done
        assert holder(copy) == str(os.getpid())
        code, out = invoke("status", copy)
        assert code == 0 and f"generation 3/3 (running: pid {os.getpid()}; in the final phase)" in out, out
    code, out = invoke("status", copy)
    assert code == 0 and "generation 3/3 (finished)" in out, out
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:  # as a run killed before its end leaves it
        db.execute("DELETE FROM meta WHERE key = 'finished'")
        db.commit()
    code, out = invoke("status", copy)
    assert code == 0 and f"generation 3/3 (not running: `evo-merge resume {copy}` goes on)" in out, out
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:  # generation 3 under way, 1 and 2 took 100 s
        db.execute("DELETE FROM generations WHERE generation = 3")
        db.execute("UPDATE generations SET completed = 1e9 + 100 * generation")
        db.commit()
    with RunLock(copy):
        code, out = invoke("status", copy)
    assert code == 0 and (f"generation 2/3 (running: pid {os.getpid()}; about 0:01:40 left in the search "
                          "(0:01:40 a generation))") in out, out
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:  # calibration under way: 3 subjects to go
        measured, = db.execute("SELECT COUNT(*) FROM evaluations WHERE phase IN ('calibration', 'baseline')").fetchone()
        db.execute("DELETE FROM generations")
        db.execute("UPDATE meta SET value = ? WHERE key = 'calibration_subjects'", (str(measured + 3),))
        db.commit()
    with RunLock(copy):
        code, out = invoke("status", copy)
    assert code == 0 and (f"generation 0/3 (running: pid {os.getpid()}; calibrating: {measured} of {measured + 3} "
                          "subjects measured)") in out, out


def test_a_status_looking_at_the_lock_does_not_turn_a_starting_run_away(tmp_path):
    """`holder` takes the lock shared for an instant: a run starting in that instant waits it out."""
    import fcntl
    import threading

    run = tmp_path / "run"
    with RunLock(run):
        pass
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a look that lasts 50 ms, far longer than a real one
    threading.Timer(0.05, os.close, (fd,)).start()
    with RunLock(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_ctrl_c_before_the_first_evaluation_leaves_no_folder_for_the_corrected_campaign(tmp_path, zoo):  # noqa: F811
    """A start interrupted before anything was evaluated kept a folder bound to its campaign: the
    campaign corrected after the Ctrl-C was then `holds a different campaign` there."""
    config, run = campaign(tmp_path, zoo), tmp_path / "run"
    interrupted = yaml.safe_load(config.read_text())
    interrupted["tasks"][0]["task"] = "interrupted_task:InterruptedAgreementTask"
    config.write_text(yaml.safe_dump(interrupted))
    code, out = invoke("run", config, "--out", run)
    assert code == 130 and "interrupted before the first evaluation; nothing kept" in out, out
    assert not run.exists()
    config = campaign(tmp_path, zoo, algorithm={"population": 4, "generations": 1, "seed": 2})
    code, out = invoke("run", config, "--out", run)
    assert code == 0, out


def test_export_writes_the_model_folder_while_it_holds_the_run(copy, monkeypatch):
    """The file merge ran after the lock was released: a resume started meanwhile could change the
    store and workspace it was reading."""
    import os

    import evo_merge.search.campaign as search_campaign
    from evo_merge.search.lock import holder

    real, held = search_campaign.export_candidate, []

    def watched(*args, **kwargs):
        held.append(holder(copy))
        return real(*args, **kwargs)

    monkeypatch.setattr(search_campaign, "export_candidate", watched)  # as `export_evaluation` calls it
    merge = int(pd.read_csv(copy / "pareto.csv").id.iloc[0])  # (the base, evaluation 1, is an input: refused)
    code, output = invoke("export", copy, "--pick", merge, "--out", copy.parent / "x")
    assert code == 0, output
    assert held == [str(os.getpid())] and holder(copy) is None


def test_resume_of_a_run_in_use_is_refused(copy):
    with RunLock(copy):
        code, out = invoke("resume", copy)
    one_line_error(code, out, f"run folder {copy} is in use by pid {os.getpid()}")


# ---------------------------------------------------------------- one source of truth

def test_status_never_reports_finished_with_generations_missing_and_resume_restores_them(finished, copy):
    db = sqlite3.connect(copy / "state.sqlite")
    with db:  # the tail of the run lost, as with a truncated write-ahead log
        db.execute("DELETE FROM item_scores WHERE evaluation_id IN (SELECT id FROM evaluations WHERE generation = 3)")
        db.execute("DELETE FROM evaluations WHERE generation = 3")
    db.close()
    code, out = invoke("status", copy)
    assert code == 0 and "generation 2/3" in out and "finished" not in out, out
    assert "picks, measured" not in out  # those of the run's first end: the tail they came from is lost
    code, out = invoke("resume", copy)
    assert code == 0, out
    code, out = invoke("status", copy)
    assert code == 0 and "generation 3/3 (finished)" in out, out
    assert front_keys(copy) == front_keys(finished[0]) and all_keys(copy) == all_keys(finished[0])


def test_kill_9_then_truncated_wal_resumes_to_the_uninterrupted_run(finished, tmp_path, zoo):  # noqa: F811
    run = tmp_path / "killed"
    proc = start_and_wait(slow_campaign(tmp_path, zoo), run, generation=3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    wal = run / "state.sqlite-wal"
    assert wal.stat().st_size > 100_000  # the killed process left its commits in the log
    os.truncate(wal, wal.stat().st_size // 2)  # the second half lost: generation 2 with it
    code, out = invoke("status", run)
    assert code == 0 and "finished" not in out and "generation 3/3" not in out, out
    result = subprocess.run([*EVO_MERGE, "resume", str(run)], env=env(), capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert front_keys(run) == front_keys(finished[0]) and all_keys(run) == all_keys(finished[0])


def test_a_database_written_before_columns_were_added_resumes_to_the_same_run(finished, copy):
    """Run folders from earlier versions lack the estimates' standard errors and what each
    generation was told: opening one adds the columns, and its replay answers from the estimates."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db, db:
        db.execute("ALTER TABLE generations DROP COLUMN told")
        db.execute("ALTER TABLE evaluations DROP COLUMN estimate_se")
    code, out = invoke("resume", copy)
    assert code == 0, out
    assert front_keys(copy) == front_keys(finished[0]) and all_keys(copy) == all_keys(finished[0])
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        told = [row[0] for row in db.execute("SELECT told FROM generations ORDER BY generation")]
    assert len(told) == 3 and all(told)  # recorded again as the replay told them


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_database_is_one_line_naming_the_file_and_the_way_out(copy, damage):
    db = copy / "state.sqlite"
    if damage == "garbage":
        db.write_bytes(b"not a database " * 500)
    else:
        os.truncate(db, db.stat().st_size // 2)
    for command in ("status", "resume"):
        code, out = invoke(command, copy)
        one_line_error(code, out, f"{db}: corrupt campaign database", "new run folder")


def test_text_a_store_records_is_shown_as_text(copy):
    """A crafted store's endpoint name reached the terminal of whoever ran `status` as escape codes
    (retitling and recolouring it) and started lines of its own (audit 116); refused as damage, it
    made runs that recorded a tab or newline, or a float64 base's dtype, unreadable (audit 117).
    Control characters are shown as text; a tab stays; any dtype name torch gives reads."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        facts = json.loads(db.execute("SELECT value FROM meta WHERE key = 'facts'").fetchone()[0])
        facts |= {"name": "tab\tname\n", "endpoints": ["m\x1b]0;TITLE\x07\u202etxt", "x\n## Fake"],
                  "stored_dtype": "float64"}
        db.execute("UPDATE meta SET value = ? WHERE key = 'facts'", (json.dumps(facts),))
        # what else `status` prints from the store, here scenario names: every line is shown as text (audit 118)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchors', ?)",
                   (json.dumps({"agree0": {"odd\x1b[31m": 3, "even": 2}}),))
        db.commit()
    for command in ("status", "report"):
        code, out = invoke(command, copy)
        assert code == 0 and "\x1b" not in out and "\x07" not in out and "damaged" not in out, out
    status = invoke("status", copy)[1]
    assert "name\\x0a': generation 3/3" in status, status
    assert "anchors of agree0: 5 per candidate (odd\\x1b[31m 3" in status, status
    assert "below the endpoint x\\x0a## Fake's" in status, status  # one line, the newline as text
    assert "\u202e" not in status + (copy / "report.md").read_text()  # a bidi override reorders what follows it
    report = (copy / "report.md").read_text()
    assert "\x1b" not in report and "m\\\\x1b\\]0;TITLE\\\\x07\\\\u202etxt" in report  # as Markdown escapes it
    assert "float64" not in report  # no rounding note: float64 is exact


@pytest.mark.parametrize("plant", [
    "DROP TABLE generations; CREATE VIEW generations AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
    "FROM c) SELECT x AS generation, x AS keys, x AS hypervolume FROM c",
    "CREATE TRIGGER t AFTER INSERT ON meta BEGIN DELETE FROM evaluations; END",
])
def test_a_store_holding_a_view_or_trigger_is_refused_before_anything_is_read(copy, plant):
    """A received state.sqlite's endless view under a table's name (which `CREATE TABLE IF NOT
    EXISTS` keeps) hung `status` in SQLite's own code, past Ctrl-C and SIGTERM; a trigger runs SQL
    of the sender's as the store writes (audit 116). The store makes tables and indexes only."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.executescript(plant)
    kind, name = ("view", "generations") if "VIEW" in plant else ("trigger", "t")
    for command in ("status", "report"):
        code, out = invoke(command, copy)
        one_line_error(code, out, f"{copy / 'state.sqlite'}: corrupt campaign database (it holds a {kind} "
                                  f"{name!r}, which evo-merge does not make)", "new run folder")


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this object creates the marker folder
        return (os.mkdir, (str(self.marker),))


def test_a_planted_pickle_executes_nothing(copy, tmp_path):
    marker = tmp_path / "code-ran"
    (copy / "checkpoint.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    for command in ("status", "resume", "report"):
        code, out = invoke(command, copy)
        assert code == 0, out
        assert not marker.exists(), f"{command} unpickled checkpoint.pkl"


# ---------------------------------------------------------------- never clobber, leave nothing behind

def test_run_refuses_a_folder_that_is_not_a_run_folder(tmp_path, zoo):  # noqa: F811
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    code, output = invoke("run", campaign(tmp_path, zoo), "--out", out)
    one_line_error(code, output, f"--out {out}: not empty and not a run folder")
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "my notes"


def test_run_out_naming_a_file_or_a_path_under_a_file_is_one_line(tmp_path, zoo):  # noqa: F811
    config = campaign(tmp_path, zoo)
    file = tmp_path / "file.txt"
    file.write_text("x")
    one_line_error(*invoke("run", config, "--out", file), f"--out {file}: is a file")
    one_line_error(*invoke("run", config, "--out", file / "run"), str(file / "run"), "Not a directory")
    assert file.read_text() == "x"


def test_a_failed_start_leaves_no_run_folder_and_the_fixed_config_starts(tmp_path, zoo):  # noqa: F811
    run = tmp_path / "run"
    path = campaign(tmp_path, zoo, algorithm={"population": 4, "generations": 1, "seed": 0},
                    estimator={"kind": "anchor", "anchors": 5}, final={"evaluate_top": 1})
    config = yaml.safe_load(path.read_text())
    good_task = config["tasks"][1]
    config["tasks"][1] = {**good_task, "task": "no_such_module_zz:Task"}  # fails once the run folder is open
    path.write_text(yaml.safe_dump(config))
    code, out = invoke("run", path, "--out", run)
    assert code == 2 and "no_such_module_zz" in out, out
    assert not run.exists()
    config["tasks"][1] = good_task
    path.write_text(yaml.safe_dump(config))
    code, out = invoke("run", path, "--out", run)
    assert code == 0 and "different campaign" not in out, out


# ---------------------------------------------------------------- signals and --debug

@pytest.mark.parametrize(("sent", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                    (signal.SIGTERM, 143, "terminated"),  # a scheduler's preemption
                                                    (signal.SIGHUP, 129, "terminated")])  # a terminal closed
def test_ctrl_c_or_sigterm_exits_with_the_resume_command_and_frees_the_folder(tmp_path, zoo, sent, code,  # noqa: F811
                                                                              word):
    run = tmp_path / "run"
    proc = start_and_wait(slow_campaign(tmp_path, zoo), run, generation=None)  # during calibration
    assert proc.poll() is None
    proc.send_signal(sent)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"error: {word}; resume with: evo-merge resume {run}"
    assert "Traceback" not in stderr
    with RunLock(run):  # released
        pass
    assert all_keys(run)  # what was evaluated is kept for the resume


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2  # the exit code a script expects, with the traceback shown
    assert "Traceback" in result.output and "UserError: " in result.output and "missing.yaml" in result.output
    code, out = invoke("run", tmp_path / "missing.yaml", "--out", tmp_path / "r")
    one_line_error(code, out, "missing.yaml: no such file")


def test_a_run_whose_report_failed_is_not_finished_until_resumed(tmp_path, zoo, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    config = campaign(tmp_path, zoo, algorithm={"population": 4, "generations": 1, "seed": 0},
                      estimator={"kind": "anchor", "anchors": 5}, final={"evaluate_top": 1})

    def full_disk(run_dir, *args, **kwargs):
        raise OSError(28, "No space left on device", str(run_dir / "report.md"))

    with monkeypatch.context() as patch:
        patch.setattr("evo_merge.report.campaign.write_report", full_disk)  # the write site
        code, out = invoke("run", config, "--out", run)
    assert code == 2 and out.strip().splitlines()[-1] == f"error: {run / 'report.md'}: No space left on device", out
    code, out = invoke("status", run)
    assert code == 0 and "generation 1/1" in out and "finished" not in out, out
    assert invoke("resume", run)[0] == 0
    assert "generation 1/1 (finished)" in invoke("status", run)[1]


# ---------------------------------------------------------------- a folder is checked before it is read

@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_a_run_folder_without_its_database_is_refused_never_started_over(copy, damage):
    db = copy / "state.sqlite"
    if damage == "emptied":
        db.write_bytes(b"")
    else:
        for path in copy.glob("state.sqlite*"):
            path.unlink()
    yaml_before = (copy / "campaign.yaml").read_text()
    # emptied or deleted, the line gives the way out (deleted, it said only "not a campaign run folder": audit 93)
    way_out = "restore it from a backup, or start the campaign again in a new run folder"
    for command in ("status", "report", "resume"):
        code, out = invoke(command, copy)
        one_line_error(code, out, "state.sqlite")
        assert way_out in out, out
    code, out = invoke("export", copy, "--pick", 1, "--out", copy.parent / "x")
    one_line_error(code, out, "state.sqlite")
    assert way_out in out, out
    assert (copy / "campaign.yaml").read_text() == yaml_before
    assert damage == "deleted" or not sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE name = 'evaluations'").fetchall() or not all_keys(copy)


def test_status_and_report_refuse_an_edited_campaign_as_resume_does(finished, copy):
    """...naming the settings changed (a user who edited the file for a longer search saw only that
    it was "a different campaign")."""
    path = copy / "campaign.yaml"
    config = yaml.safe_load(path.read_text())
    config["algorithm"]["population"] += 1
    config["methods"]["dare_ties"] = {}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    edited = path.read_text()
    for command in ("status", "report", "resume"):
        code, out = invoke(command, copy)
        one_line_error(code, out, f"{path}: edited since the run started (changed: methods.dare_ties, "
                                  f"algorithm.population); undo the edit (`evo-merge run CAMPAIGN.yaml --out {copy}`")
    # `run` of the campaign the folder holds goes on, and writes the file back (status failed on it for good)
    assert invoke("run", finished[1], "--out", copy)[0] == 0
    restored = yaml.safe_load(path.read_text())
    assert restored["algorithm"]["population"] == config["algorithm"]["population"] - 1
    assert invoke("status", copy)[0] == 0
    moved = {**restored, "storage": {**restored["storage"], "placement": "host"}}
    path.write_text(yaml.safe_dump(moved, sort_keys=False))  # what a resume may change is the folder's to keep
    assert invoke("run", finished[1], "--out", copy)[0] == 0 and yaml.safe_load(path.read_text()) == moved
    path.write_text(edited)
    with closing(sqlite3.connect(copy / "state.sqlite")) as db, db:  # bound before the settings were stored
        db.execute("DELETE FROM meta WHERE key = 'config_data'")
    one_line_error(*invoke("status", copy), f"{path}: edited since the run started; undo the edit")


def test_an_edited_setting_of_a_section_at_its_defaults_is_named_by_its_key(copy):
    """A section at its defaults is left out of the fingerprint: `evaluator.batch_size` edited was
    named `changed: evaluator` (audit 138)."""
    path = copy / "campaign.yaml"
    config = yaml.safe_load(path.read_text())
    config["evaluator"] = {**config.get("evaluator", {}), "batch_size": 7}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    one_line_error(*invoke("status", copy), f"{path}: edited since the run started (changed: evaluator.batch_size); "
                   "undo the edit")

@pytest.mark.parametrize(("final", "key"), [({"top_k": 5}, "final.top_k"), ({"holdout": 0.3}, "final.holdout"),
                                             ({"race": [0.5]}, "final.race")])
def test_a_campaign_changed_only_in_its_final_phase_is_another_campaign(finished, copy, tmp_path, final, key):
    """The final phase's settings are part of the run: a folder resumed with other finalists, race
    stages or held-out items would mix them with those it recorded (its held-out split, picks)."""
    config = yaml.safe_load(finished[1].read_text())
    config["final"] = {**config.get("final", {}), **final}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    one_line_error(*invoke("run", changed, "--out", copy), f"{copy}: holds a different campaign (changed: {key});")


def test_status_never_loads_the_tasks_of_a_run_that_has_not_recorded_them(tmp_path, zoo):  # noqa: F811
    """Its facts are recorded once the tasks load; before that `status` says so instead of importing
    the campaign's task code (here a module that does not exist)."""
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import Workspace

    config = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    config["tasks"] = [{"task": "no_such_module_here:Task", "name": "t"}]
    Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()
    code, out = invoke("status", tmp_path / "run")
    one_line_error(code, out, "has not recorded its tasks yet", "evo-merge resume")


def test_links_planted_in_a_run_folder_are_refused_never_written_through(copy, tmp_path):
    victims = {name: tmp_path / f"victim-{name}" for name in (LOCK_FILE, "report.md", "pareto.csv", "pareto.png",
                                                               "report.html")}
    for name, victim in victims.items():
        victim.write_text("precious")
        (copy / name).unlink(missing_ok=True)
        (copy / name).symlink_to(victim)
    code, out = invoke("resume", copy)
    one_line_error(code, out, LOCK_FILE, "a link")
    (copy / LOCK_FILE).unlink()
    code, out = invoke("report", copy)
    one_line_error(code, out, "pareto.csv", "a link")
    assert all(victim.read_text() == "precious" for victim in victims.values())


def test_the_report_names_the_run_folders_own_exported_models(copy):
    code, out = invoke("report", copy)
    assert code == 0, out
    listed = (copy / "report.md").read_text().split("## Exported models")[1].split("##")[0]
    assert "→ models/best-agree0" in listed and str(copy.parent) not in listed
    shutil.rmtree(copy / "models")  # a copy without its models: the original's are not this run's
    code, out = invoke("report", copy)
    assert code == 0, out
    assert "## Exported models" not in (copy / "report.md").read_text()


def test_a_run_whose_models_changed_is_refused(tmp_path, zoo):  # noqa: F811
    """Two endpoints' weight files swapped after the run started: resuming would store scores of one
    model under the other's name next to the earlier ones."""
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import Workspace

    base, fts = zoo
    models = [shutil.copytree(f, tmp_path / f.name) for f in fts]
    config = yaml.safe_load(campaign(tmp_path, (base, models)).read_text())
    Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()
    Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()  # unchanged: fine
    first, second = (m / "model.safetensors" for m in models)
    swap = tmp_path / "swap"
    first.rename(swap), second.rename(first), swap.rename(second)
    with pytest.raises(UserError, match=r"models\.0 .* holds the weights this run folder recorded for models\.1: "
                                        r"the models are in another order than the run started with"):
        Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run")
    first.rename(swap), second.rename(first), swap.rename(second)  # back; then one of them edited
    weights = load_file(first)
    weights = {name: tensor + 0.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(weights, first, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"models\.0 .*weights changed since this run folder was started"):
        Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run")


def test_a_run_whose_models_moved_goes_on_from_their_new_place_once_they_are_checked(tmp_path, zoo):  # noqa: F811
    """A project moved with its models: the run folder's campaign.yaml names them by absolute path,
    and pointing it at their new place was refused as an edit, with no way on but a new folder."""
    from evo_merge.config import Campaign
    from evo_merge.errors import MissingModel
    from evo_merge.search.binding import open_run
    from evo_merge.search.workspace import Workspace

    base, fts = zoo
    old = tmp_path / "project"
    models = [shutil.copytree(m, old / m.name) for m in (base, *fts)]
    config = yaml.safe_load(campaign(tmp_path, (models[0], models[1:])).read_text())
    run = tmp_path / "run"
    Workspace.open(Campaign.model_validate(config), tmp_path, run).store.close()
    new = old.rename(tmp_path / "moved")
    hint = (f"if the models moved, write their new place into {run / 'campaign.yaml'} (base_model, models): the "
            "run checks they are the same models")
    with pytest.raises(MissingModel, match=re.escape(hint)):
        Workspace.open(Campaign.load(run / "campaign.yaml"), run, run)
    one_line_error(*invoke("resume", run), "does not exist", hint)  # its memory plan reads the models first
    written = yaml.safe_load((run / "campaign.yaml").read_text())
    relocated = {**written, "base_model": str(new / base.name), "models": [str(new / m.name) for m in fts]}
    (run / "campaign.yaml").write_text(yaml.safe_dump(relocated))  # the test tasks' options name them too: kept
    open_run(run).close()  # status and report: not "edited since the run started"
    Workspace.open(Campaign.load(run / "campaign.yaml"), run, run).store.close()  # resume, export: checked, on
    swapped = yaml.safe_load((run / "campaign.yaml").read_text())
    swapped["models"] = swapped["models"][::-1]  # moved, but not the same models at each place
    with pytest.raises(UserError, match=r"models\.0 \(.*\) holds the weights this run folder recorded for "
                                        r"models\.1: the models are in another order"):
        Workspace.open(Campaign.model_validate(swapped), run, run)
    from evo_merge.search.binding import differences
    store = CampaignStore(run)
    dropped = Campaign.model_validate({**relocated, "base_model": None, "align": {"arch": "llama"}})
    assert differences(store, dropped) is not None  # a base dropped (or added) is no move
    store.close()
    # `run CAMPAIGN --out RUN` naming the new place writes it into the folder's campaign.yaml
    (run / "campaign.yaml").write_text(yaml.safe_dump(written))  # naming the former place again
    Workspace.open(Campaign.model_validate(relocated), tmp_path, run).store.close()
    assert Campaign.load(run / "campaign.yaml").models == relocated["models"]


@pytest.mark.parametrize("edit", ["config.json", "generation_config.json", "tokenizer.json", "spiece.model"])
def test_a_run_whose_model_config_or_tokenizer_changed_is_refused(tmp_path, zoo, edit):  # noqa: F811
    """The base's activation edited in config.json after the run started: an export then measured and
    published other scores from the same weights, and `resume` carried on; a tokenizer the same (a
    sentencepiece vocabulary, which transformers loads for T5-style tokenizers, was not checked)."""
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import Workspace

    base, fts = zoo
    base = shutil.copytree(base, tmp_path / "base")
    if edit == "spiece.model":
        (base / edit).write_bytes(b"a sentencepiece model")
    config = yaml.safe_load(campaign(tmp_path, (base, fts)).read_text())
    Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()
    Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()  # unchanged: fine
    spec = json.loads((base / edit).read_text()) if edit.endswith(".json") else {}
    if edit == "spiece.model":
        (base / edit).write_bytes(b"another sentencepiece model")
    elif edit == "config.json":
        spec["hidden_act"] = "relu"
    elif edit == "generation_config.json":  # a generated answer stops elsewhere: `seq` scored 0.41 for 0.57
        spec["eos_token_id"] = 5
    else:
        spec["added_tokens"] = spec.get("added_tokens", [])[:-1]
    if spec:
        (base / edit).write_text(json.dumps(spec))
    with pytest.raises(UserError, match=rf"base_model .*: its {edit} changed since this run folder was started"):
        Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run")


def test_model_files_recorded_before_are_checked_as_they_were_recorded(tmp_path, zoo):  # noqa: F811
    """Folders recorded one digest of all the model files, first without the generation config: they
    resume as they are (checked with the digest they made), and each file is checked from then on; a
    file the record does not name (a name checked since) is recorded, not refused; one that appears
    where the record says there was none is refused by name."""
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import MODEL_FILES_META, Workspace

    base, fts = zoo
    base = shutil.copytree(base, tmp_path / "base")
    config = Campaign.model_validate(yaml.safe_load(campaign(tmp_path, (base, fts)).read_text()))
    first_names = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")

    def combined(folder):  # what the first record held, computed here from its definition
        digest = hashlib.sha256()
        for name in first_names:
            if (folder / name).is_file():
                digest.update(name.encode() + hashlib.sha256((folder / name).read_bytes()).digest())
        return digest.hexdigest()[:16]

    with closing(Workspace.open(config, tmp_path, tmp_path / "run").store) as store:
        per_file = store.get_meta(MODEL_FILES_META)
        assert set(per_file["base_model"]) >= {"config.json", "generation_config.json"}
        folders = {"base_model": base, **{f"models.{i}": f for i, f in enumerate(fts)}}
        assert set(per_file) == set(folders)
        store.set_meta(MODEL_FILES_META, {key: combined(folder) for key, folder in folders.items()})
    (base / "generation_config.json").unlink()  # not among the names the first record covered
    with closing(Workspace.open(config, tmp_path, tmp_path / "run").store) as store:
        assert store.get_meta(MODEL_FILES_META)["base_model"]["generation_config.json"] is None
        recorded = store.get_meta(MODEL_FILES_META)
        del recorded["base_model"]["chat_template.json"]  # a name added to the list after this record
        store.set_meta(MODEL_FILES_META, recorded)
    (base / "chat_template.json").write_text('{"chat_template": "{{ messages }}"}')
    Workspace.open(config, tmp_path, tmp_path / "run").store.close()  # recorded now, not refused
    (base / "generation_config.json").write_text('{"eos_token_id": 5}')
    with pytest.raises(UserError, match=r"base_model .*: its generation_config.json changed since"):
        Workspace.open(config, tmp_path, tmp_path / "run")
    (base / "generation_config.json").unlink()
    (base / "chat_template.json").unlink()
    with pytest.raises(UserError, match=r"base_model .*: its chat_template.json changed since"):
        Workspace.open(config, tmp_path, tmp_path / "run")


def _digest_as_recorded_before(*folders):
    """What older versions recorded for a model: name, size and 64 sampled 4 KiB blocks of each
    .safetensors file at the top of the folders (an adapter's config left out)."""
    digest = hashlib.sha256()
    for file in (f for folder in folders for f in sorted(folder.glob("*.safetensors"))):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as fh:
            for k in range(64):
                fh.seek(size * k // 64)
                digest.update(fh.read(4096))
    return digest.hexdigest()[:16]


def test_a_lora_endpoint_whose_adapter_config_changed_is_refused(tmp_path, zoo):  # noqa: F811
    """lora_alpha scales the adapter's update: changed after the run started, the endpoint is another
    model. A folder recorded before the config was fingerprinted resumes unchanged, then is checked."""
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import WEIGHTS_META, Workspace

    base, fts = zoo
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    module = "model.layers.0.mlp.up_proj"
    rows, cols = load_file(fts[0] / "model.safetensors")[f"{module}.weight"].shape
    torch.manual_seed(0)
    save_file({f"base_model.model.{module}.lora_A.weight": torch.randn(2, cols),
               f"base_model.model.{module}.lora_B.weight": torch.randn(rows, 2)}, adapter / "adapter_model.safetensors")
    config_file = adapter / "adapter_config.json"
    config_file.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["up_proj"]}))
    config = yaml.safe_load(campaign(tmp_path, (base, [f"{fts[0]}+{adapter}", fts[1]])).read_text())

    def open_run():
        Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run").store.close()

    open_run()
    with closing(CampaignStore(tmp_path / "run")) as store:  # as an older version recorded it
        store.set_meta(WEIGHTS_META, {"models.0": _digest_as_recorded_before(fts[0], adapter),
                                      "models.1": _digest_as_recorded_before(fts[1]),
                                      "base_model": _digest_as_recorded_before(base)})
    open_run()  # unchanged: resumes
    with closing(CampaignStore(tmp_path / "run")) as store:  # as the version before every tensor's ends recorded it
        from evo_merge.search.workspace import campaign_references, resolve_campaign
        from evo_merge.weights.digest import former_weights_digests, weights_digest

        refs = campaign_references(resolve_campaign(Campaign.model_validate(config), tmp_path))
        store.set_meta(WEIGHTS_META, {key: former_weights_digests(ref)[0] for key, ref in refs.items()})
    open_run()  # unchanged: resumes, and records today's digest
    with closing(CampaignStore(tmp_path / "run")) as store:
        assert store.get_meta(WEIGHTS_META) == {key: weights_digest(ref) for key, ref in refs.items()}
    config_file.write_text(config_file.read_text().replace('"lora_alpha": 4', '"lora_alpha": 40'))
    with pytest.raises(UserError, match=r"models\.0 .*\+.*adapter\): its weights changed since this run folder"):
        open_run()
    config_file.write_text(config_file.read_text().replace('"lora_alpha": 40', '"lora_alpha": 4'))
    open_run()


def test_a_run_cut_short_in_calibration_has_a_report(tmp_path, zoo):  # noqa: F811
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import Workspace, record_facts

    config = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    workspace = Workspace.open(Campaign.model_validate(config), tmp_path, tmp_path / "run")
    record_facts(workspace.store, workspace.campaign, {"agree0": 10, "agree1": 10}, workspace.stored_dtype_name(),
                 workspace.storage_rounding())
    workspace.store.close()
    code, out = invoke("report", tmp_path / "run")
    assert code == 0, out
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**not finished**: 0 of 3 generations searched" in report and "evo-merge resume" in report
    with RunLock(tmp_path / "run"):  # a run working there now: `resume` would be refused, and no plot warns
        code, out = invoke("report", tmp_path / "run")
    assert code == 0 and "Warning" not in out, out
    assert out.strip().endswith(f"(a run is working in the folder, pid {os.getpid()}: they are of this moment)")
    report = (tmp_path / "run" / "report.md").read_text()
    assert (f"**not finished**: 0 of 3 generations searched, no final phase yet; a run is working in the folder "
            f"(pid {os.getpid()}): this report is of this moment") in report


def test_a_measurement_lost_between_two_writes_is_restored_on_resume(finished, copy):
    """An older version stored a candidate scored on every search item, then its measurement, in
    two transactions: a kill between them left it unmeasured for good (a full-evaluation search
    then chose other picks). Now both go in one, and a resume restores what such a kill lost."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db, db:
        key, measured = db.execute("SELECT key, measured FROM evaluations WHERE phase = 'calibration' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        assert measured is not None
        db.execute("UPDATE evaluations SET measured = NULL WHERE key = ?", (key,))
    code, out = invoke("resume", copy)
    assert code == 0, out
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        restored = db.execute("SELECT measured FROM evaluations WHERE key = ?", (key,)).fetchone()[0]
    assert restored == measured
    assert front_keys(copy) == front_keys(finished[0]) and all_keys(copy) == all_keys(finished[0])


def test_a_lost_measurement_is_restored_where_its_evaluation_is_first_looked_up(copy):
    """The calibration restores it as it looks its subjects up, before any search or final phase
    reads it (pooling and the references read a measurement mid-search); the final phase's own
    repair hid a loss of this one (audit 100)."""
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner

    with closing(sqlite3.connect(copy / "state.sqlite")) as db, db:
        key, measured = db.execute("SELECT key, measured FROM evaluations WHERE phase = 'calibration' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        db.execute("UPDATE evaluations SET measured = NULL WHERE key = ?", (key,))
    with CampaignRunner.open(Campaign.load(copy / "campaign.yaml"), copy, copy) as runner:
        runner.calibrate()  # every subject stored: looked up, none evaluated
        assert runner._evaluator is None  # no model was loaded
        restored = runner.workspace.store.get(key).measured
    assert json.dumps(restored, sort_keys=True) == json.dumps(json.loads(measured), sort_keys=True)


def test_a_bind_cut_short_either_side_of_writing_campaign_yaml_starts_or_resumes(finished, copy, tmp_path):
    """The campaign file is written first and the binding after, in one transaction: a kill
    between them leaves the file beside an unbound store, which `run` binds. A folder an older
    version bound before writing the file gets it back from `run`, and opens again."""

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(finished[0] / "campaign.yaml", fresh / "campaign.yaml")
    CampaignStore(fresh).close()  # created, never bound
    code, out = invoke("run", finished[1], "--out", fresh)
    assert code == 0, out
    assert front_keys(fresh) == front_keys(finished[0])
    (copy / "campaign.yaml").unlink()  # bound, then killed before the file was written
    code, out = invoke("run", finished[1], "--out", copy)
    assert code == 0, out
    code, out = invoke("status", copy)
    assert code == 0 and "generation 3/3 (finished)" in out, out


def test_a_finished_run_resumed_keeps_its_exported_picks_and_restores_a_missing_one(copy):
    """The resume of a finished run rewrites no model (a 7B pick is minutes of writing, and a kill
    while one was replaced left it missing); a pick folder deleted since is exported again."""
    store = CampaignStore(copy)
    exported = store.get_meta("exported")
    store.close()
    folders = {copy / folder for _, folder in exported.values()}
    assert len(folders) >= 2
    shards = {folder: {f: f.stat().st_mtime_ns for f in folder.glob("*.safetensors")} for folder in folders}
    gone = sorted(folders)[0]
    shutil.rmtree(gone)
    code, output = invoke("resume", copy)
    assert code == 0, output
    for folder in folders - {gone}:
        assert {f: f.stat().st_mtime_ns for f in folder.glob("*.safetensors")} == shards[folder], folder
    assert sorted(f.name for f in gone.glob("*.safetensors")) == sorted(f.name for f in shards[gone])
    store = CampaignStore(copy)
    assert store.get_meta("exported") == exported
    store.close()


def test_a_finished_run_resumed_keeps_its_picks_when_a_candidate_measured_since_beats_them(copy, tmp_path):
    """`export --pick` measures a candidate on every item; resuming the finished run chose the
    picks again among all measured candidates and replaced the pick folders with that one."""
    store = CampaignStore(copy)
    exported = store.get_meta("exported")
    picked = {eid for eid, _ in exported.values()}
    outsider = next(e for e in candidates(store) if e.id not in picked and e.measured is None)
    store.close()
    code, output = invoke("export", copy, "--pick", outsider.id, "--out", tmp_path / "outsider")
    assert code == 0, output
    with closing(sqlite3.connect(copy / "state.sqlite")) as db, db:  # ... and it answered every item right
        db.execute("UPDATE item_scores SET score = 1.0 WHERE evaluation_id = ?", (outsider.id,))
        measured = json.loads(db.execute("SELECT measured FROM evaluations WHERE id = ?", (outsider.id,)).fetchone()[0])
        db.execute("UPDATE evaluations SET measured = ? WHERE id = ?",
                   (json.dumps(dict.fromkeys(measured, 1.0)), outsider.id))
    shards = {f: f.stat().st_mtime_ns for f in (copy / "models").rglob("*.safetensors")}
    code, output = invoke("resume", copy)
    assert code == 0, output
    store = CampaignStore(copy)
    assert store.get_meta("exported") == exported
    store.close()
    assert {f: f.stat().st_mtime_ns for f in (copy / "models").rglob("*.safetensors")} == shards


def test_a_run_folder_holding_a_link_is_refused_and_nothing_outside_it_changes(copy, tmp_path):
    """A received run folder whose models/ links elsewhere: `resume` would sweep and replace the
    folders there (a user's own model folder lost its notes)."""
    victim = tmp_path / "elsewhere"
    shutil.move(copy / "models", victim)
    next(victim.iterdir()).joinpath("NOTES.txt").write_text("mine")
    (copy / "models").symlink_to(victim)
    before = sorted((p.relative_to(victim), p.stat().st_mtime_ns) for p in victim.rglob("*"))
    for command in ("resume", "status", "report"):
        code, output = invoke(command, copy)
        one_line_error(code, output, f"{copy / 'models'}: is a link")
    code, output = invoke("run", copy / "campaign.yaml", "--out", copy)
    one_line_error(code, output, "is a link")
    assert sorted((p.relative_to(victim), p.stat().st_mtime_ns) for p in victim.rglob("*")) == before


@pytest.mark.parametrize("planted", ["irt/agree0", "aligned/universe-mean", "irt/agree0/model.json"])
def test_a_link_inside_a_run_folder_s_records_is_refused(copy, tmp_path, planted):
    """`resume` of a folder whose irt/agree0 linked elsewhere refit the IRT model into the link's
    target: only the folder's own entries were checked for links. A folder or a file, in either of
    the folders a run writes file by file (`irt/`, `aligned/`)."""
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    link = copy / planted
    if planted.endswith(".json"):
        victim = victim / "model.json"
        victim.write_text("{}")
    else:
        shutil.rmtree(link, ignore_errors=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    for command in ("resume", "status", "report"):
        code, output = invoke(command, copy)
        one_line_error(code, output, f"{link}: is a link")
    assert (victim.read_text() == "{}") if victim.is_file() else list(victim.iterdir()) == []


def test_status_gives_the_race_sample_score_of_a_best_estimate_not_measured_whole(copy):
    """`best agree0 in the search: 0.780 estimated` beside a pick measured at 0.689: the race had
    scored that candidate 0.652 on the sample the picks were chosen on, which status did not say."""
    from evo_merge.search.race import RACE_META

    store = CampaignStore(copy)
    competing = [e for e in store.evaluations() if e.status == "ok" and e.phase in ("search", "baseline")]
    best = max(competing, key=lambda e: e.estimates["agree0"])
    store.db.execute("UPDATE evaluations SET measured = NULL, estimate_se = ? WHERE id = ?",
                     (json.dumps({t: 0.01 for t in best.estimates}), best.id))  # a survivor not measured whole
    race = store.get_meta(RACE_META)
    race["compared"] = {**race.get("compared", {"stage": 1, "items": {}}), "scores": {best.key: {"agree0": 0.652}}}
    store.set_meta(RACE_META, race)
    store.close()
    code, output = invoke("status", copy)
    assert code == 0, output
    assert (f"(evaluation {best.id}, {best.method}); 0.652 on the race's last sample, which the picks were chosen "
            "on") in " ".join(output.split()), output


def test_status_and_the_end_of_a_run_print_names_with_brackets_as_text(copy):
    """A campaign name is free text: '[/b]' was read as rich markup and crashed `status`."""
    store = CampaignStore(copy)
    store.set_meta("facts", {**store.get_meta("facts"), "name": "x[/b]y"})
    store.close()
    code, output = invoke("status", copy)
    assert code == 0 and "campaign 'x[/b]y'" in output, output


@pytest.mark.parametrize(("edit", "where"), [
    ("UPDATE evaluations SET estimates = '{not json' WHERE id = 3", "evaluation 3 (evaluations.estimates) is damaged"),
    ("UPDATE evaluations SET measured = '[0.5]' WHERE id = 2", "evaluation 2 (evaluations.measured) is damaged"),
    ("UPDATE meta SET value = '{\"name\": \"c\"}' WHERE key = 'facts'", "meta 'facts' is damaged"),
])
def test_a_damaged_database_is_an_error_naming_what_is_damaged(copy, edit, where):
    """An edited or damaged state.sqlite: each command that reads the damaged value says so in one
    error line, exit 2 (they were JSONDecodeError and KeyError tracebacks). What a run writes again
    as it goes (its facts) `resume` repairs; a generation's record is read as not done (below)."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute(edit)
        db.commit()
    repaired = "evaluation" not in where
    for command in ("status", "report", *(() if repaired else ("resume",))):
        code, output = invoke(command, copy)
        assert code == 2 and "Traceback" not in output, output
        assert output.strip().splitlines()[-1] == (
            f"error: {copy / 'state.sqlite'}: {where} (edited, or not written by evo-merge); restore it from a "
            "backup, or start the campaign again in a new run folder"), output
    if repaired:
        for command in ("resume", "status"):
            code, output = invoke(command, copy)
            assert code == 0, output


def _open_databases(folder):
    """The descriptors this process holds open on files of `folder` (Linux: /proc/self/fd)."""
    links = (os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}"))
    return [link for link in links if link.startswith(str(folder))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
@pytest.mark.parametrize("edit", [
    "UPDATE meta SET value = '\"x\"' WHERE key = 'facts'",  # the facts: read after the store opened
    "UPDATE evaluations SET estimates = '{\"other\": 0.5}' WHERE id = 1",  # tasks not those it scored
    "UPDATE evaluations SET estimates = '{bad' WHERE id = 1",  # read as the tasks it scored
])
def test_a_run_folder_refused_after_its_store_opened_leaves_no_database_open(copy, edit):
    """`read_run` (status, report) left the store open on the refusals that come after it opened,
    one more database per call until a garbage collection (audit 130)."""
    from evo_merge.errors import UserError
    from evo_merge.search.binding import read_run

    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute(edit)
        db.commit()
    for _ in range(3):
        try:
            read_run(copy)
        except UserError:
            pass
        else:
            raise AssertionError("not refused")
    assert _open_databases(copy) == []


def _written_store(folder):
    """A store written as a run writes it: a calibration evaluation measured on every item, a
    search one with estimates and SEs, and a failed one; (store, the search one's key)."""
    from evo_merge.search.candidate import Candidate
    store = CampaignStore(folder)
    keys = [Candidate("task_arithmetic", weights, (("lambda", 1.0),)).key for weights in ((0.0, 0.0), (1.0, 0.5))]
    items = {"a": {"a-0": 1.0, "a-1": 0.0}, "b": {"b-0": 0.5}}
    store.add(keys[0], phase="calibration", generation=None, method="task_arithmetic", status="ok",
              estimates={"a": 0.5, "b": 0.5}, item_scores=items, seconds=1.5, measured={"a": 0.5, "b": 0.5})
    store.add(keys[1], phase="search", generation=1, method="task_arithmetic", status="ok",
              estimates={"a": 0.6, "b": 0.4}, estimate_se={"a": 0.05, "b": 0.07}, item_scores=items, seconds=2.0)
    store.add(Candidate("ties", (1.0, 1.0), (("density", 0.2), ("lambda", 1.0))).key, phase="search", generation=1,
              method="ties", status="failed", seconds=0.5, error="CUDA out of memory")
    return store, keys[1]


@pytest.mark.parametrize(("edit", "column"), [
    ("UPDATE item_scores SET score = 'abc' WHERE evaluation_id = 2 AND item = 'a-0'", "item_scores.score"),
    ("UPDATE item_scores SET score = 5.0 WHERE evaluation_id = 2 AND item = 'a-0'", "item_scores.score"),
    ("UPDATE evaluations SET generation = 'x' WHERE id = 2", "evaluations.generation"),
    ("""UPDATE evaluations SET measured = '{"a": NaN, "b": 0.78}' WHERE id = 2""", "evaluations.measured"),
    ("""UPDATE evaluations SET estimates = '{"a": Infinity, "b": 0.4}' WHERE id = 2""", "evaluations.estimates"),
    ("""UPDATE evaluations SET estimate_se = '{"a": NaN, "b": 0.07}' WHERE id = 2""", "evaluations.estimate_se"),
    ("""UPDATE evaluations SET estimates = '{"a": 1""" + "0" * 400 + """, "b": 0.4}' WHERE id = 2""",
     "evaluations.estimates"),  # an integer no float holds
    ("UPDATE evaluations SET estimates = NULL WHERE id = 2", "evaluations.estimates"),  # scored, with no scores
    ("UPDATE evaluations SET status = 'weird' WHERE id = 2", "evaluations.status"),
    ("UPDATE evaluations SET method = 'nosuch' WHERE id = 2", "evaluations.method"),
    ("UPDATE evaluations SET items_evaluated = 'many' WHERE id = 2", "evaluations.items_evaluated"),
    ("UPDATE evaluations SET genome = '{bad' WHERE id = 2", "evaluations.genome"),
    ("UPDATE evaluations SET key = 'x', genome = 'x' WHERE id = 2", "evaluations.key"),
    ("""UPDATE evaluations SET key = '["ties", [1]]', genome = '["ties", [1]]' WHERE id = 2""",
     "evaluations.key"),  # JSON, not a candidate's [method, weights, params]
    ("UPDATE evaluations SET seconds = 'slow' WHERE id = 2", "evaluations.seconds"),
    ("UPDATE evaluations SET phase = 'nonsense' WHERE id = 2", "evaluations.phase"),  # was a line in `status`
    ("""UPDATE evaluations SET measured = '{"a": 5.0, "b": 0.5}' WHERE id = 2""",
     "evaluations.measured"),  # a mean of item scores in [0, 1]: accepted by every command
    ("UPDATE evaluations SET error = X'6f6f6d' WHERE id = 2", "evaluations.error"),  # bytes, not text
])
def test_an_edited_evaluation_is_damaged_naming_its_id_and_column(tmp_path, edit, column):
    """Each column of an evaluation and its item scores read back against what a run writes: a
    score of text was a ValueError traceback, a generation of text a TypeError, NaN scores and an
    unknown method were taken, and an evaluation of another status vanished from every reader."""
    store, key = _written_store(tmp_path)
    store.db.execute(edit)
    where = re.escape(f"{tmp_path / 'state.sqlite'}: evaluation 2 ({column}) is damaged (edited")
    readers = [lambda key: store.evaluations(), store.get]  # `get` finds no evaluation by a key edited away
    readers = {"item_scores.score": [store.item_scores], "evaluations.key": readers[:1]}.get(column, readers)
    for read in readers:
        with pytest.raises(UserError, match=where):
            read(key)
    store.close()


@pytest.mark.parametrize(("column", "value"), [("estimates", '{"a": 0.6}'), ("estimates", '{"a": 0.6, "c": 0.1}'),
                                               ("measured", '{"c": 0.5}'), ("estimate_se", '{"a": 0.1, "c": 0.1}')])
def test_an_evaluation_scored_on_other_tasks_than_the_run_s_is_damaged(tmp_path, column, value):
    """`status` read every evaluation's estimate of each task: one lacking a task was a KeyError."""
    store, key = _written_store(tmp_path)
    store.db.execute(f"UPDATE evaluations SET {column} = ? WHERE id = 2", (value,))
    with pytest.raises(UserError, match=re.escape(f"evaluation 2 (evaluations.{column}) is damaged")):
        store.evaluations()
    store.close()


def test_a_store_as_a_run_writes_it_reads_back_unchanged(tmp_path):
    store, key = _written_store(tmp_path)
    ok, search, failed = store.evaluations()
    assert (search.generation, search.estimates, search.estimate_se, search.measured, search.items_evaluated) == (
        1, {"a": 0.6, "b": 0.4}, {"a": 0.05, "b": 0.07}, None, 3)
    assert (failed.status, failed.estimates, failed.error) == ("failed", None, "CUDA out of memory")
    assert store.item_scores(key) == {"a": {"a-0": 1.0, "a-1": 0.0}, "b": {"b-0": 0.5}}
    store.close()


def test_a_damaged_defaults_mark_is_an_error_naming_it(copy, finished):
    """The defaults version a folder was written under (meta 'defaults'), read to plan and bind the
    campaign a resume runs: one that is not a version was a TypeError traceback."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute("UPDATE meta SET value = '\"2\"' WHERE key = 'defaults'")
        db.commit()
    for args in (("resume", copy), ("run", finished[1], "--out", copy)):
        code, output = invoke(*args)
        assert code == 2 and "Traceback" not in output, output
        assert output.strip().splitlines()[-1] == (
            f"error: {copy / 'state.sqlite'}: meta 'defaults' is damaged (edited, or not written by evo-merge); "
            "restore it from a backup, or start the campaign again in a new run folder"), output


@pytest.mark.parametrize(("key", "value", "where", "commands"), [
    ("exported", '"x"', "meta 'exported'", ("status", "report", "resume")),
    ("exported", '{"best-a": [1]}', "meta 'exported'", ("status", "report")),
    ("estimator_revisions", "5", "meta 'estimator_revisions'", ("status",)),
    ("estimator_revision", '"1"', "meta 'estimator_revision'", ("resume",)),
    ("pooled_estimates", '{"k": 0.5}', "meta 'pooled_estimates'", ("status", "report")),
    ("anchors", '{"agree0": 20}', "meta 'anchors'", ("status",)),
    ("race", '{"finalists": 3, "left": []}', "meta 'race'", ("status", "report")),
    ("holdout", '["agree0"]', "meta 'holdout'", ("status", "report")),
    ("baselines", '["ta"]', "meta 'baselines'", ("report",)),
    ("weights", '"digest"', "meta 'weights'", ("resume",)),
    ("facts", '{"name": "c", "generations": 2, "algorithm": "nsga2", "tasks": [], "weights": null}',
     "meta 'facts'", ("status", "report")),
    # names a crafted store could send to the terminal (escape codes) or build paths from
    ("exported", '{"a\\u001b[31mRED": [1, "models/best-agree0"]}', "meta 'exported'", ("status", "report")),
    ("facts", '{"name": "c", "generations": 2, "algorithm": "nsga2", "weights": null, "tasks": '
              '[{"name": "../../x", "direction": "maximize", "items": 120}]}', "meta 'facts'", ("status", "report")),
    # a dtype a crafted store gave to write HTML into report.md (audit 116)
    ("facts", '{"name": "c", "generations": 2, "algorithm": "nsga2", "weights": null, "tasks": '
              '[{"name": "agree0", "direction": "maximize", "items": 120}], "stored_dtype": "bf16<script>"}',
     "meta 'facts'", ("status", "report")),
])
def test_a_damaged_record_of_the_run_is_an_error_naming_it(copy, key, value, where, commands):
    """What a run records beside its evaluations (its picks, estimator revisions, pooled estimates,
    anchors, race, held-out items, standard merges, weights, facts, end), read by the
    commands that show or reuse them: a record not of the shape a run writes was an AttributeError,
    TypeError or KeyError traceback wherever it was first used."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        db.commit()
    for command in commands:
        code, output = invoke(command, copy)
        assert code == 2 and "Traceback" not in output, output
        assert output.strip().splitlines()[-1] == (
            f"error: {copy / 'state.sqlite'}: {where} is damaged (edited, or not written by evo-merge); restore it "
            "from a backup, or start the campaign again in a new run folder"), output


def test_a_finished_flag_not_as_a_run_writes_it_reads_as_not_finished_and_resume_sets_it(copy):
    """`finished` edited to "yes": `status` called the store damaged ("restore it from a backup")
    while `resume` replayed the run and set it again (audit 127): both read it as not finished."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('finished', '\"yes\"')")
        db.commit()
    code, output = invoke("status", copy)
    assert code == 0 and "not running: `evo-merge resume" in output and "damaged" not in output, output
    code, output = invoke("resume", copy)
    assert code == 0, output
    code, output = invoke("status", copy)
    assert code == 0 and "(finished)" in output, output


@pytest.mark.parametrize("keys", ["x", "5", '{"a": 1}', "[[1]]", '[{"a": 1}]'])  # not JSON, not a list, not keys
def test_a_generation_record_not_as_a_run_writes_it_reads_as_not_done_and_resume_writes_it_again(copy, keys):
    """A generation's keys edited: `status` and `report` called the store damaged (exit 2) while
    `resume` replayed that generation and wrote its record again (audit 130)."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.execute("UPDATE generations SET keys = ? WHERE generation = 2", (keys,))
        db.commit()
    code, output = invoke("status", copy)
    assert code == 0 and "generation 1/3" in output and "damaged" not in output, output
    assert "not running: `evo-merge resume" in output, output
    code, output = invoke("resume", copy)
    assert code == 0, output
    code, output = invoke("status", copy)
    assert code == 0 and "(finished)" in output and "generation 3/3" in output, output


def test_held_out_items_other_than_the_run_drew_are_refused(copy):
    """An edited record (items the task lacks) exported the search items' scores as held-out
    ones; a task whose items were reordered since draws other held-out items, some of which the
    search has scored."""
    store = CampaignStore(copy)
    recorded = store.get_meta("holdout")
    assert set(recorded) == {"agree0", "agree1"}  # nothing held out of these small tasks: every list empty
    store.set_meta("holdout", {**recorded, "agree1": ["nosuch-item"]})
    store.close()
    for command in (("resume", copy), ("export", copy, "--pick", 1, "--out", copy.parent / "x")):
        code, output = invoke(*command)
        one_line_error(code, output, f"{copy / 'state.sqlite'}: task 'agree1''s held-out items are not those this "
                       "run drew (1 items differ): its items changed order or content since the run began")
    assert not (copy.parent / "x").exists()


def test_a_pick_whose_evaluation_is_no_longer_measured_is_chosen_again(copy):
    """An exported pick's evaluation marked failed (an edited store) was kept as a pick, and the
    summary at the end of `resume` stopped on a StopIteration."""
    store = CampaignStore(copy)
    exported = store.get_meta("exported")
    store.db.execute("UPDATE evaluations SET status = 'failed', estimates = NULL WHERE id = ?",
                     (next(iter(exported.values()))[0],))
    store.db.commit()
    store.close()
    code, output = invoke("resume", copy)
    assert code == 0 and "Traceback" not in output, output
    store = CampaignStore(copy)
    by_id = {e.id: e for e in store.evaluations()}
    assert all(by_id[eid].status == "ok" and by_id[eid].measured for eid, _ in store.get_meta("exported").values())
    store.close()


def test_facts_naming_tasks_its_evaluations_were_not_scored_on_are_damage(copy):
    """A facts record of the right shape naming another task than the evaluations' was a KeyError
    traceback in `status` and `report`."""
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        facts = json.loads(db.execute("SELECT value FROM meta WHERE key = 'facts'").fetchone()[0])
        facts["tasks"][0]["name"] = "other"
        db.execute("UPDATE meta SET value = ? WHERE key = 'facts'", (json.dumps(facts),))
        db.commit()
    for command in ("status", "report"):
        code, output = invoke(command, copy)
        assert code == 2 and "Traceback" not in output, output
        assert output.strip().splitlines()[-1].startswith(f"error: {copy}: state.sqlite is damaged: its tasks (")


def test_records_written_by_older_versions_still_read(copy):
    """The shapes records are read against take what earlier versions wrote: a race record from
    before finalists' failures were kept (no `failed`) and before the survivors measured whole
    were named (`compared` without `measured`), and `exported` folders given as absolute paths."""
    store = CampaignStore(copy)
    race = store.get_meta("race")
    old = {key: value for key, value in race.items() if key != "failed"}
    if "compared" in old:
        old["compared"] = {key: value for key, value in old["compared"].items() if key != "measured"}
    exported = {name: [eid, str(copy / folder)] for name, (eid, folder) in store.get_meta("exported").items()}
    store.set_metas({"race": old, "exported": exported})
    store.close()
    for command in ("status", "report"):
        code, output = invoke(command, copy)
        assert code == 0 and "damaged" not in output, output
    assert "final-phase race" in invoke("status", copy)[1]


@pytest.mark.parametrize("also_text", [False, True])
def test_a_store_that_lost_its_campaign_is_refused_by_every_command(copy, also_text):
    """The campaign's fingerprint deleted from state.sqlite (and with it the campaign.yaml digest, so
    `open_run` reads the file): `status`, `report` and `resume` each refuse it in one line, never
    taking the folder for a new run."""
    keys = ("config", "campaign_text") if also_text else ("config",)
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        db.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in keys])
        db.commit()
    for command in ("status", "report", "resume"):
        code, output = invoke(command, copy)
        one_line_error(code, output, f"{copy / 'state.sqlite'}: holds no campaign (emptied, or from a start "
                       "that failed); restore it from a backup")


def test_an_irt_model_of_the_run_edited_with_its_shapes_kept_is_refused(copy):
    """1.0 added to every difficulty of RUN/irt/<task>/params.npz: it loaded, and the resumed run
    estimated its later candidates with another model than the one it fitted, without a word. The
    model's own digest of its parameters (model.json's `params_digest`) tells it first; an older
    model, which has none, is told by the digest the run recorded of its files."""
    import numpy as np

    folder = next(p for p in (copy / "irt").iterdir() if (p / "params.npz").exists())
    with np.load(folder / "params.npz") as saved:
        arrays = {k: saved[k] + (1.0 if k == "beta" else 0.0) for k in saved.files}
    np.savez(folder / "params.npz", **arrays)
    way_on = (f"; this run fitted it: remove {folder} and `evo-merge resume` fits it again from the stored "
              "calibration (its candidates after that are estimated by the new fit)")
    code, output = invoke("resume", copy)
    assert code == 2 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == (
        f"error: {folder}: model.json and params.npz are of two different saves (a save cut short, or an edit)"
        + way_on), output
    meta = json.loads((folder / "model.json").read_text())
    del meta["params_digest"]  # as a model saved before the digest was kept
    (folder / "model.json").write_text(json.dumps(meta))
    code, output = invoke("resume", copy)
    assert code == 2 and output.strip().splitlines()[-1] == (
        f"error: {folder}: its files changed since this run saved them" + way_on), output
    shutil.rmtree(folder)
    assert invoke("resume", copy)[0] == 0
    meta = folder / "model.json"  # reformatted, the same model: no refusal
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=4))
    assert invoke("resume", copy)[0] == 0


def test_an_irt_model_the_run_has_no_record_of_saving_is_not_taken_for_its_own(copy):
    """An irt/<task> with no record of the run saving it was adopted as "saved before the digest was
    kept": a run whose folder was moved under it wrote its IRT models into a second run started at
    the old path, which estimated with them (audit 138). It is fitted again from the run's own
    calibration and replaced; only a folder from before the record (defaults version 9 or earlier)
    is adopted as it is."""
    import numpy as np

    store = CampaignStore(copy)
    recorded = store.get_meta("irt_files")
    task = sorted(recorded)[0]
    store.set_meta("irt_files", {k: v for k, v in recorded.items() if k != task})
    store.close()
    folder = copy / "irt" / task
    with np.load(folder / "params.npz") as saved:  # another process's model: other parameters
        arrays = {k: saved[k] * 2.0 for k in saved.files}
    meta = json.loads((folder / "model.json").read_text())
    del meta["params_digest"]
    (folder / "model.json").write_text(json.dumps(meta))
    np.savez(folder / "params.npz", **arrays)
    code, output = invoke("resume", copy)
    assert code == 0, output
    assert (f"warning: {folder}: an IRT model this run has no record of saving (written there by another process, "
            "or its record lost); fitting the run's own again from its calibration, which replaces it") in output
    assert CampaignStore(copy).get_meta("irt_files")[task] == recorded[task]  # the run's own fit, as it first saved it
    store = CampaignStore(copy)
    store.set_meta("irt_files", {k: v for k, v in recorded.items() if k != task})
    store.close()
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:  # a folder written before the record was kept
        db.execute("UPDATE meta SET value = '9' WHERE key = 'defaults'")
        db.commit()
    code, output = invoke("resume", copy)
    assert code == 0 and "no record of saving" not in output, output
    assert CampaignStore(copy).get_meta("irt_files")[task] == recorded[task]  # recorded as it is


def test_status_says_an_irt_model_of_the_run_resume_would_refuse(copy):
    """A run's irt/<task> damaged or edited: `status` and `report` called the run healthy, and only
    `resume` refused it (audit 138)."""
    import numpy as np

    folders = sorted(p for p in (copy / "irt").iterdir() if (p / "params.npz").exists())
    assert "IRT model of" not in invoke("status", copy)[1]
    (folders[0] / "params.npz").unlink()
    if len(folders) > 1:
        with np.load(folders[1] / "params.npz") as saved:
            np.savez(folders[1] / "params.npz", **{k: saved[k] * 2.0 for k in saved.files})
    code, output = invoke("status", copy)
    assert code == 0, output
    assert (f"IRT model of {folders[0].name} ({folders[0]}): params.npz missing; `resume` refuses it: remove the "
            "folder and `resume` fits it again from the stored calibration") in output, output
    if len(folders) > 1:
        assert f"IRT model of {folders[1].name} ({folders[1]}): its files changed since the run saved them" in output
    shutil.rmtree(folders[0])  # removed whole: resume fits it again, nothing to say
    assert f"IRT model of {folders[0].name}" not in invoke("status", copy)[1]
    if len(folders) > 1:  # cut short: no zip archive at all, which stopped `status` with a traceback
        params = folders[1] / "params.npz"
        params.write_bytes(params.read_bytes()[:100])
        code, output = invoke("status", copy)
        assert code == 0 and f"IRT model of {folders[1].name} ({folders[1]}): unreadable;" in output, output


def test_a_damaged_irt_model_of_the_run_names_the_way_on(copy):
    """A truncated RUN/irt/<task>/params.npz stopped resume with 'corrupt parameter file' and no way
    on; the run can fit it again from the calibration it stores."""
    folder = next(p for p in (copy / "irt").iterdir() if (p / "params.npz").exists())
    params = folder / "params.npz"
    params.write_bytes(params.read_bytes()[:100])
    code, output = invoke("resume", copy)
    last = output.strip().splitlines()[-1]  # after the calibration's replay line
    assert code == 2 and "Traceback" not in output, output
    assert last.startswith(f"error: {params}: corrupt parameter file"), output
    assert f"remove {folder} and `evo-merge resume`" in last, output
    shutil.rmtree(folder)
    code, output = invoke("resume", copy)
    assert code == 0, output
    assert (folder / "params.npz").exists()


def test_items_export_pick_measured_are_counted_in_the_measurement_s_own_transaction(tmp_path):
    """`export --pick` counted its items in a record of its own after measuring: a kill in between
    left them counted as the final phase's for good. They are counted with the item scores."""
    store, key = _written_store(tmp_path)
    before = store.items_by_phase()
    store.add_measurement(key, None, {"a": {"a-2": 1.0}})  # a race stage: the final phase's
    store.add_measurement(key, {"a": 0.5, "b": 0.5}, {"a": {"a-3": 0.0}, "b": {"b-1": 1.0}}, by_export=True)
    assert store.items_by_phase() == {**before, "final phase": 1, "export --pick": 2}
    reopened = CampaignStore(tmp_path)  # nothing kept outside the database
    assert reopened.items_by_phase() == store.items_by_phase()


def test_models_changed_during_a_run_are_not_exported_under_its_scores(tmp_path, zoo):  # noqa: F811
    """The base's weights halved while the run searched: it exported picks merged from the new files
    with cards giving the scores measured on the old ones (0.969 on the card, 0.178 measured), exit 0."""
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner

    base, fts = zoo
    base = shutil.copytree(base, tmp_path / "base")
    config = Campaign.model_validate(yaml.safe_load(campaign(tmp_path, (base, fts)).read_text()))
    runner = CampaignRunner.open(config, tmp_path, tmp_path / "run")
    runner.calibrate()
    runner.search()
    weights = load_file(base / "model.safetensors")
    save_file({name: tensor / 2 for name, tensor in weights.items()}, base / "model.safetensors")
    with pytest.raises(UserError, match=r"base_model .*: its weights changed since this run folder was started"):
        runner.run()
    assert not any((tmp_path / "run" / "models").glob("*/model.safetensors"))


def test_a_file_that_cannot_be_replaced_is_named_not_its_vanished_temporary(tmp_path):
    from evo_merge.files import atomic_write

    (tmp_path / "report.html").mkdir()  # in the way of the report
    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "report.html", "<html>")
    assert (raised.value.filename, raised.value.filename2) == (str(tmp_path / "report.html"), None)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_a_replaced_file_takes_the_umask_mode_as_exported_models_do(tmp_path, umask, mode):
    """A run's campaign.yaml (absolute model paths), tables and reports: private under a private
    umask (a shared cluster's), readable by the group under 022, as the model folders beside them."""
    from evo_merge.files import atomic_write

    (tmp_path / "old.md").write_text("old")
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "report.md", "new")
        atomic_write(tmp_path / "old.md", "new")  # replacing keeps no mode of the file replaced
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {"report.md": mode, "old.md": mode}


def test_a_write_into_a_missing_folder_names_the_file_and_a_taken_temporary_name_is_passed_over(tmp_path, monkeypatch):
    """The error names the file asked for, not its hidden temporary; a link planted at the temporary's
    name is neither written through nor replaced: another name is drawn (the file is created exclusively)."""
    import secrets

    from evo_merge.files import atomic_write

    with pytest.raises(OSError) as missing:
        atomic_write(tmp_path / "gone" / "report.md", "x")
    assert missing.value.filename == str(tmp_path / "gone" / "report.md")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    (tmp_path / ".report.md.aaaa.tmp").symlink_to(outside)
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    atomic_write(tmp_path / "report.md", "new")
    assert outside.read_text() == "mine" and (tmp_path / "report.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.md.aaaa.tmp", "outside.txt", "report.md"]


def test_a_database_disk_io_error_says_what_may_cause_it():
    from evo_merge.cli.faults import as_fault

    fault = as_fault(sqlite3.OperationalError("disk I/O error"))
    assert fault.message == ("campaign database: disk I/O error (a full disk, a file-size limit such as `ulimit -f`, "
                             "or a failing disk)")


def test_a_run_killed_in_its_first_seconds_is_said_to_be_one(tmp_path):
    """Killed before it wrote campaign.yaml, the folder holds only the lock: `resume` and `status` said
    "not a campaign run folder", with no word that `run` starts it again."""
    from evo_merge.search.lock import LOCK_FILE

    run = tmp_path / "my run"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    for command in ("resume", "status"):
        code, output = invoke(command, run)
        one_line_error(code, output, f"{run}: a run stopped before it recorded its campaign (no campaign.yaml); "
                                     f"`evo-merge run CAMPAIGN.yaml --out '{run}'` starts it again")
    (run / "notes.txt").write_text("mine")
    one_line_error(*invoke("status", run), "not a campaign run folder (no campaign.yaml)")


def test_a_non_finite_number_is_refused_before_it_is_written(tmp_path):
    """It was committed, then read back as "damaged (edited, or not written by evo-merge)" on every
    later open of the run folder."""
    store = CampaignStore(tmp_path)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        store.add("k", phase="search", generation=1, method="ties", status="ok", estimates={"a": 0.5},
                  estimate_se={"a": float("nan")})
    store.close()
    reopened = CampaignStore(tmp_path)
    assert reopened.evaluations() == [] and reopened.get("k") is None


def test_a_lock_file_that_is_no_regular_file_is_refused_in_one_line(copy):
    """A crafted folder's `.evo-merge.lock` as a FIFO: `resume` gave `OSError: [Errno 22]` from
    truncating it; `status`, which only looks, is not held on it."""
    from evo_merge.search.lock import LOCK_FILE

    (copy / LOCK_FILE).unlink(missing_ok=True)
    os.mkfifo(copy / LOCK_FILE)
    code, output = invoke("resume", copy)
    one_line_error(code, output, f"{copy / LOCK_FILE}: not a regular file, so not the run folder's lock; remove it")
    code, output = invoke("status", copy)
    assert code == 0, output


def test_a_candidate_the_store_does_not_hold_is_named(tmp_path):
    """Reading or adding to an evaluation that is not stored is a caller's slip: said with its key."""
    store = CampaignStore(tmp_path / "run")
    try:
        for call in (lambda: store.item_scores("ties|0.5"), lambda: store.add_items("ties|0.5", {}, {}, None, 0.0)):
            with pytest.raises(LookupError, match=r"no evaluation of candidate 'ties\|0.5' is stored"):
                call()
    finally:
        store.close()


def test_the_paths_a_run_prints_are_one_line_each_for_a_script_to_read(finished, tmp_path):
    """Sent to a pipe, `model NAME: PATH` and `report: PATH` were folded at 200 columns, in the
    middle of a long path: `sed -n 's/^model balanced: //p'` found nothing."""
    deep = tmp_path / ("a-long-folder-name-" * 6) / ("another-long-one-" * 6) / "run"
    shutil.copytree(finished[0], deep)
    result = CliRunner().invoke(cli, ["resume", str(deep)])
    assert result.exit_code == 0, result.output
    printed = result.stdout.splitlines()
    assert f"report: {deep / 'report.md'}" in printed
    models = [line.removeprefix("model ").split(": ", 1) for line in printed if line.startswith("model ")]
    assert models and all((deep / "models" / Path(path).name) == Path(path) for _, path in models), printed


@pytest.mark.parametrize("links", [True, False])
def test_a_file_written_only_where_none_is_keeps_one_put_there_first(tmp_path, monkeypatch, links):
    """`atomic_write(replace=False)`: a new file is put in place whole, and a file that is there by
    then (another command's output, written after this one checked) is kept, the write refused; the
    same on a file system without hard links, where the name is checked just before the rename."""
    import errno

    from evo_merge.files import atomic_write

    if not links:
        def no_links(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    atomic_write(tmp_path / "scores.csv", "ours", replace=False)
    (tmp_path / "theirs.csv").write_text("theirs")
    with pytest.raises(FileExistsError) as raised:
        atomic_write(tmp_path / "theirs.csv", "ours", replace=False)
    assert raised.value.filename == str(tmp_path / "theirs.csv")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"scores.csv": "ours", "theirs.csv": "theirs"}


def test_a_report_written_as_its_run_finishes_is_the_finished_runs(copy, monkeypatch):
    """`report` of a working run read the folder unfinished, the run then wrote its final report,
    marked itself finished and ended, and the snapshot was written over the final report: a finished
    run's report said "not finished ... a run is working in the folder (pid N)", N gone (audit 112).
    The run's end is played here in the process: the lock a run holds, and what it does last."""
    import evo_merge.report.campaign
    from evo_merge.search.store import FINISHED_META

    with closing(CampaignStore(copy)) as store:
        store.set_meta(FINISHED_META, False)  # in its final phase
    working = RunLock(copy).__enter__()
    real = evo_merge.report.campaign.write_report
    snapshots = []

    def run_finishes_meanwhile(run, store, facts, exported, finished, running=None):
        if not snapshots:  # the run's last steps, while `report` was reading
            with closing(CampaignStore(copy)) as its_store:
                its_store.mark_finished()
            working.__exit__(None, None, None)
        snapshots.append(finished)
        return real(run, store, facts, exported, finished, running=running)

    monkeypatch.setattr(evo_merge.report.campaign, "write_report", run_finishes_meanwhile)
    code, out = invoke("report", copy)
    assert code == 0, out
    assert snapshots == [False, True] and "working" not in out
    assert "not finished" not in (copy / "report.md").read_text()


def test_a_report_of_a_run_that_stops_unfinished_meanwhile_names_no_run_working(copy, monkeypatch):
    """The run working as `report` began is interrupted (its lock let go, not finished) while the
    report is written: the report and the command's line said a run was working, of a process
    that was gone (audit 115). It is written again, of a stopped run."""
    import evo_merge.report.campaign
    from evo_merge.search.store import FINISHED_META

    with closing(CampaignStore(copy)) as store:
        store.set_meta(FINISHED_META, False)
    working = RunLock(copy).__enter__()
    real = evo_merge.report.campaign.write_report
    snapshots = []

    def run_stops_meanwhile(run, store, facts, exported, finished, running=None):
        if not snapshots:
            working.__exit__(None, None, None)  # interrupted: the lock let go, the run not finished
        snapshots.append(running)
        return real(run, store, facts, exported, finished, running=running)

    monkeypatch.setattr(evo_merge.report.campaign, "write_report", run_stops_meanwhile)
    code, out = invoke("report", copy)
    assert code == 0 and "working" not in out and len(snapshots) == 2 and snapshots[1] is None, (out, snapshots)
    report = (copy / "report.md").read_text()
    assert "a run is working in the folder" not in report and "not finished" in report


def test_a_report_of_a_finished_run_that_a_process_holds_is_the_finished_runs(copy):
    """A finished run held by a `resume` (re-exporting a pick) is reported as finished, not as a run
    working in the folder (audit 115)."""
    with RunLock(copy):
        code, out = invoke("report", copy)
    assert code == 0 and "working" not in out, out
    report = (copy / "report.md").read_text()
    assert "a run is working in the folder" not in report and "not finished" not in report


def test_report_takes_no_lock_so_nothing_takes_it_for_a_run(copy, monkeypatch):
    """`report` holding the run folder's lock while it wrote made `status` of a finished run say
    "running: pid N; in the final phase" and a `resume` be refused as "in use" (audit 113), and failed
    on file systems without locks: it writes as it reads, without the lock."""
    import evo_merge.report.campaign

    real = evo_merge.report.campaign.write_report
    seen = []

    def writes(*args, **kwargs):
        seen.append((holder(copy), invoke("status", copy)[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(evo_merge.report.campaign, "write_report", writes)
    code, out = invoke("report", copy)
    assert code == 0 and len(seen) == 1 and seen[0][0] is None, (out, seen)
    assert "generation 3/3 (finished)" in seen[0][1], seen


def test_a_write_that_cannot_be_put_in_place_names_the_file_asked_for(tmp_path):
    """The rename that puts a written file in place failed naming its hidden temporary (`.NAME.xyz`),
    which is gone by then (audit 115): the error names the file asked for, and nothing is left."""
    from evo_merge.files import atomic_write

    (tmp_path / "report.md").mkdir()
    (tmp_path / "report.md" / "mine").write_text("x")  # a folder of the user's where the file goes
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "report.md", "ours")
    assert caught.value.filename == str(tmp_path / "report.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_a_link_at_a_new_files_name_is_replaced_itself(tmp_path):
    """A dangling link at a CSV output passes the checks before the work (it does not exist), and was
    replaced by the file; the no-replace write refused it afterwards as an output "that appeared"
    (audit 113). The link itself is replaced; what it pointed at is never written."""
    from evo_merge.files import atomic_write

    (tmp_path / "scores.csv").symlink_to(tmp_path / "nowhere" / "scores.csv")
    atomic_write(tmp_path / "scores.csv", "ours", replace=False)
    assert not (tmp_path / "scores.csv").is_symlink() and (tmp_path / "scores.csv").read_text() == "ours"
    assert not (tmp_path / "nowhere").exists()


def test_a_report_of_a_stopped_run_that_a_resume_finishes_meanwhile_is_the_finished_runs(copy, monkeypatch):
    """`report` of a stopped run, and a `resume` that starts and finishes the run while the report is
    written: the stale report, written last, said "not finished" of a finished run (audit 114)."""
    import evo_merge.report.campaign
    from evo_merge.search.store import FINISHED_META

    with closing(CampaignStore(copy)) as store:
        store.set_meta(FINISHED_META, False)  # stopped in its final phase, no run working
    real = evo_merge.report.campaign.write_report
    snapshots = []

    def resumed_and_finished_meanwhile(run, store, facts, exported, finished, running=None):
        if not snapshots:
            with RunLock(copy), closing(CampaignStore(copy)) as its_store:  # the resume, start to end
                its_store.mark_finished()
        snapshots.append((finished, running))
        return real(run, store, facts, exported, finished, running=running)

    monkeypatch.setattr(evo_merge.report.campaign, "write_report", resumed_and_finished_meanwhile)
    code, out = invoke("report", copy)
    assert code == 0 and snapshots == [(False, None), (True, None)], (out, snapshots)
    assert "not finished" not in (copy / "report.md").read_text()


def test_a_held_folder_swept_before_its_lock_is_taken_is_made_again(tmp_path, monkeypatch):
    """A writer's new temporary folder is made, then locked: a sweep in between finds it unlocked and
    removes it, and the writer would have written into a folder that is gone. It is made again, and
    what the block gets exists and is held (a second sweep leaves it)."""
    import tempfile

    from evo_merge.files import held_temporary_folder, sweep_unheld

    real = tempfile.mkdtemp
    made = []

    def swept_as_soon_as_made(*args, **kwargs):
        folder = real(*args, **kwargs)
        made.append(folder)
        if len(made) == 1:
            assert sweep_unheld([Path(folder)]) == [Path(folder)]  # another writer's sweep, just then
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", swept_as_soon_as_made)
    with held_temporary_folder(tmp_path, ".saving-") as folder:
        assert len(made) == 2 and folder == Path(made[1]) and folder.is_dir()
        assert sweep_unheld([folder]) == [] and folder.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_held_folder_swept_between_its_open_and_its_lock_is_made_again(tmp_path, monkeypatch):
    """The same race a step later: the sweep lands after the writer opened its folder and before it
    locked it. The lock is then on a folder that is gone, which only the check that the locked
    folder is still the one at its path sees (audit 115)."""
    import os

    import evo_merge.files as files

    real = os.open
    opened = []

    def swept_once_opened(path, flags, *args, **kwargs):
        fd = real(path, flags, *args, **kwargs)
        if Path(path).name.startswith(".saving-") and not opened:
            opened.append(Path(path))
            assert files.sweep_unheld([Path(path)]) == [Path(path)]  # another writer's sweep, just then
        return fd

    monkeypatch.setattr(files.os, "open", swept_once_opened)
    with files.held_temporary_folder(tmp_path, ".saving-") as folder:
        assert folder.is_dir() and folder != opened[0] and not opened[0].exists()
        assert files.sweep_unheld([folder]) == [] and folder.is_dir()


def test_status_names_the_first_of_candidates_tied_for_best_as_it_always_has(copy):
    """`status` ranks the search's evaluations by id, then the baselines: made to share the front's
    order (generation, key), a folder whose best was a tie named another evaluation than it had
    (audit 131). Two search evaluations tied at the top, the later one's key sorting first."""
    store = CampaignStore(copy)
    search = [e for e in store.evaluations("search") if e.status == "ok"]
    store.close()
    first, later = next((a, b) for a in search for b in search if a.id < b.id and b.key < a.key
                        and a.generation == b.generation)
    top = {task: 1.0 for task in first.estimates}
    with closing(sqlite3.connect(copy / "state.sqlite")) as db:
        for evaluation in (first, later):
            db.execute("UPDATE evaluations SET estimates = ? WHERE id = ?", (json.dumps(top), evaluation.id))
        db.commit()
    code, output = invoke("status", copy)
    assert code == 0 and "1.000 ± " in output, output
    best = [line for line in output.splitlines() if line.startswith("best ")]
    assert best and all(f"(evaluation {first.id}," in line for line in best), best
