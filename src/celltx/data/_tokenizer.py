"""Vectorized, on-device tokenization of expression rows into scGPT token sequences.

This is the only place in celltx that turns expression values into tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

_MASK53 = (1 << 53) - 1
_TIE_SALT = 0x5BD1E9955BD1E995  # decorrelates the tie hash from the gene-choice hash

Ties = Literal["random", "hash", "middle"]


#: relative resolution of linear rank-value scores (``Tokenizer(..., linear=True)``): genes
#: whose ``value / median`` differ by less are tied (ordered by the reproducible hash)
RANK_RESOLUTION = 1e-3


def _linear_rank_score(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``value · scale`` on the linear scale, relative to the cell's top, in ``[0, 1]``.

    A cell of whole numbers (counts) is taken as it is, any other cell as ``log1p`` values
    (``expm1``-ed). Computed in log space (no overflow) and rounded to
    :data:`RANK_RESOLUTION`: genes within float32 rounding of log values count as tied, so
    a cell's counts and its log values order them alike (ties: the reproducible hash).
    """
    whole = (v == torch.round(v)).all(1, keepdim=True)
    log_v = torch.where(whole, torch.log(v), v + torch.log(-torch.expm1(-v)))
    log_score = log_v + torch.log(scale)  # -inf where the gene is not expressed
    top = log_score.amax(1, keepdim=True).clamp(min=torch.finfo(torch.float64).min)
    steps = torch.round((log_score - top) / RANK_RESOLUTION)
    return torch.where(v > 0, torch.exp(steps * RANK_RESOLUTION), 0.0)


@dataclass
class TokenizedBatch:
    """A batch of token sequences.

    Attributes
    ----------
    gene_ids
        ``(B, L)`` int64 vocabulary ids; ``<cls>`` first, ``<pad>`` at the end.
    values
        ``(B, L)`` float32 input values (bins ``0 … n_bins-1``, or raw values when binning
        is off); ``pad_value`` at ``<cls>`` and at padding.
    padding_mask
        ``(B, L)`` bool, ``True`` at padding.
    modality
        ``(B, L)`` int64 modality of each token (:data:`MOD_CLS` at ``<cls>``,
        :data:`MOD_RNA`, :data:`MOD_ATAC`), or ``None`` for single-modality sequences.
    pert_flags
        ``(B, L)`` int64 perturbation flag of each token (0 not perturbed, 1 perturbed,
        :data:`PERT_PAD` at padding), or ``None`` (see :func:`perturbation_tokens`).
    """

    gene_ids: torch.Tensor
    values: torch.Tensor
    padding_mask: torch.Tensor
    modality: torch.Tensor | None = None
    pert_flags: torch.Tensor | None = None

    def to(self, device) -> TokenizedBatch:
        return TokenizedBatch(
            self.gene_ids.to(device),
            self.values.to(device),
            self.padding_mask.to(device),
            None if self.modality is None else self.modality.to(device),
            None if self.pert_flags is None else self.pert_flags.to(device),
        )

    def select(self, rows: torch.Tensor) -> TokenizedBatch:
        """The sequences at ``rows`` (an index or boolean tensor over the batch)."""
        return TokenizedBatch(
            self.gene_ids[rows],
            self.values[rows],
            self.padding_mask[rows],
            None if self.modality is None else self.modality[rows],
            None if self.pert_flags is None else self.pert_flags[rows],
        )


#: modality codes of :attr:`TokenizedBatch.modality`
MOD_CLS, MOD_RNA, MOD_ATAC = 0, 1, 2
#: perturbation flag of padding tokens (0 not perturbed, 1 perturbed); the padding row of
#: the transformer's flag embedding (:data:`celltx.nn.PERT_PAD`, the same number)
PERT_PAD = 2


