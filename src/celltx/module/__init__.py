"""scvi-tools modules (tensors only): tokenizer + transformer + objectives."""

from ._scgpt import ScGPTModule

__all__ = ["ScGPTModule"]
