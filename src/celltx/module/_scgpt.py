"""scvi-tools module wiring tokenizer + scGPT transformer + generative objective."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from celltx.data import TokenizedBatch, Tokenizer
from celltx.nn import PERT_PAD, ExprDecoder, ScGPTTransformer

#: scvi-tools registry key of the perturbation condition codes
PERTURBATION_KEY = "perturbation"


class ScGPTModule(BaseModuleClass):
    """Tensor-level scGPT: tokenizes expression rows on their device, encodes them and
    computes the attention-masked generative loss.

    ``inference`` = tokenization + known/unknown split + encoder; ``generative`` = the
    expression (gene-prompt) and MVC (cell-prompt) decoders; ``loss`` = masked MSE on the
    unknown genes' values.

    Parameters
    ----------
    n_tokens, pad_id, cls_id
        Vocabulary size and special-token ids.
    gene_ids
        Vocabulary id of each column of the data the module sees (``-1``: not in the
        vocabulary). Swap it for other data with :meth:`gene_panel`.
    d_model, n_heads, d_hid, n_layers, dropout, attn_dropout, input_emb_style, norm_first, activation
        Transformer shape (see :class:`celltx.nn.ScGPTTransformer`).
    max_seq_len, n_bins, pad_value, zero_fraction, seed
        Tokenizer settings (see :class:`celltx.data.Tokenizer`).
    mask_ratio
        Fractions of a cell's genes held out as *unknown*; one is drawn per cell.
    gep_weight, mvc_weight
        Weights of the gene-prompt and cell-prompt (MVC) losses.
    n_labels, n_layers_cls
        Classes of the classifier head on the ``<cls>`` embedding (``None``: no head) and
        its depth.
    n_batch, dsbn, dab, batch_token
        Number of batches and the batch-aware parts (domain-specific batch norm,
        adversarial batch discriminator, batch embedding for the decoders).
    perturbation
        Build the perturbation parts: scGPT's per-token perturbation flag embedding and a
        response head (``pert_decoder``) that predicts each panel gene's expression after
        the perturbation as the control cell's value plus a predicted change, from the
        gene's output token and the summed output tokens of the perturbed genes.

    Notes
    -----
    The objective is a weighted sum, set with :meth:`set_objective`: gene-prompt MSE
    (``gep``), cell-prompt MSE (``mvc``), cross-entropy of the classifier (``cls``),
    elastic cell similarity (``ecs``), the discriminator's cross-entropy behind
    gradient reversal (``dab``) and the perturbation response MSE (``pert``). With ``gep`` and ``mvc`` at 0 the cells are encoded
    whole (no known / unknown split), as for classification fine-tuning.
    """

    def __init__(
        self,
        n_tokens: int,
        pad_id: int,
        cls_id: int,
        gene_ids: Sequence[int] | torch.Tensor,
        *,
        d_model: int = 256,
        n_heads: int = 8,
        d_hid: int | None = None,
        n_layers: int = 4,
        dropout: float = 0.2,
        attn_dropout: float = 0.0,
        input_emb_style: str = "continuous",
        norm_first: bool = False,
        activation: str = "relu",
        max_seq_len: int = 1200,
        n_bins: int | None = 51,
        pad_value: float = -2.0,
        zero_fraction: float = 0.0,
        seed: int = 0,
        mask_ratio: Sequence[float] = (0.25, 0.5, 0.75),
        gep_weight: float = 1.0,
        mvc_weight: float = 1.0,
        n_labels: int | None = None,
        n_layers_cls: int = 3,
        n_batch: int = 0,
        dsbn: bool = False,
        dab: bool = False,
        batch_token: bool = False,
        perturbation: bool = False,
    ):
        super().__init__()
        if not mask_ratio or not all(0.0 < r < 1.0 for r in mask_ratio):
            raise ValueError(f"mask_ratio={mask_ratio} must be fractions strictly in (0, 1).")
        self.transformer = ScGPTTransformer(
            n_tokens,
            d_model=d_model,
            n_heads=n_heads,
            d_hid=d_model if d_hid is None else d_hid,
            n_layers=n_layers,
            dropout=dropout,
            attn_dropout=attn_dropout,
            pad_id=pad_id,
            input_emb_style=input_emb_style,
            n_bins=n_bins,
            norm_first=norm_first,
            activation=activation,
            do_mvc=True,
            n_cls=n_labels,
            n_layers_cls=n_layers_cls,
            n_batches=n_batch or None,
            dsbn=dsbn,
            dab=dab,
            batch_token=batch_token,
            perturbation=perturbation,
        )
        self.pert_decoder = None
        if perturbation:
            # input: the gene's output token, the perturbation summary (+ the batch embedding)
            self.pert_decoder = ExprDecoder(d_model, (3 if batch_token else 2) * d_model)
            # the response starts at "no change": the prediction is the control cell itself
            torch.nn.init.zeros_(self.pert_decoder.fc[-1].weight)
            torch.nn.init.zeros_(self.pert_decoder.fc[-1].bias)
        if n_bins is not None:  # start the gene prompt at the middle bin: faster early training
            torch.nn.init.constant_(self.transformer.decoder.fc[-1].bias, (n_bins - 1) / 2)
        self.tokenizer = Tokenizer(
            max_seq_len=max_seq_len,
            pad_id=pad_id,
            cls_id=cls_id,
            n_bins=n_bins,
            pad_value=pad_value,
            zero_fraction=zero_fraction,
            seed=seed,
        )
        self.register_buffer("mask_ratio", torch.tensor(list(mask_ratio)), persistent=False)
        self.register_buffer(
            "panel_gene_ids", torch.as_tensor(gene_ids, dtype=torch.long), persistent=False
        )
        self.register_buffer("class_weights", torch.ones(max(n_labels or 1, 1)), persistent=False)
        self.n_labels = n_labels or 0
        # perturbation: genes of each registered condition, and the control cells to pair with
        self.register_buffer("condition_genes", torch.full((1, 2), -1, dtype=torch.long), persistent=False)
        self.register_buffer("ctrl_x", torch.zeros(0, 0), persistent=False)
        self.register_buffer("ctrl_start", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("ctrl_count", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("ctrl_mean", torch.zeros(0), persistent=False)
        self.pair_by_labels = False
        self.set_objective(gep=gep_weight, mvc=mvc_weight)

    # --- objective ----------------------------------------------------------------------
    def set_objective(
        self,
        gep: float = 1.0,
        mvc: float = 1.0,
        cls: float = 0.0,
        ecs: float = 0.0,
        dab: float = 0.0,
        pert: float = 0.0,
        ecs_threshold: float = 0.8,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        """Set the loss weights (see the class docstring); raises when a weighted part has
        no head (``cls`` without ``n_labels``, ``dab`` without ``dab=True``)."""
        weights = {"gep": gep, "mvc": mvc, "cls": cls, "ecs": ecs, "dab": dab, "pert": pert}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad or sum(weights.values()) <= 0:
            raise ValueError(f"Loss weights must be >= 0 with at least one > 0, got {weights}.")
        if cls > 0 and self.transformer.cls_decoder is None:
            raise ValueError(
                "A classification loss needs labels: set up the AnnData with labels_key and "
                "build the model again."
            )
        if dab > 0 and self.transformer.grad_reverse_discriminator is None:
            raise ValueError("A DAB loss needs a model built with dab=True (and a batch_key).")
        if pert > 0 and self.pert_decoder is None:
            raise ValueError(
                "A perturbation loss needs perturbation conditions: set up the AnnData with "
                "perturbation_key and build the model again."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
        self.gep_weight, self.mvc_weight, self.cls_weight = gep, mvc, cls
        self.ecs_weight, self.dab_weight, self.pert_weight = ecs, dab, pert
        self.ecs_threshold = ecs_threshold
        self.label_smoothing = label_smoothing
        if class_weights is None:
            self.class_weights.fill_(1.0)
        else:
            self.class_weights.copy_(torch.as_tensor(class_weights, dtype=torch.float32))

    @property
    def generative_split(self) -> bool:
        """Whether the objective holds genes out (gene- or cell-prompt generation)."""
        return self.gep_weight > 0 or self.mvc_weight > 0

    # --- data panel -------------------------------------------------------------------
    @contextmanager
    def gene_panel(self, gene_ids: torch.Tensor):
        """Temporarily use another column -> vocabulary-id mapping (other data)."""
        old = self.panel_gene_ids
        self.panel_gene_ids = torch.as_tensor(gene_ids, dtype=torch.long, device=old.device)
        try:
            yield self
        finally:
            self.panel_gene_ids = old

    def tokenize(
        self, x: torch.Tensor, sample: str | None = None, max_seq_len: int | None = None
    ) -> TokenizedBatch:
        """Tokenize ``x`` ``(B, G)``; random genes while training, reproducible otherwise."""
        if sample is None:
            sample = "random" if self.training else "hash"
        return self.tokenizer(x, self.panel_gene_ids, sample=sample, max_seq_len=max_seq_len)

    # --- the generative split --------------------------------------------------------
    def split_known(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the known / unknown split: ``(B, L)`` bool, True at ``<cls>`` and known genes.

        Per cell a ratio is drawn from ``mask_ratio`` and ``round(ratio × n_genes)``
        of its gene tokens become unknown (at random).
        """
        pad = tokens.padding_mask
        B, L = pad.shape
        genes = ~pad
        genes[:, 0] = False  # <cls>
        n_genes = genes.sum(1)
        pick = torch.randint(
            len(self.mask_ratio), (B,), device=pad.device, generator=generator
        )
        n_unknown = torch.round(self.mask_ratio[pick] * n_genes).long()
        score = torch.rand(B, L, device=pad.device, generator=generator)
        score = torch.where(genes, score, 2.0)  # non-genes rank last
        rank = score.argsort(1).argsort(1)
        unknown = (rank < n_unknown[:, None]) & genes
        return ~unknown & ~pad

    # --- scvi-tools module interface -------------------------------------------------
    @staticmethod
    def _codes(tensors, key: str) -> torch.Tensor | None:
        t = tensors.get(key)
        return None if t is None else t.reshape(-1).long()

    def _get_inference_input(self, tensors, **kwargs):
        inputs = {"x": tensors[REGISTRY_KEYS.X_KEY], "batch": self._codes(tensors, REGISTRY_KEYS.BATCH_KEY)}
        if self.pert_weight > 0:
            inputs["condition"] = self._codes(tensors, PERTURBATION_KEY)
            inputs["labels"] = self._codes(tensors, REGISTRY_KEYS.LABELS_KEY)
        return inputs

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {
            "h": inference_outputs["h"],
            "gene_emb": inference_outputs["gene_emb"],
            "batch": self._codes(tensors, REGISTRY_KEYS.BATCH_KEY),
        }

    def _batch(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        t = self.transformer
        if t.dsbn is None and t.batch_encoder is None:
            return None
        return batch

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        generative: bool | None = None,
        generator: torch.Generator | None = None,
        sample: str | None = None,
        max_seq_len: int | None = None,
        condition: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict:
        """Tokenize and encode. With ``generative`` (default: when the objective generates
        held-out values), split known / unknown genes and use the generative attention
        mask; otherwise encode every token.

        With the perturbation objective and ``condition`` codes, ``x`` holds perturbed
        cells: each is paired with a control cell (:meth:`sample_controls`), which is
        encoded with its condition's perturbation flags (:meth:`perturb`)."""
        if condition is not None and self.pert_weight > 0:
            codes = batch if batch is not None else torch.zeros_like(condition)
            ctrl = self.sample_controls(self.pair_groups(codes, labels), generator)
            pert_ids = self.condition_genes[condition.clamp(min=0)]
            out = self.perturb(
                ctrl, pert_ids, self._batch(batch), ties="random" if self.training else "hash", base=self.ctrl_mean
            )
            out["pert_target"] = x.float()[:, out["columns"]]
            return out
        if generative is None:
            generative = self.generative_split
        tokens = self.tokenize(x, sample=sample, max_seq_len=max_seq_len)
        known = self.split_known(tokens, generator) if generative else None
        h, gene_emb = self.transformer._encode(
            tokens.gene_ids, tokens.values, tokens.padding_mask, known, self._batch(batch)
        )
        return {"tokens": tokens, "known": known, "h": h, "gene_emb": gene_emb, "cell_emb": h[:, 0]}

    @auto_move_data
    def generative(
        self, h: torch.Tensor, gene_emb: torch.Tensor, batch: torch.Tensor | None = None
    ) -> dict:
        """Predictions the objective needs: gene-prompt (``expr``) and cell-prompt
        (``mvc``) values per token, class logits (``cls``), batch logits (``dab``)."""
        t = self.transformer
        out = self.transformer.decode(h, gene_emb, self._batch(batch)) if self.generative_split and self.pert_weight == 0 else {}
        if t.cls_decoder is not None and self.cls_weight > 0:
            out["cls"] = t.cls_decoder(h[:, 0])
        if t.grad_reverse_discriminator is not None and self.dab_weight > 0:
            out["dab"] = t.grad_reverse_discriminator(h[:, 0])
        return out

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Weighted sum of the objective's parts (see the class docstring).

        Generation: MSE on the unknown genes' values, averaged per cell, then over cells.
        Classification: cross-entropy over labelled cells (code ``-1`` = unlabelled is
        ignored), with class weights and label smoothing. ECS: scGPT's elastic cell
        similarity ``mean(1 - (relu(cos) - threshold)^2)`` over pairs of distinct cells.
        DAB: cross-entropy of the batch discriminator (its gradient reversed into the
        encoder).
        """
        cell_emb = inference_outputs["cell_emb"]
        B = cell_emb.shape[0]
        zero = cell_emb.new_zeros(())
        per_cell = cell_emb.new_zeros(B, dtype=torch.float32)
        metrics, loss = {}, zero.float()
        if "pert_pred" in inference_outputs:
            err = (inference_outputs["pert_pred"].float() - inference_outputs["pert_target"]) ** 2
            pert = err.mean(1)
            per_cell = per_cell + self.pert_weight * pert
            loss = loss + self.pert_weight * pert.mean()
            metrics["pert_mse"] = pert.mean().detach()
        if self.generative_split and "known" in inference_outputs and inference_outputs["known"] is not None:
            tokens: TokenizedBatch = inference_outputs["tokens"]
            unknown = (~inference_outputs["known"] & ~tokens.padding_mask).float()
            target = tokens.values
            n_unk = unknown.sum(1)
            denom = n_unk.clamp(min=1.0)
            gep = (((generative_outputs["expr"].float() - target) ** 2) * unknown).sum(1) / denom
            mvc = (((generative_outputs["mvc"].float() - target) ** 2) * unknown).sum(1) / denom
            gen = self.gep_weight * gep + self.mvc_weight * mvc
            has = (n_unk > 0).float()
            n_cells = has.sum().clamp(min=1.0)
            per_cell = per_cell + gen * has
            loss = loss + (gen * has).sum() / n_cells
            metrics["gep_mse"] = (gep * has).sum().detach() / n_cells
            metrics["mvc_mse"] = (mvc * has).sum().detach() / n_cells
        if "cls" in generative_outputs:
            labels = self._codes(tensors, REGISTRY_KEYS.LABELS_KEY)
            logits = generative_outputs["cls"].float()
            ce = F.cross_entropy(
                logits,
                labels.clamp(min=0),
                weight=self.class_weights,
                label_smoothing=self.label_smoothing,
                reduction="none",
            )
            lab = (labels >= 0).float()
            w = self.class_weights[labels.clamp(min=0)] * lab
            cls_loss = (ce * lab).sum() / w.sum().clamp(min=1e-8)
            loss = loss + self.cls_weight * cls_loss
            per_cell = per_cell + self.cls_weight * ce * lab
            metrics["cls_loss"] = cls_loss.detach()
            correct = (logits.argmax(1) == labels).float() * lab
            metrics["cls_accuracy"] = correct.sum().detach() / lab.sum().clamp(min=1.0)
        if self.ecs_weight > 0 and B > 1:
            unit = F.normalize(cell_emb.float(), dim=1)
            cos = F.relu(unit @ unit.T)
            off = ~torch.eye(B, dtype=torch.bool, device=cos.device)
            ecs = (1 - (cos[off] - self.ecs_threshold) ** 2).mean()
            loss = loss + self.ecs_weight * ecs
            metrics["ecs_loss"] = ecs.detach()
        if "dab" in generative_outputs:
            batch = self._codes(tensors, REGISTRY_KEYS.BATCH_KEY)
            dab = F.cross_entropy(generative_outputs["dab"].float(), batch)
            loss = loss + self.dab_weight * dab
            metrics["dab_loss"] = dab.detach()
        # every part is logged in every task (NaN when inactive), so that model.history keeps
        # all columns across successive train() calls with different tasks
        nan = torch.full((), float("nan"), device=cell_emb.device)
        for key in ("gep_mse", "mvc_mse", "cls_loss", "cls_accuracy", "ecs_loss", "dab_loss", "pert_mse"):
            metrics.setdefault(key, nan)
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            kl_local=torch.zeros_like(per_cell),
            extra_metrics=metrics,
        )

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        raise NotImplementedError("ScGPTModule is not a generative count model; use generative().")

    # --- helpers used by the model class ---------------------------------------------
    @torch.inference_mode()
    def cell_embedding(
        self, x: torch.Tensor, max_seq_len: int | None = None, batch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``<cls>`` output ``(B, D)`` (all tokens known) and the number of gene tokens."""
        out = self.inference(x, batch, generative=False, sample="hash", max_seq_len=max_seq_len)
        n_genes = (~out["tokens"].padding_mask).sum(1) - 1
        return out["cell_emb"].float(), n_genes

    @torch.inference_mode()
    def classify(
        self, x: torch.Tensor, batch: torch.Tensor | None = None, max_seq_len: int | None = None
    ) -> torch.Tensor:
        """Class probabilities ``(B, n_labels)`` from the ``<cls>`` embedding."""
        if self.transformer.cls_decoder is None:
            raise ValueError("This model has no classifier head (set up labels_key, then build it).")
        emb, _ = self.cell_embedding(x, max_seq_len=max_seq_len, batch=batch)
        return torch.softmax(self.transformer.cls_decoder(emb).float(), dim=1)

    @torch.inference_mode()
    def heldout_predictions(
        self, x: torch.Tensor, generator: torch.Generator, batch: torch.Tensor | None = None
    ) -> dict:
        """Predictions for a reproducible known/unknown split (evaluation).

        Returns flat tensors over the unknown tokens: ``gene_ids``, ``target``, ``expr``
        (gene prompt), ``mvc`` (cell prompt).
        """
        inf = self.inference(x, batch, generative=True, generator=generator, sample="hash")
        gen = self.transformer.decode(inf["h"], inf["gene_emb"], self._batch(batch))
        tokens = inf["tokens"]
        unknown = ~inf["known"] & ~tokens.padding_mask
        return {
            "gene_ids": tokens.gene_ids[unknown],
            "target": tokens.values[unknown],
            "expr": gen["expr"][unknown].float(),
            "mvc": gen["mvc"][unknown].float(),
        }

    @torch.inference_mode()
    def token_value_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-vocabulary-token sum and count of the input values of gene tokens (for the
        per-gene mean-bin baseline)."""
        tokens = self.tokenize(x, sample="hash")
        genes = ~tokens.padding_mask
        genes[:, 0] = False
        n = self.transformer.encoder.embedding.num_embeddings
        ids = tokens.gene_ids[genes]
        sums = torch.zeros(n, device=x.device, dtype=torch.float64)
        counts = torch.zeros(n, device=x.device, dtype=torch.float64)
        sums.index_add_(0, ids, tokens.values[genes].double())
        counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        return sums, counts

    # --- perturbation -----------------------------------------------------------------
    def set_conditions(self, condition_genes: torch.Tensor) -> None:
        """Vocabulary ids ``(n_conditions, max_genes)`` of the perturbed genes of each
        registered condition (``-1``: none)."""
        self.condition_genes = torch.as_tensor(
            condition_genes, dtype=torch.long, device=self.condition_genes.device
        ).reshape(len(condition_genes), -1)

    def pair_groups(self, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Pairing group of each cell: its batch code and, with ``pair_by_labels``, its
        label code (unlabelled cells form a group of their own)."""
        group = batch.reshape(-1).long()
        if self.pair_by_labels and labels is not None:
            group = group * (self.n_labels + 1) + labels.reshape(-1).long() + 1
        return group

    def n_pair_groups(self, n_batch: int) -> int:
        """Number of pairing groups for ``n_batch`` batches."""
        return max(n_batch, 1) * (self.n_labels + 1 if self.pair_by_labels else 1)

    def set_controls(self, x: torch.Tensor, groups: torch.Tensor, n_groups: int) -> None:
        """Store the control cells ``x`` ``(N, G)`` with their pairing groups ``(N,)``."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        order = torch.argsort(groups, stable=True)
        counts = torch.bincount(groups, minlength=n_groups)
        dev = self.ctrl_x.device
        self.ctrl_x = torch.as_tensor(x, dtype=torch.float32)[order].to(dev)
        self.ctrl_mean = self.ctrl_x.mean(0)
        self.ctrl_count = counts.to(dev)
        self.ctrl_start = (torch.cumsum(counts, 0) - counts).to(dev)

    def sample_controls(
        self, groups: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random control cell of the same pairing group for each entry of ``groups``
        (any control cell where the group has none)."""
        n = self.ctrl_x.shape[0]
        if n == 0:
            raise ValueError("No control cells are stored: train(task='perturbation') stores them.")
        groups = groups.to(self.ctrl_count.device).reshape(-1)
        inside = groups < len(self.ctrl_count)
        g = groups.clamp(max=len(self.ctrl_count) - 1)
        count = torch.where(inside, self.ctrl_count[g], 0)
        start = torch.where(count > 0, self.ctrl_start[g], 0)
        count = torch.where(count > 0, count, n)
        u = torch.rand(groups.shape, device=groups.device, generator=generator)
        idx = start + (u * count).long().clamp(max=count - 1)
        return self.ctrl_x[idx]

    def perturb_tokens(
        self, x_ctrl: torch.Tensor, pert_ids: torch.Tensor, ties: str = "hash"
    ) -> tuple[TokenizedBatch, torch.Tensor, torch.Tensor]:
        """Tokens of control cells under perturbation.

        Every gene of the panel that is in the vocabulary becomes a token, expressed or
        not (no sampling, so no perturbed gene is ever dropped), in column order; a
        perturbed gene outside the panel is appended as an extra token (gene embedding,
        perturbed flag, no value).

        Returns the tokens, the flags ``(B, L)`` (0 / 1 / ``PERT_PAD``) and the panel
        columns that the tokens after ``<cls>`` stand for.
        """
        tok = self.tokenizer
        cols = torch.nonzero(self.panel_gene_ids >= 0).squeeze(1)
        ids = self.panel_gene_ids[cols]
        x = x_ctrl[:, cols].float()
        B = x.shape[0]
        vals = x if tok.n_bins is None else tok.bin(x, ids, ties=ties).float()
        pert_ids = pert_ids.to(x.device)
        valid = pert_ids >= 0
        in_panel = torch.zeros(self.transformer.encoder.embedding.num_embeddings, dtype=torch.bool, device=x.device)
        in_panel[ids] = True
        extra = valid & ~in_panel[pert_ids.clamp(min=0)]
        flags = ((ids[None, :, None] == pert_ids[:, None, :]) & valid[:, None, :]).any(-1).long()
        cls_col = torch.full((B, 1), tok.cls_id, dtype=torch.long, device=x.device)
        pad_col = torch.full((B, 1), tok.pad_value, device=x.device)
        gene_ids = torch.cat([cls_col, ids.expand(B, -1), torch.where(extra, pert_ids, tok.pad_id)], 1)
        values = torch.cat([pad_col, vals, torch.full(pert_ids.shape, tok.pad_value, device=x.device)], 1)
        padding = torch.cat([torch.zeros(B, 1 + len(ids), dtype=torch.bool, device=x.device), ~extra], 1)
        flags = torch.cat([torch.zeros_like(cls_col), flags, torch.where(extra, 1, PERT_PAD)], 1)
        return TokenizedBatch(gene_ids, values, padding), flags, cols

    def perturb(
        self,
        x_ctrl: torch.Tensor,
        pert_ids: torch.Tensor,
        batch: torch.Tensor | None = None,
        ties: str = "hash",
        base: torch.Tensor | None = None,
    ) -> dict:
        """Predicted expression of control cells ``x_ctrl`` ``(B, G)`` after perturbing
        the genes ``pert_ids`` ``(B, P)`` (vocabulary ids, ``-1`` = none).

        The prediction is ``base`` (``(G,)`` over all columns, e.g. the control mean;
        default: each control cell's own values) plus the response head's change.
        Returns ``pert_pred`` ``(B, G')`` over the panel columns ``columns`` (genes in the
        vocabulary), ``cell_emb`` and the tokens.
        """
        if self.pert_decoder is None:
            raise ValueError("This model has no perturbation parts (set up perturbation_key, then build it).")
        tokens, flags, cols = self.perturb_tokens(x_ctrl, pert_ids, ties=ties)
        h, gene_emb = self.transformer._encode(
            tokens.gene_ids, tokens.values, tokens.padding_mask, None, batch, flags
        )
        hh = h[:, 1 : 1 + len(cols)]
        # the perturbation summary: the sum of the perturbed tokens' outputs (0 for control),
        # given to every gene's response so that it need not be found by attention alone;
        summary = (h * (flags == 1).unsqueeze(-1).to(h.dtype)).sum(1)
        # gene × perturbation interaction as an elementwise product (a concatenation alone
        # leaves it to the MLP's nonlinearity, which learns it far more slowly)
        parts = [hh, hh * summary[:, None, :]]
        if self.transformer.batch_encoder is not None:
            b = self.transformer.batch_encoder(batch)
            parts.append(b[:, None, :].expand(-1, hh.shape[1], -1))
        hh = torch.cat(parts, -1)
        start = x_ctrl[:, cols].float() if base is None else base[cols].float().expand(len(x_ctrl), -1)
        pred = start + self.pert_decoder(hh).float()
        return {"pert_pred": pred, "columns": cols, "cell_emb": h[:, 0], "h": h, "gene_emb": gene_emb,
                "tokens": tokens, "known": None}
