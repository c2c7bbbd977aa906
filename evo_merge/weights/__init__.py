"""Checkpoint I/O: lazy reading of HF folders and state dicts, compatibility checks, atomic export."""

from evo_merge.weights.checkpoint import Checkpoint, open_checkpoints
from evo_merge.weights.compat import check_compatible
from evo_merge.weights.dtypes import DTYPES, parse_dtype
from evo_merge.weights.export import write_model_folder

__all__ = ["DTYPES", "Checkpoint", "check_compatible", "open_checkpoints", "parse_dtype", "write_model_folder"]
