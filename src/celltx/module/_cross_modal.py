"""Cross-modal contrastive alignment of RNA + ATAC cells (the multiome objective part)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from scvi import REGISTRY_KEYS

from celltx.data import PARTNER_KEY, augment_views
from celltx.nn import ScGPTConfig

from ._constants import ATAC_KEY, VIEW_JOINT
from ._losses import cross_modal_loss
from ._objectives import PARTS, WHOLE, Part, PartLoss, needs_rna_and_atac, register_part

if TYPE_CHECKING:
    from ._scgpt import ScGPTModule


class CrossModal(Part):
    """Cross-modal contrastive alignment: a cell's RNA view and its ATAC view are a positive pair.

    Each training step encodes every cell three times, each time whole (no generative
    mask): its joint sequence (the module's own pass: all the tokens it was measured in),
    its RNA alone and its ATAC alone, the single-modality views from counts augmented on
    their own (binomial thinning ``thinning``, dropout of measured genes / open peaks
    ``dropout``), so that they differ from the joint view even for a cell measured in one
    modality. :func:`~celltx.module.cross_modal_loss` of the three ``<cls>`` embeddings:

    * RNA view ↔ ATAC view of every cell measured in both (CLIP's symmetric InfoNCE, the
      cross-modal term);
    * joint ↔ RNA view of every cell with RNA and joint ↔ ATAC view of every cell with ATAC:
      for a paired cell, the joint embedding in the same space as its single-modality
      views; for an RNA-only (ATAC-only) cell of a mosaic, a within-modality two-view term
      (its unaugmented and its augmented RNA), so that such cells are embedded by the same
      objective and land in the same space.

    With generation in the objective too (``train(task="multiome", loss_weights={"gep":
    1.0})``, so that :meth:`~celltx.model.ScGPT.predict_rna_from_atac` is trained), the
    joint view is the generative pass's row of each whole cell (its held-out tokens
    hidden).

    Neighbour positives (the config's ``contrast_positives="knn"``): the training loader
    puts a partner of each anchor cell in its batch (:data:`~celltx.data.PARTNER_KEY`),
    chosen once from strong priors — a paired cell's neighbours in both RNA PCA and ATAC
    LSI; on a mosaic, an RNA-only cell's ATAC-only cells reached through paired cells (the
    bridge) and the reverse — and the loss makes the partner a further positive
    (:func:`~celltx.module.cross_modal_loss`'s ``partner``, with ``partner_gap`` 2, the
    scale-free pull of each partner pair together; guard: ``contrast_filter``). The
    multiome recipe (:data:`celltx.bench.MULTIOME_CELLTX_DEFAULTS`) trains with them.

    Settings: ``temperature`` (the config's ``contrast_temperature``), ``thinning``,
    ``dropout`` (the config's ``contrast_thinning`` / ``contrast_gene_dropout`` when set,
    else 0.5 / 0.2) and ``gap`` (the weight of the scale-free pull of each pair together,
    which InfoNCE alone leaves at a constant offset between modalities; 2.0). After
    training the mean ``<cls>`` output is stored (``cell_offset``), as for the RNA
    contrastive part. The part is :attr:`~celltx.module.Part.chunked`
    (:meth:`embed`: a chunk's three ``<cls>`` and its masks of measured modalities;
    :meth:`batch_loss`: the loss over the whole batch), so ``train(task="multiome",
    chunk_size=...)`` trains it with CellLM's divide-and-conquer step, a contrastive batch
    larger than memory.

    Examples
    --------
    >>> from celltx.module import PARTS
    >>> part = PARTS["cross_modal"]
    >>> part.temperature, part.gap
    (0.1, 2.0)
    >>> from celltx.model import TASKS
    >>> TASKS["multiome"]
    {'cross_modal': 1.0}
    """

    name = "cross_modal"
    pass_ = WHOLE
    metrics = ("cross_modal_loss", "cross_modal_nce")
    after = ("cell_offset",)
    chunked = True

    def configure(self, config: ScGPTConfig) -> None:
        self.temperature = config.contrast_temperature
        self.thinning = config.contrast_thinning or 0.5
        self.dropout = config.contrast_gene_dropout or 0.2
        self.gap = 2.0
        self.filter = config.contrast_filter
        self.partner_gap = 2.0

    def available(self, module: ScGPTModule) -> str | None:
        return needs_rna_and_atac(module, "The cross-modal loss")

    def _view(
        self,
        module: ScGPTModule,
        x: torch.Tensor,
        x_atac: torch.Tensor,
        batch: torch.Tensor | None,
    ) -> torch.Tensor:
        """``<cls>`` output of cells tokenized from ``x`` / ``x_atac`` (all-zero: not measured)."""
        # the module's own non-generative pass: every token known, as for an embedding
        emb: torch.Tensor = module.inference(x, batch, generative=False, x_atac=x_atac)["cell_emb"]
        return emb

    def embed(
        self, module: ScGPTModule, tensors: dict[str, torch.Tensor], inference: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The joint, RNA-view and ATAC-view ``<cls>`` of each cell, and which it was measured in.

        ``joint`` is the encoder pass's (``inference``; with generation beside it, its
        whole-cell rows); ``rna`` / ``atac`` encode each modality alone, augmented (random:
        drawn from the global random state); ``has_rna`` / ``has_atac``: boolean masks.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        xa = tensors[ATAC_KEY]
        x = (x.to_dense() if x.is_sparse else x).float()
        xa = (xa.to_dense() if xa.is_sparse else xa).float()
        batch = module._codes(tensors, REGISTRY_KEYS.BATCH_KEY)
        has_rna = (x[:, module.tokenizer.gene_ids >= 0] > 0).any(1)
        has_atac = (xa[:, module.tokenizer.atac_ids >= 0] > 0).any(1)
        joint = inference["cell_emb"]
        view = inference.get("view")
        if view is not None:  # a generative pass beside it (gep): its whole-cell rows
            joint = joint[view == VIEW_JOINT]
        rna = self._view(
            module,
            augment_views(x, self.thinning, self.dropout),
            torch.zeros_like(xa),
            batch,
        )
        atac = self._view(
            module,
            torch.zeros_like(x),
            augment_views(xa, self.thinning, self.dropout),
            batch,
        )
        return {
            "joint": joint.float(),
            "rna": rna.float(),
            "atac": atac.float(),
            "has_rna": has_rna,
            "has_atac": has_atac,
        }

    def batch_loss(
        self, embeddings: dict[str, torch.Tensor], partner: torch.Tensor | None = None
    ) -> PartLoss:
        """:func:`~celltx.module.cross_modal_loss` of :meth:`embed`'s rows of a whole batch."""
        e = embeddings
        loss, nce = cross_modal_loss(
            e["joint"],
            e["rna"],
            e["atac"],
            e["has_rna"],
            e["has_atac"],
            self.temperature,
            self.gap,
            partner=partner,
            filter_fraction=self.filter,
            partner_gap=self.partner_gap,
        )
        return PartLoss(
            loss, None, {"cross_modal_loss": loss.detach(), "cross_modal_nce": nce.detach()}
        )

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        return self.batch_loss(self.embed(module, tensors, inference), tensors.get(PARTNER_KEY))


if CrossModal.name not in PARTS:  # a second import of this file (doctest collection)
    register_part(CrossModal().configured(ScGPTConfig()))
