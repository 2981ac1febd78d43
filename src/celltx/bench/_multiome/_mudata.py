"""Rows of a MuData: its modalities, where their cells sit, and per-modality embeddings."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from mudata import MuData


def _get_mod(mdata: MuData, mod: str) -> AnnData:
    """The modality ``mod`` of ``mdata``, or an error naming the modalities there are."""
    if mod not in mdata.mod:
        raise ValueError(
            f"Modality {mod!r} is not in the MuData (modalities: {list(mdata.mod)}); pass "
            "rna_mod= / atac_mod= naming the RNA and ATAC modalities."
        )
    return mdata.mod[mod]


def _positions(mdata: MuData, adata: AnnData) -> np.ndarray:
    """Row of each cell of a modality in ``mdata.obs_names``."""
    if not mdata.obs_names.is_unique:
        raise ValueError("mdata.obs_names are not unique; call mdata.obs_names_make_unique().")
    pos = mdata.obs_names.get_indexer(adata.obs_names)
    if (pos < 0).any():
        raise ValueError(
            "Some cells of a modality are missing from mdata.obs_names; call mdata.update()."
        )
    return pos


def _scatter_rows(values: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """Place ``values`` at rows ``pos`` of an (n, d) array, NaN elsewhere."""
    out = np.full((n, values.shape[1]), np.nan, dtype=np.float32)
    out[pos] = values
    return out
