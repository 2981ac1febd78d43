"""The whole scGPT transformer, built from one :class:`~celltx.nn.ScGPTConfig`.

``ScGPTTransformer(config, n_tokens=..., pad_id=...)`` as nanoGPT's ``GPT(config)``: every
hyperparameter comes from the config; the other arguments are what the data decides
(vocabulary, classes, batches, perturbations, modalities). Parameter names equal scGPT's,
so that published state dicts load with at most a rename of the attention keys (see
:mod:`celltx.io`). Shapes in comments: B batch, L tokens, D model width, H heads.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ._attention import TransformerEncoder, generative_attn_mask, padding_attn_mask
from ._config import ScGPTConfig, preset
from ._encoders import (
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    DomainSpecificBatchNorm,
    GeneEncoder,
)
from ._heads import AdversarialDiscriminator, ClsDecoder, ExprDecoder, MVCDecoder

#: perturbation flag of padding tokens (flags: 0 not perturbed, 1 perturbed, 2 padding)
PERT_PAD = 2
#: number of perturbation flags (scGPT's ``pert_encoder``: not perturbed, perturbed, padding)
N_PERT_FLAGS = 3

# The deprecated keyword form ScGPTTransformer(n_tokens, d_model=..., ...): its parameters in
# their old positional order. Its defaults were scGPT_human's shape (PRESETS["scgpt_human"]),
# with d_hid 512 whatever d_model and attn_dropout = dropout.
_LEGACY_ORDER = (
    "n_tokens",
    "d_model",
    "n_heads",
    "d_hid",
    "n_layers",
    "dropout",
    "pad_id",
    "input_emb_style",
    "n_bins",
    "norm_first",
    "activation",
    "do_mvc",
    "attn_dropout",
    "n_cls",
    "n_layers_cls",
    "n_batches",
    "dsbn",
    "dab",
    "batch_token",
    "perturbation",
    "n_modalities",
)
_DATA_ARGS = ("n_tokens", "pad_id", "n_cls", "n_batches", "perturbation", "n_modalities")


def _legacy_config(given: dict[str, Any]) -> ScGPTConfig:
    """The config the keyword form described, with that form's defaults for what it omits."""
    settings = preset("scgpt_human")
    settings["d_hid"] = settings["d_model"]  # the old default was 512, not "= d_model"
    settings.update({k: v for k, v in given.items() if k in ScGPTConfig.field_names()})
    if given.get("attn_dropout") is None:  # old meaning of None: as dropout (scGPT)
        settings["attn_dropout"] = settings["dropout"]
    return ScGPTConfig(**settings)


