"""The contrastive losses of the objective parts, as plain functions of embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._constants import VIEW_ATAC, VIEW_RNA


def cell_text_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between cells and the texts of their labels.

    ``logits`` ``(N, T)``: scaled similarities of ``N`` cells to every label's text;
    ``labels`` ``(N,)``: each cell's text. Cell → text: cross-entropy over all texts
    (weighted per label by ``weight``, e.g. ``class_weight="balanced"``). Text → cell: for
    each text with cells in the batch, softmax over the batch's cells, maximising the
    probability of its cells together (several cells share a label); averaged over texts,
    so every label present counts alike. The mean of both. No cells give 0.

    Examples
    --------
    >>> import torch
    >>> from celltx.module import cell_text_loss
    >>> labels = torch.tensor([0, 0, 1, 2])
    >>> good = 10 * torch.nn.functional.one_hot(labels, 3).float()
    >>> bool(cell_text_loss(good, labels) < cell_text_loss(-good, labels))
    True
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    if weight is not None and weight.shape[0] != logits.shape[1]:
        weight = None  # the default all-ones buffer of a model without classes
    c2t = F.cross_entropy(logits, labels, weight=weight)
    present = torch.unique(labels)
    logp = torch.log_softmax(logits[:, present], dim=0)  # (N, P): over cells
    pos = labels[:, None] == present[None, :]
    t2c = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), dim=0).mean()
    return (c2t + t2c) / 2


def _drop_least_similar(cell: torch.Tensor, partner: torch.Tensor, fraction: float) -> torch.Tensor:
    """``partner`` with its ``fraction`` least similar pairs set to ``-1`` (the false-positive guard).

    ``cell`` ``(N, D)``: unit-norm embeddings of the rows; the similarity of a pair is their
    cosine, computed without gradient. Returns a copy.
    """
    partner = partner.clone()
    has = torch.nonzero(partner >= 0).squeeze(1)
    n_drop = int(fraction * len(has))
    if n_drop:
        with torch.no_grad():
            sim = (cell[has] * cell[partner[has]]).sum(1)
        partner[has[sim.argsort()[:n_drop]]] = -1
    return partner


def contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    partner: torch.Tensor | None = None,
    filter_fraction: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE between two views ``(N, D)`` of the same ``N`` cells.

    The embeddings are centred over all ``2N`` rows (early in training every ``<cls>``
    output is nearly the same vector, and InfoNCE on raw cosines then stays at chance) and
    L2-normalised; logits are cosines / ``temperature``; row ``i`` of one view must pick row
    ``i`` of the other. Fewer than 2 cells give 0.

    ``partner`` ``(N,)``: a further positive of each row, the row index of a neighbouring
    cell (``-1``: none), as CLAIRE / NNCLR use neighbours. Row ``i``'s positives are then
    ``i`` and ``partner[i]`` (and every row whose partner is ``i``) in the other view, and
    its loss is the mean of their ``-log`` softmax probabilities (SupCon's multi-positive
    form, which pulls every positive in, not only the easiest); without partners this is
    the loss above. ``filter_fraction``: the guard against false
    positives, the lowest-similarity fraction of the partner pairs (cosine of the two cells'
    mean embeddings, without gradient) is left out.

    Examples
    --------
    >>> import torch
    >>> from celltx.module import contrastive_loss
    >>> z = torch.randn(8, 4)
    >>> bool(contrastive_loss(z, z, 0.1) < contrastive_loss(z, z.roll(1, 0), 0.1))
    True
    """
    n = z1.shape[0]
    if n < 2:
        return z1.float().sum() * 0.0
    z = torch.cat([z1, z2]).float()
    z = F.normalize(z - z.mean(0, keepdim=True), dim=1)
    logits = z[:n] @ z[n:].T / temperature
    target = torch.arange(n, device=z.device)
    if partner is None or not bool((partner >= 0).any()):
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    partner = partner.to(z.device).long()
    if filter_fraction > 0:
        partner = _drop_least_similar(F.normalize(z[:n] + z[n:], dim=1), partner, filter_fraction)
    pos = torch.eye(n, dtype=torch.bool, device=z.device)
    has = torch.nonzero(partner >= 0).squeeze(1)
    pos[has, partner[has]] = True
    pos = pos | pos.T

    def nce(lg: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(lg, 1)
        return (-(logp * pos).sum(1) / pos.sum(1)).mean()

    return (nce(logits) + nce(logits.T)) / 2


def _partner_nce(
    z: torch.Tensor, partner: torch.Tensor, temperature: float, filter_fraction: float = 0.0
) -> torch.Tensor:
    """InfoNCE of each row's partner(s) among the other rows of one embedding ``(N, D)``.

    Centred, L2-normalised, cosine / ``temperature``; a row is never its own candidate;
    its positives are ``partner[i]`` and every row whose partner it is (SupCon's mean of
    their ``-log`` probabilities); rows without any are left out. ``filter_fraction``: the
    least similar fraction of the partner pairs left out (as :func:`contrastive_loss`).
    """
    n = z.shape[0]
    z = F.normalize(z.float() - z.float().mean(0, keepdim=True), dim=1)
    if filter_fraction > 0:
        partner = _drop_least_similar(z, partner, filter_fraction)
    has = torch.nonzero(partner >= 0).squeeze(1)
    pos = torch.zeros(n, n, dtype=torch.bool, device=z.device)
    pos[has, partner[has]] = True
    pos = (pos | pos.T) & ~torch.eye(n, dtype=torch.bool, device=z.device)
    rows = pos.any(1)
    if not bool(rows.any()):
        return z.sum() * 0.0
    logits = (z @ z.T / temperature).masked_fill(
        torch.eye(n, dtype=torch.bool, device=z.device), float("-inf")
    )
    logp = torch.log_softmax(logits[rows], 1).masked_fill(~pos[rows], 0.0)
    return (-logp.sum(1) / pos[rows].sum(1)).mean()


def _partners_within(partner: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``partner`` of rows ``idx``, as positions within ``idx`` (``-1``: none or not in ``idx``)."""
    pos = torch.full_like(partner, -1)
    pos[idx] = torch.arange(len(idx), device=partner.device)
    sub = partner[idx]
    return torch.where(sub >= 0, pos[sub.clamp(min=0)], torch.full_like(sub, -1))


def alignment_loss(
    cell_emb: torch.Tensor, rows: torch.Tensor, view: torch.Tensor, temperature: float
) -> torch.Tensor | None:
    """Contrastive alignment of the views of multimodal cells (``None``: fewer than 2).

    The rows of :meth:`~celltx.module.ScGPTModule.generative_views` hold, for the ``P`` cells with both
    modalities, a joint, an RNA-alone and an ATAC-alone ``<cls>`` embedding (same cell
    order in each view). For each pair of views, a symmetric InfoNCE (CLIP) loss on
    cosine similarities / ``temperature``: a cell's embedding in one view
    must be closer to its own embedding in the other view than to the other cells'.
    The mean over the three pairs.
    """
    rna_rows = torch.nonzero(view == VIEW_RNA).squeeze(1)
    P = len(rna_rows)
    if P < 2:
        return None
    atac_rows = torch.nonzero(view == VIEW_ATAC).squeeze(1)
    raw = cell_emb.float()
    raw = raw - raw.mean(0, keepdim=True)
    # early in training every <cls> output is nearly the same vector (cosine ~0.999
    # between cells), which leaves InfoNCE on raw cosines flat at log(P): contrast the
    # differences between cells (centred over the rows) instead
    z = F.normalize(raw, dim=1)
    spread = raw.pow(2).sum(1).mean().clamp(min=1e-8)
    # row i < n_cells is cell i's joint row, so a cell's joint row is its cell index
    idx = [rows[rna_rows], rna_rows, atac_rows]
    target = torch.arange(P, device=z.device)
    losses = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        logits = z[idx[a]] @ z[idx[b]].T / temperature
        nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        # InfoNCE ignores a constant offset between two views (it shifts every logit of a
        # row alike), which kept RNA-only and ATAC-only cells apart: also pull each pair
        # together, relative to the spread of the embeddings (scale-free)
        gap = (raw[idx[a]] - raw[idx[b]]).pow(2).sum(1).mean() / spread
        losses.append(nce + gap)
    return torch.stack(losses).mean()


def cross_modal_loss(
    joint: torch.Tensor,
    rna: torch.Tensor,
    atac: torch.Tensor,
    has_rna: torch.Tensor,
    has_atac: torch.Tensor,
    temperature: float,
    gap: float = 1.0,
    partner: torch.Tensor | None = None,
    filter_fraction: float = 0.0,
    partner_gap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive alignment of the joint, RNA-alone and ATAC-alone ``<cls>`` of ``B`` cells.

    ``joint``, ``rna``, ``atac`` ``(B, D)``: each cell's embedding from all its tokens, from
    its RNA alone and from its ATAC alone (rows of cells without that modality are
    ignored); ``has_rna`` / ``has_atac`` ``(B,)``: which cells were measured in each. The
    terms, each a symmetric InfoNCE (:func:`contrastive_loss`: centred, cosine /
    ``temperature``) over the cells it applies to (skipped below 2 cells): RNA ↔ ATAC over
    the cells with both (the cross-modal positive pair), joint ↔ RNA over the cells with
    RNA, joint ↔ ATAC over the cells with ATAC. InfoNCE ignores a constant offset between
    two views (it shifts every logit of a row alike), which would leave RNA-only and
    ATAC-only cells apart: each term also pulls its pairs together by their mean squared
    distance relative to the spread of the embeddings (scale-free), weighted by ``gap``.
    Returns ``(loss, nce)``: the mean over the terms of InfoNCE + gap, and of InfoNCE
    alone; zeros when no term applies.

    ``partner`` ``(B,)``: neighbour positives, each row's partner row in the batch (``-1``:
    none; :data:`~celltx.data.PARTNER_KEY`), as :func:`contrastive_loss` treats them: in
    each term a partner measured in that term's modalities is a further positive of its
    anchor (view ↔ view), and a fourth term, joint ↔ joint over every cell, makes each
    cell's partner the positive of its joint embedding against the batch's other cells
    (InfoNCE with the cell itself left out, SupCon / NNCLR-style, plus ``partner_gap`` times
    the pairs' mean squared distance relative to the spread: 0 by default, the pair are two
    cells). The fourth term is what links an RNA-only cell to an ATAC-only partner of a
    mosaic, which no view term can. ``filter_fraction``: :func:`contrastive_loss`'s guard
    (the least similar fraction of the partner pairs left out). No partner (``None`` or
    all ``-1``): the loss above, unchanged.

    Examples
    --------
    >>> import torch
    >>> from celltx.module import cross_modal_loss
    >>> z, both = torch.randn(8, 4), torch.ones(8, dtype=torch.bool)
    >>> aligned, _ = cross_modal_loss(z, z, z, both, both, 0.1)
    >>> shuffled, _ = cross_modal_loss(z, z, z.roll(1, 0), both, both, 0.1)
    >>> bool(aligned < shuffled)
    True
    """
    raw = torch.cat([joint, rna, atac]).float()
    B = joint.shape[0]
    has = torch.cat([torch.ones_like(has_rna), has_rna, has_atac]).bool()
    centre = raw[has].mean(0, keepdim=True) if bool(has.any()) else raw.mean(0, keepdim=True)
    spread = (raw[has] - centre).pow(2).sum(1).mean().clamp(min=1e-8)
    views = raw.split(B)
    if partner is not None:
        partner = partner.to(raw.device).long()
        if not bool((partner >= 0).any()):
            partner = None
    nces, losses = [], []
    for a, b, cells in ((1, 2, has_rna & has_atac), (0, 1, has_rna), (0, 2, has_atac)):
        idx = torch.nonzero(cells).squeeze(1)
        if len(idx) < 2:
            continue
        za, zb = views[a][idx], views[b][idx]
        sub = None if partner is None else _partners_within(partner, idx)
        nce = contrastive_loss(za, zb, temperature, sub, filter_fraction)
        nces.append(nce)
        losses.append(nce + gap * (za - zb).pow(2).sum(1).mean() / spread)
    if partner is not None and B >= 2:  # joint ↔ joint: the partner, whatever it measured
        nce = _partner_nce(views[0], partner, temperature, filter_fraction)
        nces.append(nce)
        linked = torch.nonzero(partner >= 0).squeeze(1)
        pull = (views[0][linked] - views[0][partner[linked]]).pow(2).sum(1).mean() / spread
        losses.append(nce + partner_gap * pull)
    if not losses:
        zero = joint.float().sum() * 0.0
        return zero, zero.detach()
    return torch.stack(losses).mean(), torch.stack(nces).mean()
