"""Embeddings of a trained multiome celltx model for the multiome benchmark."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from mudata import MuData
from scipy import sparse

from celltx.bench._inputs import get_expression
from celltx.nn import preset

from ._mudata import _scatter_rows

#: the celltx recipe of :func:`multiome` (``methods=("celltx", ...)``): trained from scratch
#: on the (padded) MuData with the cross-modal contrastive task (``task="multiome"``,
#: :class:`celltx.module.CrossModal`); 100 genes (top-ranked) and 128 open peaks (rarest
#: first, TF-IDF) per cell, from a data-chosen panel of the ``peak_panel`` most accessible
#: peaks (:func:`celltx.data.peak_panel`; ``None``: every peak); a step budget (``steps``
#: optimiser steps, at most ``epochs`` epochs) rather than a number of epochs, so that
#: larger data trains fewer epochs; neighbour positives (``contrast_positives="knn"``,
#: ``contrast_k=20``): each cell's batch holds a partner, a paired cell's neighbour in both
#: RNA PCA and ATAC LSI or, on a mosaic, a cell of the other modality reached through the
#: paired cells (:class:`celltx.module.CrossModal`). The multiome page of the docs has the
#: measurements.
MULTIOME_CELLTX_DEFAULTS: dict[str, Any] = {
    "model": preset(
        "small",
        max_seq_len=101,
        max_peaks=128,
        dropout=0.0,
        gene_selection="rank",
        peak_selection="idf",
        atac_zero_fraction=0.0,
        contrast_positives="knn",
        contrast_k=20,
    ),
    "task": "multiome",
    "steps": 300,
    "epochs": 50,
    "peak_panel": 20_000,
    "lr": 1e-2,
    "batch_size": 64,
    "accelerator": "auto",
}


def multiome_recipe_epochs(
    n_cells: int, settings: dict | None = None, train_size: float = 0.9
) -> int:
    """Epochs of the multiome recipe on ``n_cells`` cells: its step budget, at most ``epochs``.

    The steps form of :func:`celltx.model.train_budget` (kept as a thin wrapper with the
    recipe's settings): ``ceil(steps / steps per epoch)`` with ``ceil(train_size * n_cells
    / batch_size)`` steps per epoch, between 1 and ``epochs`` (``settings`` override
    :data:`MULTIOME_CELLTX_DEFAULTS`; ``steps=None``: ``epochs``).

    Examples
    --------
    >>> from celltx.bench import multiome_recipe_epochs
    >>> multiome_recipe_epochs(600), multiome_recipe_epochs(2600)
    (34, 9)
    """
    from celltx.model import train_budget

    cfg = {**MULTIOME_CELLTX_DEFAULTS, **dict(settings or {})}
    if cfg.get("steps") is None:
        return int(cfg["epochs"])
    # ceil(ceil(a) / b) = ceil(a / b): the training cells, rounded up, give the same steps
    n_train = max(math.ceil(train_size * n_cells), 1)
    return train_budget(
        n_train, int(cfg["epochs"]), steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"])
    )


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
    paired data); with more peaks than ``peak_panel`` the copy keeps the panel
    (:func:`celltx.data.peak_panel`); ``mdata`` is not modified. The model records the
    epochs it trained in its history (:func:`multiome_recipe_epochs`).
    """
    import scvi
    import torch

    from celltx.data import pad_mosaic, peak_panel
    from celltx.model import ScGPT

    settings = dict(settings or {})
    cfg = {**MULTIOME_CELLTX_DEFAULTS, **settings}
    cfg["model"] = {**MULTIOME_CELLTX_DEFAULTS["model"], **dict(settings.get("model", {}))}
    key = "_celltx_modality"
    padded = pad_mosaic(mdata, modality_key=key)
    n_top = cfg.get("peak_panel")
    if n_top is not None and padded.mod[atac_mod].n_vars > int(n_top):
        atac = padded.mod[atac_mod]
        keep = peak_panel(atac, n_top=int(n_top), layer=atac_layer)
        padded.mod[atac_mod] = atac[:, keep].copy()
        padded.update()
    mods = {"rna_layer": rna_mod, "atac_layer": atac_mod}
    ScGPT.setup_mudata(padded, rna_layer=rna_layer, atac_layer=atac_layer, modalities=mods)
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = ScGPT(padded, **cfg["model"])
    model.train(
        max_epochs=multiome_recipe_epochs(padded.n_obs, cfg),
        task=cfg.get("task"),
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
