"""Augmentations of a cell's counts, and neighbour pairs for contrastive positives.

The augmentations act on expression rows before tokenization (so two views of a cell can
differ in which genes become tokens, not only in which values are hidden); both are
vectorised torch on the rows' device. The neighbour pairs are what CLAIRE / NNCLR-style
contrastive learning uses as positives besides a cell's own second view: nearest
neighbours within a batch and mutual nearest neighbours across batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from ._types import Matrix

logger = logging.getLogger(__name__)

#: the key of the per-row partner (row index within the minibatch, -1: none) that
#: :class:`NeighbourBatchSampler`'s batches carry
PARTNER_KEY = "contrast_partner"


def thin_counts(
    x: torch.Tensor, keep: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Binomial thinning: each count kept with probability ``keep`` (a shallower sequencing).

    ``x`` ``(B, G)`` non-negative; ``keep`` a number or ``(B,)`` per-row probabilities. An
    integer count ``c`` becomes ``Binomial(c, keep)``; a non-integer value ``c`` becomes
    ``Binomial(floor(c), keep) + frac(c) · Bernoulli(keep)``, so the expected value is
    ``keep · c`` for any input.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import thin_counts
    >>> x = torch.full((2, 1000), 4.0)
    >>> y = thin_counts(x, torch.tensor([0.5, 1.0]))
    >>> round(float(y[0].sum() / x[0].sum()), 1), bool(torch.equal(y[1], x[1]))
    (0.5, True)
    """
    x = x.float()
    p = torch.as_tensor(keep, dtype=x.dtype, device=x.device)
    p = p.reshape(-1, 1).expand_as(x) if p.ndim else p.expand_as(x)
    whole = torch.floor(x)
    frac = x - whole
    out = torch.binomial(whole, p.contiguous(), generator=generator)
    if bool((frac > 0).any()):
        u = torch.rand(x.shape, device=x.device, generator=generator)
        out = out + frac * (u < p).to(x.dtype)
    return out


