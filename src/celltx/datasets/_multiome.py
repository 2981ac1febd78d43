"""Paired RNA + ATAC (10x Multiome) data: peak coordinates and a simulator with ground truth."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from ._simulation import _check_int, _nb_counts

MODALITIES = ("paired", "rna", "atac")
"""Values of ``obs["modality"]`` in simulated mosaic data."""

_PEAK_PATTERN = r"^(?P<chrom>.+?)[:_-](?P<start>\d+)[-_](?P<end>\d+)$"


# --------------------------------------------------------------------------------------
# Peak coordinates
# --------------------------------------------------------------------------------------
def peak_coordinates(var_names: Sequence[str] | pd.Index) -> pd.DataFrame:
    """Parse peak names such as ``"chr1:100-600"`` into genomic coordinates.

    Accepted forms are ``chrom:start-end`` (10x Genomics, Signac), ``chrom-start-end``
    (ArchR, SnapATAC) and ``chrom_start_end``. The chromosome may itself contain ``_``,
    ``-`` or ``.`` (``chrUn_KI270742v1:100-200`` parses); the last two integers are the
    start and the end.

    Parameters
    ----------
    var_names
        Peak names, e.g. ``adata.var_names`` of an ATAC AnnData.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``var_names``, with columns ``chrom`` (str), ``start`` and ``end``
        (int64).

    Raises
    ------
    ValueError
        If a name does not have one of the accepted forms or has ``start > end``; the
        message lists the first offending names.

    Examples
    --------
    >>> import celltx
    >>> celltx.datasets.peak_coordinates(["chr1:100-600", "chrX-5-20"])
                 chrom  start  end
    chr1:100-600  chr1    100  600
    chrX-5-20     chrX      5   20
    """
    names = pd.Index([str(v) for v in var_names])
    parts = names.to_series(index=names).str.extract(_PEAK_PATTERN)
    bad = parts["start"].isna().to_numpy()
    if bad.any():
        shown = ", ".join(repr(n) for n in names[bad][:5])
        raise ValueError(
            f"{int(bad.sum())} of {len(names)} peak names are not of the form "
            f"'chrom:start-end' or 'chrom-start-end' (e.g. {shown}). Name the peaks by their "
            "coordinates, or put the coordinates in var columns 'chrom', 'start', 'end'."
        )
    out = pd.DataFrame(
        {
            "chrom": parts["chrom"].astype(str).to_numpy(),
            "start": parts["start"].astype(np.int64).to_numpy(),
            "end": parts["end"].astype(np.int64).to_numpy(),
        },
        index=names,
    )
    inverted = (out["start"] > out["end"]).to_numpy()
    if inverted.any():
        shown = ", ".join(repr(n) for n in names[inverted][:5])
        raise ValueError(
            f"{int(inverted.sum())} peak names have start > end (e.g. {shown}); fix the "
            "coordinates (start must not exceed end)."
        )
    return out


# --------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------
def _mosaic_fractions(mosaic) -> tuple[float, float, float] | None:
    if mosaic is False or mosaic is None:
        return None
    if mosaic is True:
        return (0.4, 0.3, 0.3)
    try:
        fr = np.asarray(mosaic, dtype=float)
    except (TypeError, ValueError):
        fr = np.array([])
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            "mosaic must be False, True or three non-negative fractions (paired, rna-only, "
            f"atac-only) that sum to 1, e.g. (0.4, 0.3, 0.3); got {mosaic!r}."
        )
    return float(fr[0]), float(fr[1]), float(fr[2])


def _standardize(x: np.ndarray) -> np.ndarray:
    """Columns to mean 0 and standard deviation 1 (constant columns to 0)."""
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


class _Standardizer:
    """``_standardize(x @ w)`` column by column for any block of rows of ``x``.

    The columns' mean and standard deviation over all rows of ``x`` come from the mean and
    (population) covariance of ``x``, so ``x @ w`` never has to be held whole.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray):
        self.w = w
        mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
        self.mean = mean @ w
        var = np.maximum((w * (cov @ w)).sum(axis=0), 0.0)
        sd = np.sqrt(var)
        self.sd = np.where(sd > 1e-12 * (1.0 + np.abs(self.mean)), sd, 1.0)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (rows @ self.w - self.mean) / self.sd


