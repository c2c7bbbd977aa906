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