def join_modalities(
    rna: TokenizedBatch | None,
    atac: TokenizedBatch | None,
    has_rna: torch.Tensor | None = None,
    has_atac: torch.Tensor | None = None,
    *,
    pad_id: int,
    pad_value: float,
) -> TokenizedBatch:
    """One sequence per cell from an RNA and an ATAC tokenization of the same cells.

    The sequence is ``<cls>``, the RNA tokens, then the ATAC tokens (the ATAC batch's own
    ``<cls>`` is dropped), with :attr:`TokenizedBatch.modality` set.

    ``has_rna`` / ``has_atac`` ``(B,)`` mark the cells measured in each modality; the
    tokens of an unmeasured modality become padding (with ``zero_fraction`` a tokenizer
    would otherwise give an unmeasured cell tokens of value 0, i.e. "measured, closed").
    Either part may be ``None`` (a single-modality model).

    Examples
    --------
    >>> import torch
    >>> from celltx.data import Tokenizer, join_modalities
    >>> tok = Tokenizer(max_seq_len=3, pad_id=0, cls_id=1, n_bins=None)
    >>> rna = tok(torch.tensor([[2.0, 0.0]]), torch.tensor([2, 3]), sample="first")
    >>> atac = tok(torch.tensor([[0.0, 1.0]]), torch.tensor([4, 5]), sample="first")
    >>> joined = join_modalities(rna, atac, pad_id=0, pad_value=-2.0)
    >>> joined.gene_ids.tolist(), joined.modality.tolist()
    ([[1, 2, 5]], [[0, 1, 2]])
    """
    parts = [
        (c, p, h)
        for c, p, h in ((MOD_RNA, rna, has_rna), (MOD_ATAC, atac, has_atac))
        if p is not None
    ]
    if not parts:
        raise ValueError("join_modalities needs at least one modality.")
    first = parts[0][1]
    cls_mod = torch.full_like(first.gene_ids[:, :1], MOD_CLS)
    ids, vals, pads, mods = (
        [first.gene_ids[:, :1]],
        [first.values[:, :1]],
        [first.padding_mask[:, :1]],
        [cls_mod],
    )
    for code, part, has in parts:
        pad = part.padding_mask[:, 1:]
        if has is not None:
            pad = pad | ~has.to(pad.device).bool()[:, None]
        ids.append(torch.where(pad, pad_id, part.gene_ids[:, 1:]))
        vals.append(torch.where(pad, pad_value, part.values[:, 1:]))
        pads.append(pad)
        mods.append(torch.full_like(pad, code, dtype=torch.long))
    return TokenizedBatch(
        torch.cat(ids, 1), torch.cat(vals, 1), torch.cat(pads, 1), torch.cat(mods, 1)
    )


def _mix64(h: torch.Tensor) -> torch.Tensor:
    """Splitmix64 finalizer on int64 tensors (wrap-around arithmetic).

    Deterministic on every device.
    """
    h = h ^ ((h >> 30) & ((1 << 34) - 1))
    h = h * -4658895280553007687  # 0xbf58476d1ce4e5b9 as signed int64
    h = h ^ ((h >> 27) & ((1 << 37) - 1))
    h = h * -7723592293110705685  # 0x94d049bb133111eb
    h = h ^ ((h >> 31) & ((1 << 33) - 1))
    return h


def _uniform(h: torch.Tensor) -> torch.Tensor:
    """int64 hashes -> float64 uniform numbers in [0, 1) (53 random bits)."""
    return (h & _MASK53).to(torch.float64) / float(1 << 53)


def quantile_edges(x_sorted: torch.Tensor, n_nonzero: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-row bin edges over the non-zero values, exactly as ``numpy.quantile``.

    Parameters
    ----------
    x_sorted
        ``(B, G)`` rows sorted ascending (non-negative, so zeros come first).
    n_nonzero
        ``(B,)`` number of non-zero values per row.
    n_bins
        Number of bins including bin 0 (not expressed); ``n_bins - 1`` edges are returned.

    Returns
    -------
    torch.Tensor
        ``(B, n_bins - 1)`` float64 edges: the ``linspace(0, 1, n_bins - 1)`` quantiles of
        each row's non-zero values (linear interpolation, numpy's rounding).
    """
    B, G = x_sorted.shape
    device = x_sorted.device
    q = torch.from_numpy(np.linspace(0.0, 1.0, n_bins - 1)).to(device)  # exact numpy grid
    last = (n_nonzero - 1).clamp(min=0).to(torch.float64)
    h = last[:, None] * q[None, :]  # virtual index into the non-zero values
    lo = torch.floor(h)
    gamma = h - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, (n_nonzero - 1).clamp(min=0)[:, None])
    offset = (G - n_nonzero)[:, None]
    a = x_sorted.gather(1, (offset + lo).clamp(max=G - 1))
    b = x_sorted.gather(1, (offset + hi).clamp(max=G - 1))
    diff = (b - a).double()  # numpy subtracts in the input dtype, then promotes
    a, b = a.double(), b.double()
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def digitize(
    values: torch.Tensor, edges: torch.Tensor, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Bin index of each value: the number of edges at or below it, ties broken by ``u``.

    ``values`` ``(B, K)``, ``edges`` ``(B, E)``. A value equal to ``d > 1`` edges (a tie)
    could fall in any bin of ``n_below + 1 … n_below + d``. With ``u`` ``(B, K)`` (uniform
    numbers in ``[0, 1)``) it gets ``n_below + d - floor(u·d)``: a uniform choice, which is
    scGPT's rule when ``u`` is random. Without ``u`` it gets the middle bin (rounded down).
    A value equal to at most one edge, the case of tie-free data, has one possible bin
    and every rule agrees.
    """
    v = values.double()[:, :, None]
    e = edges[:, None, :]
    n_le = (e <= v).sum(-1)
    n_lt = (e < v).sum(-1)
    if u is None:
        return torch.div(n_le + n_lt + 1, 2, rounding_mode="floor")
    d = n_le - n_lt
    return n_le - torch.floor(u.double() * d).long().clamp(max=(d - 1).clamp(min=0))


