"""The DE genes each held-out condition is scored on (GEARS' list, else the largest changes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from anndata import AnnData

_GEARS_DE_KEY = "top_non_dropout_de_20"


def _de_indices(
    adata: AnnData,
    perturbation_key: str,
    groups: Sequence[str],
    raw_of_group: Mapping[str, list[str]],
    dt: np.ndarray,
    n_de: int,
) -> tuple[list[np.ndarray], list[str]]:
    """DE genes of each condition and where they come from.

    GEARS' ``uns["top_non_dropout_de_20"]`` when it has the condition, else the ``n_de``
    genes with the largest absolute change of the mean.
    """
    n_genes = dt.shape[1]
    fallback = np.argsort(-np.abs(dt), axis=1, kind="stable")[:, : min(n_de, n_genes)]
    table = adata.uns.get(_GEARS_DE_KEY)
    out, source = [], []
    if not isinstance(table, Mapping) or not table:
        return list(fallback), ["mean_difference"] * len(groups)
    pos = {g: i for i, g in enumerate(adata.var_names.astype(str))}
    if "gene_id" in adata.var:
        for i, g in enumerate(adata.var["gene_id"].astype(str)):
            pos.setdefault(g, i)
    key_of_raw: dict[str, str] = {}
    if "condition_name" in adata.obs:
        pairs = (
            adata.obs[[perturbation_key, "condition_name"]]
            .astype(str)
            .drop_duplicates(perturbation_key)
        )
        key_of_raw = dict(zip(pairs[perturbation_key], pairs["condition_name"], strict=True))
    for i, grp in enumerate(groups):
        genes = None
        for raw in raw_of_group[grp]:
            for key in (key_of_raw.get(raw), raw, grp):
                if key is not None and key in table:
                    genes = table[key]
                    break
            if genes is not None:
                break
        idx = (
            [pos[str(g)] for g in np.asarray(genes).ravel() if str(g) in pos]
            if genes is not None
            else []
        )
        if idx:
            out.append(np.asarray(idx[:n_de], dtype=np.int64))
            source.append(_GEARS_DE_KEY)
        else:
            out.append(fallback[i])
            source.append("mean_difference")
    return out, source
