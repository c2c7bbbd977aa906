"""Regenerate the shipped benchmarks: `benchmarks/<family>/{test.jsonl,evo_<family>.yaml}`.

Deterministic: running it again rewrites identical files (a test checks the shipped files
against the generator). Usage: `.venv/bin/python scripts/make_benchmarks.py [--out benchmarks]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evo_merge.tasks.synthetic import FAMILIES, write_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks")
    args = parser.parse_args()
    for family in FAMILIES:
        print(write_benchmark(family, args.out))


if __name__ == "__main__":
    main()
