"""The alignment methods a user can name: one list, read by the campaign schema, the library and
the CLI, so a new method is added in one place."""

from __future__ import annotations

from typing import Literal, get_args

AlignMethod = Literal["weight", "activation", "mudsc", "c2m3"]
METHODS: tuple[str, ...] = get_args(AlignMethod)
NEEDS_DATA: tuple[str, ...] = ("activation", "mudsc")  # they match activations on a sample of inputs
