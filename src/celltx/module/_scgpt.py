"""scvi-tools module wiring tokenizer + scGPT transformer + generative objective."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, auto_move_data

from celltx.data import CellTokenizer
from celltx.nn import CellTextHead, ExprDecoder, ScGPTConfig, ScGPTTransformer

from ._attention import AttentionMixin
from ._batches import BatchPartsMixin
from ._constants import ATAC_KEY, PERTURBATION_KEY
from ._objective_mixin import ObjectiveMixin
from ._objectives import PARTS, PERTURB, SPLIT
from ._perturbation import PerturbationMixin
from ._queries import GenerationMixin
from ._tokens import TokenizationMixin


class ScGPTModule(
    ObjectiveMixin,
    GenerationMixin,
    AttentionMixin,
    PerturbationMixin,
    TokenizationMixin,
    BatchPartsMixin,
    BaseModuleClass,
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
        gene_ids: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        config: ScGPTConfig | None = None,
        n_labels: int | None = None,
        n_batch: int = 0,
        perturbation: bool = False,
        modalities: Sequence[str] = ("rna",),
        atac_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        **settings: Any,
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
        if config.zero_fraction is None:  # see ScGPTConfig.zero_fraction
            config = replace(config, zero_fraction=CellTokenizer.default_zero_fraction(modalities))
        self.config = config
        self.modalities = modalities
        # panel, selection statistics, ATAC handling, modality join: the one place a
        # sequence is assembled (celltx.data.CellTokenizer)
        self.tokenizer = CellTokenizer(
            config, n_tokens, pad_id, cls_id, gene_ids, modalities=modalities, atac_ids=atac_ids
        )
        self.transformer = ScGPTTransformer(
            config,
            n_tokens=n_tokens,
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
            last = cast(torch.nn.Linear, self.pert_decoder.fc[-1])
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
        # cell–text alignment (LangCell): built by add_text_head, or from a saved config
        self.text_head = None
        if config.text_dim is not None:
            self.text_head = CellTextHead(d_model, config.text_dim, config.text_temperature)
        # the text embedding of each label (set before cell–text training; saved with the model)
        self.register_buffer("label_text", torch.zeros(0, config.text_dim or 0))
        if n_bins is not None:  # start the gene prompt at the middle bin: faster early training
            last = cast(torch.nn.Linear, self.transformer.decoder.fc[-1])
            torch.nn.init.constant_(last.bias, (n_bins - 1) / 2)
        #: the objective: a configured copy of every part (weight and settings, the
        #: defaults from ``config``), in the order of :data:`~celltx.module.PARTS`
        self.parts = {name: part.configured(config) for name, part in PARTS.items()}
        #: parts left out of :meth:`loss` (prefer ``loss(..., skip=...)``)
        self.skip_parts: set[str] = set()
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
        # the mean <cls> output over the training cells after contrastive training: the
        # centred objective leaves it as a constant offset, removed from cell embeddings
        self.register_buffer("cell_offset", torch.zeros(config.d_model))
        # whether the classifier / perturbation-response heads were ever trained (or loaded):
        # saved with the weights, so that predictions from a random head are refused
        self.register_buffer("cls_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pert_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("text_trained", torch.zeros((), dtype=torch.bool))
        # multiome models align the modalities from the start (the generative task's preset)
        self.set_objective(
            gep=config.gep_weight, mvc=config.mvc_weight, align=1.0 if self.multimodal else 0.0
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        self._map_tokenizer_keys(state_dict, prefix)  # saves from before CellTokenizer
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
        emb: torch.Tensor = self.transformer.encoder(ids)
        return emb

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer layer's activations in the backward pass (or stop).

        Saves activation memory on long sequences at about one extra forward pass of
        compute; see :class:`~celltx.nn.TransformerEncoder`.
        """
        self.transformer.transformer_encoder.gradient_checkpointing = bool(enabled)

    def compile_encoder(self, **kwargs: Any) -> None:
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
        c = self.config
        self.text_head = CellTextHead(c.d_model, int(d_text), c.text_temperature).to(dev)
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

    # --- scvi-tools module interface -------------------------------------------------
    @staticmethod
    def _codes(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
        t = tensors.get(key)
        return None if t is None else t.reshape(-1).long()

    def _get_inference_input(
        self, tensors: dict[str, torch.Tensor], **kwargs: Any
    ) -> dict[str, torch.Tensor | None]:
        inputs: dict[str, torch.Tensor | None] = {
            "x": tensors.get(REGISTRY_KEYS.X_KEY),
            "batch": self._codes(tensors, REGISTRY_KEYS.BATCH_KEY),
        }
        if ATAC_KEY in tensors:
            inputs["x_atac"] = tensors[ATAC_KEY]
        if self.encoder_pass == PERTURB:
            inputs["condition"] = self._codes(tensors, PERTURBATION_KEY)
            inputs["labels"] = self._codes(tensors, REGISTRY_KEYS.LABELS_KEY)
        return inputs

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, Any], **kwargs: Any
    ) -> dict[str, torch.Tensor | None]:
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
            augmented = part.augment(x, generator)
            augment = augmented is not None
            x = augmented if augmented is not None else x
        tokens = self.tokenize(x, sample=sample, max_seq_len=max_seq_len, x_atac=x_atac)
        rows = view = None
        known: torch.Tensor | None
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
            assert t.cls_decoder is not None  # set_objective refuses "cls" without the head
            out["cls"] = t.cls_decoder(h[:, 0])
        if "dab" in heads:
            assert t.grad_reverse_discriminator is not None  # as "dab" without it
            out["dab"] = t.grad_reverse_discriminator(h[:, 0])
        return out

    @torch.inference_mode()
    def sample(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("ScGPTModule is not a generative count model; use generative().")

    # --- what the model's queries ask (no submodule or buffer named outside) -----------
    def head_trained(self, name: str) -> bool:
        """Whether the head of a task was trained or loaded (``"cls"``, ``"pert"``, ``"text"``).

        A head that :meth:`has_head` but never trained is randomly initialised.
        """
        flags = {"cls": self.cls_trained, "pert": self.pert_trained, "text": self.text_trained}
        return bool(flags[name])

    def remove_cell_offset(self, emb: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """Cell embeddings ``emb`` less the training cells' mean ``<cls>`` output (in place).

        Contrastive training records that constant offset (zero otherwise). It is that of the
        ``<cls>`` columns: ``pooling`` ``"cls"`` and ``"concat"``; other poolings unchanged.
        """
        if pooling in ("cls", "concat"):
            d = self.cell_offset.shape[0]
            emb[:, :d] -= self.cell_offset.float().to(emb.device)
        return emb

    def text_embedding(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Text-encoder embeddings ``(n, d_text)`` as unit vectors in the cell–text space."""
        if self.text_head is None:
            raise ValueError("This model has no cell–text head: train(task='cell_text') first.")
        return self.text_head.text(text_emb)

    # --- state a celltx save keeps besides the state dict ------------------------------
    #: buffers outside the state dict that a save keeps (those the module has)
    SAVED_BUFFERS: tuple[str, ...] = (
        "condition_genes",
        "ctrl_x",
        "ctrl_start",
        "ctrl_count",
        "ctrl_mean",
        "class_weights",
    )
    #: plain attributes (numbers, booleans) that a save keeps: the objective's settings
    SAVED_ATTRIBUTES: tuple[str, ...] = (
        "ecs_threshold",
        "label_smoothing",
        "pair_by_labels",
        "align_temperature",
    )

    def saved_state(self) -> tuple[dict[str, torch.Tensor], dict[str, bool | int | float]]:
        """What a save keeps besides the state dict: ``(buffers, attributes)``."""
        buffers = {
            name: getattr(self, name)
            for name in self.SAVED_BUFFERS
            if isinstance(getattr(self, name, None), torch.Tensor)
        }
        attributes = {
            name: getattr(self, name)
            for name in self.SAVED_ATTRIBUTES
            if isinstance(getattr(self, name, None), bool | int | float)
        }
        return buffers, attributes

    def load_saved_state(
        self,
        buffers: dict[str, torch.Tensor],
        attributes: dict[str, object],
        objective: dict[str, float] | None = None,
        source: object = "the save",
    ) -> None:
        """Restore :meth:`saved_state` and the saved objective's weights (``source``: for errors).

        Names this module does not keep are ignored; a non-number attribute or an invalid
        objective raises a ``ValueError`` naming ``source``.
        """
        with torch.no_grad():
            for name, tensor in buffers.items():
                if name in self.SAVED_BUFFERS and isinstance(
                    getattr(self, name, None), torch.Tensor
                ):
                    setattr(self, name, tensor.to(getattr(self, name).device))
        for name, value in attributes.items():
            if name in self.SAVED_ATTRIBUTES and hasattr(self, name):
                if not isinstance(value, bool | int | float):
                    raise ValueError(
                        f"{source}: module attribute {name!r} is {value!r}, not a number; the "
                        "save is damaged."
                    )
                setattr(self, name, value)
        if objective:
            try:
                self.set_objective(
                    ecs_threshold=self.ecs_threshold,
                    label_smoothing=self.label_smoothing,
                    class_weights=self.class_weights.clone(),
                    **{str(k): float(v) for k, v in objective.items()},
                )
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"{source}: the saved objective {objective} is invalid ({e})."
                ) from e

    def set_cell_offset(self, mean: torch.Tensor | None) -> None:
        """Record the training cells' mean ``<cls>`` output (``None``: zero).

        :meth:`remove_cell_offset` takes it off the cell embeddings.
        """
        if mean is None:
            self.cell_offset.zero_()
        else:
            self.cell_offset.copy_(torch.as_tensor(mean, device=self.cell_offset.device))

    @property
    def has_label_texts(self) -> bool:
        """Whether each label's text embedding is set (cell–text alignment)."""
        return bool(len(self.label_text))
