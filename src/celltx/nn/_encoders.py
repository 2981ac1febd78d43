"""Input side of the scGPT transformer: token, value and batch encoders, per-batch norm.

Parameter names equal scGPT's (``encoder.embedding``, ``value_encoder.linear1``,
``batch_encoder.*``, ``dsbn.bns.N.*``), so that published state dicts load unchanged.
A hyperparameter left ``None`` takes :class:`~celltx.nn.ScGPTConfig`'s value; the
constants below are scGPT's architecture, not settings. Shapes in comments: B batch, L
tokens, D model width.
"""

from __future__ import annotations

import torch
from torch import nn

from ._config import config_default

#: Input values are clamped at this before the value MLP (scGPT's ``ContinuousValueEncoder``
#: ``max_value``). Binned inputs never reach it; raw values above it are saturated.
VALUE_CLAMP = 512.0
#: ``eps`` of each domain-specific batch norm (scGPT's ``DomainSpecificBatchNorm1d``).
DSBN_EPS = 6.1e-5


class GeneEncoder(nn.Module):
    """Gene token embedding followed by LayerNorm (scGPT ``GeneEncoder``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        out: torch.Tensor = self.enc_norm(self.embedding(ids))
        return out


class ContinuousValueEncoder(nn.Module):
    """Value -> Linear(1, D) -> ReLU -> Linear(D, D) -> LayerNorm -> Dropout.

    The input is clamped at ``max_value`` (scGPT ``ContinuousValueEncoder``).

    Parameters
    ----------
    d_model
        Output width.
    dropout
        Dropout after the norm; ``None``: :attr:`ScGPTConfig.dropout <celltx.nn.ScGPTConfig>`.
    max_value
        Clamp of the input; ``None``: :data:`VALUE_CLAMP` (scGPT's 512).
    """

    def __init__(self, d_model: int, dropout: float | None = None, max_value: float | None = None):
        super().__init__()
        self.dropout = nn.Dropout(p=config_default(dropout, "dropout"))
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = VALUE_CLAMP if max_value is None else max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        x = self.linear2(self.activation(self.linear1(x)))
        out: torch.Tensor = self.dropout(self.norm(x))
        return out


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
        out: torch.Tensor = self.enc_norm(self.embedding(ids))
        return out


class DomainSpecificBatchNorm(nn.Module):
    """One :class:`~torch.nn.BatchNorm1d` per batch ("domain") over the token embeddings.

    scGPT's DSBN (``dsbn.bns.N.*``). Statistics are taken over the non-pad tokens of the
    cells of each batch; a minibatch may mix batches. ``eps`` ``None``: :data:`DSBN_EPS`.
    """

    def __init__(self, d_model: int, n_batches: int, eps: float | None = None):
        super().__init__()
        eps = DSBN_EPS if eps is None else eps
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
        out: torch.Tensor = self.enc_norm(self.embedding(batch))
        return out
