"""Imputation benchmark: hide non-zero values, recover them (scEval's imputation task)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.neighbors import NearestNeighbors

from celltx.nn import preset

from ._baselines import dense, fitted_pca, train_scvi
from ._fit import fit_celltx
from ._inputs import expression_kind, get_expression, log_normalized, skip_note
from ._runner import method_rows

logger = logging.getLogger(__name__)

IMPUTATION_METHODS = ("celltx", "knn", "scvi", "mean")

#: the celltx recipe of :func:`imputation` (a model trained on the masked data)
IMPUTATION_CELLTX_DEFAULTS = {
    "model": preset("small", dropout=0.1),
    "epochs": 80,
    # above 700 cells (pbmc68k, where 80 epochs were measured) a constant number of cell
    # passes, 56,000 (~1,600 steps): 19 epochs on 2,900 cells (celltx.model.train_budget)
    "budget_cells": 700,
    "budget_exponent": 1.0,
    "lr": 3e-3,
    "batch_size": 32,
    "accelerator": "auto",
}


def _mask(x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of ``fraction`` of the non-zero entries, chosen at random."""
    rows, cols = np.nonzero(x)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=max(1, round(fraction * len(rows))), replace=False)
    return rows[pick], cols[pick]


def _gene_mean(masked_log: np.ndarray, rows, cols) -> np.ndarray:
    """Each hidden entry: its gene's mean over the cells where it is visible and non-zero."""
    nz = masked_log > 0
    sums, counts = (masked_log * nz).sum(0), nz.sum(0)
    overall = masked_log[nz].mean() if nz.any() else 0.0
    means = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    return means[cols]


def _knn(
    masked_log: np.ndarray, rows, cols, n_neighbors: int, n_comps: int, seed: int
) -> np.ndarray:
    """MAGIC-style smoothing: the mean of the entry over the cell's PCA neighbours."""
    z = fitted_pca(n_comps, masked_log, seed).fit_transform(masked_log)
    nn = NearestNeighbors(n_neighbors=min(n_neighbors + 1, len(z))).fit(z)
    idx = nn.kneighbors(z, return_distance=False)[:, 1:]  # not the cell itself
    return masked_log[idx[rows], cols[:, None]].mean(1)


#: half-width of the quantile window a predicted bin is averaged over (:func:`_from_bins`)
BIN_WINDOW = 0.15


def _from_bins(
    bins: np.ndarray, masked_log: np.ndarray, rows, n_bins: int, window: float = BIN_WINDOW
) -> np.ndarray:
    """Predicted value bins as values (celltx predicts on a per-cell rank scale).

    Bin ``b`` (``1 … n_bins - 1``) holds the quantiles ``(b - 1) / (n_bins - 2)`` …
    ``b / (n_bins - 2)`` of the cell's non-zero values (the tokenizer's edges), so a predicted
    (fractional) bin stands for the quantile ``q = (b - 0.5) / (n_bins - 2)``. Its value is the
    mean of the cell's visible non-zero values' quantile function (linearly interpolated) over
    ``[q - window, q + window]`` (clipped to ``[0, 1]``): the prediction is an average over
    possible ranks, and with tied values (low counts) the quantile function is a staircase
    that a single lookup would jump across.
    """
    nz = masked_log > 0
    sorted_vals = np.sort(np.where(nz, masked_log, np.inf), axis=1)
    sorted_vals = np.where(np.isfinite(sorted_vals), sorted_vals, 0.0)
    last = np.maximum(nz.sum(1)[rows] - 1, 0)[:, None]
    q = np.clip((np.asarray(bins, dtype=np.float64) - 0.5) / max(n_bins - 2, 1), 0.0, 1.0)
    grid = np.clip(q[:, None] + np.linspace(-window, window, 41)[None, :], 0.0, 1.0)
    pos = grid * last
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, last)
    r = np.asarray(rows)[:, None]
    lo_vals, hi_vals = sorted_vals[r, lo], sorted_vals[r, hi]
    return (lo_vals + (hi_vals - lo_vals) * (pos - lo)).mean(1)


