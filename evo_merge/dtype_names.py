"""The floating dtypes a user may name, as a table without torch: the campaign schema reads it, and
`weights.dtypes` maps the names to torch dtypes."""

NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
# the largest float32: a coefficient or a setting beyond it cannot scale a float32 tensor (a merge
# of weight 1e39 stopped at its first tensor with an overflow traceback)
FLOAT32_MAX = 3.4028234663852886e38
