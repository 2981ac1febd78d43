"""Matching AnnData genes to a vocabulary, and checking expression values."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._vocab import GeneVocab

if TYPE_CHECKING:
    from ._types import Matrix


logger = logging.getLogger(__name__)

#: values sampled by :func:`is_counts` (and the benchmarks' ``expression_kind``)
N_SAMPLE = 1_000_000
#: rows read from a matrix that is neither in memory nor sparse (backed data)
_N_ROWS = 10_000


@dataclass(frozen=True)
class GeneMatch:
    """Result of :func:`match_genes`.

    Attributes
    ----------
    ids
        ``int64`` array with one vocabulary id per ``adata`` column, ``-1`` where unmatched.
    names
        The names that were looked up (``var_names`` or the symbol column).
    """

    ids: np.ndarray
    names: pd.Index

    @property
    def n_matched(self) -> int:
        """Number of columns that map to a vocabulary gene."""
        return int((self.ids >= 0).sum())

    @property
    def unmatched(self) -> list[str]:
        """Names of the columns that are not in the vocabulary."""
        names: list[str] = self.names[self.ids < 0].tolist()
        return names


def gene_names(adata: AnnData, gene_symbols: str | None = None) -> pd.Index:
    """Gene names of ``adata``: ``var_names`` or the ``var[gene_symbols]`` column.

    Duplicate ``var_names`` are an error (they make columns ambiguous). Duplicate or
    missing symbols in a ``gene_symbols`` column are allowed (several Ensembl IDs can share
    a symbol): such entries are returned as empty strings after the first occurrence, so
    they match no token, and a warning says how many.
    """
    if gene_symbols is None:
        names = pd.Index(adata.var_names.astype(str))
        if names.has_duplicates:
            dup = names[names.duplicated()].unique().tolist()
            raise ValueError(
                f"adata.var_names has {len(dup)} duplicated gene name(s), e.g. {dup[:5]}. "
                "Make them unique with adata.var_names_make_unique(), or pass "
                "gene_symbols= naming a var column with unique symbols."
            )
        return names
    if gene_symbols not in adata.var.columns:
        raise ValueError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var "
            f"(columns: {list(adata.var.columns)[:20]}). Pass an existing column or "
            "gene_symbols=None to use adata.var_names."
        )
    col = adata.var[gene_symbols]
    missing = col.isna().to_numpy()
    names = pd.Series(col.astype(str).to_numpy(), dtype=object)
    names[missing] = ""
    dup = names.duplicated(keep="first").to_numpy() & ~missing
    if dup.any():
        logger.warning(
            "%d genes share a symbol in var[%r] with an earlier gene; only the first of each "
            "is used.",
            int(dup.sum()),
            gene_symbols,
        )
        names[dup] = ""
    return pd.Index(names.to_numpy())


def match_genes(
    adata: AnnData,
    vocab: GeneVocab,
    gene_symbols: str | None = None,
    min_genes: int = 1,
    min_fraction: float = 0.0,
) -> GeneMatch:
    """Map each column of ``adata`` to a vocabulary id.

    Parameters
    ----------
    adata
        The data.
    vocab
        The model's vocabulary.
    gene_symbols
        ``var`` column holding gene symbols (e.g. when ``var_names`` are Ensembl IDs).
    min_genes, min_fraction
        Raise a :class:`ValueError` when fewer genes than this (count, or fraction of the
        columns) are in the vocabulary.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> from celltx.data import GeneVocab, match_genes
    >>> adata = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    >>> adata.var_names = ["CD3E", "XYZ", "LYZ"]
    >>> m = match_genes(adata, GeneVocab.from_genes(["LYZ", "CD3E"]))
    >>> m.ids.tolist(), m.n_matched
    ([1, -1, 0], 2)
    """
    names = gene_names(adata, gene_symbols)
    ids = vocab.lookup(names)
    match = GeneMatch(ids=ids, names=names)
    n = match.n_matched
    need = max(int(min_genes), int(np.ceil(min_fraction * adata.n_vars)))
    if n < need:
        where = f"var[{gene_symbols!r}]" if gene_symbols else "var_names"
        raise ValueError(
            f"Only {n} of {adata.n_vars} genes in {where} are in the model's vocabulary "
            f"({len(vocab.genes)} genes, e.g. {vocab.genes[:3]}); at least {need} are needed. "
            "Check that the names are of the same kind (symbols vs Ensembl IDs); if symbols "
            "are in a var column, pass gene_symbols='<column>'." + _ensembl_hint(names)
        )
    if n < adata.n_vars:
        logger.info(
            "%d of %d genes are not in the vocabulary and are ignored (e.g. %s).",
            adata.n_vars - n,
            adata.n_vars,
            match.unmatched[:5],
        )
    return match


def _ensembl_hint(names: pd.Index) -> str:
    """A pointer to :func:`ensembl_to_symbol` when most names are Ensembl gene IDs."""
    if len(names) and names.str.match(r"^ENS[A-Z]*G\d{11}").mean() > 0.5:
        return (
            " These names are Ensembl IDs: write symbols to a column with "
            "adata.var['symbol'] = celltx.data.ensembl_to_symbol(adata.var_names).to_numpy() "
            "and pass gene_symbols='symbol'."
        )
    return ""


def check_expression(x: Matrix, what: str = "adata.X") -> None:
    """Raise a :class:`ValueError` if ``x`` has NaN, infinite or negative values.

    Works on dense arrays and scipy sparse matrices without densifying, in chunks for
    backed / large data.
    """
    if sparse.issparse(x):
        data = x.data
        chunks: Iterable[np.ndarray | sparse.spmatrix] = [data]
    elif isinstance(x, np.ndarray):
        chunks = [x]
    else:  # backed dataset (h5py / zarr array, anndata's sparse dataset): scan by rows
        step = 10_000

        def _rows(i: int) -> np.ndarray | sparse.spmatrix:
            chunk = x[i : i + step]
            return chunk if sparse.issparse(chunk) else np.asarray(chunk)

        chunks = (_rows(i) for i in range(0, x.shape[0], step))
    for chunk in chunks:
        if sparse.issparse(chunk):
            chunk = chunk.data
        if chunk.size == 0:
            continue
        if not np.isfinite(chunk).all():
            raise ValueError(
                f"{what} contains NaN or infinite values. Remove or impute them first, e.g. "
                "adata = adata[np.isfinite(adata.X.sum(1))]."
            )
        if (chunk < 0).any():
            raise ValueError(
                f"{what} contains negative values. celltx expects raw counts or "
                "log-normalized expression (both non-negative); scaled / centred data "
                "(sc.pp.scale) cannot be tokenized. Pass layer= with counts."
            )


#: depth each row of counts is scaled to by ``nonzero_medians(..., linear=True)``
LINEAR_TARGET = 1e4


def _linear_rows(m: sparse.csr_matrix) -> sparse.csr_matrix:
    """Rows of counts or log1p-normalised values on one linear, depth-normalised scale.

    A row of whole numbers (counts) is scaled to sum to 10,000; any other row is taken as
    ``log1p`` of normalised values and ``expm1``-transformed. The same cells as counts or
    as ``log1p(normalize_total(counts))`` then differ by one factor per cell, which leaves
    each cell's order of ``value / gene median`` (rank-value selection) unchanged.
    """
    m = sparse.csr_matrix(m, dtype=np.float64, copy=True)
    lengths = np.diff(m.indptr)
    row = np.repeat(np.arange(m.shape[0]), lengths)
    frac = np.mod(m.data, 1) != 0
    logged = np.zeros(m.shape[0], dtype=bool)
    np.logical_or.at(logged, row[frac], True)
    on = logged[row]
    m.data[on] = np.expm1(m.data[on])
    sums = np.asarray(m.sum(1)).ravel()
    factor = np.where(~logged & (sums > 0), LINEAR_TARGET / np.where(sums > 0, sums, 1), 1.0)
    m.data *= factor[row]
    return m


def nonzero_medians(
    x: Matrix, max_cells: int = 20_000, seed: int = 0, linear: bool = False
) -> np.ndarray:
    """Each column's median over its non-zero values (1 where a column is never non-zero).

    The per-gene normaliser of rank-value gene selection (Geneformer's non-zero median).
    At most ``max_cells`` rows are read (a reproducible random subset, in order, so backed
    data is read in row order); dense, sparse or backed matrices.

    Parameters
    ----------
    x
        Cells × genes.
    max_cells, seed
        The rows read.
    linear
        Medians of depth-normalised linear values instead of the values as they are: rows
        of counts scaled to 10,000 per cell, other rows (``log1p`` values) ``expm1``-ed
        (see ``_linear_rows``). What rank-value selection uses, so that the same cells as
        counts or as log values give the same tokens.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import nonzero_medians
    >>> nonzero_medians(np.array([[0.0, 2.0, 0.0], [4.0, 6.0, 0.0], [2.0, 0.0, 0.0]])).tolist()
    [3.0, 4.0, 1.0]
    """
    m = _sampled_rows(x, max_cells, seed)
    if linear:
        m = _linear_rows(m)
    m = m.tocsc()
    out = np.ones(m.shape[1])
    for j in range(m.shape[1]):  # one pass over the stored values of each gene
        v = m.data[m.indptr[j] : m.indptr[j + 1]]
        v = v[v > 0]
        if len(v):
            out[j] = float(np.median(v))
    return out


def _sampled_rows(x: Matrix, max_cells: int, seed: int) -> sparse.csr_matrix:
    """At most ``max_cells`` rows of ``x`` (a reproducible random subset, in row order) as CSR.

    Backed data is read in row order, 5,000 rows at a time.
    """
    n = x.shape[0]
    rows = np.arange(n)
    if n > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
    parts = []
    for lo in range(0, len(rows), 5_000):  # bounded memory for backed data
        parts.append(sparse.csr_matrix(x[rows[lo : lo + 5_000]], dtype=np.float64))
    return sparse.vstack(parts).tocsr() if parts else sparse.csr_matrix(x.shape, dtype=np.float64)


def highly_variable(
    x: Matrix, n_top: int = 2000, max_cells: int = 20_000, seed: int = 0
) -> np.ndarray:
    """Boolean mask of the ``n_top`` most variable columns of ``x`` (all when there are fewer).

    scanpy's ``highly_variable_genes`` (``"seurat"`` flavour: normalised dispersion in bins
    of mean expression) on log-normalised values: raw counts (non-negative integers) are
    first scaled to 10,000 per cell and ``log1p``-transformed, other values are used as they
    are. At most ``max_cells`` rows are read (a reproducible random subset). The gene set of
    HVG-aware token selection (``gene_selection="hvg"``).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import highly_variable
    >>> x = np.random.default_rng(0).poisson(1.0, (200, 50))
    >>> mask = highly_variable(x, n_top=5)
    >>> mask.shape, int(mask.sum())
    ((50,), 5)
    """
    import scanpy as sc

    n_genes = x.shape[1]
    if n_top >= n_genes:
        return np.ones(n_genes, dtype=bool)
    m = _sampled_rows(x, max_cells, seed).astype(np.float32)
    a = AnnData(X=m)
    if is_counts(m):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=int(n_top))
    mask: np.ndarray = a.var["highly_variable"].to_numpy(dtype=bool)
    return mask


def sample_values(x: Matrix, n: int = N_SAMPLE, seed: int = 0) -> np.ndarray:
    """Up to ``n`` stored values of ``x`` drawn at random (non-zero ones for dense data).

    What :func:`is_counts` (and the benchmarks' input checks) judge ``x`` on.

    Parameters
    ----------
    x
        A cells × genes matrix: dense, scipy sparse, or backed (then its first rows).
    n
        At most this many values.
    seed
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        The drawn values, zeros left out.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import sample_values
    >>> sample_values(np.array([[0.0, 2.0], [1.0, 0.0]])).tolist()
    [2.0, 1.0]
    """
    rng = np.random.default_rng(seed)
    if sparse.issparse(x):
        v = np.asarray(x.data).ravel()
    elif isinstance(x, np.ndarray):
        v = x.reshape(-1)
    else:  # backed (h5py / anndata sparse dataset) or another array-like: the first rows
        block = x[: min(_N_ROWS, x.shape[0])]
        v = block.data if sparse.issparse(block) else np.asarray(block).reshape(-1)
    if v.size > n:
        v = v[rng.integers(0, v.size, n)]
    v = np.asarray(v)
    out: np.ndarray = v[v != 0]
    return out


_sample_values = sample_values  # the name it had before it was public


def is_counts(x: Matrix) -> bool:
    """Whether ``x`` holds raw counts: non-negative integers.

    Judged on a random sample of up to a million stored non-zero values.

    Parameters
    ----------
    x
        A cells × genes matrix (dense, sparse or backed).

    Returns
    -------
    bool
        ``False`` also for a matrix without non-zero values.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import is_counts
    >>> is_counts(np.array([[0, 3], [1, 0]])), is_counts(np.log1p(np.array([[0, 3], [1, 0]])))
    (True, False)
    """
    v = sample_values(x)
    return bool(v.size) and bool(np.all(v >= 0)) and bool(np.all(np.mod(v, 1) == 0))
