"""Mosaic MuData (cells measured in some modalities only) → the paired layout scvi-tools registers.

scvi-tools registers fully paired data: every cell in every modality.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

if TYPE_CHECKING:
    from mudata import MuData

    from ._types import Matrix


def modality_presence(mdata: MuData) -> pd.DataFrame:
    """Which modalities each cell of ``mdata`` was measured in.

    Returns
    -------
    pandas.DataFrame
        ``mdata.n_obs`` × modalities, boolean, indexed by ``mdata.obs_names``.
    """
    if not mdata.obs_names.is_unique:
        raise ValueError(
            "mdata.obs_names are not unique; call mdata.obs_names_make_unique() first."
        )
    out = {}
    for name, mod in mdata.mod.items():
        pos = mdata.obs_names.get_indexer(mod.obs_names)
        if (pos < 0).any():
            raise ValueError(
                f"Cells of modality {name!r} are missing from mdata.obs_names; call mdata.update()."
            )
        present = np.zeros(mdata.n_obs, dtype=bool)
        present[pos] = True
        out[name] = present
    return pd.DataFrame(out, index=mdata.obs_names.copy())


def place_rows(x: Matrix, pos: np.ndarray, n: int) -> sparse.csr_matrix:
    """Rows of ``x`` placed at rows ``pos`` of an ``n``-row sparse matrix (zeros elsewhere).

    Parameters
    ----------
    x
        ``(m, k)`` dense or sparse matrix.
    pos
        ``(m,)`` destination row of each row of ``x``.
    n
        Rows of the result.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, k)``.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import place_rows
    >>> place_rows(np.array([[1.0, 2.0]]), np.array([2]), 3).toarray()
    array([[0., 0.],
           [0., 0.],
           [1., 2.]])
    """
    place = sparse.csr_matrix(
        (np.ones(len(pos), dtype=np.float32), (pos, np.arange(len(pos)))), shape=(n, x.shape[0])
    )
    x = sparse.csr_matrix(x)
    return (place.astype(x.dtype) @ x).tocsr()


def pad_mosaic(mdata: MuData, modality_key: str = "modality") -> MuData:
    """Give every modality of a mosaic MuData every cell, as scvi-tools registers data.

    A mosaic MuData holds cells measured in only some modalities (e.g. an RNA-only and an
    ATAC-only dataset next to paired multiome cells): each modality's AnnData has only its
    own cells. scvi-tools' models (``MULTIVI``, celltx's :class:`~celltx.model.ScGPT`)
    register *fully paired* MuData, so this returns a new MuData in which each modality has
    all ``mdata.obs_names`` in that order, with all-zero rows (``X`` and every layer) for
    cells not measured in it, and ``obs[modality_key]`` saying what each cell was measured
    in: ``"paired"`` (every modality), else the modality's name (``"rna"``, ``"atac"``).
    celltx treats an all-zero row as *not measured*, as MULTIVI does. ``mdata`` is not
    modified.

    Parameters
    ----------
    mdata
        A MuData; already paired data is returned as a padded copy too.
    modality_key
        Name of the new ``obs`` column.

    Returns
    -------
    mudata.MuData
        The padded copy (``obs`` and ``uns`` of ``mdata`` kept; per-modality ``obs``
        columns are kept, NaN for the added cells).

    Raises
    ------
    ValueError
        If a cell of ``mdata.obs`` is in no modality, or obs names are not unique.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=100, mosaic=True)
    >>> [m.n_obs for m in mdata.mod.values()]
    [70, 70]
    >>> padded = celltx.data.pad_mosaic(mdata)
    >>> [m.n_obs for m in padded.mod.values()]
    [100, 100]
    >>> padded.obs["modality"].value_counts().sort_index().to_dict()
    {'atac': 30, 'paired': 40, 'rna': 30}
    """
    import mudata

    presence = modality_presence(mdata)
    nowhere = ~presence.any(axis=1).to_numpy()
    if nowhere.any():
        raise ValueError(
            f"{int(nowhere.sum())} cells of mdata.obs are in no modality (e.g. "
            f"{presence.index[nowhere][:3].tolist()}); drop them: "
            "mdata = mdata[mdata.obs_names.isin(<cells measured somewhere>)].copy()."
        )
    n = mdata.n_obs
    names = mdata.obs_names
    mods = {}
    for name, mod in mdata.mod.items():
        pos = names.get_indexer(mod.obs_names)
        layers = {k: place_rows(v, pos, n) for k, v in mod.layers.items()}
        obs = mod.obs.reindex(names)
        mods[name] = AnnData(
            X=place_rows(mod.X, pos, n),
            obs=obs,
            var=mod.var.copy(),
            layers=layers,
            uns=dict(mod.uns),
        )
    label = np.where(presence.all(axis=1), "paired", "")
    for name in presence.columns:
        only = presence[name].to_numpy() & (label == "")
        label[only] = name
    rest = label == ""  # measured in several but not all modalities
    if rest.any():
        label[rest] = ["+".join(presence.columns[row]) for row in presence.to_numpy()[rest]]
    obs = mdata.obs.copy()
    obs[modality_key] = pd.Categorical(label)
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = mudata.MuData(mods, obs=obs)
    out.uns.update(dict(mdata.uns))
    return out
