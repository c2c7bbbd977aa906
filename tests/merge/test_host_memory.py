"""The memory a campaign's plan compares its needs with: the host's available memory, or a memory
cgroup's room where that is less (a container, a Slurm job). `plan` said a 12.3 GiB campaign fit
in a 6 GiB container from the host's 22.5 GiB free, and the kernel killed the run without a word."""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from evo_merge.merge.host import AVAILABLE, UNDER_CGROUP, available_memory, cgroup_headroom

GIB = 2**30


def cgroup(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def v1(limit: int, usage: int, cache: int = 0) -> dict[str, str]:
    return {"memory.limit_in_bytes": f"{limit}\n", "memory.usage_in_bytes": f"{usage}\n",
            "memory.stat": f"cache 9\ninactive_file 1\ntotal_inactive_file {cache}\n"}


def v2(limit: str, usage: int, cache: int = 0) -> dict[str, str]:
    return {"memory.max": f"{limit}\n", "memory.current": f"{usage}\n",
            "memory.stat": f"anon 5\ninactive_file {cache}\nactive_file 7\n"}


def proc(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cgroup").write_text(text)
    return tmp_path / "cgroup"


def test_a_v1_limit_leaves_its_limit_less_its_use_plus_the_cache_it_can_drop(tmp_path):
    root = tmp_path / "sys"
    cgroup(root / "memory", v1(2**63 - 4096, 10 * GIB))  # the machine's root: no limit
    cgroup(root / "memory" / "slurm" / "job_7", v1(6 * GIB, 2 * GIB, cache=GIB // 2))
    text = "9:pids:/slurm/job_7\n4:memory:/slurm/job_7\n0::/\n"
    assert cgroup_headroom(proc(tmp_path, text), root) == 6 * GIB - 2 * GIB + GIB // 2


def test_the_tightest_limit_above_the_cgroup_counts(tmp_path):
    root = tmp_path / "sys"
    cgroup(root, v2("max", 10 * GIB))
    cgroup(root / "kubepods", v2(str(4 * GIB), 3 * GIB))  # the pod's limit, the container's looser
    cgroup(root / "kubepods" / "c1", v2(str(8 * GIB), 3 * GIB))
    assert cgroup_headroom(proc(tmp_path, "0::/kubepods/c1\n"), root) == GIB


def test_a_container_sees_its_own_cgroup_at_the_root_of_the_mount(tmp_path):
    root = tmp_path / "sys"
    cgroup(root / "memory", v1(3 * GIB, GIB))
    assert cgroup_headroom(proc(tmp_path, "4:memory:/docker/0123abcd\n"), root) == 2 * GIB


@pytest.mark.parametrize("files", [v2("max", GIB), {"memory.current": "5\n"}, v2("lots", GIB)])
def test_no_limit_or_no_readable_one_is_none(tmp_path, files):
    root = tmp_path / "sys"
    cgroup(root, files)
    assert cgroup_headroom(proc(tmp_path, "0::/\n"), root) is None
    assert cgroup_headroom(tmp_path / "no-such-file", root) is None


def test_the_plan_takes_the_cgroup_s_room_where_it_is_the_smaller_and_says_so(tmp_path):
    root = tmp_path / "sys"
    cgroup(root, v2(str(GIB), GIB // 2))
    assert available_memory(proc(tmp_path, "0::/\n"), root) == (GIB // 2, UNDER_CGROUP)
    cgroup(root, v2(str(2**50), 0))  # more than any host here has
    host, label = available_memory(proc(tmp_path, "0::/\n"), root)
    assert label == AVAILABLE and host < 2**50


V1_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(not os.access(V1_MEMORY, os.W_OK), reason="no writable cgroup v1 memory controller here")
def test_a_process_in_a_real_memory_cgroup_is_planned_within_its_limit(tmp_path):
    """A real cgroup (as `systemd-run -p MemoryMax` or a container makes one): a child process moved
    into a 512 MiB group reads the group's room, not the host's."""
    group = V1_MEMORY / f"evo-merge-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(512 * 2**20))
        script = textwrap.dedent(f"""
            import os
            from pathlib import Path
            Path({str(group)!r}, "cgroup.procs").write_text(str(os.getpid()))
            from evo_merge.merge.host import available_memory
            print(*available_memory(), sep="|")
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        room, label = out.strip().split("|")
        assert label == UNDER_CGROUP and 0 < int(room) <= 512 * 2**20
    finally:
        group.rmdir()