class Tokenizer:
    """Turn expression rows into scGPT token sequences, vectorized on the data's device.

    Per cell: choose up to ``max_seq_len - 1`` expressed genes (all of them when they
    fit), bin their values per cell into ``n_bins`` quantile bins over the cell's non-zero
    values (bin 0 = not expressed; the binning is rank based, so raw counts and
    log-normalized values of the same cell give the same bins), put ``<cls>`` first with
    ``pad_value`` and pad to the longest sequence in the batch.

    Parameters
    ----------
    max_seq_len
        Longest sequence, ``<cls>`` included.
    pad_id, cls_id
        Vocabulary ids of ``<pad>`` and ``<cls>``.
    n_bins
        Number of value bins including bin 0; ``None`` feeds the values unbinned.
    pad_value
        Value at ``<cls>`` and padding (scGPT: -2).
    zero_fraction
        Fraction of the ``max_seq_len - 1`` slots given to randomly chosen non-expressed
        genes (value bin 0). 0 (default) tokenizes expressed genes only, as scGPT's
        pretraining does.
    seed
        Seed of the deterministic gene choice (``sample="hash"``).

    Examples
    --------
    >>> import torch
    >>> from celltx.data import Tokenizer
    >>> tok = Tokenizer(max_seq_len=4, pad_id=0, cls_id=1, n_bins=5)
    >>> x = torch.tensor([[0.0, 3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    >>> batch = tok(x, torch.arange(2, 7), sample="hash")
    >>> batch.gene_ids.shape, batch.padding_mask.sum(1).tolist()
    (torch.Size([2, 4]), [0, 2])
    """

    def __init__(
        self,
        *,
        max_seq_len: int,
        pad_id: int,
        cls_id: int,
        n_bins: int | None = 51,
        pad_value: float = -2.0,
        zero_fraction: float = 0.0,
        seed: int = 0,
    ):
        if max_seq_len < 2:
            raise ValueError(
                f"max_seq_len={max_seq_len} leaves no room for genes after <cls>; use >= 2."
            )
        if n_bins is not None and n_bins < 3:
            raise ValueError(f"n_bins={n_bins} is too small; use >= 3 (scGPT uses 51).")
        if not 0.0 <= zero_fraction < 1.0:
            raise ValueError(f"zero_fraction={zero_fraction} must be in [0, 1).")
        self.max_seq_len = int(max_seq_len)
        self.pad_id = int(pad_id)
        self.cls_id = int(cls_id)
        self.n_bins = n_bins
        self.pad_value = float(pad_value)
        self.zero_fraction = float(zero_fraction)
        self.seed = int(seed)

    def bin(
        self, x: torch.Tensor, gene_ids: torch.Tensor | None = None, ties: Ties = "hash"
    ) -> torch.Tensor:
        """Per-cell quantile bins of all genes of ``x`` ``(B, G)``; 0 where not expressed.

        ``ties`` as in :meth:`__call__`; ``gene_ids`` (default ``0 … G-1``) feed the hash.
        """
        if gene_ids is None:
            gene_ids = torch.arange(x.shape[1], device=x.device)
        x_sorted, _ = torch.sort(x, dim=1)
        n_nz = (x > 0).sum(1)
        edges = quantile_edges(x_sorted, n_nz, self.n_bins)
        u = self._tie_u(x, gene_ids.to(x.device), ties)
        return torch.where(x > 0, digitize(x, edges, u), 0)

    def _cell_gene_hash(self, x: torch.Tensor, gene_ids: torch.Tensor) -> torch.Tensor:
        """``(B, G)`` int64 hash of (the cell's expressed genes, the gene, the seed)."""
        gh = _mix64(gene_ids.clamp(min=0) + 1 + self.seed * 1_000_003)
        cell = torch.where(x > 0, gh[None, :], 0).sum(1)
        return _mix64(cell[:, None] ^ gh[None, :])

    def _tie_u(self, x: torch.Tensor, gene_ids: torch.Tensor, ties: Ties) -> torch.Tensor | None:
        if ties == "random":
            return torch.rand(x.shape, device=x.device, dtype=torch.float64)
        if ties == "hash":
            return _uniform(_mix64(self._cell_gene_hash(x, gene_ids) ^ _TIE_SALT))
        if ties == "middle":
            return None
        raise ValueError(f"ties={ties!r}; use 'random', 'hash' or 'middle'.")

    def _keys(
        self,
        x: torch.Tensor,
        gene_ids: torch.Tensor,
        sample: str,
        scale: torch.Tensor | None,
        priority: torch.Tensor | None = None,
        random_fraction: float = 0.0,
        linear: bool = False,
    ) -> torch.Tensor:
        B, G = x.shape
        if sample == "rank":
            if scale is None:
                raise ValueError(
                    "sample='rank' needs scale (per column: 1 / the gene's non-zero median)."
                )
            # highest relative expression first, exact ties broken by the reproducible hash
            # (unexpressed genes, compared only among themselves for zero slots: the hash)
            u = _uniform(self._cell_gene_hash(x, gene_ids))
            v, s = x.double(), scale.to(x.device, torch.float64)[None, :]
            if linear:
                score = _linear_rank_score(v, s)
            else:
                score = v * s
            key = score * (1 + 1e-9 * u)
            if priority is None and not random_fraction:
                return torch.where(x > 0, key, u)
            key = key / (1 + key)  # the same order, in [0, 1)
            if random_fraction:  # these cells' genes in random order instead (training)
                drawn = torch.rand(B, 1, device=x.device) < random_fraction
                key = torch.where(drawn, torch.rand(B, G, device=x.device, dtype=key.dtype), key)
            if priority is not None:  # the priority genes first, each group in key order
                key = key + priority.to(x.device, torch.float64)[None, :]
            return torch.where(x > 0, key, u)
        if sample == "random":
            return torch.rand(B, G, device=x.device)
        if sample == "first":
            return -torch.arange(G, device=x.device, dtype=torch.float32).expand(B, G)
        if sample == "hash":
            # A pseudo-random order that depends only on the cell's expressed genes, the gene
            # and the seed: the same cell gets the same tokens in any batch, on any device.
            return _uniform(self._cell_gene_hash(x, gene_ids))
        raise ValueError(f"sample={sample!r}; use 'random', 'hash', 'rank' or 'first'.")

    def __call__(
        self,
        x: torch.Tensor,
        gene_ids: torch.Tensor,
        *,
        sample: Literal["random", "hash", "rank", "first"] = "random",
        max_seq_len: int | None = None,
        ties: Ties | None = None,
        scale: torch.Tensor | None = None,
        priority: torch.Tensor | None = None,
        random_fraction: float = 0.0,
        linear: bool = False,
    ) -> TokenizedBatch:
        """Tokenize a batch.

        Parameters
        ----------
        x
            ``(B, G)`` non-negative expression (counts or log-normalized), dense.
        gene_ids
            ``(G,)`` vocabulary id of each column, ``-1`` for genes not in the vocabulary
            (ignored, also for binning).
        sample
            How to choose genes when a cell has more than fit: ``"random"`` (training),
            ``"hash"`` (reproducible: depends on the cell and :attr:`seed` only),
            ``"rank"`` (rank-value selection: the highest ``x · scale``, ties broken by the
            hash; reproducible) or ``"first"`` (column order).
        max_seq_len
            Override :attr:`max_seq_len` for this call.
        ties
            Bin of a value tied with several bin edges: ``"random"`` (uniform among its
            possible bins, drawn anew each call: scGPT's rule), ``"hash"`` (the same
            uniform choice, but drawn from a hash of the cell, the gene and :attr:`seed`:
            reproducible) or ``"middle"`` (the middle bin). Default: ``"random"`` when
            ``sample="random"``, else ``"hash"``.
        scale
            ``(G,)`` per-column factor of rank-value selection (``sample="rank"``): 1 / the
            gene's non-zero median, so that a cell's tokens are its genes most above their
            usual level (Geneformer's rank-value encoding).
        priority
            ``(G,)`` 0 / 1 per column, for ``sample="rank"``: a cell's expressed genes with
            priority 1 (e.g. highly variable genes) take its tokens first, in rank order;
            its other genes fill the remaining tokens, in rank order.
        random_fraction
            For ``sample="rank"``: each cell draws, with this probability, its genes in
            random order instead of by rank (still priority genes first). Training may mix
            both; leave 0 for reproducible tokens.
        linear
            For ``sample="rank"``: rank ``x · scale`` on the linear scale, whatever scale
            the cells come in: a cell of whole numbers (counts) as it is, any other cell
            (``log1p`` values) ``expm1``-ed; ``scale`` from
            ``nonzero_medians(..., linear=True)``. The same cells as counts or as
            ``log1p(normalize_total(counts))`` then get the same genes.
        """
        L = self.max_seq_len if max_seq_len is None else int(max_seq_len)
        if L < 2:
            raise ValueError(f"max_seq_len={L} leaves no room for genes after <cls>; use >= 2.")
        B, G = x.shape
        gene_ids = gene_ids.to(x.device)
        known = gene_ids >= 0
        x = torch.where(known[None, :], x.float(), 0.0)
        expressed = x > 0

        budget = L - 1
        n_zero_slots = int(np.floor(self.zero_fraction * budget)) if self.zero_fraction else 0
        keys = self._keys(x, gene_ids, sample, scale, priority, random_fraction, linear)
        neg = torch.finfo(keys.dtype).min
        parts_idx, parts_valid = [], []
        for cand, k in ((expressed, budget - n_zero_slots), (known & ~expressed, n_zero_slots)):
            k = min(k, G)
            if k <= 0:
                continue
            kk = torch.where(cand, keys, neg)
            top, idx = torch.topk(kk, k, dim=1)
            parts_idx.append(idx)
            parts_valid.append(top > neg)
        idx = torch.cat(parts_idx, 1) if parts_idx else x.new_zeros((B, 0), dtype=torch.long)
        valid = torch.cat(parts_valid, 1) if parts_valid else x.new_zeros((B, 0), dtype=torch.bool)
        # pack valid tokens to the front and trim to the longest cell of the batch
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        idx, valid = idx.gather(1, order), valid.gather(1, order)
        n_max = int(valid.sum(1).max()) if B and valid.numel() else 0
        idx, valid = idx[:, :n_max], valid[:, :n_max]

        if self.n_bins is None:
            vals = x.gather(1, idx)
        else:
            x_sorted, _ = torch.sort(x, dim=1)
            edges = quantile_edges(x_sorted, expressed.sum(1), self.n_bins)
            xs = x.gather(1, idx)
            if ties is None:
                ties = "random" if sample == "random" else "hash"
            u = self._tie_u(x, gene_ids, ties)
            u = None if u is None else u.gather(1, idx)
            vals = torch.where(xs > 0, digitize(xs, edges, u), 0).float()
        tok = torch.where(valid, gene_ids[idx], self.pad_id)
        vals = torch.where(valid, vals, self.pad_value)

        cls_tok = torch.full((B, 1), self.cls_id, dtype=torch.long, device=x.device)
        cls_val = torch.full((B, 1), self.pad_value, dtype=torch.float32, device=x.device)
        return TokenizedBatch(
            gene_ids=torch.cat([cls_tok, tok], 1),
            values=torch.cat([cls_val, vals.float()], 1),
            # (B, 1) even when no cell of the batch has a gene token (valid is then (B, 0))
            padding_mask=torch.cat([valid.new_zeros((B, 1)), ~valid], 1),
        )


