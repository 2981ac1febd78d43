"""User-facing scvi-tools model classes."""

from ._scgpt import TASKS, GeneLayerField, LabelsField, ScGPT

__all__ = ["ScGPT", "GeneLayerField", "LabelsField", "TASKS"]
