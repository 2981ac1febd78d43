"""GLUE (scglue) as a multiome baseline: guidance graph from coordinates, a budgeted run."""

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

from celltx.bench._inputs import get_expression, is_counts

from ._mudata import _get_mod, _positions, _scatter_rows

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
        gs = np.flatnonzero(g_chrom == chrom)
        lo = np.searchsorted(starts, g_start[gs] - window - widest, side="left")
        hi = np.searchsorted(starts, g_end[gs] + window, side="right")
        n = hi - lo
        # every (gene, peak) pair within reach: gene repeated n times, peaks lo..hi-1
        g = np.repeat(gs, n)
        p = np.repeat(lo, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        gap = np.maximum(starts[p] - g_end[g], g_start[g] - ends[p])  # < 0: overlap
        d = np.where(gap < 0, 0, gap + 1)
        ok = d <= window
        gi.append(placed[g[ok]])
        pi.append(on[p[ok]])
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
