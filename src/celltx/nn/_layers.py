"""scGPT building blocks in plain ``torch.nn``.

Parameter names equal scGPT's (``encoder.embedding``, ``value_encoder.linear1``,
``transformer_encoder.layers.N.self_attn.Wqkv``, ``decoder.fc.0``, ``mvc_decoder.W``, …)
so that published state dicts load with at most a rename of the attention keys (see
:mod:`celltx.io`). Shapes in comments: B batch, L tokens, D model width, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._config import ScGPTConfig

#: perturbation flag of padding tokens (flags: 0 not perturbed, 1 perturbed, 2 padding)
PERT_PAD = 2


# --- input encoders -------------------------------------------------------------------
class GeneEncoder(nn.Module):
    """Gene token embedding followed by LayerNorm (scGPT ``GeneEncoder``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        return self.enc_norm(self.embedding(ids))


class ContinuousValueEncoder(nn.Module):
    """Value -> Linear(1, D) -> ReLU -> Linear(D, D) -> LayerNorm -> Dropout.

    The input is clamped at ``max_value`` (scGPT ``ContinuousValueEncoder``).
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class CategoryValueEncoder(nn.Module):
    """Bin id -> embedding -> LayerNorm (scGPT ``CategoryValueEncoder``).

    ``pad_value`` (negative) is mapped to an extra padding row ``n_bins``.
    """

    def __init__(self, n_bins: int, d_model: int):
        super().__init__()
        self.n_bins = n_bins
        self.embedding = nn.Embedding(n_bins + 1, d_model, padding_idx=n_bins)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        ids = torch.where(x < 0, self.n_bins, x.round().long().clamp(0, self.n_bins - 1))
        return self.enc_norm(self.embedding(ids))


# --- transformer ----------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Runs through :func:`torch.nn.functional.scaled_dot_product_attention` (flash /
    memory-efficient kernels on GPU). ``Wqkv`` rows are ``[q; k; v]``, heads contiguous within
    each — the layout of both torch's ``in_proj_weight`` and flash-attn's ``Wqkv``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()  # dropout: on the attention weights
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.dropout = dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))

    def attention_weights(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention probabilities ``(B, H, L, L)`` (query rows, key columns).

        Computed explicitly (not through SDPA's fused kernels), for inspection; memory grows
        as ``B · H · L²``.
        """
        B, L, D = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.n_heads, D // self.n_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q.float() @ k.float().transpose(-1, -2)) / (D // self.n_heads) ** 0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return torch.softmax(scores, dim=-1)


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward block, post-norm by default, pre-norm optional.

    Post-norm as in :class:`torch.nn.TransformerEncoderLayer` and scGPT.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hid: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        attn_dropout: float | None = None,
    ):
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.self_attn = SelfAttention(d_model, n_heads, attn_dropout)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation={activation!r}; use 'relu' or 'gelu'.")
        self.activation = F.relu if activation == "relu" else F.gelu
        self.norm_first = norm_first

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def attention_weights(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention probabilities ``(B, H, L, L)`` of this layer for its input ``x``."""
        return self.self_attn.attention_weights(self.norm1(x) if self.norm_first else x, attn_mask)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout1(self.self_attn(self.norm1(x), attn_mask))
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self.dropout1(self.self_attn(x, attn_mask)))
        return self.norm2(x + self._ff(x))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (``layers.N.*``).

    With ``gradient_checkpointing = True``, training passes keep only each layer's input and
    recompute the layer's activations during the backward pass (``torch.utils.checkpoint``,
    random state preserved, so dropout draws the same masks): activation memory no longer
    grows with the number of layers, at about one more forward pass of compute. Passes
    without gradients are unaffected.
    """

    def __init__(self, n_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(**layer_kwargs) for _ in range(n_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
        return x

    def attention_weights(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, layer: int = -1
    ) -> torch.Tensor:
        """Attention probabilities ``(B, H, L, L)`` of layer ``layer`` (negative: from the end).

        Only the layers before it are run.
        """
        n = len(self.layers)
        if not -n <= layer < n:
            raise ValueError(f"layer={layer} does not exist: the model has {n} layers.")
        layer %= n
        for block in self.layers[:layer]:
            x = block(x, attn_mask)
        return self.layers[layer].attention_weights(x, attn_mask)


# --- attention masks ------------------------------------------------------------------
def padding_attn_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """SDPA boolean mask ``(B, 1, 1, L)`` (True = may attend) from a key padding mask.

    The key padding mask is ``(B, L)`` (True = pad).
    """
    return ~padding_mask[:, None, None, :]


def generative_attn_mask(known: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """ScGPT's generative attention mask, ``(B, 1, L, L)``, True = may attend.

    ``known`` ``(B, L)`` is True at ``<cls>`` and at tokens whose value is given. Every
    query attends to the known, non-pad keys; an unknown query also attends to itself and
    to no other unknown token. So known outputs do not depend on the unknown set, and the
    output at one unknown position does not depend on the other unknown genes.
    """
    L = known.shape[1]
    keys = (known & ~padding_mask)[:, None, :]  # (B, 1, L)
    eye = torch.eye(L, dtype=torch.bool, device=known.device)[None]  # (1, L, L)
    return (keys | eye)[:, None]


# --- decoders -------------------------------------------------------------------------
class ExprDecoder(nn.Module):
    """Per-token expression prediction: 3-layer MLP with LeakyReLU (``decoder.fc.*``)."""

    def __init__(self, d_model: int, d_in: int | None = None):
        super().__init__()
        d_in = d_model if d_in is None else d_in
        self.fc = nn.Sequential(
            nn.Linear(d_in, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L)
        return self.fc(x).squeeze(-1)


class MVCDecoder(nn.Module):
    """Cell-prompt ("inner product") decoder: predicts each gene's value from the cell embedding.

    The prediction is ``W(sigmoid(gene2query(gene_emb))) · cell_emb``.
    """

    def __init__(self, d_model: int, d_in: int | None = None):
        super().__init__()
        d_in = d_model if d_in is None else d_in
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_in, bias=False)

    def forward(self, cell_emb: torch.Tensor, gene_embs: torch.Tensor) -> torch.Tensor:
        # cell_emb (B, D_in), gene_embs (B, L, D) -> (B, L)
        query = self.query_activation(self.gene2query(gene_embs))
        return torch.bmm(self.W(query), cell_emb.unsqueeze(2)).squeeze(2)


class ClsDecoder(nn.Module):
    """Classifier on the cell embedding.

    ``n_layers - 1`` × (Linear, ReLU, LayerNorm), then a linear output
    (``cls_decoder._decoder.*``, ``cls_decoder.out_layer``).
    """

    def __init__(self, d_model: int, n_classes: int, n_layers: int = 3):
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(n_layers - 1):
            self._decoder.extend([nn.Linear(d_model, d_model), nn.ReLU(), nn.LayerNorm(d_model)])
        self.out_layer = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, n_classes)
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-lambd`` backward.

    For domain-adversarial training (Ganin & Lempitsky 2015).
    """
    return _GradReverse.apply(x, lambd)


class AdversarialDiscriminator(nn.Module):
    """Batch discriminator on the cell embedding behind a gradient-reversal layer.

    scGPT's DAB (``grad_reverse_discriminator.*``): it learns to tell batches apart, the
    encoder below it learns to make that impossible.
    """

    def __init__(self, d_model: int, n_batches: int, n_layers: int = 3, lambd: float = 1.0):
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(n_layers - 1):
            self._decoder.extend(
                [nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.LayerNorm(d_model)]
            )
        self.out_layer = nn.Linear(d_model, n_batches)
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, n_batches)
        x = grad_reverse(x, self.lambd)
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class DomainSpecificBatchNorm(nn.Module):
    """One :class:`~torch.nn.BatchNorm1d` per batch ("domain") over the token embeddings.

    scGPT's DSBN (``dsbn.bns.N.*``). Statistics are taken over the non-pad tokens of the
    cells of each batch; a minibatch may mix batches.
    """

    def __init__(self, d_model: int, n_batches: int, eps: float = 6.1e-5):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm1d(d_model, eps=eps) for _ in range(n_batches))

    def forward(
        self, x: torch.Tensor, batch: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:  # (B, L, D), (B,), (B, L) -> (B, L, D)
        out = x.clone()
        for b in torch.unique(batch).tolist():  # loops over batches present, not cells
            sel = (batch == b)[:, None] & ~padding_mask  # (B, L)
            out[sel] = self.bns[b](x[sel]).to(x.dtype)
        return out


class BatchLabelEncoder(nn.Module):
    """Batch embedding + LayerNorm (``batch_encoder.*``), concatenated to the decoders' input.

    That way the decoders, not the cell embedding, account for batch.
    """

    def __init__(self, n_batches: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(n_batches, d_model)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, D)
        return self.enc_norm(self.embedding(batch))


# --- the whole model ------------------------------------------------------------------
class ScGPTTransformer(nn.Module):
    """The scGPT transformer: embeddings, encoder stack and the generative heads.

    Parameters
    ----------
    n_tokens
        Vocabulary size.
    d_model, n_heads, d_hid, n_layers
        Width, heads, feed-forward width and depth (scGPT_human: 512, 8, 512, 12).
    dropout
        Dropout in value encoder, residual and feed-forward paths.
    attn_dropout
        Dropout on attention weights; ``None`` = ``dropout`` (as scGPT). It only acts in
        training and keeps SDPA off its fused kernels, so celltx's model class defaults
        to 0.
    pad_id
        Vocabulary id of ``<pad>`` (embedding padding index).
    input_emb_style
        ``"continuous"`` (scGPT default) or ``"category"`` value encoder.
    n_bins
        Number of bins (``"category"`` only).
    norm_first
        Pre-norm layers instead of scGPT's post-norm.
    activation
        Feed-forward activation, ``"relu"`` or ``"gelu"``.
    do_mvc
        Build the cell-prompt (MVC) decoder.
    n_cls
        Build a classifier head (``cls_decoder``) with this many classes.
    n_layers_cls
        Layers of the classifier and of the batch discriminator (scGPT: 3).
    n_batches
        Number of batches, for the batch-aware parts below.
    dsbn
        Domain-specific batch norm of the token embeddings (needs ``n_batches``).
    dab
        Adversarial batch discriminator on the cell embedding (needs ``n_batches``).
    batch_token
        Batch embedding concatenated to the decoders' input (scGPT's
        ``use_batch_labels``; needs ``n_batches``).
    perturbation
        Perturbation flag embedding (``pert_encoder``, 3 flags as scGPT: not perturbed,
        perturbed, padding), added to the token embeddings.
    n_modalities
        Build a modality embedding (``mod_encoder``) for sequences that mix modalities
        (RNA genes and ATAC peaks): one row for ``<cls>`` and one per modality, added to
        the token embeddings. It starts at zero, so a model loaded from an RNA-only
        checkpoint computes exactly what the checkpoint does until it is trained.

    Examples
    --------
    >>> import torch
    >>> from celltx.nn import ScGPTTransformer
    >>> net = ScGPTTransformer(n_tokens=10, d_model=16, n_heads=2, d_hid=16, n_layers=1, pad_id=0)
    >>> ids = torch.tensor([[1, 5, 6, 0]]); vals = torch.tensor([[-2.0, 3.0, 1.0, -2.0]])
    >>> net.encode(ids, vals, ids.eq(0)).shape
    torch.Size([1, 4, 16])
    """

    def __init__(
        self,
        n_tokens: int,
        d_model: int = 512,
        n_heads: int = 8,
        d_hid: int = 512,
        n_layers: int = 12,
        dropout: float = 0.2,
        pad_id: int | None = None,
        input_emb_style: str = "continuous",
        n_bins: int | None = 51,
        norm_first: bool = False,
        activation: str = "relu",
        do_mvc: bool = True,
        attn_dropout: float | None = None,
        n_cls: int | None = None,
        n_layers_cls: int = 3,
        n_batches: int | None = None,
        dsbn: bool = False,
        dab: bool = False,
        batch_token: bool = False,
        perturbation: bool = False,
        n_modalities: int = 0,
    ):
        super().__init__()
        if (dsbn or dab or batch_token) and not n_batches:
            raise ValueError("dsbn, dab and batch_token need n_batches (a registered batch_key).")
        self.d_model = d_model
        self.encoder = GeneEncoder(n_tokens, d_model, padding_idx=pad_id)
        if input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model, dropout)
        elif input_emb_style == "category":
            if n_bins is None:
                raise ValueError("input_emb_style='category' needs n_bins.")
            self.value_encoder = CategoryValueEncoder(n_bins, d_model)
        else:
            raise ValueError(
                f"input_emb_style={input_emb_style!r}; use 'continuous' or 'category'."
            )
        self.transformer_encoder = TransformerEncoder(
            n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_hid=d_hid,
            dropout=dropout,
            activation=activation,
            norm_first=norm_first,
            attn_dropout=attn_dropout,
        )
        d_dec = 2 * d_model if batch_token else d_model
        self.decoder = ExprDecoder(d_model, d_dec)
        self.mvc_decoder = MVCDecoder(d_model, d_dec) if do_mvc else None
        self.cls_decoder = ClsDecoder(d_model, n_cls, n_layers_cls) if n_cls else None
        self.dsbn = DomainSpecificBatchNorm(d_model, n_batches) if dsbn else None
        self.grad_reverse_discriminator = (
            AdversarialDiscriminator(d_model, n_batches, n_layers_cls) if dab else None
        )
        self.batch_encoder = BatchLabelEncoder(n_batches, d_model) if batch_token else None
        # scGPT's perturbation flag embedding: 0 = not perturbed, 1 = perturbed, 2 = padding
        self.pert_encoder = nn.Embedding(3, d_model, padding_idx=PERT_PAD) if perturbation else None
        self.mod_encoder = None
        if n_modalities:
            self.mod_encoder = nn.Embedding(n_modalities + 1, d_model)  # row 0: <cls>
            nn.init.zeros_(self.mod_encoder.weight)

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

        Examples
        --------
        >>> from celltx.nn import ScGPTConfig, ScGPTTransformer
        >>> net = ScGPTTransformer.from_config(ScGPTConfig(d_model=16, n_heads=2, n_layers=1), n_tokens=10)
        >>> net.d_model
        16
        """
        return cls(
            n_tokens,
            d_model=config.d_model,
            n_heads=config.n_heads,
            d_hid=config.d_hid_resolved,
            n_layers=config.n_layers,
            dropout=config.dropout,
            attn_dropout=config.attn_dropout,
            pad_id=pad_id,
            input_emb_style=config.input_emb_style,
            n_bins=config.n_bins,
            norm_first=config.norm_first,
            activation=config.activation,
            do_mvc=True,
            n_cls=n_cls,
            n_layers_cls=config.n_layers_cls,
            n_batches=n_batches,
            dsbn=config.dsbn,
            dab=config.dab,
            batch_token=config.batch_token,
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

    def _encoder_input(self, gene_ids, values, padding_mask, known, batch, pert_flags, modality):
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


class CellTextHead(nn.Module):
    """Projections of cell and text embeddings into one space, and their similarity (LangCell).

    ``cell`` maps a ``<cls>`` embedding ``(…, d_model)`` and ``text`` a frozen text encoder's
    embedding ``(…, d_text)`` to unit vectors of width ``d_text``; :meth:`logits` is their
    cosine times a learnable scale (1 / temperature, at most 100, CLIP's bound). The text
    projection starts as the identity, so that texts never seen in training keep the
    encoder's geometry.

    Parameters
    ----------
    d_model
        Width of the cell embedding.
    d_text
        Width of the text embeddings (and of the joint space).
    temperature
        Initial temperature.
    """

    def __init__(self, d_model: int, d_text: int, temperature: float = 0.07):
        super().__init__()
        self.cell_proj = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_text))
        self.text_proj = nn.Linear(d_text, d_text)
        nn.init.eye_(self.text_proj.weight)
        nn.init.zeros_(self.text_proj.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def cell(self, cell_emb: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space vectors of ``<cls>`` embeddings."""
        return F.normalize(self.cell_proj(cell_emb.float()), dim=-1)

    def text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space vectors of text embeddings."""
        return F.normalize(self.text_proj(text_emb.float()), dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        """1 / temperature, clamped to at most 100."""
        return self.log_scale.exp().clamp(max=100.0)

    def logits(self, cell_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(n_cells, n_texts)``."""
        return self.scale * self.cell(cell_emb) @ self.text(text_emb).T