def perturbation_tokens(
    tokenizer: Tokenizer,
    x: torch.Tensor,
    panel_ids: torch.Tensor,
    pert_ids: torch.Tensor,
    ties: Ties = "hash",
) -> tuple[TokenizedBatch, torch.Tensor]:
    """Tokens of cells under genetic perturbation: the whole panel, nothing sampled.

    Every column of ``x`` ``(B, G)`` whose gene is in the vocabulary (``panel_ids >= 0``)
    becomes a token, expressed or not and in column order, so that no perturbed gene is
    ever dropped; values are binned per cell as :meth:`Tokenizer.bin` does. A perturbed gene
    outside the panel is appended as an extra token (gene id, ``pad_value``, flag 1).
    :attr:`TokenizedBatch.pert_flags` marks the perturbed tokens.

    Parameters
    ----------
    tokenizer
        Supplies the special ids, ``pad_value`` and the binning.
    x
        ``(B, G)`` expression of the (control) cells.
    panel_ids
        ``(G,)`` vocabulary id of each column, ``-1`` where absent.
    pert_ids
        ``(B, P)`` vocabulary ids of each cell's perturbed genes, ``-1`` = none.
    ties
        Binning of tied values (see :meth:`Tokenizer.__call__`).

    Returns
    -------
    tokens
        ``<cls>``, the panel's genes, then ``P`` extra slots (padding unless an
        out-of-panel gene is perturbed).
    columns
        The columns of ``x`` that the panel tokens (after ``<cls>``) stand for.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import Tokenizer, perturbation_tokens
    >>> tok = Tokenizer(max_seq_len=8, pad_id=0, cls_id=1, n_bins=None)
    >>> t, cols = perturbation_tokens(tok, torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([2, -1, 3]),
    ...                               torch.tensor([[3, 9]]))
    >>> t.gene_ids.tolist(), t.pert_flags.tolist(), cols.tolist()
    ([[1, 2, 3, 0, 9]], [[0, 0, 1, 2, 1]], [0, 2])
    """
    cols = torch.nonzero(panel_ids >= 0).squeeze(1)
    ids = panel_ids[cols]
    x = x[:, cols].float()
    B, dev = x.shape[0], x.device
    vals = x if tokenizer.n_bins is None else tokenizer.bin(x, ids, ties=ties).float()
    pert_ids = pert_ids.to(dev)
    valid = pert_ids >= 0
    n_vocab = (
        int(torch.cat([ids, pert_ids.reshape(-1).clamp(min=0)]).max()) + 1
        if ids.numel() or pert_ids.numel()
        else 1
    )
    in_panel = torch.zeros(n_vocab, dtype=torch.bool, device=dev)
    in_panel[ids] = True
    extra = valid & ~in_panel[pert_ids.clamp(min=0)]
    flags = ((ids[None, :, None] == pert_ids[:, None, :]) & valid[:, None, :]).any(-1).long()
    cls_col = torch.full((B, 1), tokenizer.cls_id, dtype=torch.long, device=dev)
    pad_col = torch.full((B, 1), tokenizer.pad_value, device=dev)
    gene_ids = torch.cat(
        [cls_col, ids.expand(B, -1), torch.where(extra, pert_ids, tokenizer.pad_id)], 1
    )
    values = torch.cat(
        [pad_col, vals, torch.full(pert_ids.shape, tokenizer.pad_value, device=dev)], 1
    )
    padding = torch.cat([torch.zeros(B, 1 + len(ids), dtype=torch.bool, device=dev), ~extra], 1)
    flags = torch.cat([torch.zeros_like(cls_col), flags, torch.where(extra, 1, PERT_PAD)], 1)
    return TokenizedBatch(gene_ids, values, padding, pert_flags=flags), cols


