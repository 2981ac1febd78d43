"""The transformer stack: multi-head self-attention, encoder layers and attention masks.

Parameter names equal scGPT's (``transformer_encoder.layers.N.self_attn.Wqkv``,
``…linear1``, ``…norm1``, …; :mod:`celltx.io` renames the other attention layouts onto
them). A hyperparameter left ``None`` takes :class:`~celltx.nn.ScGPTConfig`'s value; the
constants below are scGPT's architecture, not settings. Shapes in comments: B batch, L
tokens, D model width, H heads.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._config import config_default

#: The attention projections (``Wqkv``, ``out_proj``) have biases, as torch's
#: ``MultiheadAttention`` and flash-attn's in scGPT.
ATTENTION_BIAS = True
#: ``eps`` of the layers' LayerNorms (torch's ``TransformerEncoderLayer`` default, scGPT's).
LAYER_NORM_EPS = 1e-5


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Runs through :func:`torch.nn.functional.scaled_dot_product_attention` (flash /
    memory-efficient kernels on GPU). ``Wqkv`` rows are ``[q; k; v]``, heads contiguous within
    each — the layout of both torch's ``in_proj_weight`` and flash-attn's ``Wqkv``.

    ``dropout`` (on the attention weights) ``None``: :attr:`ScGPTConfig.attn_dropout
    <celltx.nn.ScGPTConfig>`; ``bias`` ``None``: :data:`ATTENTION_BIAS`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float | None = None,
        bias: bool | None = None,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        bias = ATTENTION_BIAS if bias is None else bias
        self.n_heads = n_heads
        self.dropout = config_default(dropout, "attn_dropout")
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, Dh)
        out: torch.Tensor = self.out_proj(y.transpose(1, 2).reshape(B, L, D))
        return out

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

    Post-norm as in :class:`torch.nn.TransformerEncoderLayer` and scGPT. ``dropout``,
    ``activation``, ``norm_first`` and ``attn_dropout`` left ``None`` take
    :class:`~celltx.nn.ScGPTConfig`'s values; ``layer_norm_eps`` ``None``:
    :data:`LAYER_NORM_EPS`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hid: int,
        dropout: float | None = None,
        activation: str | None = None,
        norm_first: bool | None = None,
        layer_norm_eps: float | None = None,
        attn_dropout: float | None = None,
    ):
        super().__init__()
        dropout = config_default(dropout, "dropout")
        activation = config_default(activation, "activation")
        norm_first = config_default(norm_first, "norm_first")
        layer_norm_eps = LAYER_NORM_EPS if layer_norm_eps is None else layer_norm_eps
        self.self_attn = SelfAttention(
            d_model, n_heads, config_default(attn_dropout, "attn_dropout")
        )
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
        out: torch.Tensor = self.dropout2(
            self.linear2(self.dropout(self.activation(self.linear1(x))))
        )
        return out

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
        out: torch.Tensor = self.norm2(x + self._ff(x))
        return out


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (``layers.N.*``).

    With ``gradient_checkpointing = True``, training passes keep only each layer's input and
    recompute the layer's activations during the backward pass (``torch.utils.checkpoint``,
    random state preserved, so dropout draws the same masks): activation memory no longer
    grows with the number of layers, at about one more forward pass of compute. Passes
    without gradients are unaffected.
    """

    def __init__(self, n_layers: int, **layer_kwargs: Any) -> None:
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
        return cast(TransformerEncoderLayer, self.layers[layer]).attention_weights(x, attn_mask)


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
