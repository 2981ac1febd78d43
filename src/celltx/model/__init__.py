"""User-facing scvi-tools model classes."""

from celltx.module import TASKS

from ._fields import GeneLayerField, LabelsField, PerturbationField
from ._scgpt import ScGPT
from ._training import TokenBudgetSplitter

__all__ = [
    "ScGPT",
    "GeneLayerField",
    "LabelsField",
    "PerturbationField",
    "TokenBudgetSplitter",
    "TASKS",
]
