"""Peak statistics of scATAC data: inverse document frequency and data-driven panels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

    from ._types import Matrix

PEAK_PANEL_BY = ("accessible", "variable")


def _csr(x: Matrix) -> sparse.csr_matrix:
    return sparse.csr_matrix(x) if not sparse.issparse(x) else sparse.csr_matrix(x)


def peak_idf(x: Matrix) -> np.ndarray:
    """Inverse document frequency of each peak: ``log(1 + n / (1 + n_open))``.

    ``n`` is the number of cells with at least one open peak (cells without ATAC, e.g.
    the padded RNA-only cells of a mosaic, are not counted) and ``n_open`` the number of
    those in which the peak is open (count > 0). Rare peaks get a high IDF, peaks open in
    every cell about ``log 2``. It is the IDF of TF-IDF ranking of a cell's peak tokens
    (``ScGPTConfig(peak_selection="idf")``).

    Parameters
    ----------
    x
        Cells × peaks counts or binary accessibility (dense or sparse).

    Returns
    -------
    numpy.ndarray
        ``(n_peaks,)`` float32.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import peak_idf
    >>> x = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 2], [0, 0, 0]])
    >>> [round(float(v), 3) for v in peak_idf(x)]  # 3 cells with ATAC; peaks open in 3, 1, 1
    [0.56, 0.916, 0.916]
    """
    X = _csr(x)
    if X.nnz and X.data.min() < 0:
        raise ValueError("peak_idf needs non-negative counts or binary accessibility.")
    X.eliminate_zeros()
    n = int((np.diff(X.indptr) > 0).sum())
    n_open = np.bincount(X.indices, minlength=X.shape[1])
    return np.log1p(n / (1.0 + n_open)).astype(np.float32)


def peak_panel(
    adata: AnnData, n_top: int = 20_000, by: str = "accessible", layer: str | None = None
) -> np.ndarray:
    """A data-driven peak panel: the ``n_top`` most accessible or most variable peaks.

    ``by="accessible"``: the peaks open (count > 0) in the most cells (as Signac's
    ``FindTopFeatures`` keeps the peaks with the most counts). ``by="variable"``: the
    highest variance over cells of the depth-normalised binary accessibility
    (``open / n_open_peaks_of_the_cell × median n_open_peaks``), which favours peaks open
    in some cells and closed in others over the ubiquitous ones. Ties are broken by column
    order. Select the panel before ``setup_mudata`` (``mdata.mod["atac"] =
    atac[:, panel].copy(); mdata.update()``): a model's peak tokens are its peaks, so
    50,000-peak data gets a vocabulary, an embedding table and tokenisation work of
    ``n_top`` peaks.

    Parameters
    ----------
    adata
        Cells × peaks AnnData (counts or binary).
    n_top
        Peaks in the panel (all of them when there are fewer).
    by
        ``"accessible"`` or ``"variable"``.
    layer
        Layer with the counts (default ``X``).

    Returns
    -------
    numpy.ndarray
        Boolean mask over ``adata.var_names``, ``min(n_top, n_peaks)`` true.

    Raises
    ------
    ValueError
        For an unknown ``by``, ``n_top < 1`` or negative values.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=100)
    >>> int(celltx.data.peak_panel(mdata.mod["atac"], n_top=50).sum())
    50
    """
    if by not in PEAK_PANEL_BY:
        raise ValueError(f"by={by!r}; use one of {list(PEAK_PANEL_BY)}.")
    if not isinstance(n_top, (int, np.integer)) or isinstance(n_top, bool) or n_top < 1:
        raise ValueError(f"n_top={n_top!r} must be an integer >= 1.")
    X = _csr(adata.X if layer is None else adata.layers[layer]).astype(np.float64)
    if X.nnz and X.data.min() < 0:
        raise ValueError("peak_panel needs non-negative counts or binary accessibility.")
    X.eliminate_zeros()
    X.data[:] = 1.0
    n_cells, n_peaks = X.shape
    if by == "accessible":
        score = np.asarray(X.sum(axis=0)).ravel()
    else:
        per_cell = np.asarray(X.sum(axis=1)).ravel()
        scale = np.median(per_cell[per_cell > 0]) if (per_cell > 0).any() else 1.0
        inv = np.divide(scale, per_cell, out=np.zeros_like(per_cell), where=per_cell > 0)
        Y = sparse.diags(inv) @ X
        mean = np.asarray(Y.sum(axis=0)).ravel() / n_cells
        sq = np.asarray(Y.multiply(Y).sum(axis=0)).ravel() / n_cells
        score = sq - mean**2
    k = min(int(n_top), n_peaks)
    order = np.lexsort((np.arange(n_peaks), -score))  # highest first, ties by column order
    mask = np.zeros(n_peaks, dtype=bool)
    mask[order[:k]] = True
    return mask
