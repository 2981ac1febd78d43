"""Baseline embeddings of the multiome benchmark: RNA PCA, ATAC LSI, MULTIVI and GLUE."""

from __future__ import annotations

import logging
import time
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

    Term frequency ``TF = counts / total counts of the cell``; inverse document frequency
    ``IDF = n_cells / total counts of the peak``; the matrix ``log1p(TF × IDF × 10,000)``
    is decomposed by a truncated SVD (scikit-learn, randomized) into ``n_comps + 1``
    components, the first of which (correlated with sequencing depth) is dropped. The cell
    coordinates are ``U·Σ``, so components keep their weight (as in ArchR and scanpy's
    PCA). ``scale=True`` standardises each component to mean 0 and variance 1 instead
    (Signac's and muon's default), which gives the noisy trailing components as much
    weight as the leading ones: on Granja et al. 2019 bone marrow (14,125 cells, 10,000
    peaks, 16 types) Leiden ARI is 0.47 unscaled against 0.37 scaled, and on
    :func:`celltx.datasets.simulate_multiome` 0.95 against 0.57. Peaks without counts are
    left out; cells without counts get the TF-IDF of an empty cell (all zero). All
    sparse, vectorised (:func:`celltx.data.atac_lsi` of the AnnData's counts).

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


# --------------------------------------------------------------------------------------
# GLUE (scglue)
# --------------------------------------------------------------------------------------
logger = logging.getLogger(__name__)
GLUE_EXTEND_RANGE = 20_000
"""Window (bp) beyond a gene's region in which GLUE's guidance graph links peaks to it.

GLUE's standard graph links a peak to a gene when it overlaps the gene body or the 2 kb
promoter. The offline TSS table (:func:`~celltx.data.tss_table`) has start sites, not
gene bodies, so peaks within 20 kb (a typical human gene body) of the promoter are linked
too, with scglue's distance-decayed weight (``dist_power_decay``)."""


def _gene_coordinates(
    rna: AnnData, genome: str | None = None, gene_symbols: str | None = None
) -> pd.DataFrame:
    """GLUE's gene coordinates (``chrom``, ``chromStart``, ``chromEnd``, ``strand``).

    From ``rna.var`` columns ``chrom``, ``start``, ``end`` (the gene bodies; ``strand``
    if present, else ``"+"``) when they exist, as :func:`celltx.datasets.simulate_multiome`
    writes them; otherwise each gene's start site from the offline TSS table of
    ``genome`` (:func:`~celltx.data.tss_table`), looked up by symbol (``var_names`` or
    ``var[gene_symbols]``), as a 1-bp region (a gene with several start sites takes the
    first). Genes without coordinates get NaN: GLUE keeps them in its graph with only
    their self-loop.
    """
    from celltx.data import tss_table

    var = rna.var
    if {"chrom", "start", "end"} <= set(var.columns):
        out = pd.DataFrame(
            {
                "chrom": var["chrom"].astype(str).to_numpy(),
                "chromStart": pd.to_numeric(var["start"]).to_numpy(np.float64),
                "chromEnd": pd.to_numeric(var["end"]).to_numpy(np.float64),
                "strand": var["strand"].astype(str).to_numpy() if "strand" in var else "+",
            },
            index=rna.var_names.copy(),
        )
        return out
    if genome is None:
        raise ValueError(
            "GLUE's guidance graph needs gene coordinates: rna.var has no 'chrom', 'start', "
            "'end' columns; pass glue_kwargs={'genome': 'hg38'} (or hg19, mm10, ...) to "
            "place the genes by their start sites from the offline TSS table."
        )
    if gene_symbols is not None and gene_symbols not in var:
        raise ValueError(f"gene_symbols={gene_symbols!r} is not a column of rna.var.")
    symbols = (var[gene_symbols] if gene_symbols else rna.var_names.to_series()).astype(str)
    table = tss_table(genome).drop_duplicates("symbol").set_index("symbol")
    hit = table.reindex(symbols.to_numpy())
    found = hit["chrom"].notna().to_numpy()
    if not found.any():
        raise ValueError(
            f"None of the {rna.n_vars} genes is in the {genome} TSS table (e.g. "
            f"{symbols.iloc[:3].tolist()}): GLUE's guidance graph needs gene symbols "
            "(pass glue_kwargs={'gene_symbols': <var column>}) or var columns 'chrom', "
            "'start', 'end'."
        )
    tss = hit["tss"].to_numpy(np.float64)
    return pd.DataFrame(
        {
            "chrom": hit["chrom"].to_numpy(),
            "chromStart": tss,
            "chromEnd": tss + 1,
            "strand": hit["strand"].to_numpy(),
        },
        index=rna.var_names.copy(),
    )


def _window_links(
    genes: pd.DataFrame, peaks: pd.DataFrame, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gene–peak pairs within ``window`` bp, as scglue's ``window_graph`` finds them.

    ``genes``: ``chrom``, ``chromStart``, ``chromEnd`` (NaN: not placed); ``peaks``:
    ``chrom``, ``start``, ``end``; half-open intervals. The distance is scglue's
    ``interval_dist``: 0 when the two overlap, else the gap plus one. scglue's own
    ``window_graph`` streams both sets through the ``bedtools`` program, which is not a
    Python package (no pip install); this is the same rule, vectorised per chromosome
    (peaks sorted by start, a ``searchsorted`` window per gene).

    Returns
    -------
    tuple
        ``(gene rows, peak rows, distances)``, integer arrays.
    """
    gi, pi, dist = [], [], []
    p_chrom = peaks["chrom"].astype(str).to_numpy()
    p_start = peaks["start"].to_numpy(np.int64)
    p_end = peaks["end"].to_numpy(np.int64)
    widest = int((p_end - p_start).max()) if len(p_end) else 0
    placed = np.flatnonzero(genes["chrom"].notna().to_numpy())
    g_chrom = genes["chrom"].to_numpy()[placed].astype(str)
    g_start = genes["chromStart"].to_numpy()[placed].astype(np.int64)
    g_end = genes["chromEnd"].to_numpy()[placed].astype(np.int64)
    for chrom in np.unique(g_chrom):
        on = np.flatnonzero(p_chrom == chrom)
        if not on.size:
            continue
        on = on[np.argsort(p_start[on], kind="stable")]
        starts, ends = p_start[on], p_end[on]
        for g in np.flatnonzero(g_chrom == chrom):
            s, e = g_start[g], g_end[g]
            lo = np.searchsorted(starts, s - window - widest, side="left")
            hi = np.searchsorted(starts, e + window, side="right")
            ps, pe = starts[lo:hi], ends[lo:hi]
            gap = np.maximum(ps - e, s - pe)  # < 0: overlap
            d = np.where(gap < 0, 0, gap + 1)
            ok = d <= window
            gi.append(np.full(int(ok.sum()), placed[g]))
            pi.append(on[lo:hi][ok])
            dist.append(d[ok])
    if not gi:
        return (np.zeros(0, np.int64),) * 3
    return np.concatenate(gi), np.concatenate(pi), np.concatenate(dist).astype(np.int64)


_GLUE_OPTIONS = (
    "max_seconds",
    "max_epochs",
    "genome",
    "gene_symbols",
    "extend_range",
    "promoter_len",
    "n_comps",
    "n_top_genes",
    "init_kws",
    "fit_kws",
)
"""Keys of ``glue_kwargs`` in :func:`multiome`."""
_GLUE_MISSING = "scglue is not installed; pip install 'celltx[glue]' to include GLUE."
_LINK_KEYS = ("genome", "gene_symbols", "extend_range", "promoter_len")


def _link_kwargs(glue_kwargs: Mapping | None) -> dict[str, Any]:
    """The entries of ``glue_kwargs`` that shape the guidance graph."""
    return {k: v for k, v in dict(glue_kwargs or {}).items() if k in _LINK_KEYS}


def _glue_links(
    rna: AnnData,
    atac: AnnData,
    genome: str | None = None,
    gene_symbols: str | None = None,
    extend_range: int = GLUE_EXTEND_RANGE,
    promoter_len: int = 2000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gene–peak pairs of GLUE's guidance graph (:func:`_glue_guidance`), from coordinates.

    Each gene's region (the gene body of :func:`_gene_coordinates`, or its start site,
    extended ``promoter_len`` bp upstream) is paired with every peak
    (``celltx.data.peak_coordinates``: ``var`` columns or ``chr:start-end`` names) within
    ``extend_range`` bp of it (:func:`_window_links`).

    Raises
    ------
    ValueError
        If genes or peaks have no coordinates, or no peak lies near any gene.
    """
    from celltx.data import peak_coordinates

    if not extend_range >= 0 or not promoter_len >= 0:
        raise ValueError(
            f"extend_range and promoter_len must be >= 0; got {extend_range!r}, {promoter_len!r}."
        )
    genes = _gene_coordinates(rna, genome, gene_symbols)
    peaks = peak_coordinates(atac)
    minus = (genes["strand"] == "-").to_numpy()
    genes["chromStart"] = np.where(
        minus, genes["chromStart"], np.maximum(genes["chromStart"] - promoter_len, 0)
    )
    genes["chromEnd"] = np.where(minus, genes["chromEnd"] + promoter_len, genes["chromEnd"])
    g, p, d = _window_links(genes, peaks, int(extend_range))
    if g.size == 0:
        placed = int(genes["chrom"].notna().sum())
        raise ValueError(
            "GLUE's guidance graph links no peak to a gene: no peak lies within "
            f"{promoter_len + extend_range:,} bp of a placed gene ({placed} of {rna.n_vars} "
            "genes placed). Check the genome build (glue_kwargs={'genome': ...}) or widen "
            "glue_kwargs={'extend_range': ...}."
        )
    return g, p, d


def _glue_guidance(rna: AnnData, atac: AnnData, **kwargs):
    """GLUE's guidance graph of ``rna``'s genes and ``atac``'s peaks, from coordinates only.

    What ``scglue.genomics.rna_anchored_guidance_graph`` builds, on the pairs of
    :func:`_glue_links` (``**kwargs``: its settings): an edge from each gene to each of
    its peaks and back (``type`` ``fwd`` / ``rev``, ``sign`` 1, ``weight`` 1 for an
    overlap, else scglue's ``dist_power_decay`` of the distance), plus a self-loop on
    every feature. scglue's own builder needs the ``bedtools`` program. Only coordinates
    are used, never a simulation's ground truth (``var["linked_gene"]``).
    ``atac.var["highly_variable"]`` is set, in place, to the peaks linked to a highly
    variable gene (``rna.var["highly_variable"]``, all genes if absent), as scglue's
    ``propagate_highly_variable`` does.

    Returns
    -------
    tuple
        ``(graph, n_links)``: a ``networkx.MultiDiGraph`` and the number of gene–peak pairs.
    """
    import networkx as nx

    g, p, d = _glue_links(rna, atac, **kwargs)
    gene_names = rna.var_names.to_numpy()[g]
    peak_names = atac.var_names.to_numpy()[p]
    weight = ((d + 1000) / 1000) ** (-0.75)  # scglue.genomics.dist_power_decay
    graph = nx.MultiDiGraph()
    for kind, us, vs in (("fwd", gene_names, peak_names), ("rev", peak_names, gene_names)):
        graph.add_edges_from(
            (u, v, {"dist": int(x), "weight": float(w), "sign": 1, "type": kind})
            for u, v, x, w in zip(us, vs, d, weight, strict=True)
        )
    for f in (*rna.var_names, *atac.var_names):
        graph.add_edge(f, f, weight=1.0, sign=1, type="loop")
    hv = (
        rna.var["highly_variable"].to_numpy(bool)
        if "highly_variable" in rna.var
        else np.ones(rna.n_vars, bool)
    )
    atac.var["highly_variable"] = atac.var_names.isin(peak_names[hv[g]])
    return graph, int(g.size)


def _glue_run(
    mdata: MuData,
    rna_layer: str | None = None,
    atac_layer: str | None = None,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    seed: int = 0,
    max_seconds: float | None = None,
    max_epochs: int | None = None,
    genome: str | None = None,
    gene_symbols: str | None = None,
    extend_range: int = GLUE_EXTEND_RANGE,
    promoter_len: int = 2000,
    n_comps: int = 100,
    n_top_genes: int = 2000,
    init_kws: Mapping | None = None,
    fit_kws: Mapping | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """GLUE (scglue) on RNA + ATAC counts: joint, per-modality embeddings and epochs trained.

    GLUE's standard recipe (scglue's tutorial): RNA counts → up to ``n_top_genes`` highly
    variable genes (scanpy's ``seurat_v3``), normalised, log1p, scaled, PCA (``n_comps``,
    the encoder's input); ATAC → ``scglue.data.lsi`` (``n_comps``); both modelled with a
    negative binomial; guidance graph :func:`_glue_guidance` restricted to the highly
    variable genes and the peaks linked to them; the steps of ``scglue.models.fit_SCGLUE``
    (pretraining, balancing weights, fine-tuning) with ``random_seed=seed``; each
    modality's cells encoded by ``encode_data`` (latent means). GLUE treats the two
    modalities as unpaired: it never sees which RNA profile belongs to which ATAC profile.

    ``max_seconds``: a wall-clock budget of training; pretraining may use half of it,
    fine-tuning the rest, each stopping after the epoch in which its share runs out.
    ``max_epochs`` caps each of the two stages (scglue's default is derived from the data
    size, with early stopping). The epochs returned are the two stages' sum. The joint
    embedding is the mean of a cell's RNA and ATAC embeddings when it has both, else the
    one it has; per-modality rows are NaN for cells not measured in that modality.
    """
    import tempfile

    import scanpy as sc
    import scglue
    from scglue.models.base import TrainingPlugin

    rna_all, atac_all = _get_mod(mdata, rna_mod), _get_mod(mdata, atac_mod)
    ads = {}
    for key, mod, a, layer, what in (
        ("rna", rna_mod, rna_all, rna_layer, "RNA"),
        ("atac", atac_mod, atac_all, atac_layer, "ATAC"),
    ):
        x = get_expression(a, layer, f"mdata.mod[{mod!r}]")
        if not is_counts(x):
            raise ValueError(
                f"GLUE needs raw {what} counts (non-negative integers); pass the layer that "
                f"holds them ({key}_layer=...)."
            )
        ad = AnnData(
            X=sparse.csr_matrix(x, dtype=np.float32),
            obs=pd.DataFrame(index=a.obs_names.copy()),
            var=a.var.copy(),
        )
        ad.layers["counts"] = ad.X.copy()
        ads[key] = ad
    rna, atac = ads["rna"], ads["atac"]
    if rna.n_obs < 10 or atac.n_obs < 10:
        raise ValueError(
            f"GLUE needs at least 10 cells per modality; got {rna.n_obs}, {atac.n_obs}."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if rna.n_vars > n_top_genes:
            sc.pp.highly_variable_genes(rna, n_top_genes=n_top_genes, flavor="seurat_v3")
        else:
            rna.var["highly_variable"] = True
        sc.pp.normalize_total(rna)
        sc.pp.log1p(rna)
        sc.pp.scale(rna, max_value=10)
        k = int(min(n_comps, rna.n_obs - 1, int(rna.var["highly_variable"].sum()) - 1))
        sc.tl.pca(rna, n_comps=k, mask_var="highly_variable", random_state=seed)
        k = int(min(n_comps, atac.n_obs - 1, atac.n_vars - 1))
        scglue.data.lsi(atac, n_components=k, n_iter=15, random_state=seed)
    graph, _ = _glue_guidance(
        rna,
        atac,
        genome=genome,
        gene_symbols=gene_symbols,
        extend_range=extend_range,
        promoter_len=promoter_len,
    )
    hvf = [*rna.var_names[rna.var["highly_variable"]], *atac.var_names[atac.var["highly_variable"]]]
    graph = graph.subgraph(hvf).copy()
    for ad, rep, layer in ((rna, "X_pca", "counts"), (atac, "X_lsi", None)):
        scglue.models.configure_dataset(
            ad, "NB", use_highly_variable=True, use_layer=layer, use_rep=rep
        )

    epochs: list[int] = []
    start = time.perf_counter()

    class _Budget(TrainingPlugin):
        """Counts a stage's epochs; ends it after the epoch in which its deadline passes."""

        def __init__(self, deadline: float | None):
            self.deadline = deadline

        def attach(self, net, trainer, train_engine, val_engine, *args, **kwargs):
            epochs.append(0)

            def _epoch(engine):
                epochs[-1] += 1
                if self.deadline is not None and time.perf_counter() > self.deadline:
                    engine.terminate()

            train_engine.add_event_handler(scglue.models.base.EPOCH_COMPLETED, _epoch)

    def _stage(model, deadline, **kwargs) -> None:
        """``model.fit`` with the budget plugin (scglue's ``fit`` takes no plugins)."""
        inner = model.trainer.fit
        model.trainer.fit = lambda *a, **k: inner(*a, plugins=[_Budget(deadline)], **k)
        try:
            model.fit(adatas, graph, **kwargs)
        finally:
            del model.trainer.fit

    adatas = {"rna": rna, "atac": atac}
    init = {"random_seed": seed, **dict(init_kws or {})}
    fit = dict(fit_kws or {})
    if max_epochs is not None:
        fit["max_epochs"] = int(max_epochs)
    half = end = None
    if max_seconds is not None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0; got {max_seconds!r}.")
        half, end = start + max_seconds / 2, start + float(max_seconds)
    vertices = sorted(graph.nodes)
    # scglue.models.fit_SCGLUE's three steps, written out to give each stage its share of
    # the budget and to fall back to equal weights when the balancing weights are not
    # finite (scglue divides by zero when no RNA cluster matches an ATAC cluster with
    # cosine >= 0.5, e.g. after a short pretraining)
    level = scglue.log.console_log_level
    scglue.log.console_log_level = logging.WARNING
    try:
        with tempfile.TemporaryDirectory(prefix="celltx-glue-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pretrain = scglue.models.SCGLUEModel(
                adatas, vertices, **{**init, "shared_batches": False}
            )
            pretrain.compile()
            _stage(
                pretrain,
                half,
                **{
                    "directory": f"{tmp}/pretrain",
                    **fit,
                    "align_burnin": np.inf,
                    "safe_burnin": False,
                },
            )
            for key, ad in adatas.items():
                ad.obsm["X_glue_pretrain"] = pretrain.encode_data(key, ad)
            scglue.data.estimate_balancing_weight(
                rna, atac, use_rep="X_glue_pretrain", key_added="balancing_weight"
            )
            balanced = all(np.isfinite(ad.obs["balancing_weight"]).all() for ad in adatas.values())
            for ad in adatas.values():
                del ad.obsm["X_glue_pretrain"]
                if balanced:
                    ad.uns[scglue.config.ANNDATA_KEY]["use_dsc_weight"] = "balancing_weight"
            if not balanced:
                logger.warning("GLUE's balancing weights are not finite; using equal weights.")
            model = scglue.models.SCGLUEModel(adatas, vertices, **init)
            model.adopt_pretrained_model(pretrain)
            model.compile()
            model.random_seed += 1  # as fit_SCGLUE: not the pretraining's data order
            _stage(model, end, **{"directory": f"{tmp}/fine-tune", **fit})
            z = {key: model.encode_data(key, ad) for key, ad in adatas.items()}
    finally:
        scglue.log.console_log_level = level
    n = mdata.n_obs
    per_mod = {
        key: _scatter_rows(np.asarray(z[key], dtype=np.float32), _positions(mdata, a), n)
        for key, a in (("rna", rna_all), ("atac", atac_all))
    }
    with warnings.catch_warnings():  # every cell has at least one modality
        warnings.simplefilter("ignore", RuntimeWarning)
        joint = np.nanmean(np.stack([per_mod["rna"], per_mod["atac"]]), axis=0)
    return joint.astype(np.float32), per_mod, int(sum(epochs))
