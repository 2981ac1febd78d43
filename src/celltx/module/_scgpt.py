"""scvi-tools module wiring tokenizer + scGPT transformer + generative objective."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from celltx.data import (
    MOD_ATAC,
    MOD_CLS,
    MOD_RNA,
    TokenizedBatch,
    Tokenizer,
    append_queries,
    join_modalities,
    perturbation_tokens,
)
from celltx.nn import ExprDecoder, ScGPTConfig, ScGPTTransformer

from ._constants import ATAC_KEY, PERTURBATION_KEY
from ._objectives import PARTS, PERTURB, SPLIT, encoder_pass

#: view codes of multimodal training rows: the cell itself, its RNA alone, its ATAC alone
VIEW_JOINT, VIEW_RNA, VIEW_ATAC = 0, 1, 2


class ScGPTModule(BaseModuleClass):
    """Tensor-level scGPT.

    Tokenizes expression rows on their device, encodes them and computes the attention-masked
    generative loss.

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
    modalities
        What a cell is made of: ``("rna",)`` (default), ``("rna", "atac")`` (multiome:
        genes and peaks in one sequence, with a modality embedding) or ``("atac",)``.
    atac_ids
        Vocabulary id of each ATAC column (peaks); swap with :meth:`gene_panel`.
    max_peaks
        ATAC token budget per cell (the RNA budget is ``max_seq_len - 1``).
    atac_zero_fraction
        Fraction of the ATAC budget given to closed peaks (value 0), so that generation
        learns which peaks are open, not only which bin an open peak has.
    atac_values
        ``"binary"``: an open peak has the top value bin (``n_bins - 1``), a closed one 0
        (the scale of RNA's bins, so one value encoder and decoder serve both);
        ``"binned"``: per-cell quantile bins of the peak counts, as RNA.

    Notes
    -----
    The objective is a weighted sum, set with :meth:`set_objective`: gene-prompt MSE
    (``gep``), cell-prompt MSE (``mvc``), cross-entropy of the classifier (``cls``),
    elastic cell similarity (``ecs``), the discriminator's cross-entropy behind
    gradient reversal (``dab``), the perturbation response MSE (``pert``) and the
    cross-modal alignment (``align``). With ``gep`` and ``mvc`` at 0 the cells are encoded
    whole (no known / unknown split), as for classification fine-tuning.

    Multimodal generative training (:meth:`generative_views`): a cell measured in both
    modalities is used three times in a step: itself with random held-out tokens of both
    modalities, its RNA alone with every ATAC token to generate, and its ATAC alone with
    every RNA token to generate (cross-modal generation). ``align`` is a contrastive
    (InfoNCE) loss that pulls the three ``<cls>`` embeddings of a cell together and apart
    from other cells', so that cells measured in one modality land next to their
    counterparts.
    """

    def __init__(
        self,
        n_tokens: int,
        pad_id: int,
        cls_id: int,
        gene_ids: Sequence[int] | torch.Tensor,
        *,
        config: ScGPTConfig | None = None,
        n_labels: int | None = None,
        n_batch: int = 0,
        perturbation: bool = False,
        modalities: Sequence[str] = ("rna",),
        atac_ids: Sequence[int] | torch.Tensor | None = None,
        **settings,
    ):
        super().__init__()
        config = ScGPTConfig.from_dict(settings) if config is None else replace(config, **settings)
        modalities = tuple(modalities)
        if (
            not modalities
            or set(modalities) - {"rna", "atac"}
            or len(set(modalities)) < len(modalities)
        ):
            raise ValueError(
                f"modalities={modalities}; use ('rna',), ('rna', 'atac') or ('atac',)."
            )
        if "atac" in modalities and atac_ids is None:
            raise ValueError("An ATAC part needs atac_ids (the vocabulary id of each peak column).")
        if config.zero_fraction is None:  # see ScGPTConfig.zero_fraction
            config = replace(config, zero_fraction=0.25 if len(modalities) > 1 else 0.0)
        self.config = config
        self.modalities = modalities
        self.atac_values = config.atac_values
        self.transformer = ScGPTTransformer.from_config(
            config,
            n_tokens,
            pad_id=pad_id,
            n_cls=n_labels,
            n_batches=n_batch or None,
            perturbation=perturbation,
            n_modalities=2 if "atac" in modalities else 0,
        )
        d_model, n_bins = config.d_model, config.n_bins
        self.pert_decoder = None
        if perturbation:
            # input: the gene's output token, the perturbation summary (+ the batch embedding)
            self.pert_decoder = ExprDecoder(d_model, (3 if config.batch_token else 2) * d_model)
            # the response starts at "no change": the prediction is the control cell itself
            torch.nn.init.zeros_(self.pert_decoder.fc[-1].weight)
            torch.nn.init.zeros_(self.pert_decoder.fc[-1].bias)
        if n_bins is not None:  # start the gene prompt at the middle bin: faster early training
            torch.nn.init.constant_(self.transformer.decoder.fc[-1].bias, (n_bins - 1) / 2)
        self.tokenizer = Tokenizer(
            max_seq_len=config.max_seq_len,
            pad_id=pad_id,
            cls_id=cls_id,
            n_bins=n_bins,
            pad_value=config.pad_value,
            zero_fraction=config.zero_fraction,
            seed=config.seed,
        )
        self.atac_tokenizer = None
        if "atac" in modalities:
            self.atac_tokenizer = Tokenizer(
                max_seq_len=config.max_peaks + 1,
                pad_id=pad_id,
                cls_id=cls_id,
                n_bins=n_bins if config.atac_values == "binned" else None,
                pad_value=config.pad_value,
                zero_fraction=config.atac_zero_fraction,
                seed=config.seed,
            )
        self.align_temperature = 0.1
        self.register_buffer("mask_ratio", torch.tensor(list(config.mask_ratio)), persistent=False)
        self.register_buffer(
            "panel_gene_ids", torch.as_tensor(gene_ids, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "panel_atac_ids",
            torch.as_tensor([] if atac_ids is None else atac_ids, dtype=torch.long),
            persistent=False,
        )
        self.register_buffer("class_weights", torch.ones(max(n_labels or 1, 1)), persistent=False)
        self.n_labels = n_labels or 0
        # perturbation: genes of each registered condition, and the control cells to pair with
        self.register_buffer(
            "condition_genes", torch.full((1, 2), -1, dtype=torch.long), persistent=False
        )
        self.register_buffer("ctrl_x", torch.zeros(0, 0), persistent=False)
        self.register_buffer("ctrl_start", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("ctrl_count", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("ctrl_mean", torch.zeros(0), persistent=False)
        self.pair_by_labels = False
        # whether the classifier / perturbation-response heads were ever trained (or loaded):
        # saved with the weights, so that predictions from a random head are refused
        self.register_buffer("cls_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pert_trained", torch.zeros((), dtype=torch.bool))
        # multiome models align the modalities from the start (the generative task's preset)
        self.set_objective(
            gep=config.gep_weight, mvc=config.mvc_weight, align=1.0 if self.multimodal else 0.0
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the head-state flags existed (trusted legacy saves): their heads
        # count as trained, as they were treated then
        for name in ("cls_trained", "pert_trained"):
            state_dict.setdefault(prefix + name, torch.ones((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- objective ----------------------------------------------------------------------
    def set_objective(
        self,
        ecs_threshold: float = 0.8,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        **weights: float,
    ) -> None:
        """Set the objective: a weight per part; parts not named get 0.

        The parts are :data:`~celltx.module.PARTS`: ``gep``, ``mvc``, ``cls``, ``ecs``, ``dab``,
        ``pert``, ``align``. Raises when a weighted part cannot be computed by this module (e.g.
        ``cls`` without labels).
        """
        unknown = sorted(set(weights) - set(PARTS))
        if unknown:
            raise ValueError(f"Unknown loss weights {unknown}; use {', '.join(PARTS)}.")
        weights = {name: float(weights.get(name, 0.0)) for name in PARTS}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad or sum(weights.values()) <= 0:
            raise ValueError(f"Loss weights must be >= 0 with at least one > 0, got {weights}.")
        for name, w in weights.items():
            why = PARTS[name].available(self) if w > 0 else None
            if why:
                raise ValueError(why)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
        self.objective = {name: w for name, w in weights.items() if w > 0}
        self.encoder_pass = encoder_pass(self.objective)
        self.ecs_threshold = ecs_threshold
        self.label_smoothing = label_smoothing
        if class_weights is None:
            self.class_weights.fill_(1.0)
        else:
            self.class_weights.copy_(torch.as_tensor(class_weights, dtype=torch.float32))

    def weight(self, part: str) -> float:
        """The objective's weight of ``part`` (0 when not part of it)."""
        return self.objective.get(part, 0.0)

    @property
    def generative_split(self) -> bool:
        """Whether the objective holds genes out (gene- or cell-prompt generation)."""
        return self.encoder_pass == SPLIT

    @property
    def multimodal(self) -> bool:
        """Whether cells have RNA and ATAC parts."""
        return len(self.modalities) > 1

    # --- what the model class may ask -------------------------------------------------
    @property
    def network(self) -> ScGPTTransformer:
        """The transformer: the part of the module that scGPT checkpoints hold.

        What :func:`celltx.io.load_into` fills and :func:`celltx.io.write_scgpt_dir` writes.
        """
        return self.transformer

    @property
    def n_tokens(self) -> int:
        """Vocabulary size."""
        return self.transformer.encoder.embedding.num_embeddings

    def has_head(self, name: str) -> bool:
        """Whether the head of a task is built.

        Tasks: ``"cls"`` (classifier), ``"dab"`` (batch discriminator), ``"pert"`` (perturbation
        response).
        """
        heads = {
            "cls": self.transformer.cls_decoder,
            "dab": self.transformer.grad_reverse_discriminator,
            "pert": self.pert_decoder,
        }
        return heads[name] is not None

    def gene_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Gene token embeddings (embedding + LayerNorm) of vocabulary ``ids``."""
        return self.transformer.encoder(ids)

    def freeze(self, n_layers: int) -> list[torch.nn.Parameter]:
        """Freeze the embeddings and the first ``n_layers`` transformer layers.

        Sets ``requires_grad=False`` on the gene / value embeddings (and DSBN) and the first
        ``n_layers`` transformer layers (``-1``: all); returns the parameters frozen (to unfreeze
        them later).
        """
        if n_layers == 0:
            return []
        t = self.transformer
        total = len(t.transformer_encoder.layers)
        if n_layers < -1 or n_layers > total:
            raise ValueError(f"freeze_layers={n_layers}; use 0 … {total} or -1 (all layers).")
        n = total if n_layers == -1 else n_layers
        parts = [t.encoder, t.value_encoder, *t.transformer_encoder.layers[:n]]
        if t.dsbn is not None:
            parts.append(t.dsbn)
        params = [p for part in parts for p in part.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        return params

    def mark_loaded_heads(self, loaded: Sequence[str]) -> None:
        """Record which heads a checkpoint filled (``loaded``: transformer parameter names).

        A classifier counts as trained only when all its weights came from the file.
        """
        keys = [k for k in self.transformer.state_dict() if k.startswith("cls_decoder.")]
        self.cls_trained.fill_(bool(keys) and set(keys) <= set(loaded))

    # --- data panel -------------------------------------------------------------------
    @contextmanager
    def gene_panel(self, gene_ids: torch.Tensor | None, atac_ids: torch.Tensor | None = None):
        """Temporarily use another column -> vocabulary-id mapping (other data)."""
        old, old_atac = self.panel_gene_ids, self.panel_atac_ids
        if gene_ids is not None:
            self.panel_gene_ids = torch.as_tensor(gene_ids, dtype=torch.long, device=old.device)
        if atac_ids is not None:
            self.panel_atac_ids = torch.as_tensor(atac_ids, dtype=torch.long, device=old.device)
        try:
            yield self
        finally:
            self.panel_gene_ids, self.panel_atac_ids = old, old_atac

    def atac_input(self, x_atac: torch.Tensor) -> torch.Tensor:
        """Peak values as the ATAC tokenizer takes them.

        Open = top bin, closed = 0 (``atac_values="binary"``), or the counts (``"binned"``).
        """
        if self.atac_values == "binned":
            return x_atac.float()
        top = float(self.tokenizer.n_bins - 1) if self.tokenizer.n_bins is not None else 1.0
        return (x_atac > 0).float() * top

    def tokenize(
        self,
        x: torch.Tensor | None,
        sample: str | None = None,
        max_seq_len: int | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> TokenizedBatch:
        """Tokenize ``x`` ``(B, G)`` (and ``x_atac`` ``(B, P)`` for an ATAC part).

        Random genes while training, reproducible otherwise. With ATAC, the sequence is
        ``<cls>``, RNA tokens, ATAC tokens, with modality codes; a cell with an all-zero
        row in a modality was not measured in it and gets no tokens of it.
        """
        if sample is None:
            sample = "random" if self.training else "hash"
        if "atac" not in self.modalities:
            return self.tokenizer(x, self.panel_gene_ids, sample=sample, max_seq_len=max_seq_len)
        if x_atac is None:
            raise ValueError("This model has an ATAC part: pass the peak counts (x_atac).")
        xa = self.atac_input(x_atac)
        atac = self.atac_tokenizer(xa, self.panel_atac_ids, sample=sample)
        has_atac = (xa[:, self.panel_atac_ids >= 0] > 0).any(1)
        rna = has_rna = None
        if "rna" in self.modalities:
            if x is None:
                raise ValueError("This model has an RNA part: pass the expression (x).")
            rna = self.tokenizer(x, self.panel_gene_ids, sample=sample, max_seq_len=max_seq_len)
            has_rna = (x[:, self.panel_gene_ids >= 0] > 0).any(1)
        t = self.tokenizer
        return join_modalities(rna, atac, has_rna, has_atac, pad_id=t.pad_id, pad_value=t.pad_value)

    def generative_views(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> tuple[TokenizedBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training rows of a multimodal batch and their known / unknown split.

        Every cell gives a row with a random split over all its tokens
        (:meth:`split_known`). A cell with tokens of both modalities gives two more: its
        RNA tokens known and all its ATAC tokens to generate, and the reverse.

        Returns the rows' tokens, ``known`` ``(R, L)``, the cell of each row ``(R,)`` and
        the view code of each row (``VIEW_JOINT``, ``VIEW_RNA``, ``VIEW_ATAC``).
        """
        mod, pad = tokens.modality, tokens.padding_mask
        B = pad.shape[0]
        dev = pad.device
        has_rna = ((mod == MOD_RNA) & ~pad).any(1)
        has_atac = ((mod == MOD_ATAC) & ~pad).any(1)
        paired = torch.nonzero(has_rna & has_atac).squeeze(1)
        known = self.split_known(tokens, generator)
        cells = torch.arange(B, device=dev)
        rows = torch.cat([cells, paired, paired])
        view = torch.cat(
            [
                torch.full((B,), VIEW_JOINT, device=dev),
                torch.full((len(paired),), VIEW_RNA, device=dev),
                torch.full((len(paired),), VIEW_ATAC, device=dev),
            ]
        )
        out = tokens.select(rows)
        m = out.modality
        visible = torch.where(view == VIEW_RNA, MOD_RNA, MOD_ATAC)[:, None]
        view_known = ((m == visible) | (m == MOD_CLS)) & ~out.padding_mask
        known = torch.where((view == VIEW_JOINT)[:, None], known[rows], view_known)
        return out, known, rows, view

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
        pick = torch.randint(len(self.mask_ratio), (B,), device=pad.device, generator=generator)
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
        inputs = {
            "x": tensors.get(REGISTRY_KEYS.X_KEY),
            "batch": self._codes(tensors, REGISTRY_KEYS.BATCH_KEY),
        }
        if ATAC_KEY in tensors:
            inputs["x_atac"] = tensors[ATAC_KEY]
        if self.encoder_pass == PERTURB:
            inputs["condition"] = self._codes(tensors, PERTURBATION_KEY)
            inputs["labels"] = self._codes(tensors, REGISTRY_KEYS.LABELS_KEY)
        return inputs

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        batch = self._codes(tensors, REGISTRY_KEYS.BATCH_KEY)
        rows = inference_outputs.get("rows")
        if batch is not None and rows is not None:
            batch = batch[rows]
        return {
            "h": inference_outputs["h"],
            "gene_emb": inference_outputs["gene_emb"],
            "batch": batch,
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
        x_atac: torch.Tensor | None = None,
    ) -> dict:
        """Tokenize and encode.

        With ``generative`` (default: when the objective generates held-out values), split
        known / unknown genes and use the generative attention mask; otherwise encode every
        token. A multimodal model in generative training encodes the rows of
        :meth:`generative_views` (outputs ``rows`` and ``view``).

        With the perturbation objective and ``condition`` codes, ``x`` holds perturbed
        cells: each is paired with a control cell (:meth:`sample_controls`), which is
        encoded with its condition's perturbation flags (:meth:`perturb`).
        """
        if condition is not None and self.encoder_pass == PERTURB:
            codes = batch if batch is not None else torch.zeros_like(condition)
            ctrl = self.sample_controls(self.pair_groups(codes, labels), generator)
            pert_ids = self.condition_genes[condition.clamp(min=0)]
            out = self.perturb(
                ctrl,
                pert_ids,
                self._batch(batch),
                ties="random" if self.training else "hash",
                base=self.ctrl_mean,
            )
            out["pert_target"] = x.float()[:, out["columns"]]
            return out
        if generative is None:
            generative = self.generative_split
        tokens = self.tokenize(x, sample=sample, max_seq_len=max_seq_len, x_atac=x_atac)
        rows = view = None
        if generative and self.multimodal:
            tokens, known, rows, view = self.generative_views(tokens, generator)
            batch = None if batch is None else batch[rows]
        else:
            known = self.split_known(tokens, generator) if generative else None
        h, gene_emb = self.transformer.encode(
            tokens.gene_ids,
            tokens.values,
            tokens.padding_mask,
            known,
            self._batch(batch),
            modality=tokens.modality,
            return_gene_emb=True,
        )
        return {
            "tokens": tokens,
            "known": known,
            "h": h,
            "gene_emb": gene_emb,
            "cell_emb": h[:, 0],
            "rows": rows,
            "view": view,
        }

    @auto_move_data
    def generative(
        self, h: torch.Tensor, gene_emb: torch.Tensor, batch: torch.Tensor | None = None
    ) -> dict:
        """The head predictions the objective's parts read.

        Gene-prompt (``expr``) and cell-prompt (``mvc``) values per token, class logits
        (``cls``), batch logits (``dab``).
        """
        t = self.transformer
        heads = {h for name in self.objective for h in PARTS[name].heads}
        out = (
            self.transformer.decode(h, gene_emb, self._batch(batch))
            if heads & {"expr", "mvc"}
            else {}
        )
        if "cls" in heads:
            out["cls"] = t.cls_decoder(h[:, 0])
        if "dab" in heads:
            out["dab"] = t.grad_reverse_discriminator(h[:, 0])
        return out

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Weighted sum of the losses of the objective's parts (:mod:`celltx.module._objectives`).

        Every part's metrics are logged in every step (NaN when the part is not active), so
        that ``model.history`` keeps all columns across successive ``train()`` calls with
        different tasks.
        """
        cell_emb = inference_outputs["cell_emb"]
        R = cell_emb.shape[0]  # rows: cells, plus the single-modality views of multimodal cells
        rows = inference_outputs.get("rows")
        n_cells = R if rows is None else len(self._codes(tensors, REGISTRY_KEYS.BATCH_KEY))
        if rows is None:
            rows = torch.arange(R, device=cell_emb.device)
        inference = {**inference_outputs, "rows": rows}
        row_loss = cell_emb.new_zeros(R, dtype=torch.float32)
        loss = cell_emb.new_zeros((), dtype=torch.float32)
        metrics = {}
        for name, weight in self.objective.items():
            part = PARTS[name]
            if part.pass_ == SPLIT and inference_outputs.get("known") is None:
                continue  # e.g. an evaluation pass without a split
            out = part(self, tensors, inference, generative_outputs)
            loss = loss + weight * out.loss
            if out.rows is not None:
                row_loss = row_loss + weight * out.rows
            metrics.update(out.metrics)
        per_cell = cell_emb.new_zeros(n_cells, dtype=torch.float32).index_add(0, rows, row_loss)
        nan = torch.full((), float("nan"), device=cell_emb.device)
        names = [m for part in PARTS.values() for m in part.metrics]
        if "atac" not in self.modalities:
            names = [m for m in names if m not in ("rna_mse", "atac_mse", "align_loss")]
        for key in names:
            if metrics.get(key) is None:
                metrics[key] = nan
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            kl_local=torch.zeros_like(per_cell),
            extra_metrics=metrics,
        )

    def alignment_loss(
        self, cell_emb: torch.Tensor, rows: torch.Tensor, view: torch.Tensor
    ) -> torch.Tensor | None:
        """Contrastive alignment of the views of multimodal cells (``None``: fewer than 2).

        The rows of :meth:`generative_views` hold, for the ``P`` cells with both
        modalities, a joint, an RNA-alone and an ATAC-alone ``<cls>`` embedding (same cell
        order in each view). For each pair of views, a symmetric InfoNCE (CLIP) loss on
        cosine similarities / :attr:`align_temperature`: a cell's embedding in one view
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
            logits = z[idx[a]] @ z[idx[b]].T / self.align_temperature
            nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            # InfoNCE ignores a constant offset between two views (it shifts every logit of a
            # row alike), which kept RNA-only and ATAC-only cells apart: also pull each pair
            # together, relative to the spread of the embeddings (scale-free)
            gap = (raw[idx[a]] - raw[idx[b]]).pow(2).sum(1).mean() / spread
            losses.append(nce + gap)
        return torch.stack(losses).mean()

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        raise NotImplementedError("ScGPTModule is not a generative count model; use generative().")

    # --- helpers used by the model class ---------------------------------------------
    @torch.inference_mode()
    def cell_embedding(
        self,
        x: torch.Tensor | None,
        max_seq_len: int | None = None,
        batch: torch.Tensor | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``<cls>`` output ``(B, D)`` and the number of gene (and peak) tokens.

        All tokens are known.
        """
        out = self.inference(
            x, batch, generative=False, sample="hash", max_seq_len=max_seq_len, x_atac=x_atac
        )
        n_genes = (~out["tokens"].padding_mask).sum(1) - 1
        return out["cell_emb"].float(), n_genes

    @torch.inference_mode()
    def classify(
        self,
        x: torch.Tensor | None,
        batch: torch.Tensor | None = None,
        max_seq_len: int | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class probabilities ``(B, n_labels)`` from the ``<cls>`` embedding."""
        if self.transformer.cls_decoder is None:
            raise ValueError(
                "This model has no classifier head (set up labels_key, then build it)."
            )
        emb, _ = self.cell_embedding(x, max_seq_len=max_seq_len, batch=batch, x_atac=x_atac)
        return torch.softmax(self.transformer.cls_decoder(emb).float(), dim=1)

    @torch.inference_mode()
    def heldout_predictions(
        self,
        x: torch.Tensor | None,
        generator: torch.Generator,
        batch: torch.Tensor | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> dict:
        """Predictions for a reproducible known/unknown split (evaluation).

        Returns flat tensors over the unknown tokens: ``gene_ids``, ``target``, ``expr``
        (gene prompt), ``mvc`` (cell prompt).
        """
        inf = self.inference(
            x, batch, generative=True, generator=generator, sample="hash", x_atac=x_atac
        )
        if batch is not None and inf["rows"] is not None:
            batch = batch[inf["rows"]]
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
    def token_value_sums(
        self, x: torch.Tensor | None, x_atac: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-vocabulary-token sum and count of the input values of gene tokens.

        Used for the per-gene mean-bin baseline.
        """
        tokens = self.tokenize(x, sample="hash", x_atac=x_atac)
        genes = ~tokens.padding_mask
        genes[:, 0] = False
        n = self.transformer.encoder.embedding.num_embeddings
        ids = tokens.gene_ids[genes]
        sums = torch.zeros(n, device=x.device, dtype=torch.float64)
        counts = torch.zeros(n, device=x.device, dtype=torch.float64)
        sums.index_add_(0, ids, tokens.values[genes].double())
        counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        return sums, counts

    @torch.inference_mode()
    def mean_token_values(self, batches) -> torch.Tensor:
        """Per-vocabulary-token mean input value over the minibatches ``batches``.

        ``batches`` are dicts of ``x`` / ``x_atac``; tokens never seen get the overall mean.
        The per-gene mean-bin baseline of :meth:`heldout_squared_errors`.
        """
        sums = counts = None
        for inputs in batches:
            s, c = self.token_value_sums(**inputs)
            sums = s if sums is None else sums + s
            counts = c if counts is None else counts + c
        if sums is None:
            raise ValueError("No reference cells to compute the per-gene means from.")
        overall = sums.sum() / counts.sum().clamp(min=1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), overall)

    @torch.inference_mode()
    def heldout_squared_errors(
        self,
        x: torch.Tensor | None,
        generator: torch.Generator,
        gene_mean: torch.Tensor,
        batch: torch.Tensor | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Summed squared errors over a reproducible held-out split of one minibatch.

        Errors of the gene prompt (``gep``), the cell prompt (``mvc``) and the per-gene mean
        baseline (``mean``, from ``gene_mean``), and the number of held-out tokens (``n``).
        """
        out = self.heldout_predictions(x, generator, batch, x_atac=x_atac)
        t = out["target"].double()
        return {
            "gep": float(((out["expr"].double() - t) ** 2).sum()),
            "mvc": float(((out["mvc"].double() - t) ** 2).sum()),
            "mean": float(((gene_mean[out["gene_ids"]] - t) ** 2).sum()),
            "n": len(t),
        }

    @torch.inference_mode()
    def predict_modality(
        self,
        x: torch.Tensor | None,
        x_atac: torch.Tensor | None,
        target: str,
        batch: torch.Tensor | None = None,
        chunk_size: int = 512,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-modal generation of every feature of the ``target`` modality.

        ``target`` is ``"rna"`` or ``"atac"``; its features are predicted from the cell's tokens
        of the other modality.

        The source modality's tokens are known; every panel feature of the target is an
        unknown token (gene / peak embedding + modality embedding, no value) and the
        gene-prompt decoder predicts its value. Unknown tokens attend only to the known
        ones and to themselves, so the features can be predicted ``chunk_size`` at a time
        with the same result as all at once (bounded memory).

        Returns the predictions ``(B, F)`` (the value scale of the tokens: RNA bins, or
        ``n_bins - 1`` × the probability that a peak is open) and the target panel's
        columns ``F`` that are in the vocabulary.
        """
        if not self.multimodal:
            raise ValueError("Cross-modal prediction needs a model with RNA and ATAC parts.")
        if target not in ("rna", "atac"):
            raise ValueError(f"target={target!r}; use 'rna' or 'atac'.")
        if target == "rna":
            source = self.tokenize(torch.zeros_like(x), "hash", x_atac=x_atac)
            panel, code = self.panel_gene_ids, MOD_RNA
        else:
            source = self.tokenize(x, "hash", x_atac=torch.zeros_like(x_atac))
            panel, code = self.panel_atac_ids, MOD_ATAC
        return self._generate(source, panel, code, batch, chunk_size)

    @torch.inference_mode()
    def impute(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        chunk_size: int = 512,
        x_atac: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every gene of the panel predicted from the rest of the cell (denoising, imputation).

        The cell's tokens (the reproducible gene choice of inference) are known; every panel
        gene in the vocabulary is a query token and the gene-prompt decoder predicts its value,
        ``chunk_size`` genes at a time (queries attend to the known tokens and themselves only,
        so the result does not depend on the chunking). A gene that is among the cell's known
        tokens sees its own value: it is reconstructed, not imputed; a zero (or hidden) value
        is imputed. Returns ``(B, G')`` predictions on the value-bin scale and the panel
        columns ``G'``.
        """
        source = self.tokenize(x, "hash", x_atac=x_atac)
        return self._generate(source, self.panel_gene_ids, MOD_RNA, batch, chunk_size)

    def _generate(self, source, panel, code, batch, chunk_size):
        """Gene-prompt predictions for every ``panel`` feature appended as queries to ``source``."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
        cols = torch.nonzero(panel >= 0).squeeze(1)
        ids = panel[cols]
        out = []
        for lo in range(0, len(ids), chunk_size):
            queries = ids[lo : lo + chunk_size]
            tokens, known = append_queries(source, queries, code, self.tokenizer.pad_value)
            h, gene_emb = self.transformer.encode(
                tokens.gene_ids,
                tokens.values,
                tokens.padding_mask,
                known,
                self._batch(batch),
                modality=tokens.modality,
                return_gene_emb=True,
            )
            pred = self.transformer.decode(h, gene_emb, self._batch(batch))["expr"]
            out.append(pred[:, -len(queries) :].float())
        return torch.cat(out, 1), cols

    # --- perturbation -----------------------------------------------------------------
    def set_conditions(self, condition_genes: torch.Tensor) -> None:
        """Vocabulary ids ``(n_conditions, max_genes)`` of the perturbed genes.

        One row per registered condition (``-1``: none).
        """
        self.condition_genes = torch.as_tensor(
            condition_genes, dtype=torch.long, device=self.condition_genes.device
        ).reshape(len(condition_genes), -1)

    def pair_groups(self, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Pairing group of each cell.

        A group is the cell's batch code and, with ``pair_by_labels``, its label code
        (unlabelled cells form a group of their own).
        """
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
        """A random control cell of the same pairing group for each entry of ``groups``.

        Any control cell where the group has none.
        """
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

        Built with :func:`celltx.data.perturbation_tokens` over the module's gene panel. Returns
        the tokens, their flags ``(B, L)`` and the panel columns that the tokens after ``<cls>``
        stand for.
        """
        tokens, cols = perturbation_tokens(
            self.tokenizer, x_ctrl, self.panel_gene_ids, pert_ids, ties=ties
        )
        return tokens, tokens.pert_flags, cols

    @torch.inference_mode()
    def perturb_conditions(
        self,
        x_ctrl: torch.Tensor,
        condition_ids: torch.Tensor,
        batch: torch.Tensor,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted expression of the control cells ``x_ctrl`` ``(N, G)`` under each condition.

        ``condition_ids`` ``(C, P)``: vocabulary ids of each condition's perturbed genes
        (``-1`` = none); ``batch`` ``(N,)`` the cells' batch codes. The changes are added to
        the control cells' mean. Returns ``(C, N, G')`` predictions over the panel columns
        ``(G',)`` that are in the vocabulary, computed ``batch_size`` cells at a time.
        """
        use_batch = self._batch(batch) is not None
        base = x_ctrl.mean(0)
        out, cols = [], None
        for ids in condition_ids:
            rows = []
            for lo in range(0, len(x_ctrl), batch_size):
                xc = x_ctrl[lo : lo + batch_size]
                b = batch[lo : lo + batch_size] if use_batch else None
                res = self.perturb(xc, ids.expand(len(xc), -1), b, base=base)
                rows.append(res["pert_pred"].float())
                cols = res["columns"]
            out.append(torch.cat(rows))
        return torch.stack(out), cols

    def perturb(
        self,
        x_ctrl: torch.Tensor,
        pert_ids: torch.Tensor,
        batch: torch.Tensor | None = None,
        ties: str = "hash",
        base: torch.Tensor | None = None,
    ) -> dict:
        """Predicted expression of control cells ``x_ctrl`` ``(B, G)`` after a perturbation.

        The perturbed genes are ``pert_ids`` ``(B, P)`` (vocabulary ids, ``-1`` = none).

        The prediction is ``base`` (``(G,)`` over all columns, e.g. the control mean;
        default: each control cell's own values) plus the response head's change.
        Returns ``pert_pred`` ``(B, G')`` over the panel columns ``columns`` (genes in the
        vocabulary), ``cell_emb`` and the tokens.
        """
        if self.pert_decoder is None:
            raise ValueError(
                "This model has no perturbation parts (set up perturbation_key, then build it)."
            )
        tokens, flags, cols = self.perturb_tokens(x_ctrl, pert_ids, ties=ties)
        h, gene_emb = self.transformer.encode(
            tokens.gene_ids,
            tokens.values,
            tokens.padding_mask,
            None,
            batch,
            flags,
            return_gene_emb=True,
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
        start = (
            x_ctrl[:, cols].float() if base is None else base[cols].float().expand(len(x_ctrl), -1)
        )
        pred = start + self.pert_decoder(hh).float()
        return {
            "pert_pred": pred,
            "columns": cols,
            "cell_emb": h[:, 0],
            "h": h,
            "gene_emb": gene_emb,
            "tokens": tokens,
            "known": None,
        }


def _weight_property(part: str) -> property:
    return property(
        lambda self: self.weight(part),
        doc=f"The objective's weight of ``{part}`` (read-only; kept for compatibility, use "
        f"``weight({part!r})``).",
    )


# ``module.gep_weight`` etc. were attributes before objectives became parts
for _part in PARTS:
    setattr(ScGPTModule, f"{_part}_weight", _weight_property(_part))
del _part
