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