def append_queries(
    tokens: TokenizedBatch, query_ids: torch.Tensor, modality: int, pad_value: float
) -> tuple[TokenizedBatch, torch.Tensor]:
    """Append the same query tokens to every sequence: features whose value is to be generated.

    A query token is a gene (or peak) id with no value (``pad_value``) of the given
    ``modality``; the returned ``known`` mask is True at the sequences' own real tokens and
    False at the queries, so that under the generative attention mask each query sees the
    known tokens and itself only (cross-modal prediction in chunks gives the same result as
    all at once).

    Parameters
    ----------
    tokens
        ``(B, L)`` sequences (with :attr:`TokenizedBatch.modality`).
    query_ids
        ``(Q,)`` vocabulary ids.
    modality
        Modality code of the queries (:data:`MOD_RNA`, :data:`MOD_ATAC`).
    pad_value
        Input value of value-less tokens.

    Returns
    -------
    tokens
        ``(B, L + Q)`` sequences.
    known
        ``(B, L + Q)`` bool.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import MOD_ATAC, TokenizedBatch, append_queries
    >>> t = TokenizedBatch(torch.tensor([[1, 5]]), torch.tensor([[-2.0, 3.0]]), torch.tensor([[False, False]]),
    ...                    torch.tensor([[0, 1]]))
    >>> out, known = append_queries(t, torch.tensor([7, 8]), MOD_ATAC, -2.0)
    >>> out.gene_ids.tolist(), known.tolist()
    ([[1, 5, 7, 8]], [[True, True, False, False]])
    """
    B = tokens.gene_ids.shape[0]
    dev = tokens.gene_ids.device
    chunk = query_ids.to(dev).expand(B, -1)
    n = chunk.shape[1]
    mod = tokens.modality if tokens.modality is not None else torch.zeros_like(tokens.gene_ids)
    out = TokenizedBatch(
        torch.cat([tokens.gene_ids, chunk], 1),
        torch.cat([tokens.values, torch.full(chunk.shape, pad_value, device=dev)], 1),
        torch.cat([tokens.padding_mask, torch.zeros(B, n, dtype=torch.bool, device=dev)], 1),
        torch.cat([mod, torch.full_like(chunk, modality)], 1),
    )
    known = torch.cat([~tokens.padding_mask, torch.zeros(B, n, dtype=torch.bool, device=dev)], 1)
    return out, known


