"""The type of every path a command takes: `~` expanded, as the shell leaves it in `--out=~/x`.

Some writers expanded it and others did not, so one `run --out '~/r'` put its database in a folder
named `~` under the working directory and its exported models under the home folder.
"""

from __future__ import annotations

import os
from typing import Any

import click


class UserPath(click.Path):
    """`click.Path` with a leading `~` expanded (a Hub id never starts with one, so model options
    that also take Hub ids use it too)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)