class ScGPTTransformer(nn.Module):
    """The scGPT transformer: embeddings, encoder stack and the generative heads.

    Every hyperparameter is read from ``config``; the keyword-only arguments are the sizes
    and parts that the data decides.

    Parameters
    ----------
    config
        Shape and parts: ``d_model``, ``n_heads``, ``d_hid``, ``n_layers``, ``dropout``,
        ``attn_dropout``, ``input_emb_style``, ``n_bins``, ``norm_first``, ``activation``,
        ``n_layers_cls`` (classifier and batch-discriminator depth), ``dsbn``, ``dab`` and
        ``batch_token`` (see :class:`~celltx.nn.ScGPTConfig`; named shapes:
        :meth:`ScGPTConfig.preset <celltx.nn.ScGPTConfig.preset>`).
    n_tokens
        Vocabulary size.
    pad_id
        Vocabulary id of ``<pad>`` (embedding padding index).
    n_cls
        Build a classifier head (``cls_decoder``) with this many classes.
    n_batches
        Number of batches, needed by the config's batch-aware parts (``dsbn``: domain-specific
        batch norm of the token embeddings; ``dab``: adversarial batch discriminator on the
        cell embedding; ``batch_token``: batch embedding concatenated to the decoders' input,
        scGPT's ``use_batch_labels``).
    perturbation
        Perturbation flag embedding (``pert_encoder``, 3 flags as scGPT: not perturbed,
        perturbed, padding), added to the token embeddings.
    n_modalities
        Build a modality embedding (``mod_encoder``) for sequences that mix modalities
        (RNA genes and ATAC peaks): one row for ``<cls>`` and one per modality, added to
        the token embeddings. It starts at zero, so a model loaded from an RNA-only
        checkpoint computes exactly what the checkpoint does until it is trained.

    Notes
    -----
    The keyword form of earlier versions, ``ScGPTTransformer(n_tokens, d_model=...,
    n_heads=..., ...)``, still works with a :class:`FutureWarning`; the settings it leaves
    out keep that form's defaults (scGPT_human's shape: ``ScGPTConfig.preset("scgpt_human")``
    with ``d_hid=512``, ``attn_dropout`` equal to ``dropout``).

    Examples
    --------
    >>> import torch
    >>> from celltx.nn import ScGPTConfig, ScGPTTransformer
    >>> net = ScGPTTransformer(ScGPTConfig.preset("tiny"), n_tokens=10, pad_id=0)
    >>> ids = torch.tensor([[1, 5, 6, 0]]); vals = torch.tensor([[-2.0, 3.0, 1.0, -2.0]])
    >>> net.encode(ids, vals, ids.eq(0)).shape
    torch.Size([1, 4, 16])
    """

    def __init__(
        self,
        config: ScGPTConfig | None = None,
        *legacy_args: Any,
        n_tokens: int | None = None,
        pad_id: int | None = None,
        n_cls: int | None = None,
        n_batches: int | None = None,
        perturbation: bool = False,
        n_modalities: int = 0,
        **legacy_kwargs: Any,
    ):
        super().__init__()
        data: dict[str, Any] = {
            "n_tokens": n_tokens,
            "pad_id": pad_id,
            "n_cls": n_cls,
            "n_batches": n_batches,
            "perturbation": perturbation,
            "n_modalities": n_modalities,
        }
        do_mvc = True
        if isinstance(config, ScGPTConfig):
            if legacy_args or legacy_kwargs:
                extra = list(legacy_kwargs) or [f"{len(legacy_args)} positional arguments"]
                raise ValueError(
                    f"ScGPTTransformer takes its settings from the config; {extra} cannot be "
                    "passed as well. Put them in the config (dataclasses.replace(config, ...)) "
                    "and pass only n_tokens, pad_id, n_cls, n_batches, perturbation and "
                    "n_modalities."
                )
        else:
            config, data, do_mvc = self._from_keywords(config, legacy_args, legacy_kwargs, data)
        n_tokens, pad_id, n_cls, n_batches = (data[k] for k in _DATA_ARGS[:4])
        if n_tokens is None:
            raise ValueError("ScGPTTransformer needs n_tokens (the vocabulary size).")
        c = self.config = config
        if (c.dsbn or c.dab or c.batch_token) and not n_batches:
            raise ValueError("dsbn, dab and batch_token need n_batches (a registered batch_key).")
        d_model = self.d_model = c.d_model
        self.encoder = GeneEncoder(n_tokens, d_model, padding_idx=pad_id)
        self.value_encoder: ContinuousValueEncoder | CategoryValueEncoder
        if c.input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model, c.dropout)
        else:  # "category" (the config checked it, and that it has n_bins)
            assert c.n_bins is not None  # _validate refuses "category" without n_bins
            self.value_encoder = CategoryValueEncoder(c.n_bins, d_model)
        self.transformer_encoder = TransformerEncoder(
            c.n_layers,
            d_model=d_model,
            n_heads=c.n_heads,
            d_hid=c.d_hid_resolved,
            dropout=c.dropout,
            activation=c.activation,
            norm_first=c.norm_first,
            attn_dropout=c.attn_dropout,
        )
        d_dec = 2 * d_model if c.batch_token else d_model
        self.decoder = ExprDecoder(d_model, d_dec)
        self.mvc_decoder = MVCDecoder(d_model, d_dec) if do_mvc else None
        self.cls_decoder = ClsDecoder(d_model, n_cls, c.n_layers_cls) if n_cls else None
        self.dsbn = DomainSpecificBatchNorm(d_model, n_batches) if c.dsbn else None
        self.grad_reverse_discriminator = (
            AdversarialDiscriminator(d_model, n_batches, c.n_layers_cls) if c.dab else None
        )
        self.batch_encoder = BatchLabelEncoder(n_batches, d_model) if c.batch_token else None
        self.pert_encoder = None
        if data["perturbation"]:
            self.pert_encoder = nn.Embedding(N_PERT_FLAGS, d_model, padding_idx=PERT_PAD)
        self.mod_encoder = None
        if data["n_modalities"]:
            self.mod_encoder = nn.Embedding(data["n_modalities"] + 1, d_model)  # row 0: <cls>
            nn.init.zeros_(self.mod_encoder.weight)

    @staticmethod
    def _from_keywords(
        first: object, args: tuple[Any, ...], kwargs: dict[str, Any], data: dict[str, Any]
    ) -> tuple[ScGPTConfig, dict[str, Any], bool]:
        """Config, data sizes and ``do_mvc`` of the deprecated keyword form."""
        if first is not None and (isinstance(first, bool) or not isinstance(first, int)):
            raise ValueError(
                f"ScGPTTransformer's first argument is a ScGPTConfig, not {type(first).__name__}"
                ": ScGPTTransformer(ScGPTConfig.preset('small'), n_tokens=..., pad_id=...)."
            )
        given: dict[str, Any] = {} if first is None else {"n_tokens": first}
        if len(args) > len(_LEGACY_ORDER) - 1:
            raise TypeError(f"ScGPTTransformer takes at most {len(_LEGACY_ORDER)} settings.")
        given.update(zip(_LEGACY_ORDER[1:], args, strict=False))
        unknown = sorted(set(kwargs) - set(_LEGACY_ORDER))
        if unknown:
            raise TypeError(f"ScGPTTransformer got unexpected keyword arguments {unknown}.")
        twice = sorted(set(given) & set(kwargs))
        if twice:
            raise TypeError(f"ScGPTTransformer got multiple values for {twice}.")
        given.update(kwargs)
        for k in _DATA_ARGS:  # data sizes given by keyword are in `data` already
            if k in given:
                data[k] = given[k]
        warnings.warn(
            "ScGPTTransformer(n_tokens, d_model=..., n_heads=..., ...) is deprecated and will "
            "be removed: pass a config, ScGPTTransformer(ScGPTConfig(d_model=..., ...), "
            "n_tokens=..., pad_id=...) or ScGPTConfig.preset('scgpt_human'). The keyword "
            "form's defaults were scGPT_human's shape.",
            FutureWarning,
            stacklevel=3,
        )
        return _legacy_config(given), data, bool(given.get("do_mvc", True))

    def embed(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        known: torch.Tensor | None = None,
        pert_flags: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings ``(B, L, D)`` and the gene embeddings alone.

        Where ``known`` is False the value embedding is left out: the token is the gene
        embedding only. ``pert_flags`` ``(B, L)`` (0 not perturbed, 1 perturbed, 2 pad)
        add the perturbation embedding (models built with ``perturbation=True``);
        ``modality`` ``(B, L)`` (0 ``<cls>``, 1, 2, …) the modality embedding (models built
        with ``n_modalities``).
        """
        gene_emb = self.encoder(gene_ids)
        val_emb = self.value_encoder(values)
        if known is not None:
            val_emb = val_emb * known.unsqueeze(-1).to(val_emb.dtype)
        x = gene_emb + val_emb
        if pert_flags is not None:
            if self.pert_encoder is None:
                raise ValueError(
                    "This model has no perturbation embedding (build it with perturbation=True)."
                )
            x = x + self.pert_encoder(pert_flags)
        if modality is not None and self.mod_encoder is not None:
            mod = self.mod_encoder(modality)
            x = x + mod
            gene_emb = gene_emb + mod  # the decoders' gene queries know the modality too
        return x, gene_emb

    @classmethod
    def from_config(
        cls,
        config: ScGPTConfig,
        n_tokens: int,
        pad_id: int | None = None,
        n_cls: int | None = None,
        n_batches: int | None = None,
        perturbation: bool = False,
        n_modalities: int = 0,
    ) -> ScGPTTransformer:
        """Build from a :class:`~celltx.nn.ScGPTConfig` and the sizes that come from the data.

        The same as ``ScGPTTransformer(config, n_tokens=n_tokens, ...)``.

        Examples
        --------
        >>> from celltx.nn import ScGPTConfig, ScGPTTransformer
        >>> net = ScGPTTransformer.from_config(ScGPTConfig.preset("tiny"), n_tokens=10)
        >>> net.d_model
        16
        """
        return cls(
            config,
            n_tokens=n_tokens,
            pad_id=pad_id,
            n_cls=n_cls,
            n_batches=n_batches,
            perturbation=perturbation,
            n_modalities=n_modalities,
        )

    def encode(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        known: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        pert_flags: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
        return_gene_emb: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Transformer output ``(B, L, D)``.

        Without ``known``: plain encoding with a key padding mask (embedding, fine-tuning).
        With ``known`` ``(B, L)``: generative encoding — unknown tokens carry no value
        embedding and attention follows :func:`generative_attn_mask`. ``batch`` ``(B,)``
        is needed with ``dsbn``; ``pert_flags`` and ``modality`` ``(B, L)`` as for
        :meth:`embed`. With ``return_gene_emb`` also the gene embeddings ``(B, L, D)`` (the
        decoders' gene queries).
        """
        x, gene_emb, mask = self._encoder_input(
            gene_ids, values, padding_mask, known, batch, pert_flags, modality
        )
        h = self.transformer_encoder(x, mask)
        return (h, gene_emb) if return_gene_emb else h

    def attention_weights(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
        layer: int = -1,
    ) -> torch.Tensor:
        """Attention probabilities ``(B, H, L, L)`` of one layer for a plain encoding.

        Rows are the attending (query) tokens, columns the attended (key) tokens; padded
        keys get 0. Inputs as for :meth:`encode` without ``known``.
        """
        x, _, mask = self._encoder_input(
            gene_ids, values, padding_mask, None, batch, None, modality
        )
        return self.transformer_encoder.attention_weights(x, mask, layer)

    def _encoder_input(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        known: torch.Tensor | None,
        batch: torch.Tensor | None,
        pert_flags: torch.Tensor | None,
        modality: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token embeddings after batch normalisation, gene embeddings and attention mask."""
        x, gene_emb = self.embed(gene_ids, values, known, pert_flags, modality)
        if self.dsbn is not None:
            if batch is None:
                raise ValueError("This model normalizes per batch (dsbn): pass batch labels.")
            # <cls> is left out: normalizing its (constant) input with per-batch statistics
            # handed the cell embedding its batch directly (CellBench, 8 epochs: batch
            # correction 0.21 with, 0.44 without)
            skip = padding_mask.clone()
            skip[:, 0] = True
            x = self.dsbn(x, batch, skip)
        mask = (
            padding_attn_mask(padding_mask)
            if known is None
            else generative_attn_mask(known, padding_mask)
        )
        return x, gene_emb, mask

    def decode(
        self, h: torch.Tensor, gene_emb: torch.Tensor, batch: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Expression (gene-prompt) and MVC (cell-prompt) predictions per token ``(B, L)``.

        With ``batch_token`` the batch embedding is concatenated to their input.
        """
        cell = h[:, 0]
        if self.batch_encoder is not None:
            if batch is None:
                raise ValueError("This model has a batch token (batch_token): pass batch labels.")
            b = self.batch_encoder(batch)  # (B, D)
            h = torch.cat([h, b[:, None, :].expand(-1, h.shape[1], -1)], -1)
            cell = torch.cat([cell, b], -1)
        out = {"expr": self.decoder(h)}
        if self.mvc_decoder is not None:
            out["mvc"] = self.mvc_decoder(cell, gene_emb)
        return out

    def forward(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        known: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode and decode.

        Returns ``encoder_output``, ``cell_emb`` (``<cls>`` output), ``expr`` (expression
        decoder, per token), ``mvc`` (cell-prompt prediction per token, when built) and ``cls``
        (class logits, when built). ``batch`` ``(B,)``: batch codes, needed with ``dsbn`` /
        ``batch_token``.
        """
        h, gene_emb = self.encode(
            gene_ids, values, padding_mask, known, batch, return_gene_emb=True
        )
        out = {"encoder_output": h, "cell_emb": h[:, 0], **self.decode(h, gene_emb, batch)}
        if self.cls_decoder is not None:
            out["cls"] = self.cls_decoder(h[:, 0])
        return out
