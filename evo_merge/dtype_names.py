"""The floating dtypes a user may name, as a table without torch: the campaign schema reads it, and
`weights.dtypes` maps the names to torch dtypes."""

import math

NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_key(name: str) -> str | None:
    """The name of `NAMES` a user's dtype name stands for (any case, `torch.` or not, the short names
    of `ALIASES`), or None for none: the one rule `weights.parse_dtype` and a recipe's keys read by."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    return key if key in NAMES else None


def unknown_dtype(name: str) -> str:
    """What is said of a dtype name `dtype_key` does not know."""
    return f"unknown dtype {str(name)!r}; choose one of {', '.join([*NAMES, *ALIASES])}"


# the largest float32: a coefficient or a setting beyond it cannot scale a float32 tensor (a merge
# of weight 1e39 stopped at its first tensor with an overflow traceback)
FLOAT32_MAX = 3.4028234663852886e38


def float32_refusal(number: float) -> str | None:
    """Why `number` cannot scale a float32 tensor (not finite, or beyond float32's range; an
    integer no float holds overflowed `math.isfinite` itself), or None where it can."""
    try:
        if math.isfinite(number) and abs(float(number)) <= FLOAT32_MAX:
            return None
    except OverflowError:
        pass
    # a float as written (3.4028235e+38 read as 3.40282e+38, inside); an integer by its size
    shown = repr(float(number)) if isinstance(number, float) else (
        str(number) if abs(number) < 10**20 else f"an integer of about {int(number.bit_length() * 0.30103) + 1} digits")
    return f"expected a finite number within float32's range (±{FLOAT32_MAX:.4g}), got {shown}"