def _cell_groups(rows: np.ndarray, cols: np.ndarray, max_genes: int) -> list[np.ndarray]:
    """Cells with hidden values, in groups whose hidden genes number at most ``max_genes``.

    A group's cells are predicted together, each on the union of the group's hidden genes:
    one chunk of the gene-prompt decoder per group (a cell with more hidden genes than
    ``max_genes`` is a group of its own, in several chunks).
    """
    order = np.argsort(rows, kind="stable")
    cells, starts = np.unique(rows[order], return_index=True)
    genes_of = np.split(cols[order], starts[1:])
    groups: list[np.ndarray] = []
    group: list[int] = []
    union: set[int] = set()
    for cell, genes in zip(cells, genes_of, strict=True):
        grown = union | set(genes.tolist())
        if group and len(grown) > max_genes:
            groups.append(np.asarray(group))
            group, grown = [], set(genes.tolist())
        group.append(cell)
        union = grown
    if group:
        groups.append(np.asarray(group))
    return groups


def _hidden_bins(model, rows: np.ndarray, cols: np.ndarray, chunk_size: int = 512) -> np.ndarray:
    """The model's predicted bin of each hidden entry ``(rows[i], cols[i])``.

    Only the hidden genes are generated (per group of cells, :func:`_cell_groups`), not
    every gene of every cell: on 14,000 genes that is the difference between hours and
    minutes, with the same predictions (a query sees the cell's known tokens and itself).
    """
    names = np.asarray(model.adata.var_names).astype(str)
    out = np.empty(len(rows), dtype=np.float64)
    for group in _cell_groups(rows, cols, chunk_size):
        in_group = np.isin(rows, group)
        genes = np.unique(cols[in_group])
        pred = model.get_normalized_expression(
            indices=group,
            gene_list=list(names[genes]),
            batch_size=len(group),
            chunk_size=chunk_size,
            return_numpy=True,
        )
        # group (ascending cells) and genes (np.unique) are sorted: positions by search
        out[in_group] = pred[
            np.searchsorted(group, rows[in_group]), np.searchsorted(genes, cols[in_group])
        ]
    return out


def _celltx(masked: AnnData, rows, cols, masked_log, settings: Mapping, seed: int):
    model = fit_celltx(masked, IMPUTATION_CELLTX_DEFAULTS, settings, seed)
    bins = _hidden_bins(model, np.asarray(rows), np.asarray(cols))
    return bins, _from_bins(bins, masked_log, rows, model.config.n_bins or 51)


def _scvi(masked_counts: AnnData, rows, cols, settings: Mapping):
    vae = train_scvi(
        masked_counts.copy(),
        n_latent=settings.get("n_latent", 10),
        max_epochs=settings.get("epochs", 100),
        accelerator=settings.get("accelerator", "auto"),
    )
    rho = vae.get_normalized_expression(library_size=1e4, return_numpy=True)
    return np.log1p(rho[rows, cols])


def _scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    if np.std(pred) == 0:
        return 0.0, float(np.mean((pred - truth) ** 2))
    return float(np.corrcoef(pred, truth)[0, 1]), float(np.mean((pred - truth) ** 2))


