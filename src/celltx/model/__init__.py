"""User-facing scvi-tools model classes."""

from ._scgpt import GeneLayerField, ScGPT

__all__ = ["ScGPT", "GeneLayerField"]
