"""Objectives as small parts, each owning its weight and settings.

A part computes one loss from named inputs: the scvi-tools minibatch (``tensors``), what the
encoder pass produced (``inference``: ``tokens``, ``known``, ``h``, ``cell_emb``, ``rows``,
``view``, ``pert_pred``, ``pert_target``) and the heads' predictions (``predictions``:
``expr``, ``mvc``, ``cls``, ``dab``). It declares which encoder pass it needs
(:attr:`Part.pass_`), how many views of each cell (:attr:`Part.views`), which heads it reads
(:attr:`Part.heads`) and what the model must provide before or compute after training
(:attr:`Part.needs`, :attr:`Part.after`). :class:`~celltx.module.ScGPTModule` holds one
configured copy of every part (:attr:`~celltx.module.ScGPTModule.parts`: weight and settings,
the defaults read from :class:`~celltx.nn.ScGPTConfig`), runs the pass its active parts need,
the heads they read, and sums their weighted losses. Adding an objective means one part here
(or :func:`register_part`) and one task (:func:`celltx.model.register_task`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS

from celltx.data import MOD_ATAC, MOD_RNA, PARTNER_KEY, augment_views
from celltx.nn import ScGPTConfig

from ._losses import alignment_loss, cell_text_loss, contrastive_loss

if TYPE_CHECKING:
    from ._scgpt import ScGPTModule

#: encoder passes: whole cells; cells with a known / unknown split under the generative
#: mask; control cells encoded under a perturbation
WHOLE, SPLIT, PERTURB = "whole", "split", "perturb"


@dataclass
class PartLoss:
    """What one part contributes: its unweighted loss, per-row values and logged metrics.

    Attributes
    ----------
    loss
        Scalar loss (before the task's weight).
    rows
        ``(R,)`` per-row loss (summed into the per-cell reconstruction loss that scvi-tools
        logs), or ``None``.
    metrics
        Values logged under their names (``None`` = not measured in this step).
    """

    loss: torch.Tensor
    rows: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor | None] = field(default_factory=dict)


class Part:
    """One objective: its weight, its settings and its loss.

    Subclasses set :attr:`name`, :attr:`pass_`, :attr:`heads`, :attr:`metrics` (and the other
    class attributes they need), keep their settings as instance attributes (defaults read
    from the model's config in :meth:`configure`) and implement :meth:`__call__`.

    Parameters
    ----------
    weight
        The part's weight in the objective (0: not part of it).

    Examples
    --------
    >>> from celltx.module import Part, PartLoss
    >>> class CellNorm(Part):
    ...     name = "cell_norm"
    ...     metrics = ("cell_norm_loss",)
    ...     def __call__(self, module, tensors, inference, predictions):
    ...         loss = inference["cell_emb"].float().pow(2).mean()
    ...         return PartLoss(loss, None, {"cell_norm_loss": loss.detach()})
    >>> CellNorm(weight=0.1).weight
    0.1
    """

    #: the key of the part in a task's weights
    name: ClassVar[str]
    #: the encoder pass it needs (:data:`WHOLE` works on any pass)
    pass_: ClassVar[str] = WHOLE
    #: views of each cell the split pass encodes (2: every cell twice, each with its own
    #: known / unknown split; rows ``0..B-1`` and ``B..2B-1``)
    views: ClassVar[int] = 1
    #: the head predictions it reads
    heads: ClassVar[tuple[str, ...]] = ()
    #: the metrics it logs (NaN in steps where the part is not active)
    metrics: ClassVar[tuple[str, ...]] = ()
    #: what the model provides before training with the part (e.g. ``"label_texts"``)
    needs: ClassVar[tuple[str, ...]] = ()
    #: what the model computes after training with the part (e.g. ``"cell_offset"``)
    after: ClassVar[tuple[str, ...]] = ()
    #: the module's flag buffer that marks the part's head trained (``None``: no head)
    trained_flag: ClassVar[str | None] = None
    #: a part whose weight brings this one in at weight 1 when the module can compute it
    #: (multiome generation aligns the modalities)
    joins: ClassVar[str | None] = None
    #: whether it can train from a datamodule (reads no registry field but the counts)
    from_datamodule: ClassVar[bool] = False
    #: whether a divide-and-conquer plan computes its loss over the whole batch
    #: (:class:`~celltx.train.ContrastivePlan`); such a part splits its loss into
    #: :meth:`embed` (a chunk's embeddings) and :meth:`batch_loss` (over the whole batch)
    chunked: ClassVar[bool] = False

    def __init__(self, weight: float = 0.0):
        self.weight = float(weight)

    def configure(self, config: ScGPTConfig) -> None:
        """Set the part's settings to their defaults in ``config`` (a :class:`~celltx.nn.ScGPTConfig`)."""

    def configured(self, config: ScGPTConfig, weight: float = 0.0) -> Part:
        """A copy with ``weight`` and the settings of ``config``."""
        part = copy.copy(self)
        part.weight = float(weight)
        part.configure(config)
        return part

    def available(self, module: ScGPTModule) -> str | None:
        """``None`` when ``module`` can compute this part, else why not (with the fix)."""
        return None

    def augment(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Counts of the :attr:`views` of each cell of ``x``, augmented; ``None``: no augmentation.

        Called in training before the cells are tokenized; returns ``views`` stacked copies
        of the batch (rows ``0..B-1`` the first view), each augmented on its own.
        """
        return None

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        """The part's loss for one minibatch."""
        raise NotImplementedError

    def embed(
        self, module: ScGPTModule, tensors: dict[str, torch.Tensor], inference: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """A :attr:`chunked` part's embeddings of the cells of ``tensors``, by name.

        ``inference``: the module's encoder pass of those cells. Every value has one row per
        cell, in the order of ``tensors``: floating-point values are embeddings (a
        divide-and-conquer step backpropagates into them), others (boolean masks, codes)
        carry no gradient. Any random draws must come from the global random state, which
        the step records and restores to encode a chunk again. :meth:`batch_loss` of the
        rows of every chunk, concatenated, is the part's loss over the whole batch.
        """
        raise NotImplementedError(f"The {self.name!r} part is not chunked.")

    def batch_loss(
        self, embeddings: dict[str, torch.Tensor], partner: torch.Tensor | None = None
    ) -> PartLoss:
        """A :attr:`chunked` part's loss over a whole batch of :meth:`embed` rows.

        ``partner``: each row's positive partner, a row of the same batch (``-1``: none), when
        the batch carries :data:`~celltx.data.PARTNER_KEY`.
        """
        raise NotImplementedError(f"The {self.name!r} part is not chunked.")

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


def register_part(part: Part) -> Part:
    """Add a new objective part to :data:`PARTS` (its name must be new); returns it.

    A task then weights it by name (:class:`celltx.model.Task`) and
    ``train(loss_weights={name: w})`` reaches it like any built-in part.

    Examples
    --------
    >>> from celltx.module import PARTS, Part, register_part
    >>> class Silent(Part):
    ...     name = "silent_example"
    >>> register_part(Silent()) is PARTS["silent_example"]
    True
    >>> del PARTS["silent_example"]
    """
    if not isinstance(part, Part) or not isinstance(getattr(part, "name", None), str):
        raise ValueError(f"{part!r} is not a Part with a name.")
    if part.name in PARTS:
        raise ValueError(f"A part named {part.name!r} is already registered.")
    PARTS[part.name] = part
    return part


def needs_rna_and_atac(module: ScGPTModule, what: str) -> str | None:
    """``Part.available`` of a part that needs both modalities: why not, or ``None``."""
    if not module.multimodal:
        return (
            f"{what} needs RNA and ATAC: set up a MuData with "
            "ScGPT.setup_mudata(mdata, ...) and build the model again."
        )
    return None


def _unknown(inference: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float mask of the unknown real tokens and the rows that have any."""
    tokens = inference["tokens"]
    unknown = (~inference["known"] & ~tokens.padding_mask).float()
    return unknown, unknown.sum(1)


def _codes(module: ScGPTModule, tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The minibatch's registered ``key`` codes (``labels``, ``batch``), which a part needs."""
    codes = module._codes(tensors, key)
    if codes is None:
        raise ValueError(
            f"This loss needs the {key} codes, which the minibatch lacks: set up the AnnData "
            f"with {key}_key and build the model again."
        )
    return codes


def _masked_rows(
    pred: torch.Tensor, target: torch.Tensor, unknown: torch.Tensor, n_unk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row mean squared error over the unknown tokens, its mean over rows with any."""
    sq = (pred.float() - target) ** 2
    per_row = (sq * unknown).sum(1) / n_unk.clamp(min=1.0)
    has = (n_unk > 0).float()
    return sq, per_row * has, (per_row * has).sum() / has.sum().clamp(min=1.0)


class GenePrompt(Part):
    """Gene-prompt generation: MSE of the expression decoder on the unknown tokens' values.

    Averaged per cell then over cells (rows without unknown tokens are left out); logs the
    error per modality for multimodal sequences.
    """

    name = "gep"
    pass_ = SPLIT
    from_datamodule = True
    heads = ("expr",)
    metrics = ("gep_mse", "rna_mse", "atac_mse")

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        tokens = inference["tokens"]
        unknown, n_unk = _unknown(inference)
        sq, rows, loss = _masked_rows(predictions["expr"], tokens.values, unknown, n_unk)
        metrics: dict[str, torch.Tensor | None] = {"gep_mse": loss.detach()}
        if tokens.modality is not None:  # gene-prompt error per modality, over tokens
            for key, code in (("rna_mse", MOD_RNA), ("atac_mse", MOD_ATAC)):
                sel = unknown * (tokens.modality == code).float()
                metrics[key] = ((sq * sel).sum() / sel.sum()).detach() if sel.sum() > 0 else None
        return PartLoss(loss, rows, metrics)


class CellPrompt(Part):
    """Cell-prompt generation (scGPT's MVC).

    MSE of the values predicted from the ``<cls>`` embedding and each unknown token's gene
    embedding.
    """

    name = "mvc"
    pass_ = SPLIT
    from_datamodule = True
    heads = ("mvc",)
    metrics = ("mvc_mse",)

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        unknown, n_unk = _unknown(inference)
        _, rows, loss = _masked_rows(predictions["mvc"], inference["tokens"].values, unknown, n_unk)
        return PartLoss(loss, rows, {"mvc_mse": loss.detach()})


class Classification(Part):
    """Cross-entropy of the classifier on the ``<cls>`` embedding over labelled cells.

    Cells with code ``-1`` (unlabelled) are left out. Uses class weights and label smoothing.
    """

    name = "cls"
    heads = ("cls",)
    metrics = ("cls_loss", "cls_accuracy")
    trained_flag = "cls_trained"

    def configure(self, config: ScGPTConfig) -> None:
        self.label_smoothing = 0.0

    def available(self, module: ScGPTModule) -> str | None:
        if module.transformer.cls_decoder is None:
            return (
                "A classification loss needs labels: set up the AnnData with labels_key and "
                "build the model again."
            )
        return None

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        labels = _codes(module, tensors, REGISTRY_KEYS.LABELS_KEY)[inference["rows"]]
        logits = predictions["cls"].float()
        ce = F.cross_entropy(
            logits,
            labels.clamp(min=0),
            weight=module.class_weights,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        lab = (labels >= 0).float()
        w = module.class_weights[labels.clamp(min=0)] * lab
        loss = (ce * lab).sum() / w.sum().clamp(min=1e-8)
        correct = (logits.argmax(1) == labels).float() * lab
        metrics: dict[str, torch.Tensor | None] = {
            "cls_loss": loss.detach(),
            "cls_accuracy": correct.sum().detach() / lab.sum().clamp(min=1.0),
        }
        return PartLoss(loss, ce * lab, metrics)


class ElasticCellSimilarity(Part):
    """scGPT's elastic cell similarity ``mean(1 - (relu(cos) - threshold)^2)``.

    Computed over pairs of distinct cells of the minibatch; ``threshold``: the config's
    ``ecs_threshold``.
    """

    name = "ecs"
    metrics = ("ecs_loss",)
    from_datamodule = True

    def configure(self, config: ScGPTConfig) -> None:
        self.threshold = config.ecs_threshold

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        cell_emb = inference["cell_emb"]
        R = cell_emb.shape[0]
        if R < 2:
            return PartLoss(cell_emb.new_zeros((), dtype=torch.float32), None, {})
        unit = F.normalize(cell_emb.float(), dim=1)
        cos = F.relu(unit @ unit.T)
        off = ~torch.eye(R, dtype=torch.bool, device=cos.device)
        loss = (1 - (cos[off] - self.threshold) ** 2).mean()
        return PartLoss(loss, None, {"ecs_loss": loss.detach()})


class BatchAdversarial(Part):
    """Cross-entropy of the batch discriminator on the ``<cls>`` embedding (scGPT's DAB).

    Its gradient is reversed into the encoder.
    """

    name = "dab"
    heads = ("dab",)
    metrics = ("dab_loss",)

    def available(self, module: ScGPTModule) -> str | None:
        if module.transformer.grad_reverse_discriminator is None:
            return "A DAB loss needs a model built with dab=True (and a batch_key)."
        return None

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        batch = _codes(module, tensors, REGISTRY_KEYS.BATCH_KEY)[inference["rows"]]
        loss = F.cross_entropy(predictions["dab"].float(), batch)
        return PartLoss(loss, None, {"dab_loss": loss.detach()})


class ModalityAlignment(Part):
    """Contrastive alignment of a multimodal cell's ``<cls>`` embeddings.

    Aligns its joint, RNA-alone and ATAC-alone ``<cls>`` embeddings (see
    :func:`alignment_loss`).
    """

    name = "align"
    pass_ = SPLIT
    metrics = ("align_loss",)
    joins = "gep"

    def configure(self, config: ScGPTConfig) -> None:
        self.temperature = config.align_temperature

    def available(self, module: ScGPTModule) -> str | None:
        return needs_rna_and_atac(module, "An alignment loss")

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        cell_emb = inference["cell_emb"]
        view = inference.get("view")
        loss = (
            None
            if view is None
            else alignment_loss(cell_emb, inference["rows"], view, self.temperature)
        )
        if loss is None:  # fewer than 2 cells with both modalities in this step
            loss = cell_emb.new_zeros((), dtype=torch.float32)
        return PartLoss(loss, None, {"align_loss": loss.detach()})


class PerturbationResponse(Part):
    """MSE of the predicted expression of perturbed cells over every panel gene.

    The prediction is the control cell + the predicted change.
    """

    name = "pert"
    pass_ = PERTURB
    metrics = ("pert_mse",)
    needs = ("controls",)
    trained_flag = "pert_trained"

    def available(self, module: ScGPTModule) -> str | None:
        if module.pert_decoder is None:
            return (
                "A perturbation loss needs perturbation conditions: set up the AnnData with "
                "perturbation_key and build the model again."
            )
        return None

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        err = (inference["pert_pred"].float() - inference["pert_target"]) ** 2
        rows = err.mean(1)
        return PartLoss(rows.mean(), rows, {"pert_mse": rows.mean().detach()})


class Contrastive(Part):
    """Contrastive learning between two views of each cell (CellLM's cell–cell term).

    The split pass encodes every cell twice, each time with its own random known / unknown
    split (and dropout): two views of the same cell. Its options (in the model's config):
    augmentations of each view's counts before its tokens are chosen
    (``contrast_thinning``, ``contrast_gene_dropout``), and neighbour positives
    (``contrast_positives``: within-batch kNN or cross-batch MNN, CLAIRE / NNCLR; the
    training loader then puts a neighbour of each anchor in its batch and marks it under
    :data:`~celltx.data.PARTNER_KEY`), with a guard (``contrast_filter``). :func:`contrastive_loss` pulls a cell's
    two ``<cls>`` embeddings together and pushes the other cells' apart. In a
    divide-and-conquer step (:class:`celltx.train.ContrastivePlan`) it is computed over the
    whole contrastive batch instead, outside the module.
    """

    name = "contrast"
    pass_ = SPLIT
    views = 2
    metrics = ("contrast_loss",)
    after = ("cell_offset",)
    chunked = True

    def configure(self, config: ScGPTConfig) -> None:
        self.temperature = config.contrast_temperature
        self.filter = config.contrast_filter
        self.thinning = config.contrast_thinning
        self.gene_dropout = config.contrast_gene_dropout

    def available(self, module: ScGPTModule) -> str | None:
        if module.multimodal:
            return "The contrastive loss is for RNA-only models (multiome models align views)."
        return None

    def augment(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        if self.thinning <= 0 and self.gene_dropout <= 0:
            return None
        x = x.to_dense() if x.is_sparse else x
        return augment_views(x.repeat(self.views, 1), self.thinning, self.gene_dropout, generator)

    def pair_loss(
        self, z1: torch.Tensor, z2: torch.Tensor, partner: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:func:`contrastive_loss` of the two views with this part's settings."""
        return contrastive_loss(z1, z2, self.temperature, partner, self.filter)

    def embed(
        self, module: ScGPTModule, tensors: dict[str, torch.Tensor], inference: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The two views' ``<cls>`` of each cell: ``z1`` (rows ``0..B-1``), ``z2`` (``B..2B-1``)."""
        cell_emb = inference["cell_emb"].float()
        half = cell_emb.shape[0] // 2
        return {"z1": cell_emb[:half], "z2": cell_emb[half:]}

    def batch_loss(
        self, embeddings: dict[str, torch.Tensor], partner: torch.Tensor | None = None
    ) -> PartLoss:
        """:meth:`pair_loss` of the two views."""
        loss = self.pair_loss(embeddings["z1"], embeddings["z2"], partner)
        return PartLoss(loss, None, {"contrast_loss": loss.detach()})

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        return self.batch_loss(self.embed(module, tensors, inference), tensors.get(PARTNER_KEY))


class CellText(Part):
    """Cell–text contrastive alignment (LangCell's cell–text term).

    Each labelled cell's ``<cls>`` embedding and the text embedding of its label (a frozen
    sentence encoder's, :attr:`~celltx.module.ScGPTModule.label_text`) are projected into one
    space by :class:`~celltx.nn.CellTextHead`; :func:`cell_text_loss` is a symmetric InfoNCE
    with a learnable temperature. Cells with code ``-1`` (unlabelled) are left out.
    """

    name = "text"
    metrics = ("text_loss", "text_accuracy")
    needs = ("label_texts",)
    trained_flag = "text_trained"

    def available(self, module: ScGPTModule) -> str | None:
        if module.text_head is None or not len(module.label_text):
            return (
                "A cell–text loss needs labels and their texts: set up the AnnData with "
                "labels_key and call model.train(task='cell_text')."
            )
        return None

    def __call__(
        self,
        module: ScGPTModule,
        tensors: dict[str, torch.Tensor],
        inference: dict[str, Any],
        predictions: dict[str, torch.Tensor],
    ) -> PartLoss:
        labels = _codes(module, tensors, REGISTRY_KEYS.LABELS_KEY)[inference["rows"]]
        lab = labels >= 0
        if module.text_head is None:
            raise ValueError("A cell–text loss needs the text head: train with task='cell_text'.")
        logits = module.text_head.logits(inference["cell_emb"][lab], module.label_text)
        loss = cell_text_loss(logits, labels[lab], weight=module.class_weights)
        acc = (logits.argmax(1) == labels[lab]).float().mean() if lab.any() else None
        return PartLoss(
            loss,
            None,
            {"text_loss": loss.detach(), "text_accuracy": None if acc is None else acc.detach()},
        )


def _default(part: Part) -> Part:
    part.configure(ScGPTConfig())
    return part


#: every part, by name, in the order losses are summed (settings: the default config's);
#: a module holds configured copies (:attr:`~celltx.module.ScGPTModule.parts`)
PARTS: dict[str, Part] = {
    p.name: _default(p)
    for p in (
        PerturbationResponse(),
        GenePrompt(),
        CellPrompt(),
        Classification(),
        ElasticCellSimilarity(),
        BatchAdversarial(),
        ModalityAlignment(),
        Contrastive(),
        CellText(),
    )
}


def encoder_pass(weights: dict[str, float]) -> str:
    """The encoder pass the active parts of ``weights`` need.

    Precedence: :data:`PERTURB` over :data:`SPLIT` over :data:`WHOLE`.
    """
    passes = {PARTS[name].pass_ for name, w in weights.items() if w > 0}
    for p in (PERTURB, SPLIT):
        if p in passes:
            return p
    return WHOLE
