"""The wheel works outside the checkout: built, installed into a fresh venv, `evo-merge eval
--task arith` finds the shipped benchmark, and the fitted IRT models are in the package."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from evo_merge.zoo.tiny import save_tiny_family

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def _fresh_venv(folder: Path) -> Path:
    """A venv that sees this interpreter's installed packages (so nothing is downloaded) but not
    its evo_merge: the parent's site-packages go on the path through a .pth line, which adds
    the folder without running the .pth files (editable installs) inside it."""
    venv.create(folder, system_site_packages=True, with_pip=False)
    python = folder / "bin" / "python"
    own = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], folder).stdout.strip()
    (Path(own) / "parent-site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _source_copy(folder: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) copied to `folder`:
    a build there cannot pick up stale files from the checkout's own build/ folder."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


@pytest.mark.slow
def test_the_wheel_runs_eval_on_a_shipped_benchmark_from_outside_the_checkout(tmp_path):
    wheels, source = tmp_path / "wheels", _source_copy(tmp_path / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(source)], tmp_path)
    (wheel,) = wheels.glob("evo_merge-*.whl")
    python = _fresh_venv(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    base, _ = save_tiny_family(work / "models", n_finetunes=0)
    probe = ("import evo_merge, evo_merge.shipped as s; print(evo_merge.__file__); "
             "print(s.shipped_dir('benchmarks')); print(sorted(p.name for p in s.shipped_dir('irt_models').iterdir()))")
    package, benchmarks, irt_models = _run([str(python), "-c", probe], work).stdout.splitlines()
    assert Path(package).is_relative_to(tmp_path / "venv") and Path(benchmarks).is_relative_to(tmp_path / "venv")
    assert irt_models == "['arith', 'lang', 'seq']"

    (work / "items.txt").write_text("arith-test-00000\narith-test-00001\narith-test-00002\n")
    out = work / "scores.csv"
    args = ["eval", "--model", str(base), "--task", "arith", "--items", "items.txt", "--out", str(out)]
    result = _run([str(tmp_path / "venv" / "bin" / "evo-merge"), *args], work)
    assert "evo_arith: 3 items" in result.stdout
    assert out.read_text().splitlines()[0] == "subject,item,score,scenario" and len(out.read_text().splitlines()) == 4
