"""Genetic-perturbation response prediction: GEARS-style splits, metrics and baselines.

All expression here is log-normalised (counts scaled to 10,000 per cell, then ``log1p``),
and predictions are per-condition mean expression profiles in that space.

- ``_split``: :func:`perturbation_split`, the training and held-out subgroups.
- ``_metrics``: :func:`perturbation_metrics` and :func:`summarize_perturbation`.
- ``_baselines``: :class:`PerturbationBaseline` and its subclasses.
- ``_celltx``: :func:`celltx_perturbation_model`, celltx as a method.
- ``_cell_eval``: :func:`write_cell_eval` and :func:`run_cell_eval`, the predicted /
  observed AnnData pair for Arc Institute's cell-eval and its metrics.
- ``_runner``: :func:`perturbation`, the benchmark itself.
"""
