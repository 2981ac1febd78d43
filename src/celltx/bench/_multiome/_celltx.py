"""Embeddings of a trained multiome celltx model for the multiome benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np
from mudata import MuData
from scipy import sparse

from celltx.bench._inputs import get_expression
from celltx.nn import preset

from ._mudata import _scatter_rows

#: the celltx recipe of :func:`multiome` (``methods=("celltx", ...)``): trained from scratch
#: on the (padded) MuData; the multiome page of the docs has the measurements behind it
MULTIOME_CELLTX_DEFAULTS: dict[str, Any] = {
    "model": preset("small", max_seq_len=201, max_peaks=200, dropout=0.1),
    "epochs": 30,
    "lr": 1e-2,
    "batch_size": 32,
    "accelerator": "auto",
}


def fit_celltx_multiome(
    mdata: MuData,
    settings: dict | None = None,
    seed: int = 0,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    rna_layer: str | None = None,
    atac_layer: str | None = None,
):
    """Train celltx's multiome recipe on a padded copy of ``mdata``; return model and copy.

    ``settings`` override :data:`MULTIOME_CELLTX_DEFAULTS` key by key (``model`` merged).
    A mosaic is padded with :func:`celltx.data.pad_mosaic` (scvi-tools registers fully
    paired data); ``mdata`` is not modified.
    """
    import scvi
    import torch

    from celltx.data import pad_mosaic
    from celltx.model import ScGPT

    settings = dict(settings or {})
    cfg = {**MULTIOME_CELLTX_DEFAULTS, **settings}
    cfg["model"] = {**MULTIOME_CELLTX_DEFAULTS["model"], **dict(settings.get("model", {}))}
    key = "_celltx_modality"
    padded = pad_mosaic(mdata, modality_key=key)
    mods = {"rna_layer": rna_mod, "atac_layer": atac_mod}
    ScGPT.setup_mudata(padded, rna_layer=rna_layer, atac_layer=atac_layer, modalities=mods)
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = ScGPT(padded, **cfg["model"])
    model.train(
        max_epochs=cfg["epochs"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        accelerator=cfg["accelerator"],
        enable_progress_bar=False,
    )
    return model, padded


def celltx_multiome_embeddings(
    model,
    mdata: MuData,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Joint and single-modality embeddings of a trained multiome ScGPT, for :func:`multiome`.

    ``"celltx_joint"``: every cell from all its tokens; ``"celltx_rna"``: each cell with
    RNA from its RNA alone (its ATAC rows zeroed, i.e. not measured), NaN for cells without
    RNA; ``"celltx_atac"`` likewise from ATAC alone. ``mdata`` (set up with
    :meth:`~celltx.model.ScGPT.setup_mudata`, fully paired) is not modified.

    Parameters
    ----------
    model
        A trained :class:`~celltx.model.ScGPT` with RNA and ATAC modalities.
    mdata
        The fully paired MuData (a mosaic padded with :func:`celltx.data.pad_mosaic`),
        registered with the model.
    rna_mod, atac_mod
        Names of the RNA and ATAC modalities.
    batch_size
        Cells per forward pass (``None``: the model's default).

    Returns
    -------
    dict
        ``{name: (mdata.n_obs, d) array}``, rows in ``mdata.obs_names`` order; a
        single-modality entry is left out when no cell has that modality.
    """
    out = {"celltx_joint": model.get_latent_representation(mdata, batch_size=batch_size)}
    for name, drop, keep in (("celltx_rna", atac_mod, rna_mod), ("celltx_atac", rna_mod, atac_mod)):
        args = _setup_args(model, mdata)
        layer = args[f"{'rna' if keep == rna_mod else 'atac'}_layer"]
        x = get_expression(mdata.mod[keep], layer)
        has = np.asarray(abs(x).sum(1)).ravel() > 0
        if not has.any():
            continue
        alone = mdata[has].copy()
        alone.mod[drop].X = sparse.csr_matrix(alone.mod[drop].shape, dtype=np.float32)
        alone.mod[drop].layers.clear()
        args[f"{'rna' if drop == rna_mod else 'atac'}_layer"] = None  # the zeroed values are in X
        model.setup_mudata(alone, **args)
        emb = model.get_latent_representation(alone, batch_size=batch_size)
        out[name] = _scatter_rows(emb, np.flatnonzero(has), mdata.n_obs)
    return out


def _setup_args(model, mdata) -> dict:
    """The arguments ``mdata`` was registered with (``setup_mudata``)."""
    return dict(model.get_anndata_manager(mdata, required=True).registry["setup_args"])
