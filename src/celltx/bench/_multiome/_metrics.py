"""Scores of the multiome benchmark beyond the embedding scores: silhouette and mixing."""

from __future__ import annotations

import numpy as np
import pandas as pd

# values of the modality column: paired cells, RNA-only cells, ATAC-only cells
_RNA_ONLY = frozenset({"rna", "expression", "rna_only", "gex"})
_ATAC_ONLY = frozenset({"atac", "accessibility", "atac_only", "peaks"})
_PAIRED = frozenset({"paired", "multiome", "both", "joint"})


def _silhouette_label(X: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's silhouette of ``labels`` on ``X``, rescaled to [0, 1] as scib does."""
    from sklearn.metrics import silhouette_score

    if not 2 <= len(np.unique(labels)) <= len(labels) - 1:
        return float("nan")
    return float((silhouette_score(X, labels) + 1.0) / 2.0)


def _modality_scores(
    X: np.ndarray, labels: np.ndarray, group: np.ndarray, n_neighbors: int
) -> dict[str, float]:
    """Mixing of RNA-only (group 1) and ATAC-only (group 2) cells; group 0 = paired."""
    from sklearn.neighbors import NearestNeighbors

    out = {"modality_mixing": float("nan"), "cross_modality_label_agreement": float("nan")}
    rna_idx, atac_idx = np.flatnonzero(group == 1), np.flatnonzero(group == 2)
    n = len(X)
    if len(rna_idx) == 0 or len(atac_idx) == 0 or n < 3:
        return out
    k = int(min(n_neighbors, n - 1))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    _, idx = nn.kneighbors(X)
    idx = idx[:, 1:]  # drop the cell itself
    neigh_group = group[idx]
    ratios = []
    for own, other, n_other in ((rna_idx, 2, len(atac_idx)), (atac_idx, 1, len(rna_idx))):
        observed = (neigh_group[own] == other).mean()
        ratios.append(observed / (n_other / (n - 1)))
    out["modality_mixing"] = float(np.mean(ratios))
    agree = []
    for query, ref in ((atac_idx, rna_idx), (rna_idx, atac_idx)):
        kk = int(min(n_neighbors, len(ref)))
        nn_ref = NearestNeighbors(n_neighbors=kk).fit(X[ref])
        _, j = nn_ref.kneighbors(X[query])
        agree.append((labels[ref][j] == labels[query][:, None]).mean())
    out["cross_modality_label_agreement"] = float(np.mean(agree))
    return out


def _modality_groups(values: pd.Series, key: str) -> np.ndarray:
    """0 for paired cells, 1 for RNA-only, 2 for ATAC-only; refuses unknown values."""
    v = values.astype(str).str.lower().to_numpy()
    group = np.full(len(v), -1)
    group[np.isin(v, list(_PAIRED))] = 0
    group[np.isin(v, list(_RNA_ONLY))] = 1
    group[np.isin(v, list(_ATAC_ONLY))] = 2
    if (group < 0).any():
        bad = sorted(set(v[group < 0]))[:5]
        raise ValueError(
            f"modality_key={key!r} has values {bad} that are not recognised; use 'paired', "
            "'rna' (or 'expression') and 'atac' (or 'accessibility')."
        )
    return group


def foscttm(x: np.ndarray, y: np.ndarray, chunk_size: int = 2048) -> float:
    """FOSCTTM: the fraction of samples closer than the true match, averaged (lower is better).

    ``x[i]`` and ``y[i]`` are two embeddings of the same cell ``i`` (e.g. from its RNA
    alone and from its ATAC alone) in one space. For every cell ``i``, with ``d`` the
    Euclidean distance: the fraction of the other ``n - 1`` cells ``j`` whose ``y[j]`` is
    strictly closer to ``x[i]`` than its true match ``y[i]`` is, and the fraction whose
    ``x[j]`` is strictly closer to ``y[i]`` than ``x[i]`` is; the score is the mean of the
    two fractions over all cells (both directions, as in SCOT and GLUE). 0: every cell's
    nearest cross-modal neighbour is itself; about 0.5: no better than random. Vectorised
    over blocks of ``chunk_size`` rows of the ``n × n`` distance matrix (memory
    ``chunk_size × n``).

    Parameters
    ----------
    x, y
        ``(n, d)`` embeddings of the same ``n`` cells, row ``i`` the same cell in both.
    chunk_size
        Rows of the distance matrix computed at once.

    Returns
    -------
    float
        The FOSCTTM in [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, fewer than 2 cells are given, or a value is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench import foscttm
    >>> x = np.random.default_rng(0).normal(size=(100, 5))
    >>> foscttm(x, x + 0.01)
    0.0
    >>> 0.4 < foscttm(x, np.random.default_rng(1).normal(size=(100, 5))) < 0.6
    True
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"foscttm needs two (n, d) arrays of the same shape (row i = cell i); got {x.shape} "
            f"and {y.shape}."
        )
    n = len(x)
    if n < 2:
        raise ValueError(f"foscttm needs at least 2 cells; got {n}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("foscttm: the embeddings have NaN or infinite values; drop those cells.")
    x2, y2 = (x**2).sum(1), (y**2).sum(1)
    true = ((x - y) ** 2).sum(1)  # squared distance of each cell to its match
    closer_x = np.zeros(n)  # per cell i: how many y[j] are closer to x[i] than y[i]
    closer_y = np.zeros(n)  # per cell i: how many x[j] are closer to y[i] than x[i]
    for s in range(0, n, int(chunk_size)):
        e = min(n, s + int(chunk_size))
        d = x2[s:e, None] + y2[None, :] - 2.0 * x[s:e] @ y.T  # d[i, j] = |x_i - y_j|²
        rows = np.arange(s, e)
        d[rows - s, rows] = true[s:e]  # exact on the diagonal (no rounding against itself)
        closer_x[s:e] = (d < true[s:e, None]).sum(1)
        closer_y += (d < true[None, :]).sum(0)  # column j: x[i] closer to y[j] than x[j]
    return float(((closer_x + closer_y) / (2.0 * (n - 1))).mean())


def graph_scores(
    connectivities,
    labels: np.ndarray,
    resolutions,
    seed: int = 0,
    knn: bool = True,
) -> dict[str, float]:
    """Leiden ARI / NMI and neighbour-vote accuracy of labels on a cell graph (e.g. WNN).

    Leiden (scanpy's igraph flavour, on the weighted graph) at each resolution, the one of
    highest NMI kept as for embeddings; ``knn_accuracy``: every cell's label predicted by
    the edge-weighted vote of its graph neighbours (itself excluded), the fraction right.
    """
    from anndata import AnnData
    from scipy import sparse

    from celltx.bench._embedding import best_leiden

    G = sparse.csr_matrix(connectivities, dtype=np.float64)
    G.setdiag(0)
    G.eliminate_zeros()
    labels = np.asarray(labels).astype(str)
    tmp = AnnData(obs=pd.DataFrame(index=np.arange(G.shape[0]).astype(str)))
    best = best_leiden(tmp, labels, resolutions, seed, adjacency=G)
    if knn:
        cats, codes = np.unique(labels, return_inverse=True)
        onehot = sparse.csr_matrix(
            (np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(cats))
        )
        votes = np.asarray((G @ onehot).todense())
        has = votes.sum(1) > 0
        pred = np.where(has, votes.argmax(1), -1)
        best["knn_accuracy"] = float((pred == codes).mean())
    return best
