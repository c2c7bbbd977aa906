"""What the machine a campaign runs on can hold: the memory this process may still take, the free
disk, and whether a folder's files live in RAM. The plan (`footprint`) compares its needs with
these before anything is loaded, so a run that cannot fit stops with a line instead of being
killed by the kernel mid-run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1
AVAILABLE, UNDER_CGROUP = "available", "available under its memory cgroup's limit"


def available_memory(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> tuple[int | None, str]:
    """(bytes this process may still take, how the plan names them): the host's available memory
    (MemAvailable), or less where the process's memory cgroup allows less (a container's limit,
    a Slurm job's, a systemd slice's): there the kernel kills the process at the cgroup's limit,
    whatever the host has free. None where neither can be read."""
    host = _host_available()
    cgroup = cgroup_headroom(proc_cgroup, root)
    if cgroup is not None and (host is None or cgroup < host):
        return cgroup, UNDER_CGROUP
    return host, AVAILABLE


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


# per cgroup version: the controller's folder under the root, its limit, usage and the memory.stat
# line of the file cache it can drop (counted as free, as MemAvailable counts it)
_V1 = ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_V2 = ("", "memory.max", "memory.current", "inactive_file")


def cgroup_headroom(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int | None:
    """The least room left under a memory limit of this process's cgroup or of any cgroup above
    it (limit less usage, plus the file cache the kernel reclaims first); None where no limit is
    set or none can be read (not Linux, no cgroup file system)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            version = _V2
        elif "memory" in controllers.split(","):
            version = _V1
        else:
            continue
        base = root / version[0] if version[0] else root
        rooms += [room for folder in _levels(base, path) if (room := _room(folder, *version[1:])) is not None]
    return min(rooms) if rooms else None


def _levels(base: Path, path: str) -> list[Path]:
    """The cgroup's folder and those above it up to the mount; the mount alone where the cgroup's
    path is not under it (a container sees its own cgroup as the root of the mount)."""
    own = base / path.strip("/")
    if not own.is_dir():
        return [base]
    return [own, *(p for p in own.parents if p == base or base in p.parents)]


def _room(folder: Path, limit_file: str, usage_file: str, cache_line: str) -> int | None:
    try:
        text = (folder / limit_file).read_text().strip()
        if text == "max" or int(text) >= NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text())
        cache = next((int(line.split()[1]) for line in (folder / "memory.stat").read_text().splitlines()
                      if line.split()[:1] == [cache_line]), 0)
    except (OSError, ValueError, IndexError):
        return None
    return max(int(text) - usage + cache, 0)


def _existing(directory: str) -> Path:
    """`directory`, or the nearest parent that exists: where it would be created."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(directory: str) -> int | None:
    """Free bytes on the file system that holds `directory`, or would once it is created; None when
    none can be read."""
    try:
        return shutil.disk_usage(_existing(directory)).free
    except OSError:
        return None


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")  # file systems whose files are pages of RAM
MOUNTS = Path("/proc/self/mounts")


def memory_filesystem(directory: str, mounts: Path = MOUNTS) -> str | None:
    """The type of the file system holding `directory` (or where it would be created) when that
    keeps its files in RAM (tmpfs, ramfs: /dev/shm, and /tmp on many systems), else None; None
    too where the mount table cannot be read (not Linux).

    `disk` placement moves the stored weights into files to keep them out of RAM: in such a
    folder they stay in RAM, and a plan counting them as disk would let a 7B campaign start that
    the kernel then kills."""
    try:
        table = mounts.read_text()
    except OSError:
        return None
    path = os.path.realpath(_existing(directory))
    best, kind = "", None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # `\040` is a space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mounts is the one in effect
            best, kind = point, fields[2]
    return kind if kind in MEMORY_FILESYSTEMS else None
