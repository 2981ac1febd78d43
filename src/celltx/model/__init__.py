"""User-facing scvi-tools model classes."""

from celltx.module import TASKS

from ._fields import GeneLayerField, LabelsField, PerturbationField
from ._scgpt import ScGPT

__all__ = ["ScGPT", "GeneLayerField", "LabelsField", "PerturbationField", "TASKS"]
