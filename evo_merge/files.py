"""Writing files so that a failure says where and leaves nothing half-written: a write's OSError
names its file, an output's folder is tried before the work that fills it, and a file is replaced
whole (readers see the old or the new one, never half; a link planted where it goes is replaced,
never written through)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evo_merge.errors import UserError


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An OSError raised inside names `path` when it names no file: a write that fails part-way
    (a full disk, a file-size limit) carries no file name, and `No space left on device` alone does
    not say where the command was writing."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, with what else the parser raises on bad input refused as a JSONDecodeError, as
    any other unreadable JSON, which every read of a received file catches: JSON nested deeper than
    the parser recurses (a RecursionError; a config.json of 200,000 `[`, audit 116), and an integer
    of more digits than Python converts (a plain ValueError; a 5,000-digit seed, audit 117)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise json.JSONDecodeError(reason, text if isinstance(text, str) else "", 0) from None


def check_writable(out: Path, option: str | None = None) -> None:
    """`out` (a file or folder to write; `option` the flag that named it) can be created where it is
    meant to go: a read-only place, a path under a file or under /proc was found out only when the
    result was saved, after the work (measuring a pick at 7B is hours). Tried, not inferred: a
    temporary file is made in the folder that will hold it (or its staged copy), and removed."""
    named = f"{option} {out}" if option else f"cannot write {out}"  # as the flag's, or the write's, errors say
    where = next(p for p in Path(out).absolute().parents if p.exists())
    if not where.is_dir():
        raise UserError(f"{named}: {where} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UserError(f"{named}: cannot write there ({why})" if option else f"{named}: {why}") from None


def atomic_write(path: Path, data: bytes | str, *, replace: bool = True) -> None:
    """Write to a new temporary sibling, fsync, rename, fsync the folder: readers see the old or the
    new file, never half, and a power loss after the command said "wrote" keeps the new one (without
    the folder's sync, its new entry could be lost); a link planted at `path` (a run folder someone
    sent) is replaced, never written through.
    The file gets the mode any new file gets under the umask, as the exported models do: a
    private umask keeps a run's paths and scores private, 022 lets the user's group read them.
    `replace=False`: `path` must not exist when the file is put there, checked by the kernel as it
    is (a hard link, which fails on an existing name), so a file another process wrote there
    meanwhile is kept and this one raises FileExistsError."""
    fd, tmp = _new_sibling(path)
    try:
        with writing(path), os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if replace:
                os.replace(tmp, path)
            else:
                put_new(tmp, path)
        except OSError as exc:  # named as the file asked for: the temporary one is removed below
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_tree(folder: Path) -> None:
    """Every file under `folder`, then each folder, written through to the disk: a folder about to
    be renamed into place (a power loss after the rename must not leave a short file under it)."""
    for top, _, files in os.walk(folder):
        for name in files:
            with open(Path(top) / name, "rb") as fh:
                os.fsync(fh.fileno())
        sync_folder(Path(top))


def sync_folder(folder: Path) -> None:
    """A folder's entries (a rename into it) written through, where the system lets a folder be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # a file system that cannot sync a folder
        pass
    finally:
        os.close(descriptor)


def put_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` only if nothing has it: a hard link fails on an existing name. On a
    file system without hard links (FAT, some network mounts), the name is checked just before a rename.
    A link at `path` is replaced itself (what it points at is never written, and holds nothing lost):
    the checks before the work let a dangling one through, as `atomic_write` replaces one."""
    if os.path.islink(path):
        os.replace(tmp, path)
        return
    taken = FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))  # named as the file asked for
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise taken from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise taken from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


_SIBLING = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")  # `_new_sibling`'s name for a write of NAME


def partial_write_of(name: str) -> str | None:
    """The file an `atomic_write` left unfinished under the hidden name `name` was writing (a process
    killed before its rename leaves it), or None where `name` is no such write."""
    return match["name"] if (match := _SIBLING.match(name)) else None


def _new_sibling(path: Path) -> tuple[int, Path]:
    """A new hidden file beside `path`, open for writing, created with mode 0666 less the umask (`mkstemp`'s 0600
    would hide a report from the user's group, a fixed 0644 would show it past a private umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:  # a missing or read-only folder: named as the file asked for, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def held_temporary_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new temporary folder in `parent`, held under an flock while the block runs and removed after
    it: a sweep (`sweep_unheld`, `weights.export.sweep_stale_siblings`) then tells one a killed writer
    left (the kernel drops a dead process's lock, kill -9 included) from one a live writer is filling.
    A sweep may remove a new folder before its lock is taken: another is made then."""
    while True:
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(folder)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep_unheld(folders: Iterable[Path]) -> list[Path]:
    """Remove those of `folders` (`held_temporary_folder`s) that no live writer holds; the others stay."""
    swept = []
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # finished meanwhile, or a link: not a writer's folder
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
        finally:
            os.close(fd)
    return swept