def imputation(
    adata: AnnData,
    methods: Sequence[str] = IMPUTATION_METHODS,
    *,
    fraction: float = 0.1,
    seed: int = 0,
    layer: str | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
    n_neighbors: int = 15,
    n_comps: int = 50,
) -> pd.DataFrame:
    """Hide a fraction of the non-zero values and score how well each method recovers them.

    ``fraction`` of the non-zero entries are set to zero (a copy; ``adata`` is unchanged);
    each method predicts them from the masked data. Scores are computed on log1p-CP10k values
    of the original data (log-normalised input is scored as it is): Pearson correlation and
    mean squared error between predicted and hidden values.

    Methods: ``"celltx"`` (an :class:`~celltx.model.ScGPT` trained on the masked data with
    :data:`IMPUTATION_CELLTX_DEFAULTS`; its per-cell value bins from
    :meth:`~celltx.model.ScGPT.get_normalized_expression` mapped to values through the cell's
    visible values, averaged over a window of quantiles — Pearson is also reported on the
    bins, ``pearson_bins``); ``"knn"``
    (MAGIC-style: the mean over the cell's ``n_neighbors`` neighbours in PCA space of the
    masked data); ``"scvi"`` (scVI's ``get_normalized_expression``, counts only); ``"mean"``
    (the gene's mean over the cells where it is visible and non-zero).

    Parameters
    ----------
    adata
        Cells × genes, raw counts or log-normalised values.
    methods
        Any of ``"celltx"``, ``"knn"``, ``"scvi"``, ``"mean"``.
    fraction
        Fraction of the non-zero values hidden.
    seed
        Seed of the mask and of every method.
    layer
        Layer with the expression (default ``.X``).
    method_kwargs
        ``celltx``: as :data:`IMPUTATION_CELLTX_DEFAULTS`; ``scvi``: ``epochs``,
        ``n_latent``, ``accelerator``.
    n_neighbors, n_comps
        Neighbours and principal components of the kNN baseline.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``pearson``, ``mse``, ``pearson_bins`` (celltx),
        ``n_hidden``, ``scored_on`` (``"log1p_cp10k"`` or ``"lognorm"``), ``seconds``,
        ``error`` (a failing method keeps the others' rows).

    Examples
    --------
    >>> import celltx
    >>> df = celltx.bench.imputation(celltx.datasets.pbmc68k(), methods=["mean", "knn"])
    >>> list(df["method"]), bool(df["pearson"].notna().all())
    (['mean', 'knn'], True)
    """
    unknown = sorted(set(methods) - set(IMPUTATION_METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use {list(IMPUTATION_METHODS)}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1).")
    x = get_expression(adata, layer)
    kind = expression_kind(x)
    raw = dense(x, np.float64)
    rows, cols = _mask(raw, fraction, seed)
    masked_raw = raw.copy()
    masked_raw[rows, cols] = 0.0
    truth = dense(log_normalized(raw, kind), np.float64)[rows, cols]
    # the masked data as a method sees it (log1p-CP10k of the masked counts: library sizes
    # change slightly with the hidden values, as they would for real dropouts)
    masked_log = dense(log_normalized(masked_raw, kind), np.float64)
    masked = AnnData(
        X=masked_raw.astype(np.float32), obs=adata.obs[[]].copy(), var=adata.var[[]].copy()
    )
    kwargs = dict(method_kwargs or {})

    def run(method, _seed):  # the prediction and its scores (both in the seconds)
        bins = None
        if method == "mean":
            pred = _gene_mean(masked_log, rows, cols)
        elif method == "knn":
            pred = _knn(masked_log, rows, cols, n_neighbors, n_comps, seed)
        elif method == "scvi":
            pred = _scvi(masked, rows, cols, kwargs.get("scvi", {}))
        else:
            bins, pred = _celltx(masked, rows, cols, masked_log, kwargs.get("celltx", {}), seed)
        pearson, mse = _scores(np.asarray(pred, dtype=np.float64), truth)
        out = {"pearson": pearson, "mse": mse}
        if bins is not None:
            out["pearson_bins"] = _scores(bins, truth)[0]
        return out

    skipped = {}
    if kind != "counts" and "scvi" in methods:
        skipped["scvi"] = skip_note("scvi", "scVI needs raw counts")
    columns = {
        "pearson": np.nan,
        "mse": np.nan,
        "pearson_bins": np.nan,
        "n_hidden": len(rows),
        "scored_on": "log1p_cp10k" if kind == "counts" else "lognorm",
    }
    out = []
    for row in method_rows(methods, run, skipped=skipped, columns=columns):
        logger.info(
            "imputation %s: pearson %.3f, mse %.3f", row["method"], row["pearson"], row["mse"]
        )
        out.append(row)
    return pd.DataFrame(out)
