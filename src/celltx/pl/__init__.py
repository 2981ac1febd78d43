"""Plots of celltx results."""

from ._history import training_curves

__all__ = ["training_curves"]
