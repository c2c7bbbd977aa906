"""Checkpoint I/O: lazy reading of HF folders and state dicts, compatibility checks, atomic export,
and whole model folders (HF or plain networks) opened and written as modules."""

from evo_merge.weights.checkpoint import Checkpoint, open_checkpoints
from evo_merge.weights.compat import check_compatible
from evo_merge.weights.dtypes import DTYPES, parse_dtype
from evo_merge.weights.export import write_model_folder
from evo_merge.weights.folder import is_hf_folder, load_model_folder, save_model_folder

__all__ = [
    "DTYPES",
    "Checkpoint",
    "check_compatible",
    "is_hf_folder",
    "load_model_folder",
    "open_checkpoints",
    "parse_dtype",
    "save_model_folder",
    "write_model_folder",
]