def drop_genes(
    x: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gene dropout: set each value of ``x`` ``(B, G)`` to 0 with probability ``rate``.

    Applied before token choice, a dropped gene cannot become a token of that view.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import drop_genes
    >>> y = drop_genes(torch.ones(4, 1000), 0.3)
    >>> 0.25 < float((y == 0).float().mean()) < 0.35
    True
    """
    if rate <= 0:
        return x
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(u < rate, torch.zeros_like(x), x)


def augment_views(
    x: torch.Tensor,
    thinning: float = 0.0,
    gene_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment every row of ``x`` independently (each row is one view of a cell).

    ``thinning``: each row's counts are thinned (:func:`thin_counts`) with a keep
    probability drawn uniformly from ``[1 - thinning, 1]``; ``gene_dropout``: then each
    value is zeroed with that probability (:func:`drop_genes`). A row left with no
    expressed gene keeps its original values, so that no view is empty.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import augment_views
    >>> x = torch.full((2, 100), 3.0)
    >>> y = augment_views(x, thinning=0.5, gene_dropout=0.2)
    >>> y.shape, bool((y <= x).all())
    (torch.Size([2, 100]), True)
    """
    if thinning <= 0 and gene_dropout <= 0:
        return x
    y = x.float()
    if thinning > 0:
        u = torch.rand(x.shape[0], device=x.device, generator=generator)
        y = thin_counts(y, 1.0 - thinning * u, generator)
    y = drop_genes(y, gene_dropout, generator)
    empty = ~(y > 0).any(1)
    if bool(empty.any()):
        y = torch.where(empty[:, None], x.float(), y)
    return y


def input_pca(x: Matrix, n_comps: int = 50, n_top: int = 2000, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised rows: the input space in which neighbour positives are found.

    ``x`` ``(n, G)`` dense or scipy-sparse; counts are scaled to 10,000 per cell and
    ``log1p``-transformed, restricted to the ``n_top`` genes of largest variance,
    standardised (clipped at 10) and reduced to ``n_comps`` components. Returns
    ``(n, n_comps)`` float32.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import input_pca
    >>> x = np.random.default_rng(0).poisson(2.0, size=(30, 40))
    >>> input_pca(x, n_comps=5).shape
    (30, 5)
    """
    x = np.asarray(cast(sp.spmatrix, x).toarray() if sp.issparse(x) else x, dtype=np.float32)
    depth = x.sum(1, keepdims=True)
    x = np.log1p(x / np.maximum(depth, 1e-8) * 1e4)
    if x.shape[1] > n_top:
        x = x[:, np.argsort(-x.var(0), kind="stable")[:n_top]]
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
    x = np.clip(x, -10, 10)
    q = int(min(n_comps, x.shape[0] - 1, x.shape[1]))
    torch.manual_seed(seed)
    u, s, _ = torch.pca_lowrank(torch.from_numpy(x), q=q, center=False, niter=4)
    return (u * s).numpy().astype(np.float32)


def _top_k(a: np.ndarray, b: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Indices (into ``b``) of the ``k`` most cosine-similar rows of ``b`` for each row of ``a``."""
    ta = torch.nn.functional.normalize(torch.from_numpy(a).float(), dim=1)
    tb = torch.nn.functional.normalize(torch.from_numpy(b).float(), dim=1)
    k = min(k, len(b) - (1 if exclude_self else 0))
    if k <= 0:
        return np.zeros((len(a), 0), dtype=np.int64)
    out = []
    for lo in range(0, len(a), 4096):
        sim = ta[lo : lo + 4096] @ tb.T
        if exclude_self:
            r = torch.arange(lo, min(lo + 4096, len(a)))
            sim[r - lo, r] = -float("inf")
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out).numpy().astype(np.int64)


def neighbour_pairs(
    emb: np.ndarray, k: int = 10, batch: np.ndarray | None = None, mode: str = "knn"
) -> list[np.ndarray]:
    """Each cell's candidate positives: neighbours in ``emb`` (cosine similarity).

    ``mode="knn"``: the ``k`` nearest neighbours within the cell's batch (every cell when
    ``batch`` is ``None``), NNCLR-style. ``mode="mnn"``: the cell's mutual nearest
    neighbours across batches (CLAIRE-style): cells ``i`` (batch ``a``) and ``j`` (batch
    ``b``) pair when ``j`` is among ``i``'s ``k`` nearest cells of ``b`` and ``i`` among
    ``j``'s ``k`` nearest cells of ``a``; a cell without any keeps its within-batch
    neighbours. ``mode="knn+mnn"``: both, for every cell. Mutuality is the guard against
    pairing cells of different types that only happen to be close. A batch with ``k``
    cells or fewer gives its cells fewer within-batch neighbours (logged).

    Returns a list of ``n`` integer arrays (candidate partners of each cell; may be empty).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import neighbour_pairs
    >>> emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
    >>> [p.tolist() for p in neighbour_pairs(emb, k=1)]
    [[1], [0], [3], [2]]
    """
    if mode not in ("knn", "mnn", "knn+mnn"):
        raise ValueError(f"mode={mode!r}; use 'knn', 'mnn' or 'knn+mnn'.")
    emb = np.asarray(emb, dtype=np.float32)
    n = len(emb)
    codes = (
        np.zeros(n, dtype=np.int64) if batch is None else np.unique(batch, return_inverse=True)[1]
    )
    groups = [np.flatnonzero(codes == b) for b in range(codes.max() + 1 if n else 0)]
    small = [b for b, g in enumerate(groups) if len(g) <= k]
    if small:
        logger.warning(
            "Neighbour positives: %d batch(es) hold k=%d cells or fewer (sizes %s); their "
            "cells get fewer within-batch positives.",
            len(small),
            k,
            [len(groups[b]) for b in small],
        )

    def edges(rows: np.ndarray, cols: np.ndarray, nn: np.ndarray) -> sp.csr_matrix:
        """An n × n boolean graph with an edge rows[i] -> cols[nn[i, j]]."""
        r = np.repeat(rows, nn.shape[1])
        return sp.csr_matrix((np.ones(r.size, dtype=bool), (r, cols[nn.ravel()])), shape=(n, n))

    within = sp.csr_matrix((n, n), dtype=bool)
    for g in groups:
        within = within + edges(g, g, _top_k(emb[g], emb[g], k, exclude_self=True))
    cross = sp.csr_matrix((n, n), dtype=bool)
    if mode != "knn":
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                ga, gb = groups[a], groups[b]
                ab = edges(ga, gb, _top_k(emb[ga], emb[gb], k, exclude_self=False))
                ba = edges(gb, ga, _top_k(emb[gb], emb[ga], k, exclude_self=False))
                cross = cross + ab.multiply(ba.T)  # i -> j and j -> i: mutual
        cross = (cross + cross.T).tocsr()
        logger.info(
            "Neighbour positives: %d mutual nearest-neighbour pairs across batches.",
            cross.nnz // 2,
        )
    if mode == "knn":
        graph = within
    elif mode == "knn+mnn":
        graph = within + cross
    else:  # mnn: cross-batch partners, within-batch ones only for cells without any
        lonely = sp.diags((np.diff(cross.indptr) == 0).astype(np.float32))
        graph = cross + (lonely @ within).astype(bool)
    if n == 0:
        return []
    graph = sp.csr_matrix(graph, dtype=bool)
    graph.sum_duplicates()
    graph.sort_indices()
    return [a.astype(np.int64) for a in np.split(graph.indices, graph.indptr[1:-1])]


def multiome_pairs(
    rna_emb: np.ndarray,
    atac_emb: np.ndarray,
    has_rna: np.ndarray,
    has_atac: np.ndarray,
    k: int = 10,
    within: bool = False,
) -> list[np.ndarray]:
    """Candidate positives of RNA + ATAC cells for the cross-modal loss, from strong priors.

    ``rna_emb`` / ``atac_emb`` ``(n, d)``: each cell's RNA PCA and ATAC LSI (rows of cells
    without that modality ignored); ``has_rna`` / ``has_atac`` ``(n,)``: what each cell
    measured. A **paired** cell's candidates are the paired cells among its ``2k`` nearest
    in RNA *and* its ``2k`` nearest in ATAC (both modalities agree: same type with high
    precision; none when they share no neighbour). On a mosaic, the **bridge**: an RNA-only
    cell's ATAC profile is imputed as the mean ATAC LSI of its ``k`` nearest paired cells
    in RNA PCA, and its candidates are the ``k`` ATAC-only cells nearest that profile; an
    ATAC-only cell's likewise through RNA; with ``within=True`` also, for every
    single-modality cell, its ``k`` nearest cells of the same modality (paired ones
    included): with the multiome recipe they raised NMI but lowered modality mixing on the
    simulated mosaic (docs: "Neighbour positives"), so the default is the bridge alone. Without paired cells there is
    no bridge: single-modality cells get their within-modality neighbours instead (logged).
    Cosine similarity throughout.

    Returns a list of ``n`` integer arrays (candidate partners of each cell; may be empty).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import multiome_pairs
    >>> rna = np.array([[1, 0], [1, 0.1], [1, -0.1], [0, 1], [0.1, 1], [-0.1, 1]], "float32")
    >>> both = np.ones(6, dtype=bool)
    >>> [p.tolist() for p in multiome_pairs(rna, rna, both, both, k=1)]
    [[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]]
    >>> atac = rna.copy()
    >>> atac[2] = [0.05, 1]  # cell 2 is with cells 0, 1 in RNA, with cells 3-5 in ATAC
    >>> [p.tolist() for p in multiome_pairs(rna, atac, both, both, k=1)]
    [[1], [0], [], [4], [3], [3]]
    """
    has_rna, has_atac = np.asarray(has_rna, bool), np.asarray(has_atac, bool)
    n = len(has_rna)
    for name, emb in (("rna_emb", rna_emb), ("atac_emb", atac_emb)):
        if len(emb) != n or len(has_atac) != n:
            raise ValueError(
                f"{name} has {len(emb)} rows, has_rna {n} and has_atac {len(has_atac)}: one "
                "row per cell in each."
            )
    rna_emb = np.asarray(rna_emb, dtype=np.float32)
    atac_emb = np.asarray(atac_emb, dtype=np.float32)
    paired = np.flatnonzero(has_rna & has_atac)
    rna_only = np.flatnonzero(has_rna & ~has_atac)
    atac_only = np.flatnonzero(~has_rna & has_atac)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    if len(paired) > 1:  # neighbours in both modalities: in both rows of 2k candidates
        by_rna = _top_k(rna_emb[paired], rna_emb[paired], 2 * k, exclude_self=True)
        by_atac = _top_k(atac_emb[paired], atac_emb[paired], 2 * k, exclude_self=True)
        s = np.sort(np.concatenate([by_rna, by_atac], axis=1), axis=1)
        r, j = np.nonzero(s[:, 1:] == s[:, :-1])  # each row's values are unique per source
        rows.append(paired[r])
        cols.append(paired[s[:, 1:][r, j]])
    if len(paired) == 0 and len(rna_only) and len(atac_only):
        logger.warning(
            "Cross-modal neighbour positives: no cell measured in both modalities, so no "
            "bridge between the %d RNA-only and %d ATAC-only cells; they keep their "
            "within-modality neighbours only.",
            len(rna_only),
            len(atac_only),
        )
    for cells, other, own_emb, other_emb, has_own in (
        (rna_only, atac_only, rna_emb, atac_emb, has_rna),
        (atac_only, rna_only, atac_emb, rna_emb, has_atac),
    ):
        if not len(cells):
            continue
        bridge = bool(len(paired) and len(other))
        if bridge:  # the other modality's profile imputed from the nearest paired cells
            via = _top_k(own_emb[cells], own_emb[paired], k, exclude_self=False)
            mean = sp.csr_matrix(
                (
                    np.full(via.size, 1.0 / via.shape[1], dtype=np.float32),
                    (np.repeat(np.arange(len(cells)), via.shape[1]), via.ravel()),
                ),
                shape=(len(cells), len(paired)),
            )
            unit = torch.nn.functional.normalize(torch.from_numpy(other_emb[paired]), dim=1)
            imputed = np.asarray(mean @ unit.numpy(), dtype=np.float32)
            near = other[_top_k(imputed, other_emb[other], k, exclude_self=False)]
            rows.append(np.repeat(cells, near.shape[1]))
            cols.append(near.ravel())
        if bridge and not within:
            continue
        same = np.flatnonzero(has_own)  # within the modality (paired cells included)
        pos = np.full(n, -1)
        pos[same] = np.arange(len(same))
        nb = same[_top_k(own_emb[same], own_emb[same], k, exclude_self=True)][pos[cells]]
        rows.append(np.repeat(cells, nb.shape[1]))
        cols.append(nb.ravel())
    if n == 0:
        return []
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = sp.csr_matrix((np.ones(r.size, dtype=bool), (r, c)), shape=(n, n))
    graph.sum_duplicates()
    graph.sort_indices()
    return [a.astype(np.int64) for a in np.split(graph.indices, graph.indptr[1:-1])]


class NeighbourBatchSampler(torch.utils.data.Sampler):
    """Batches that hold each anchor cell together with one of its neighbours.

    Every epoch the cells are shuffled; each batch takes ``batch_size // 2`` of them as
    anchors and, for each anchor, one partner drawn from its candidates (``pairs``, e.g. of
    :func:`neighbour_pairs`; the anchor itself, i.e. a second copy of the cell, when it has
    none). An epoch yields as many rows as there are cells (``ceil(n / batch_size)``
    batches), so it costs what an ordinary epoch costs. Yields arrays of positions
    ``[anchors, partners]``; :func:`partner_collate` marks row ``i`` and row ``m + i`` as
    partners for the contrastive loss.

    ``pairs`` may be replaced between epochs (:attr:`pairs`), e.g. with neighbours of the
    model's current embedding.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import NeighbourBatchSampler
    >>> pairs = [np.array([1]), np.array([0]), np.array([3]), np.array([2])]
    >>> [b.tolist() for b in NeighbourBatchSampler(pairs, batch_size=4, seed=0)]
    [[2, 0, 3, 1]]
    """

    def __init__(self, pairs: list[np.ndarray], batch_size: int, seed: int = 0):
        self.pairs = pairs
        self.n = len(pairs)
        self.half = max(int(batch_size) // 2, 1)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return int(np.ceil(self.n / (2 * self.half)))

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = rng.permutation(self.n)
        for b in range(len(self)):
            anchors = order[b * self.half : (b + 1) * self.half]
            partners = anchors.copy()
            for i, a in enumerate(anchors):
                cand = self.pairs[a]
                if len(cand):
                    partners[i] = cand[rng.integers(len(cand))]
            yield np.concatenate([anchors, partners])


def partner_rows(n: int) -> torch.Tensor:
    """Partner of each row of a ``[anchors, partners]`` batch of ``n`` rows (``-1``: none).

    Row ``i`` and row ``n // 2 + i`` are partners; an odd last row has none.

    Examples
    --------
    >>> from celltx.data import partner_rows
    >>> partner_rows(4).tolist()
    [2, 3, 0, 1]
    """
    m = n // 2
    idx = torch.arange(m)
    rows = torch.cat([idx + m, idx])
    if n % 2:
        rows = torch.cat([rows, torch.tensor([-1])])
    return rows


def partner_collate(items: list[Any]) -> dict[str, Any]:
    """Collate of :class:`NeighbourBatchSampler`'s batches: the batch with :data:`PARTNER_KEY`.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import PARTNER_KEY, partner_collate
    >>> partner_collate([{"X": np.zeros((4, 3))}])[PARTNER_KEY].tolist()
    [2, 3, 0, 1]
    """
    from ._batching import first_item

    batch = first_item(items)
    n = len(next(iter(batch.values())))
    batch[PARTNER_KEY] = partner_rows(n)
    return batch
