"""Fitness tasks: the protocol, the lm-eval adapter, the torch classification task, plugins."""

from evo_merge.tasks.base import FitnessTask
from evo_merge.tasks.registry import resolve_task, shipped_benchmarks
from evo_merge.tasks.torch_task import TorchClassificationTask

__all__ = ["FitnessTask", "TorchClassificationTask", "resolve_task", "shipped_benchmarks"]
