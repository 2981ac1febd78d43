"""Vectorized, on-device tokenization of expression rows into scGPT token sequences.

This is the only place in celltx that turns expression values into tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ._binning import (
    _TIE_SALT,
    _linear_rank_score,
    _mix64,
    _uniform,
    digitize,
    quantile_edges,
)

Ties = Literal["random", "hash", "middle"]
#: how :class:`Tokenizer` picks the genes of a cell (its ``sample`` argument)
Sample = Literal["random", "hash", "rank", "first"]


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

    def to(self, device: torch.device | str) -> TokenizedBatch:
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
        if self.n_bins is None:
            raise ValueError("This tokenizer does not bin (n_bins=None); build it with n_bins.")
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
        sample: Sample = "random",
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
