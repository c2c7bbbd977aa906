"""Where the data shipped with evo-merge lives: the benchmarks and the fitted IRT models.

The top-level `benchmarks/` and `irt_models/` folders of the source tree are the source of
truth; a wheel carries copies under `evo_merge/_data/` (setup.py's build step puts them there).
So a wheel install finds them inside the package, and a checkout (editable install, or the
package on PYTHONPATH) next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

Shipped = Literal["benchmarks", "irt_models"]
SHIPPED: tuple[str, ...] = get_args(Shipped)  # also read by setup.py
_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: Shipped) -> Path | None:
    """The folder of shipped data `name` (None when this install carries none)."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    return None


def shipped_benchmarks() -> dict[str, Path]:
    """Shipped benchmark name (folder name, e.g. `arith`) -> its folder."""
    folder = shipped_dir("benchmarks")
    if folder is None:
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if any(p.glob("*.yaml"))}


def shipped_benchmark(name: str) -> str | None:
    """The shipped benchmark `name` names (`arith`, or its task's name `evo_arith`); None for any other."""
    bare = name.removeprefix("evo_")
    return bare if bare in shipped_benchmarks() else None
