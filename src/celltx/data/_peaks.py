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


def atac_lsi(
    x: Matrix,
    n_comps: int = 30,
    binarize: bool = False,
    scale: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Latent semantic indexing of scATAC counts (TF-IDF + truncated SVD), as in Signac.

    Term frequency ``TF = counts / total counts of the cell``; inverse document frequency
    ``IDF = n_cells / total counts of the peak``; the matrix ``log1p(TF × IDF × 10,000)``
    is decomposed by a truncated SVD (scikit-learn, randomized) into ``n_comps + 1``
    components, the first of which (correlated with sequencing depth) is dropped. The cell
    coordinates are ``U·Σ``, so components keep their weight (as in ArchR and scanpy's
    PCA); ``scale=True`` standardises each component instead (Signac's and muon's
    default). Peaks without counts are left out; cells without counts get the TF-IDF of an
    empty cell (all zero). All sparse, vectorised. It is the ATAC LSI baseline of
    :func:`celltx.bench.atac_lsi_embedding` and the ATAC prior of the cross-modal
    neighbour positives (:func:`multiome_pairs`).

    Parameters
    ----------
    x
        Cells × peaks counts or binary accessibility (dense or sparse).
    n_comps
        Components kept (after dropping the first); capped at ``min(n_cells, n_peaks) - 2``.
    binarize
        Binarize counts first (ArchR-style).
    scale
        Standardise each component (Signac-style).
    seed
        Seed of the randomized SVD.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_comps)`` float32.

    Raises
    ------
    ValueError
        If the matrix has negative values, or fewer than 3 cells or peaks with counts.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import atac_lsi
    >>> x = np.random.default_rng(0).poisson(0.3, size=(40, 60))
    >>> atac_lsi(x, n_comps=5).shape
    (40, 5)
    """
    from sklearn.decomposition import TruncatedSVD

    X = sparse.csr_matrix(x, dtype=np.float64)
    if X.nnz and X.data.min() < 0:
        raise ValueError("ATAC counts must be non-negative; pass the layer with raw counts.")
    if binarize:
        X.data = (X.data > 0).astype(np.float64)
    peak_total = np.asarray(X.sum(axis=0)).ravel()
    X = X[:, peak_total > 0]
    peak_total = peak_total[peak_total > 0]
    n_cells, n_peaks = X.shape
    if n_cells < 3 or n_peaks < 3:
        raise ValueError(
            f"ATAC LSI needs at least 3 cells and 3 peaks with counts; got {n_cells} × {n_peaks}."
        )
    cell_total = np.asarray(X.sum(axis=1)).ravel()
    inv_cell = np.divide(1.0, cell_total, out=np.zeros_like(cell_total), where=cell_total > 0)
    idf = n_cells / peak_total
    tfidf = (sparse.diags(inv_cell) @ X @ sparse.diags(idf)).tocsr()
    tfidf.data = np.log1p(tfidf.data * 1e4)
    k = int(min(n_comps, min(n_cells, n_peaks) - 2))
    if k < 1:
        raise ValueError("n_comps must be >= 1.")
    svd = TruncatedSVD(n_components=k + 1, algorithm="randomized", n_iter=7, random_state=seed)
    emb = svd.fit_transform(tfidf)[:, 1:]
    if scale:
        sd = emb.std(axis=0)
        emb = (emb - emb.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    out: np.ndarray = np.asarray(emb, dtype=np.float32)
    return out
