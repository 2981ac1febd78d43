"""User-facing scvi-tools model classes."""

from ._fields import GeneLayerField, LabelsField, PerturbationField
from ._scgpt import ScGPT
from ._tasks import TASK_OPTIONS, TASK_REGISTRY, TASKS, Task, register_task
from ._training import TokenBudgetSplitter, train_budget

__all__ = [
    "ScGPT",
    "GeneLayerField",
    "LabelsField",
    "PerturbationField",
    "TokenBudgetSplitter",
    "train_budget",
    "Task",
    "TASK_REGISTRY",
    "register_task",
    "TASKS",
    "TASK_OPTIONS",
]