def fixed_gene_tokens(
    tokenizer: Tokenizer,
    x: torch.Tensor,
    gene_ids: torch.Tensor,
    columns: torch.Tensor,
    *,
    include_zeros: bool = True,
) -> TokenizedBatch:
    """The same genes, in the same positions, for every cell (gene–gene inspection).

    Each cell's values are binned over all of its genes in the vocabulary, as
    :class:`Tokenizer` bins them (reproducible ties); then the ``columns`` of ``x`` are
    taken in the given order. Token ``j + 1`` of every sequence is gene ``columns[j]``, so
    per-token outputs of different cells line up. With ``include_zeros`` a gene the cell
    does not express is a token of value 0; otherwise it is padding.

    Parameters
    ----------
    tokenizer
        Supplies ``<cls>`` / ``<pad>`` ids, the number of bins and the padding value.
    x
        ``(B, G)`` non-negative expression.
    gene_ids
        ``(G,)`` vocabulary id of each column of ``x``, ``-1`` outside the vocabulary.
    columns
        ``(K,)`` columns of ``x`` to use; all must be in the vocabulary.
    include_zeros
        Keep unexpressed genes as value-0 tokens (else they are padding).

    Returns
    -------
    TokenizedBatch
        ``(B, K + 1)`` sequences.

    Examples
    --------
    >>> import torch
    >>> from celltx.data import Tokenizer, fixed_gene_tokens
    >>> tok = Tokenizer(max_seq_len=8, pad_id=0, cls_id=1, n_bins=5)
    >>> x = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    >>> t = fixed_gene_tokens(tok, x, torch.tensor([2, 3, 4]), torch.tensor([2, 1]), include_zeros=False)
    >>> t.gene_ids.tolist(), t.padding_mask.tolist()
    ([[1, 4, 3], [1, 0, 0]], [[False, False, False], [False, True, True]])
    """
    gene_ids = gene_ids.to(x.device)
    columns = columns.to(x.device)
    if (gene_ids[columns] < 0).any():
        raise ValueError("fixed_gene_tokens: every column must be a gene of the vocabulary.")
    x = torch.where(gene_ids[None, :] >= 0, x.float(), 0.0)
    values = x if tokenizer.n_bins is None else tokenizer.bin(x, gene_ids, ties="hash").float()
    B = x.shape[0]
    vals = values[:, columns]
    pad = torch.zeros_like(vals, dtype=torch.bool) if include_zeros else x[:, columns] <= 0
    ids = torch.where(pad, tokenizer.pad_id, gene_ids[columns][None, :].expand(B, -1))
    vals = torch.where(pad, tokenizer.pad_value, vals)
    cls_tok = torch.full((B, 1), tokenizer.cls_id, dtype=torch.long, device=x.device)
    cls_val = torch.full((B, 1), tokenizer.pad_value, dtype=torch.float32, device=x.device)
    return TokenizedBatch(
        gene_ids=torch.cat([cls_tok, ids], 1),
        values=torch.cat([cls_val, vals.float()], 1),
        padding_mask=torch.cat([pad.new_zeros((B, 1)), pad], 1),
    )
