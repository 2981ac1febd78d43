"""Scores of a cell embedding against known labels (scEval-style, on any AnnData)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ._inputs import guarded


def knn_accuracy(
    X: np.ndarray, labels, n_splits: int = 5, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Cross-validated accuracy of a kNN classifier on an embedding.

    Stratified ``n_splits``-fold; returns one accuracy per fold. Classes with fewer cells
    than folds are an error from scikit-learn's splitter, so the number of folds is capped
    at the smallest class size.
    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise ValueError("kNN accuracy needs at least two labels.")
    n_splits = int(min(n_splits, counts.min()))
    if n_splits < 2:
        raise ValueError("Every label needs at least 2 cells for cross-validation.")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=n_neighbors)
    return cross_val_score(clf, np.asarray(X), labels, cv=cv, scoring="accuracy")


def leiden_scores(
    X: np.ndarray,
    labels,
    resolution: float | Sequence[float] | np.ndarray = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """ARI and NMI of Leiden clusters (scanpy, on a kNN graph of ``X``) against labels.

    The graph is scanpy's on the exact (scikit-learn) nearest neighbours: scanpy's default
    approximate search for large data (pynndescent) fails with recent scipy sparse arrays,
    and for small data scanpy computes exact neighbours anyway. With several resolutions,
    the one whose clusters have the highest NMI is kept (as scib's optimised Leiden).

    Parameters
    ----------
    X
        Embedding ``(n_cells, d)``.
    labels
        Known labels, one per cell.
    resolution
        Leiden resolution, or several to scan.
    n_neighbors
        Neighbours of the kNN graph.
    seed
        Seed of the graph and of Leiden.

    Returns
    -------
    dict
        ``leiden_ari``, ``leiden_nmi``, ``n_clusters`` and ``leiden_resolution``.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench import leiden_scores
    >>> X = np.r_[np.random.default_rng(0).normal(0, 1, (50, 5)), np.random.default_rng(1).normal(8, 1, (50, 5))]
    >>> leiden_scores(X, [0] * 50 + [1] * 50, resolution=[0.1, 0.5])["leiden_ari"] > 0.9
    True
    """
    import scanpy as sc

    tmp = AnnData(
        obsm={"X_emb": np.asarray(X, dtype=np.float32)},
        obs=pd.DataFrame(index=np.arange(len(X)).astype(str)),
    )
    sc.pp.neighbors(
        tmp, use_rep="X_emb", n_neighbors=n_neighbors, random_state=seed, transformer="sklearn"
    )
    resolutions = (
        [resolution] if np.isscalar(resolution) else list(cast(Sequence[float], resolution))
    )
    return best_leiden(tmp, labels, resolutions, seed)


def best_leiden(tmp: AnnData, labels, resolutions, seed: int = 0, adjacency=None) -> dict:
    """Leiden of ``tmp``'s graph (or ``adjacency``) at each resolution; the highest-NMI one.

    scanpy's igraph flavour, undirected, 2 iterations. Returns ``leiden_ari``,
    ``leiden_nmi``, ``n_clusters`` and ``leiden_resolution`` of the resolution whose
    clusters agree best with ``labels`` (by NMI), as every embedding score of the bench.
    """
    import scanpy as sc

    labels = np.asarray(labels)
    best: dict[str, float] = {}
    for res in resolutions:
        sc.tl.leiden(
            tmp,
            resolution=float(res),
            adjacency=adjacency,
            random_state=seed,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
        clusters = tmp.obs["leiden"].to_numpy()
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if not best or nmi > best["leiden_nmi"]:
            best = {
                "leiden_ari": float(adjusted_rand_score(labels, clusters)),
                "leiden_nmi": nmi,
                "n_clusters": int(len(np.unique(clusters))),
                "leiden_resolution": float(res),
            }
    return best


def embedding_scores(
    adata: AnnData,
    labels_key: str,
    embeddings: Mapping[str, str | np.ndarray],
    n_splits: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare cell embeddings by how well they recover known labels.

    Parameters
    ----------
    adata
        Cells with labels in ``obs[labels_key]`` (cells without a label are left out);
        not modified.
    labels_key
        Label column.
    embeddings
        ``{name: obsm key or array (n_obs, d)}``.
    n_splits
        Folds of the kNN accuracy.
    seed
        Seed of the folds and of Leiden.

    Returns
    -------
    pandas.DataFrame
        One row per embedding: ``knn_accuracy`` (mean over folds), ``knn_accuracy_sd``,
        ``leiden_ari``, ``leiden_nmi``, ``n_clusters``, ``error`` (``None``, or the
        exception of an embedding whose scoring failed: its scores are then NaN, with a
        warning, and the other rows are kept).

    Raises
    ------
    ValueError
        Before any scoring: a missing ``labels_key`` or obsm key, an embedding with the
        wrong number of rows or with NaN, or fewer than 2 labels with 2 cells each.

    Examples
    --------
    >>> import celltx, scanpy as sc
    >>> adata = celltx.datasets.pbmc68k()
    >>> celltx.bench.embedding_scores(adata, "cell_type", {"PCA": "X_pca"}).index.tolist()
    ['PCA']
    """
    if labels_key not in adata.obs:
        raise ValueError(f"labels_key={labels_key!r} is not a column of adata.obs.")
    labels = adata.obs[labels_key]
    keep = labels.notna().to_numpy()
    labels = labels.to_numpy()[keep]
    _, n_per_label = np.unique(labels.astype(str), return_counts=True)
    if len(n_per_label) < 2 or n_per_label.min() < 2:
        raise ValueError(
            f"{labels_key!r} needs at least 2 labels with at least 2 cells each for the kNN "
            f"folds; it has {len(n_per_label)} label(s), the smallest with {n_per_label.min(initial=0)} cell(s)."
        )
    arrays = {}
    for name, emb in embeddings.items():
        if isinstance(emb, str) and emb not in adata.obsm:
            raise ValueError(
                f"Embedding {name!r}: {emb!r} is not a key of adata.obsm ({list(adata.obsm)})."
            )
        X = np.asarray(adata.obsm[emb] if isinstance(emb, str) else emb)
        if X.ndim != 2 or X.shape[0] != adata.n_obs:
            raise ValueError(
                f"Embedding {name!r} has shape {X.shape}; expected ({adata.n_obs}, d)."
            )
        if not np.isfinite(X[keep]).all():
            raise ValueError(f"Embedding {name!r} has NaN or infinite values for labelled cells.")
        arrays[name] = X[keep]

    def _scores(X):
        acc = knn_accuracy(X, labels, n_splits=n_splits, seed=seed)
        leiden = leiden_scores(X, labels, seed=seed)
        leiden.pop("leiden_resolution")
        return {"knn_accuracy": float(acc.mean()), "knn_accuracy_sd": float(acc.std()), **leiden}

    cols = ["knn_accuracy", "knn_accuracy_sd", "leiden_ari", "leiden_nmi", "n_clusters"]
    rows = {}
    for name, X in arrays.items():
        row, err = guarded(f"embedding {name!r}", _scores, X)
        rows[name] = {**dict.fromkeys(cols, np.nan), **(row or {}), "error": err}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*cols, "error"])
