"""What an estimator returns: estimates that carry their standard errors and the items they used.

A dict subclass, so callers that index `result["overall"]` keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class Estimate(dict):
    """{scenario: estimate, ..., "overall": estimate} with `.se` (same keys) and `.items_used`.

    Not `.items`: that would hide the dict method every caller iterating an estimate needs."""

    def __init__(self, values: Mapping[str, float], se: Mapping[str, float], items: Sequence[str] = ()) -> None:
        super().__init__(values)
        self.se: dict[str, float] = dict(se)
        self.items_used: list[str] = list(items)