def simulate_multiome(
    n_cells: int = 600,
    n_genes: int = 200,
    n_peaks: int = 400,
    n_cell_types: int = 5,
    peaks_per_gene: int = 2,
    n_batches: int = 1,
    mosaic: bool | Sequence[float] = False,
    n_latent: int = 10,
    cluster_separation: float = 1.0,
    within_type_sd: float = 0.6,
    continuous_sd: float = 1.0,
    rna_depth: float = 1000.0,
    atac_depth: float = 1.0,
    link_strength: float = 1.5,
    atac_specific: float = 0.3,
    n_latent_atac: int = 2,
    batch_effect: float = 0.5,
    seed: int | None = 0,
) -> MuData:
    """Simulate paired single-cell RNA + ATAC counts (10x Multiome-like) with ground truth.

    Every cell has a latent state ``z`` (``n_latent`` dimensions): the centroid of its cell
    type, plus within-type Gaussian noise (``within_type_sd``), plus a position ``t`` on a
    continuous trajectory shared by all types (``continuous_sd`` times a uniform draw in
    [-1, 1] along one fixed direction). From ``z``:

    * **RNA**: gene ``g`` has log-rate ``b_g + z·W_g`` (random loadings ``W``); the rates
      are normalised per cell, multiplied by a log-normal library size (mean
      ``rna_depth``) and drawn from a negative binomial (inverse dispersion 2 to 10).
    * **ATAC**: peak ``p`` linked to gene ``g`` has logit ``a_p + s_p · link_strength ·
      (√(1 - atac_specific) · std(z·W_g) + √atac_specific · std(u·V_p))`` with ``s_p > 0``
      and ``std`` a standardisation over cells, so its accessibility rises with its linked
      gene's expression program; ``u`` is an ATAC-only part of the cell state
      (``n_latent_atac`` dimensions with their own cell-type centroids, invisible to the
      genes), so ATAC also carries information RNA lacks. Peaks without a gene (when
      ``n_peaks > n_genes * peaks_per_gene``) follow a random direction of ``(z, u)``.
      Counts are Poisson with rate ``atac_depth × d_c × sigmoid(logit)`` (``d_c`` a
      log-normal per-cell depth): sparse, mostly 0, 1 and 2.
    * **Batches** (``n_batches > 1``): each batch multiplies the gene rates by a gene-wise
      log-normal factor and shifts the peak logits (both of scale ``batch_effect``).

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes (``rna`` features).
    n_peaks
        Number of peaks (``atac`` features).
    n_cell_types
        Number of cell types (balanced up to multinomial noise).
    peaks_per_gene
        Peaks linked to each gene: peaks ``k * peaks_per_gene`` to ``(k + 1) *
        peaks_per_gene - 1`` belong to gene ``k``, placed near its start; ``0`` links none.
        Peaks beyond ``n_genes * peaks_per_gene`` are unlinked.
    n_batches
        Number of batches; with more than one, ``obs["batch"]`` is added.
    mosaic
        ``False`` for paired data; ``True`` for a mosaic with 40 % paired, 30 % RNA-only
        and 30 % ATAC-only cells; or three fractions ``(paired, rna, atac)`` summing to 1.
        Cells are assigned to groups at random, independently of their type.
    n_latent
        Dimension of the latent cell state.
    cluster_separation
        Standard deviation of the cell-type centroids (larger: types easier to tell apart).
    within_type_sd
        Standard deviation of the latent noise within a type.
    continuous_sd
        Scale of the continuous trajectory shared by all cell types.
    rna_depth
        Mean RNA library size (UMIs per cell).
    atac_depth
        Scale of the ATAC count rates (1 gives roughly 25 % non-zero entries).
    link_strength
        How strongly a peak follows its cell-state program.
    atac_specific
        Share (0 to 1) of a linked peak's program that comes from the ATAC-only state
        ``u`` rather than from its gene.
    n_latent_atac
        Dimension of the ATAC-only state ``u`` (0 for none).
    batch_effect
        Scale of the batch effects.
    seed
        Seed of numpy's random generator: the same arguments give the same data
        (``None``: fresh randomness).

    Returns
    -------
    mudata.MuData
        Modalities ``"rna"`` (genes; ``var`` with ``chrom``, ``start``, ``end``) and
        ``"atac"`` (peaks named ``"chr1:1000000-1000500"``; ``var`` with ``chrom``,
        ``start``, ``end`` and ``linked_gene``, the gene name or missing). ``X`` holds raw
        counts (CSR float32). ``obs`` (of the MuData and of each modality) has
        ``cell_type``, ``batch`` (with ``n_batches > 1``) and, for a mosaic, ``modality``
        (``"paired"``, ``"rna"`` or ``"atac"``); in a mosaic the ``rna`` AnnData lacks the
        ATAC-only cells and the ``atac`` AnnData the RNA-only ones. ``uns["simulation"]``
        holds the ground truth, rows in ``mdata.obs_names`` order: ``latent`` (cells ×
        ``n_latent``), ``latent_atac`` (``u``), ``trajectory`` (``t``), ``rna_counts`` and
        ``atac_counts`` (CSR, all cells, including the ones hidden by a mosaic),
        ``peak_gene`` (index of each peak's gene, -1 if unlinked) and ``params`` (the
        arguments).

    Raises
    ------
    ValueError
        If a size is not a positive integer or ``mosaic`` is malformed.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=300, seed=1)
    >>> mdata.mod["rna"].shape, mdata.mod["atac"].shape
    ((300, 200), (300, 400))
    >>> mosaic = celltx.datasets.simulate_multiome(n_cells=300, mosaic=True)
    >>> mosaic.obs["modality"].value_counts().sort_index().tolist()  # paired, rna, atac
    [120, 90, 90]
    """
    import mudata

    n_cells = _check_int("n_cells", n_cells, 2)
    n_genes = _check_int("n_genes", n_genes)
    n_peaks = _check_int("n_peaks", n_peaks)
    n_cell_types = _check_int("n_cell_types", n_cell_types)
    peaks_per_gene = _check_int("peaks_per_gene", peaks_per_gene, 0)
    n_batches = _check_int("n_batches", n_batches)
    n_latent = _check_int("n_latent", n_latent)
    n_latent_atac = _check_int("n_latent_atac", n_latent_atac, 0)
    if not 0.0 <= atac_specific <= 1.0:
        raise ValueError(f"atac_specific must be between 0 and 1; got {atac_specific!r}.")
    for name, value in (
        ("cluster_separation", cluster_separation),
        ("within_type_sd", within_type_sd),
        ("continuous_sd", continuous_sd),
        ("link_strength", link_strength),
        ("batch_effect", batch_effect),
    ):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    for name, value in (("rna_depth", rna_depth), ("atac_depth", atac_depth)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
    fractions = _mosaic_fractions(mosaic)
    rng = np.random.default_rng(seed)

    # ---- latent cell states ---------------------------------------------------------
    types = rng.integers(0, n_cell_types, size=n_cells)
    centroids = rng.normal(0.0, cluster_separation, size=(n_cell_types, n_latent))
    direction = rng.normal(size=n_latent)
    direction /= np.linalg.norm(direction)
    t = rng.uniform(-1.0, 1.0, size=n_cells)
    z = (
        centroids[types]
        + rng.normal(0.0, within_type_sd, size=(n_cells, n_latent))
        + continuous_sd * t[:, None] * direction[None, :]
    )
    batches = rng.integers(0, n_batches, size=n_cells)
    atac_centroids = rng.normal(0.0, cluster_separation, size=(n_cell_types, n_latent_atac))
    u = atac_centroids[types] + rng.normal(0.0, within_type_sd, size=(n_cells, n_latent_atac))

    # ---- RNA --------------------------------------------------------------------------
    loadings = rng.normal(0.0, 1.0 / np.sqrt(n_latent), size=(n_latent, n_genes))
    baseline = rng.normal(0.0, 1.0, size=n_genes)
    program = z @ loadings  # cells × genes, the cell-state part of the log-rate
    log_rate = baseline[None, :] + program
    if n_batches > 1:
        gene_batch = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))
        log_rate = log_rate + gene_batch[batches]
    log_rate -= log_rate.max(axis=1, keepdims=True)
    rate = np.exp(log_rate)
    rate /= rate.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(rna_depth), 0.35, size=n_cells)
    theta = rng.uniform(2.0, 10.0, size=n_genes)
    rna_counts = _nb_counts(rng, library[:, None] * rate, theta[None, :])

    # ---- ATAC -------------------------------------------------------------------------
    peak_gene = (
        np.arange(n_peaks) // peaks_per_gene if peaks_per_gene else np.full(n_peaks, n_genes)
    )
    peak_gene = np.where(peak_gene < n_genes, peak_gene, -1)
    linked = peak_gene >= 0
    standardized = _standardize(program)
    n_unlinked = int((~linked).sum())
    zu = np.concatenate([z, u], axis=1)
    # the peaks' programs are built a block of cells at a time (50,000 peaks × thousands of
    # cells do not fit dense in memory): column standardisation from the exact mean and
    # covariance of the latent states, Poisson draws row by row (the same random stream as
    # one draw over the whole matrix)
    unlinked_dir = rng.normal(size=(zu.shape[1], n_unlinked))
    unlinked_std = _Standardizer(zu, unlinked_dir)
    gene_cols = peak_gene[linked]
    own_std = None
    if n_latent_atac and atac_specific > 0:
        own_std = _Standardizer(u, rng.normal(size=(n_latent_atac, int(linked.sum()))))
    slope = rng.uniform(0.7, 1.3, size=n_peaks) * link_strength
    offset = rng.normal(-1.0, 0.5, size=n_peaks)
    peak_batch = None
    if n_batches > 1:
        peak_batch = rng.normal(0.0, batch_effect, size=(n_batches, n_peaks))
    depth = rng.lognormal(0.0, 0.35, size=n_cells) * atac_depth
    step = max(1, 4_000_000 // max(n_peaks, 1))
    blocks = []
    for s0 in range(0, n_cells, step):
        rows = slice(s0, min(n_cells, s0 + step))
        driver = np.empty((rows.stop - rows.start, n_peaks))
        driver[:, ~linked] = unlinked_std(zu[rows])
        gene_part = standardized[rows][:, gene_cols]
        if own_std is not None:
            driver[:, linked] = np.sqrt(1 - atac_specific) * gene_part + np.sqrt(
                atac_specific
            ) * own_std(u[rows])
        else:
            driver[:, linked] = gene_part
        logit = offset[None, :] + slope[None, :] * driver
        if peak_batch is not None:
            logit = logit + peak_batch[batches[rows]]
        counts = rng.poisson(depth[rows, None] / (1.0 + np.exp(-logit)))
        blocks.append(sparse.csr_matrix(counts.astype(np.float32)))
    atac_csr = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, n_peaks))

    # ---- names and coordinates -------------------------------------------------------
    width = len(str(n_cells - 1))
    obs_names = pd.Index(np.char.add("cell", np.char.zfill(np.arange(n_cells).astype(str), width)))
    gene_names = np.char.add(
        "gene", np.char.zfill(np.arange(n_genes).astype(str), len(str(n_genes - 1)))
    )
    n_chrom = min(22, n_genes)
    gene_chrom_idx = (np.arange(n_genes) * n_chrom) // n_genes
    first_of_chrom = np.searchsorted(gene_chrom_idx, np.arange(n_chrom))
    rank_in_chrom = np.arange(n_genes) - first_of_chrom[gene_chrom_idx]
    spacing = max(200_000, (peaks_per_gene + 10) * 3_000)
    gene_start = 1_000_000 + rank_in_chrom * spacing
    chrom_names = np.char.add("chr", (np.arange(n_chrom) + 1).astype(str))
    rna_var = pd.DataFrame(
        {
            "chrom": pd.Categorical(chrom_names[gene_chrom_idx], categories=chrom_names),
            "start": gene_start.astype(np.int64),
            "end": (gene_start + 20_000).astype(np.int64),
            "feature_types": "Gene Expression",
        },
        index=pd.Index(gene_names),
    )
    k_in_gene = np.arange(n_peaks) % max(peaks_per_gene, 1)
    far = 1_000_000 + (int(rank_in_chrom.max()) + 1) * spacing
    unlinked_rank = np.cumsum(~linked) - 1
    peak_chrom_idx = np.where(
        linked, gene_chrom_idx[np.maximum(peak_gene, 0)], unlinked_rank % n_chrom
    )
    peak_start = np.where(
        linked,
        gene_start[np.maximum(peak_gene, 0)] - 10_000 + k_in_gene * 3_000,
        far + (unlinked_rank // n_chrom) * 3_000,
    ).astype(np.int64)
    peak_end = peak_start + 500
    peak_chrom = chrom_names[peak_chrom_idx]
    peak_names = pd.Index(
        pd.Series(peak_chrom)
        + ":"
        + pd.Series(peak_start).astype(str)
        + "-"
        + pd.Series(peak_end).astype(str)
    )
    linked_gene = pd.Categorical.from_codes(peak_gene, categories=pd.Index(gene_names))
    atac_var = pd.DataFrame(
        {
            "chrom": pd.Categorical(peak_chrom, categories=chrom_names),
            "start": peak_start,
            "end": peak_end,
            "linked_gene": linked_gene,
            "feature_types": "Peaks",
        },
        index=peak_names,
    )

    # ---- obs and mosaic ----------------------------------------------------------------
    type_names = np.char.add("type", np.arange(n_cell_types).astype(str))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(type_names[types], categories=type_names)}, index=obs_names
    )
    if n_batches > 1:
        batch_names = np.char.add("batch", np.arange(n_batches).astype(str))
        obs["batch"] = pd.Categorical(batch_names[batches], categories=batch_names)
    has_rna = np.ones(n_cells, dtype=bool)
    has_atac = np.ones(n_cells, dtype=bool)
    if fractions is not None:
        n_paired = int(round(fractions[0] * n_cells))
        n_rna = min(int(round(fractions[1] * n_cells)), n_cells - n_paired)
        group = np.repeat(np.arange(3), [n_paired, n_rna, n_cells - n_paired - n_rna])
        group = group[rng.permutation(n_cells)]
        obs["modality"] = pd.Categorical(np.asarray(MODALITIES)[group], categories=list(MODALITIES))
        has_rna = group != 2
        has_atac = group != 1

    rna_csr = sparse.csr_matrix(rna_counts.astype(np.float32))
    rna = AnnData(X=rna_csr[has_rna], obs=obs.loc[has_rna].copy(), var=rna_var)
    atac = AnnData(X=atac_csr[has_atac], obs=obs.loc[has_atac].copy(), var=atac_var)
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({"rna": rna, "atac": atac}, obs=obs.copy())
    mdata.uns["simulation"] = {
        "latent": z.astype(np.float32),
        "latent_atac": u.astype(np.float32),
        "trajectory": t.astype(np.float32),
        "cell_type_centroids": centroids.astype(np.float32),
        "rna_counts": rna_csr,
        "atac_counts": atac_csr,
        "peak_gene": peak_gene.astype(np.int64),
        "params": {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_peaks": n_peaks,
            "n_cell_types": n_cell_types,
            "peaks_per_gene": peaks_per_gene,
            "n_batches": n_batches,
            "mosaic": list(fractions) if fractions is not None else False,
            "n_latent": n_latent,
            "cluster_separation": float(cluster_separation),
            "within_type_sd": float(within_type_sd),
            "continuous_sd": float(continuous_sd),
            "rna_depth": float(rna_depth),
            "atac_depth": float(atac_depth),
            "link_strength": float(link_strength),
            "atac_specific": float(atac_specific),
            "n_latent_atac": n_latent_atac,
            "batch_effect": float(batch_effect),
            "seed": -1 if seed is None else int(seed),
        },
    }
    return mdata
