"""Baseline embeddings of the multiome benchmark: RNA PCA, ATAC LSI, MULTIVI and WNN (GLUE: ``_glue``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from celltx.bench._baselines import pca_embedding
from celltx.bench._inputs import get_expression, is_counts
from celltx.data import modality_presence, place_rows

from ._mudata import _get_mod, _positions, _scatter_rows

MULTIOME_BASELINES = ("rna_pca", "atac_lsi", "multivi")
"""Baselines of :func:`multiome`: RNA PCA, ATAC LSI and scvi-tools' MULTIVI."""

MULTIOME_METHODS = ("celltx", "rna_pca", "atac_lsi", "wnn", "multivi", "glue")
"""Methods of :func:`multiome` (``methods=``): celltx trained with
:data:`MULTIOME_CELLTX_DEFAULTS`, RNA PCA, ATAC LSI, muon's WNN graph, MULTIVI and GLUE
(``scglue``, the optional extra ``celltx[glue]``)."""


def atac_lsi_embedding(
    adata: AnnData,
    layer: str | None = None,
    n_comps: int = 30,
    binarize: bool = False,
    scale: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Latent semantic indexing of scATAC counts (TF-IDF + truncated SVD), as in Signac.

    :func:`celltx.data.atac_lsi` of the AnnData's counts (TF-IDF, ``log1p(TF × IDF ×
    10,000)``, randomized SVD, the first component dropped, cells at ``U·Σ``).
    ``scale=True`` standardises each component instead (Signac's and muon's default), which
    gives the noisy trailing components as much weight as the leading ones: on Granja et
    al. 2019 bone marrow (14,125 cells, 10,000 peaks, 16 types) Leiden ARI is 0.47 unscaled
    against 0.37 scaled, and on :func:`celltx.datasets.simulate_multiome` 0.95 against 0.57.

    Parameters
    ----------
    adata
        Cells × peaks with counts (or binary accessibility).
    layer
        Layer with the counts (default ``X``).
    n_comps
        Number of components kept (after dropping the first); capped at ``min(n_cells,
        n_peaks) - 2``.
    binarize
        Binarize counts first (ArchR-style).
    scale
        Standardise each component (Signac-style).
    seed
        Seed of the randomized SVD.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_comps)`` float32, rows in ``adata.obs_names`` order.

    Raises
    ------
    ValueError
        If the matrix has negative values, or fewer than 3 cells or peaks with counts.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=200)
    >>> celltx.bench.atac_lsi_embedding(mdata.mod["atac"], n_comps=10).shape
    (200, 10)
    """
    from celltx.data import atac_lsi

    return atac_lsi(
        get_expression(adata, layer), n_comps=n_comps, binarize=binarize, scale=scale, seed=seed
    )


def multivi_embedding(
    mdata: MuData,
    rna_layer: str | None = None,
    atac_layer: str | None = None,
    batch_key: str | None = None,
    max_epochs: int | None = None,
    n_latent: int | None = None,
    seed: int = 0,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    model_kwargs: Mapping | None = None,
    **kwargs,
) -> np.ndarray:
    """Joint latent space of scvi-tools' MULTIVI on paired or mosaic RNA + ATAC counts.

    The data is not modified. A padded copy is registered with ``MULTIVI.setup_mudata``:
    both modalities hold every cell of ``mdata`` in ``mdata.obs_names`` order, with zero
    counts where a cell lacks the modality. This is how scvi-tools represents mosaic data
    (what ``scvi.data.organize_multiome_anndatas`` does): MULTIVI treats a cell whose
    counts of a modality are all zero as not measured in it and encodes it from the other
    modality. For mosaic data the cell's measured modality (``"paired"``,
    ``"expression"``, ``"accessibility"``) is a covariate, as in scvi-tools' MultiVI
    tutorial: it is the batch when ``batch_key`` is ``None``, otherwise a categorical
    covariate next to ``batch_key``.

    MULTIVI's default learning rate (``lr=1e-4``, 500 epochs) under-trains small data: on
    :func:`celltx.datasets.simulate_multiome`'s default 600 cells, ``lr=1e-3`` raises the
    best-resolution Leiden ARI from 0.66 to 0.83 (paired) and, on the mosaic, the modality
    mixing of :func:`multiome` from 0.26 to 0.87. Pass ``lr`` (a training argument) for
    a fair baseline on small data.

    Parameters
    ----------
    mdata
        MuData with an RNA and an ATAC modality of raw counts; in a mosaic a modality
        AnnData simply lacks the cells not measured in it.
    rna_layer, atac_layer
        Layers with raw counts (default ``X``).
    batch_key
        Column of ``mdata.obs`` with batches, or ``None``.
    max_epochs
        Training epochs; ``None`` uses MULTIVI's default (500, with early stopping).
    n_latent
        Latent dimension; ``None`` uses MULTIVI's default.
    seed
        ``scvi.settings.seed``.
    rna_mod, atac_mod
        Names of the RNA and ATAC modalities.
    model_kwargs
        Further arguments of ``scvi.model.MULTIVI`` (``n_hidden``, ``gene_likelihood``, …).
    **kwargs
        Arguments of ``MULTIVI.train`` (``accelerator``, ``batch_size``, ``lr``, …), and
        ``max_seconds``: a wall-clock budget of training (Lightning's ``max_time``; the
        epoch under way when it runs out is finished).

    Returns
    -------
    numpy.ndarray
        ``(mdata.n_obs, n_latent)`` float32: the joint latent means, rows in
        ``mdata.obs_names`` order (every cell gets a row, whatever it was measured in).

    Raises
    ------
    ValueError
        If a modality, layer or ``batch_key`` is missing, or the counts are not raw counts.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=200, mosaic=True)
    >>> z = celltx.bench.multivi_embedding(mdata, max_epochs=2, accelerator="cpu")  # doctest: +SKIP
    >>> z.shape[0]  # doctest: +SKIP
    200
    """
    model = _train_multivi(
        mdata,
        rna_layer,
        atac_layer,
        batch_key,
        max_epochs,
        n_latent,
        seed,
        rna_mod,
        atac_mod,
        model_kwargs,
        **kwargs,
    )
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def _train_multivi(
    mdata: MuData,
    rna_layer: str | None = None,
    atac_layer: str | None = None,
    batch_key: str | None = None,
    max_epochs: int | None = None,
    n_latent: int | None = None,
    seed: int = 0,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    model_kwargs: Mapping | None = None,
    max_seconds: float | None = None,
    **kwargs,
):
    """MULTIVI trained on a padded copy of ``mdata`` (see :func:`multivi_embedding`).

    ``max_seconds``: a wall-clock budget of training (Lightning's ``max_time``; training
    stops after the epoch in which it runs out).
    """
    import mudata
    import scvi

    rna, atac = _get_mod(mdata, rna_mod), _get_mod(mdata, atac_mod)
    n = mdata.n_obs
    padded = {}
    for key, mod, layer, what in (
        ("rna", rna_mod, rna_layer, "RNA"),
        ("atac", atac_mod, atac_layer, "ATAC"),
    ):
        a = mdata.mod[mod]
        x = get_expression(a, layer, f"mdata.mod[{mod!r}]")
        if not is_counts(x):
            raise ValueError(
                f"MULTIVI needs raw {what} counts (non-negative integers); pass the layer that "
                f"holds them ({key}_layer=...)."
            )
        padded[key] = place_rows(sparse.csr_matrix(x, dtype=np.float32), _positions(mdata, a), n)
    presence = modality_presence(mdata)
    has_rna, has_atac = presence[rna_mod].to_numpy(), presence[atac_mod].to_numpy()
    modality = np.where(
        has_rna & has_atac, "paired", np.where(has_rna, "expression", "accessibility")
    )
    obs = pd.DataFrame(index=mdata.obs_names.copy())
    obs["_modality"] = pd.Categorical(modality)
    mosaic = obs["_modality"].nunique() > 1
    setup: dict[str, Any] = {}
    if batch_key is not None:
        if batch_key not in mdata.obs:
            raise ValueError(f"batch_key={batch_key!r} is not a column of mdata.obs.")
        if mdata.obs[batch_key].isna().any():
            raise ValueError(f"batch_key={batch_key!r} has missing values; fill them first.")
        obs["_batch"] = pd.Categorical(mdata.obs[batch_key].astype(str).to_numpy())
        setup["batch_key"] = "_batch"
        if mosaic:
            setup["categorical_covariate_keys"] = ["_modality"]
    elif mosaic:
        setup["batch_key"] = "_modality"
    mods = {
        "rna": AnnData(
            X=padded["rna"], obs=obs.copy(), var=pd.DataFrame(index=rna.var_names.copy())
        ),
        "atac": AnnData(
            X=padded["atac"], obs=obs.copy(), var=pd.DataFrame(index=atac.var_names.copy())
        ),
    }
    kwargs.setdefault("enable_progress_bar", False)
    if max_seconds is not None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0; got {max_seconds!r}.")
        kwargs["max_time"] = {"seconds": float(max_seconds)}
    if max_epochs is not None:
        kwargs["max_epochs"] = int(max_epochs)
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*not unique.*")
        joint = MuData(mods, obs=obs)
        scvi.settings.seed = seed
        scvi.model.MULTIVI.setup_mudata(
            joint, modalities={"rna_layer": "rna", "atac_layer": "atac"}, **setup
        )
        model = scvi.model.MULTIVI(joint, n_latent=n_latent, **dict(model_kwargs or {}))
        model.train(**kwargs)
        return model


def _rna_pca(
    mdata: MuData, rna_mod: str, layer: str | None, seed: int, counts: bool | None = None
) -> np.ndarray:
    """RNA PCA (:func:`~celltx.bench.pca_embedding`) of the cells with RNA, NaN elsewhere."""
    rna = _get_mod(mdata, rna_mod)
    emb = pca_embedding(rna, layer=layer, n_comps=50, seed=seed, counts=counts)
    return _scatter_rows(emb, _positions(mdata, rna), mdata.n_obs)


def _atac_lsi(mdata: MuData, atac_mod: str, layer: str | None, seed: int) -> np.ndarray:
    """ATAC LSI (:func:`atac_lsi_embedding`) of the cells with ATAC, NaN elsewhere."""
    atac = _get_mod(mdata, atac_mod)
    emb = atac_lsi_embedding(atac, layer=layer, seed=seed)
    return _scatter_rows(emb, _positions(mdata, atac), mdata.n_obs)


def _multivi_run(mdata: MuData, **kwargs) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """MULTIVI's joint latent, its per-modality latents (for FOSCTTM) and the epochs trained.

    A per-modality latent is NaN for the cells not measured in that modality (MULTIVI
    would encode their all-zero padding).
    """
    model = _train_multivi(mdata, **kwargs)
    joint = np.asarray(model.get_latent_representation(), dtype=np.float32)
    presence = modality_presence(mdata)
    per_mod = {}
    for key, m in (("rna", "expression"), ("atac", "accessibility")):
        mod = kwargs.get(f"{key}_mod", key)
        z = np.asarray(model.get_latent_representation(modality=m), dtype=np.float32)
        z[~presence[mod].to_numpy()] = np.nan
        per_mod[key] = z
    history = getattr(model, "history", None) or {}
    elbo = history.get("elbo_train")
    epochs = int(len(elbo)) if elbo is not None else -1
    return joint, per_mod, epochs


def wnn_graph(
    mdata: MuData,
    rna_layer: str | None = None,
    atac_layer: str | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    rna_counts: bool | None = None,
):
    """The weighted-nearest-neighbour (WNN) graph of muon, on cells measured in both modalities.

    Each modality gets its usual reduction, as in muon's multiome tutorial: RNA PCA
    (:func:`~celltx.bench.pca_embedding`, 50 components) and ATAC LSI
    (:func:`atac_lsi_embedding`, 30 components), then scanpy's ``n_neighbors`` graph of
    each (exact neighbours) and ``muon.pp.neighbors`` (Hao et al. 2021's WNN: per-cell
    modality weights from how well each modality predicts the cell's neighbourhood; its
    200 candidate neighbours capped at ``n_cells - 2`` for small data, where muon 0.1.9
    otherwise crashes).

    Parameters
    ----------
    mdata
        MuData with RNA and ATAC; only the cells in both are in the graph.
    rna_layer, atac_layer
        Layers with the values (default ``X``).
    n_neighbors
        Neighbours of the per-modality and of the WNN graph.
    seed
        Seed of the reductions and neighbour searches.
    rna_mod, atac_mod
        Modality names.
    rna_counts
        Whether the RNA values are raw counts (``None``: decided from the values).

    Returns
    -------
    tuple
        ``(connectivities, positions)``: the WNN connectivities (sparse, paired cells ×
        paired cells) and the rows of those cells in ``mdata.obs_names``.

    Raises
    ------
    ValueError
        If fewer than ``n_neighbors + 2`` cells have both modalities.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=200)
    >>> graph, rows = celltx.bench.wnn_graph(mdata)  # doctest: +SKIP
    >>> graph.shape  # doctest: +SKIP
    (200, 200)
    """
    import mudata
    import muon as mu
    import scanpy as sc

    rna, atac = _get_mod(mdata, rna_mod), _get_mod(mdata, atac_mod)
    both = rna.obs_names.intersection(atac.obs_names, sort=False)
    both = mdata.obs_names[mdata.obs_names.isin(both)]
    if len(both) < n_neighbors + 2:
        raise ValueError(
            f"WNN needs at least {n_neighbors + 2} cells measured in both modalities; got "
            f"{len(both)}."
        )
    reps = {
        "rna": pca_embedding(rna[both], layer=rna_layer, n_comps=50, seed=seed, counts=rna_counts),
        "atac": atac_lsi_embedding(atac[both], layer=atac_layer, seed=seed),
    }
    mods = {}
    for key, rep in reps.items():
        a = AnnData(obs=pd.DataFrame(index=pd.Index(both)), obsm={"X_rep": rep})
        sc.pp.neighbors(
            a, use_rep="X_rep", n_neighbors=n_neighbors, random_state=seed, transformer="sklearn"
        )
        mods[key] = a
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = MuData(mods)
        # muon's candidate search takes n_multineighbors + 1 neighbours and breaks (memory
        # corruption in scipy) when that exceeds the cells: cap it
        mu.pp.neighbors(
            joint,
            n_neighbors=n_neighbors,
            n_multineighbors=min(200, len(both) - 2),
            random_state=seed,
            key_added="wnn",
        )
    return sparse.csr_matrix(joint.obsp["wnn_connectivities"]), mdata.obs_names.get_indexer(both)
