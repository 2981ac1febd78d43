"""scvi-tools module wiring tokenizer + scGPT transformer + generative objective."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from celltx.data import TokenizedBatch, Tokenizer
from celltx.nn import ScGPTTransformer


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
        )
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
        self.gep_weight = gep_weight
        self.mvc_weight = mvc_weight

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
    def _get_inference_input(self, tensors, **kwargs):
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {k: inference_outputs[k] for k in ("h", "gene_emb")}

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        generative: bool = True,
        generator: torch.Generator | None = None,
        sample: str | None = None,
        max_seq_len: int | None = None,
    ) -> dict:
        """Tokenize and encode. With ``generative`` (training), split known / unknown
        genes and use the generative attention mask; otherwise encode every token."""
        tokens = self.tokenize(x, sample=sample, max_seq_len=max_seq_len)
        known = self.split_known(tokens, generator) if generative else None
        h, gene_emb = self.transformer._encode(
            tokens.gene_ids, tokens.values, tokens.padding_mask, known
        )
        return {"tokens": tokens, "known": known, "h": h, "gene_emb": gene_emb, "cell_emb": h[:, 0]}

    @auto_move_data
    def generative(self, h: torch.Tensor, gene_emb: torch.Tensor) -> dict:
        """Gene-prompt (expression decoder) and cell-prompt (MVC) predictions per token."""
        return {
            "expr": self.transformer.decoder(h),
            "mvc": self.transformer.mvc_decoder(h[:, 0], gene_emb),
        }

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Masked MSE on the unknown genes' values, averaged per cell, then over cells."""
        tokens: TokenizedBatch = inference_outputs["tokens"]
        known = inference_outputs["known"]
        unknown = (~known & ~tokens.padding_mask).float()
        target = tokens.values
        n_unk = unknown.sum(1)
        denom = n_unk.clamp(min=1.0)
        gep = (((generative_outputs["expr"].float() - target) ** 2) * unknown).sum(1) / denom
        mvc = (((generative_outputs["mvc"].float() - target) ** 2) * unknown).sum(1) / denom
        per_cell = self.gep_weight * gep + self.mvc_weight * mvc
        has = (n_unk > 0).float()
        n_cells = has.sum().clamp(min=1.0)
        loss = (per_cell * has).sum() / n_cells
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            kl_local=torch.zeros_like(per_cell),
            extra_metrics={
                "gep_mse": (gep * has).sum().detach() / n_cells,
                "mvc_mse": (mvc * has).sum().detach() / n_cells,
            },
        )

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        raise NotImplementedError("ScGPTModule is not a generative count model; use generative().")

    # --- helpers used by the model class ---------------------------------------------
    @torch.inference_mode()
    def cell_embedding(
        self, x: torch.Tensor, max_seq_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``<cls>`` output ``(B, D)`` (all tokens known) and the number of gene tokens."""
        out = self.inference(x, generative=False, sample="hash", max_seq_len=max_seq_len)
        n_genes = (~out["tokens"].padding_mask).sum(1) - 1
        return out["cell_emb"].float(), n_genes

    @torch.inference_mode()
    def heldout_predictions(self, x: torch.Tensor, generator: torch.Generator) -> dict:
        """Predictions for a reproducible known/unknown split (evaluation).

        Returns flat tensors over the unknown tokens: ``gene_ids``, ``target``, ``expr``
        (gene prompt), ``mvc`` (cell prompt).
        """
        inf = self.inference(x, generative=True, generator=generator, sample="hash")
        gen = self.generative(inf["h"], inf["gene_emb"])
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
