"""What the report tests' small store holds (a plain module, importable from any test file)."""

TASKS = ["alpha", "beta"]
