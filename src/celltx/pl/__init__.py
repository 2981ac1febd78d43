"""Plots of celltx results."""

from ._history import training_curves
from ._perturbation import perturbation_deltas

__all__ = ["training_curves"]
__all__ += ["perturbation_deltas"]

from ._gene_programs import gene_programs  # noqa: E402

__all__ += ["gene_programs"]
