"""scvi-tools module wiring tokenizer + scGPT transformer + generative objective."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, auto_move_data

from celltx.data import (
    MOD_ATAC,
    MOD_CLS,
    MOD_RNA,
    TokenizedBatch,
    Tokenizer,
    join_modalities,
)
from celltx.nn import CellTextHead, ExprDecoder, ScGPTConfig, ScGPTTransformer

from ._attention import AttentionMixin
from ._constants import ATAC_KEY, PERTURBATION_KEY, VIEW_ATAC, VIEW_JOINT, VIEW_RNA
from ._generation import GenerationMixin
from ._objective_mixin import ObjectiveMixin
from ._objectives import PARTS, PERTURB, SPLIT
from ._perturbation import PerturbationMixin


class ScGPTModule(
    ObjectiveMixin, GenerationMixin, AttentionMixin, PerturbationMixin, BaseModuleClass
):
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
        # cell–text alignment (LangCell): built by add_text_head, or from a saved config
        self.text_head = None
        if config.text_dim is not None:
            self.text_head = CellTextHead(d_model, config.text_dim, config.text_temperature)
        # the text embedding of each label (set before cell–text training; saved with the model)
        self.register_buffer("label_text", torch.zeros(0, config.text_dim or 0))
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
        #: the objective: a configured copy of every part (weight and settings, the
        #: defaults from ``config``), in the order of :data:`~celltx.module.PARTS`
        self.parts = {name: part.configured(config) for name, part in PARTS.items()}
        #: parts left out of :meth:`loss` (prefer ``loss(..., skip=...)``)
        self.skip_parts: set[str] = set()
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
        # rank-value gene selection: each vocabulary gene's non-zero median (saved with the
        # weights of models that use it; 1 = rank by the expression itself)
        ranked = config.gene_selection in ("rank", "hvg")
        self.register_buffer("gene_medians", torch.ones(n_tokens), persistent=ranked)
        # whether the medians are of depth-normalised linear values and cells are ranked on
        # that scale (counts and log values of the same cells: the same tokens); saves from
        # before this flag keep their medians of the values as they were
        self.register_buffer("rank_linear", torch.ones((), dtype=torch.bool), persistent=ranked)
        # TF-IDF peak selection: each vocabulary peak's IDF over the training cells (saved
        # with the weights of models that use it)
        self.register_buffer(
            "peak_idf", torch.ones(n_tokens), persistent=config.peak_selection == "idf"
        )
        # HVG-aware selection: 1 for each vocabulary gene that is highly variable over the
        # training cells (saved with the weights of models that use it)
        self.register_buffer(
            "gene_hvg", torch.zeros(n_tokens), persistent=config.gene_selection == "hvg"
        )
        # the mean <cls> output over the training cells after contrastive training: the
        # centred objective leaves it as a constant offset, removed from cell embeddings
        self.register_buffer("cell_offset", torch.zeros(config.d_model))
        self.register_buffer("cls_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pert_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("text_trained", torch.zeros((), dtype=torch.bool))
        # multiome models align the modalities from the start (the generative task's preset)
        self.set_objective(
            gep=config.gep_weight, mvc=config.mvc_weight, align=1.0 if self.multimodal else 0.0
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the head-state flags existed (trusted legacy saves): their heads
        # count as trained, as they were treated then
        for name in ("cls_trained", "pert_trained"):
            state_dict.setdefault(prefix + name, torch.ones((), dtype=torch.bool))
        # a saved cell–text head from before its flag counts as trained as well
        has_text = any(k.startswith(prefix + "text_head.") for k in state_dict)
        state_dict.setdefault(prefix + "text_trained", torch.tensor(has_text))
        state_dict.setdefault(prefix + "cell_offset", torch.zeros_like(self.cell_offset))
        # label texts: saved by models with a cell–text head (one row per label)
        text = state_dict.setdefault(prefix + "label_text", self.label_text.clone())
        if text.shape != self.label_text.shape:
            self.label_text = torch.zeros_like(text, device=self.label_text.device)
        if self.config.gene_selection in ("rank", "hvg"):
            # a checkpoint without medians / HVGs (a published scGPT one) keeps the data's
            if prefix + "gene_medians" in state_dict:
                state_dict.setdefault(prefix + "rank_linear", torch.zeros((), dtype=torch.bool))
            state_dict.setdefault(prefix + "gene_medians", self.gene_medians.clone())
            state_dict.setdefault(prefix + "rank_linear", self.rank_linear.clone())
        if self.config.gene_selection == "hvg":
            state_dict.setdefault(prefix + "gene_hvg", self.gene_hvg.clone())
        if self.config.peak_selection == "idf":
            state_dict.setdefault(prefix + "peak_idf", self.peak_idf.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        response), ``"text"`` (cell–text alignment).
        """
        heads = {
            "cls": self.transformer.cls_decoder,
            "dab": self.transformer.grad_reverse_discriminator,
            "pert": self.pert_decoder,
            "text": self.text_head,
        }
        return heads[name] is not None

    def gene_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Gene token embeddings (embedding + LayerNorm) of vocabulary ``ids``."""
        return self.transformer.encoder(ids)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer layer's activations in the backward pass (or stop).

        Saves activation memory on long sequences at about one extra forward pass of
        compute; see :class:`~celltx.nn.TransformerEncoder`.
        """
        self.transformer.transformer_encoder.gradient_checkpointing = bool(enabled)

    def compile_encoder(self, **kwargs) -> None:
        """Compile the transformer layers in place with :func:`torch.compile`.

        ``kwargs`` go to :meth:`torch.nn.Module.compile` (default ``dynamic=True``: sequence
        lengths vary between batches). The parameters and their names are unchanged, so
        saving and loading are unaffected.
        """
        kwargs.setdefault("dynamic", True)
        for layer in self.transformer.transformer_encoder.layers:
            layer.compile(**kwargs)

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

    def add_text_head(self, d_text: int) -> None:
        """Build the cell–text head for text embeddings of width ``d_text`` (once).

        Records ``text_dim`` in :attr:`config`, so that a saved model is rebuilt with it.
        """
        if self.text_head is not None:
            if self.config.text_dim != d_text:
                raise ValueError(
                    f"This model's cell–text head takes {self.config.text_dim}-d text embeddings; "
                    f"the text encoder gives {d_text}-d. Use the encoder it was trained with "
                    f"({self.config.text_encoder!r})."
                )
            return
        dev = self.cell_offset.device
        self.text_head = CellTextHead(
            self.config.d_model, int(d_text), self.config.text_temperature
        ).to(dev)
        self.text_trained.fill_(False)  # a new head is random until cell–text training
        self.config = replace(self.config, text_dim=int(d_text))
        self.label_text = torch.zeros(0, int(d_text), device=dev)

    def set_label_texts(self, text_emb: torch.Tensor) -> None:
        """The text embedding ``(n_labels, d_text)`` of each registered label."""
        self.label_text = torch.as_tensor(text_emb, dtype=torch.float32).to(self.cell_offset.device)

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

    def set_gene_medians(self, ids: torch.Tensor, medians: torch.Tensor) -> None:
        """Store the non-zero medians of the genes ``ids`` (rank-value gene selection)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.gene_medians.device)
        med = torch.as_tensor(medians, dtype=torch.float32, device=self.gene_medians.device)
        keep = (ids >= 0) & (med > 0) & torch.isfinite(med)
        self.gene_medians[ids[keep]] = med[keep]

    def set_peak_idf(self, ids: torch.Tensor, idf: torch.Tensor) -> None:
        """Store the IDF of the peaks ``ids`` (TF-IDF peak selection)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.peak_idf.device)
        val = torch.as_tensor(idf, dtype=torch.float32, device=self.peak_idf.device)
        keep = (ids >= 0) & torch.isfinite(val)
        self.peak_idf[ids[keep]] = val[keep]

    def peak_scale(self) -> torch.Tensor:
        """Per ATAC panel column: the peak's IDF (0 outside the vocabulary)."""
        ids = self.panel_atac_ids
        return torch.where(ids >= 0, self.peak_idf[ids.clamp(min=0)], 0.0)

    def set_gene_hvg(self, ids: torch.Tensor, mask) -> None:
        """Mark the genes ``ids`` whose ``mask`` is true as highly variable (the others not)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.gene_hvg.device)
        flag = torch.as_tensor(mask, dtype=torch.float32, device=self.gene_hvg.device)
        keep = ids >= 0
        self.gene_hvg.zero_()
        self.gene_hvg[ids[keep]] = flag[keep]

    def hvg_priority(self) -> torch.Tensor:
        """Per panel column: 1 for the highly variable genes of HVG-aware selection, else 0."""
        ids = self.panel_gene_ids
        return torch.where(ids >= 0, self.gene_hvg[ids.clamp(min=0)], 0.0)

    def rank_scale(self) -> torch.Tensor:
        """Per panel column: 1 / the gene's non-zero median (0 outside the vocabulary)."""
        ids = self.panel_gene_ids
        med = self.gene_medians[ids.clamp(min=0)]
        return torch.where(ids >= 0, 1.0 / med, 0.0)

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
        rank = {}
        c = self.config
        if c.gene_selection in ("rank", "hvg") and sample in ("random", "hash"):
            rank = {
                "scale": self.rank_scale(),
                "priority": self.hvg_priority() if c.gene_selection == "hvg" else None,
                "random_fraction": c.random_token_fraction if sample == "random" else 0.0,
                "linear": bool(self.rank_linear),
            }
            sample = "rank"
        if "atac" not in self.modalities:
            return self.tokenizer(
                x, self.panel_gene_ids, sample=sample, max_seq_len=max_seq_len, **rank
            )
        if x_atac is None:
            raise ValueError("This model has an ATAC part: pass the peak counts (x_atac).")
        xa = self.atac_input(x_atac)
        peak_sample, peak_rank = sample, {}
        if c.peak_selection == "idf" and sample in ("random", "hash", "rank"):
            # TF-IDF rank: a cell's rarest open peaks first (reproducible, as gene ranks)
            peak_sample, peak_rank = "rank", {"scale": self.peak_scale()}
        atac = self.atac_tokenizer(xa, self.panel_atac_ids, sample=peak_sample, **peak_rank)
        has_atac = (xa[:, self.panel_atac_ids >= 0] > 0).any(1)
        rna = has_rna = None
        if "rna" in self.modalities:
            if x is None:
                raise ValueError("This model has an RNA part: pass the expression (x).")
            rna = self.tokenizer(
                x, self.panel_gene_ids, sample=sample, max_seq_len=max_seq_len, **rank
            )
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
        # views of every cell, declared by the active parts (the contrastive part's two)
        n_views = max((self.parts[n].views for n in self.objective), default=1)
        views = generative and not self.multimodal and n_views > 1
        augment = False
        if views and self.training:
            part = next(self.parts[n] for n in self.objective if self.parts[n].views == n_views)
            # each view augmented on its own before its tokens are chosen (None: no augmentation)
            out = part.augment(x, generator)
            augment = out is not None
            x = out if augment else x
        tokens = self.tokenize(x, sample=sample, max_seq_len=max_seq_len, x_atac=x_atac)
        rows = view = None
        if generative and self.multimodal:
            tokens, known, rows, view = self.generative_views(tokens, generator)
            batch = None if batch is None else batch[rows]
        elif views:
            # n views of every cell: rows 0..B-1, B..2B-1, ..., each with its own split
            B = tokens.gene_ids.shape[0] // (n_views if augment else 1)
            rows = torch.arange(B, device=tokens.gene_ids.device).repeat(n_views)
            if not augment:
                tokens = tokens.select(rows)
            known = self.split_known(tokens, generator)
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
        heads = {h for name in self.objective for h in self.parts[name].heads}
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

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        raise NotImplementedError("ScGPTModule is not a generative count model; use generative().")
