"""The floating dtypes a user may name, as a table without torch: the campaign schema reads it, and
`weights.dtypes` maps the names to torch dtypes."""

NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
