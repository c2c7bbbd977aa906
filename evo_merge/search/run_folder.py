"""A run folder on disk, apart from its database: what may be started in a folder and what an
existing run folder must hold (`check_run_folder`, `check_run_files`), the links a run refuses to
write through, how a pick folder the run exported may have changed, the folder a failed start
leaves removed, and how the run names the folders inside it."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from evo_merge.errors import UserError
from evo_merge.markup import shell
from evo_merge.search.layout import ALIGNED_FOLDER, CAMPAIGN_FILE, IRT_FOLDER
from evo_merge.search.lock import LOCK_FILE, holder
from evo_merge.search.store import CampaignStore

# what a run folder holds before its campaign is written: the database (with SQLite's journal files), the lock
STARTED_FILES = {CampaignStore.DB, f"{CampaignStore.DB}-wal", f"{CampaignStore.DB}-shm", LOCK_FILE}


def check_run_files(run_dir: Path) -> None:
    """An existing run folder has its campaign.yaml and its database; opening a store would create one."""
    if run_dir.is_file():  # `resume campaign.yaml`: the campaign given where its run folder belongs
        raise UserError(f"{run_dir}: a file, not a run folder (give the folder `evo-merge run --out` wrote)")
    if not run_dir.exists():  # a mistyped path: "not a campaign run folder" read as if something were there
        raise UserError(f"{run_dir}: no such folder")
    for name in (CAMPAIGN_FILE, CampaignStore.DB):
        if not (run_dir / name).is_file():
            if (held := {p.name for p in run_dir.iterdir()}) and held <= STARTED_FILES:  # in its first seconds
                if pid := holder(run_dir):  # and working: `resume` now would be refused as in use
                    raise UserError(f"{run_dir}: a run is starting here (pid {pid}); it has not written its campaign "
                                    "yet")
                raise UserError(f"{run_dir}: a run stopped before it recorded its campaign (no {name}); "
                                f"`{shell('evo-merge', 'run', 'CAMPAIGN.yaml', '--out', run_dir)}` starts it again")
            if name == CampaignStore.DB and (run_dir / CAMPAIGN_FILE).is_file():  # a run's records deleted
                raise UserError(f"{run_dir}: a run folder whose {name} is gone (the run's records); restore it from a "
                                "backup, or start the campaign again in a new run folder")
            raise UserError(f"{run_dir}: not a campaign run folder (no {name})")
    check_no_links(run_dir)


RECORD_FOLDERS = (IRT_FOLDER, ALIGNED_FOLDER)  # a run's own records, written file by file (its models/: replaced whole)


def check_no_links(run_dir: Path) -> None:
    """Refuse a run folder holding a link: a campaign writes its entries (models/, the report, the
    database) and the files of its records (the IRT models and their anchors, the aligned copies)
    through it, so a received folder could have `resume` write or replace files elsewhere. The run
    folder itself may be a link, or lie on any disk."""
    links = sorted(entry for entry in run_dir.iterdir() if entry.is_symlink()) if run_dir.is_dir() else []
    for name in RECORD_FOLDERS:
        if not links and (run_dir / name).is_dir():
            links = sorted(_links_under(run_dir / name))
    if links:
        raise UserError(f"{links[0]}: is a link (to {os.readlink(links[0])}); a run folder's entries are written "
                        "through, so links are refused: put the whole run folder where its files should be (--out)")


def _links_under(folder: Path) -> Iterator[Path]:
    """The links anywhere under `folder` (not followed: os.walk lists a link to a folder, never enters it)."""
    return (Path(top) / entry for top, dirs, files in os.walk(folder) for entry in dirs + files
            if (Path(top) / entry).is_symlink())


def pick_folder_change(folder: Path) -> str | None:
    """Why a pick folder the run exported is no longer as the run wrote it, from its files alone
    (None: nothing seen): its card gone (`push` refuses a folder without one), or a file made a link
    (what it points at can change under the pick). `resume` exports such a pick again; `status`
    says so. Its weights are compared with the run's record by the exporter, which reads them."""
    if link := next(_links_under(folder), None):
        return f"{link.relative_to(folder)} is a link (to {os.readlink(link)}), where the run wrote a file"
    if not (folder / "README.md").is_file():
        return "its model card (README.md) is gone"
    return None


def check_run_folder(run_dir: Path, option: str | None = "--out") -> None:
    """Refuse to start a campaign in a folder that holds something else: its files would be
    overwritten by the report and the exported models. New, empty and run folders are fine.
    `option`: the command-line option the folder was given by, named in the refusal."""
    named = f"{option} {run_dir}" if option else str(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{named}: is a file, not a folder")
    if not run_dir.is_dir():
        return
    check_no_links(run_dir)
    entries = {entry.name for entry in run_dir.iterdir()} - {LOCK_FILE}
    if entries and CampaignStore.DB not in entries:
        raise UserError(f"{named}: not empty and not a run folder (no {CampaignStore.DB}); give a new or empty folder")


def remove_unused_run_folder(run_dir: Path) -> None:
    """Remove a run folder in which no evaluation was stored: a start that failed (a bad model
    path, a task that does not load) leaves nothing bound to its config, so the corrected
    config starts afresh in the same folder."""
    db = run_dir / CampaignStore.DB
    if db.exists():
        try:
            with closing(sqlite3.connect(db)) as con:
                if con.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]:
                    return
        except sqlite3.DatabaseError:  # unreadable: not ours to judge, keep it
            return
    shutil.rmtree(run_dir, ignore_errors=True)


def in_run(folder: Path, run_dir: Path) -> str:
    """A folder as a run records and shows it: relative to the run folder where inside it (an exported
    pick always is), so a moved or copied run names its own folders."""
    folder, run_dir = Path(folder).resolve(), Path(run_dir).resolve()
    return str(folder.relative_to(run_dir)) if folder.is_relative_to(run_dir) else str(folder)


def folder_identity(run_dir: Path) -> tuple[int, int]:
    """The run folder as the file system knows it (device, inode), whatever its path: a run checks
    against it that the folder it writes by path is still the one it opened (`check_in_place`)."""
    info = os.stat(run_dir)
    return info.st_dev, info.st_ino


def check_in_place(run_dir: Path, identity: tuple[int, int]) -> None:
    """Refuse to write on when the run folder was moved (or replaced) while the run worked in it.
    The database and the lock go with the folder, but the run writes its IRT models, picks and
    report by path: it recreated the old path and wrote them there, where a second run then
    started unrefused and took the first one's IRT models for its own (audit 138). Where the
    folder went is named when this process still holds it open (the lock does: Linux's /proc)."""
    try:
        same = folder_identity(run_dir) == identity
    except OSError:
        same = False
    if not same:
        now = _held_folder(identity)
        where = f" (it is now {now})" if now else ""
        how = ("was moved or replaced while this run worked in it" if run_dir.is_absolute() else
               "is no longer the folder this run opened (moved or replaced, or, its path being relative, the working "
               "directory changed)")
        raise UserError(f"run folder {run_dir} {how}{where}; the run stops here, with its records in the folder it "
                        f"opened: `{shell('evo-merge', 'resume', now or 'RUN')}` goes on where it is now")


def _held_folder(identity: tuple[int, int]) -> str | None:
    """The path of the folder `identity` names, found among this process's open files (Linux)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.startswith("/") and folder_identity(Path(path)) == identity:
                return path
        except OSError:
            continue
    return None
