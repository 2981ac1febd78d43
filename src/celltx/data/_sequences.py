"""Sequences built from tokenized cells.

The modality join, perturbation sequences, query tokens for generation and fixed-gene
sequences for attention inspection.
"""

from __future__ import annotations

import torch

from ._tokenizer import MOD_ATAC, MOD_CLS, MOD_RNA, PERT_PAD, Ties, TokenizedBatch, Tokenizer


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
