"""Build step: copy the shipped data folders into the wheel under evo_merge/_data/.

Everything else is declared in pyproject.toml. The top-level folders stay the source of truth
(scripts write them); only built packages carry the copies, so nothing is duplicated in git.
"""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = runpy.run_path(str(ROOT / "evo_merge" / "shipped.py"))["SHIPPED"]  # read, not imported: no torch at build time


class BuildWithShippedData(build_py):
    def run(self) -> None:
        super().run()
        for name in SHIPPED:
            target = Path(self.build_lib) / "evo_merge" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithShippedData})
