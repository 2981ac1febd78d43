"""Output heads on the transformer's tokens and cell embedding.

Expression and cell-prompt decoders, classifier, batch discriminator (with gradient
reversal) and the cell–text projection head.

Parameter names equal scGPT's (``decoder.fc.*``, ``mvc_decoder.*``, ``cls_decoder.*``,
``grad_reverse_discriminator.*``). A hyperparameter left ``None`` takes
:class:`~celltx.nn.ScGPTConfig`'s value; the constants below are fixed by the methods they
come from, not settings. Shapes in comments: B batch, L tokens, D model width.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._config import config_default

#: Gradient-reversal strength of the batch discriminator (scGPT's DAB: the reversed gradient
#: equals the discriminator's; its loss weight scales it instead).
GRAD_REVERSE_LAMBDA = 1.0
#: Upper bound of the cell–text head's learned logit scale (1 / temperature), CLIP's bound.
MAX_LOGIT_SCALE = 100.0


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
        out: torch.Tensor = self.fc(x)
        return out.squeeze(-1)


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
    (``cls_decoder._decoder.*``, ``cls_decoder.out_layer``). ``n_layers`` ``None``:
    :attr:`ScGPTConfig.n_layers_cls <celltx.nn.ScGPTConfig>`.
    """

    def __init__(self, d_model: int, n_classes: int, n_layers: int | None = None):
        super().__init__()
        n_layers = config_default(n_layers, "n_layers_cls")
        self._decoder = nn.ModuleList()
        for _ in range(n_layers - 1):
            self._decoder.extend([nn.Linear(d_model, d_model), nn.ReLU(), nn.LayerNorm(d_model)])
        self.out_layer = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, n_classes)
        for layer in self._decoder:
            x = layer(x)
        out: torch.Tensor = self.out_layer(x)
        return out


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float | None = None) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-lambd`` backward.

    For domain-adversarial training (Ganin & Lempitsky 2015). ``lambd`` ``None``:
    :data:`GRAD_REVERSE_LAMBDA`.
    """
    out: torch.Tensor = _GradReverse.apply(x, GRAD_REVERSE_LAMBDA if lambd is None else lambd)
    return out


class AdversarialDiscriminator(nn.Module):
    """Batch discriminator on the cell embedding behind a gradient-reversal layer.

    scGPT's DAB (``grad_reverse_discriminator.*``): it learns to tell batches apart, the
    encoder below it learns to make that impossible. ``n_layers`` ``None``:
    :attr:`ScGPTConfig.n_layers_cls <celltx.nn.ScGPTConfig>`; ``lambd`` ``None``:
    :data:`GRAD_REVERSE_LAMBDA`.
    """

    def __init__(
        self,
        d_model: int,
        n_batches: int,
        n_layers: int | None = None,
        lambd: float | None = None,
    ):
        super().__init__()
        n_layers = config_default(n_layers, "n_layers_cls")
        lambd = GRAD_REVERSE_LAMBDA if lambd is None else lambd
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
        out: torch.Tensor = self.out_layer(x)
        return out


class CellTextHead(nn.Module):
    """Projections of cell and text embeddings into one space, and their similarity (LangCell).

    ``cell`` maps a ``<cls>`` embedding ``(…, d_model)`` and ``text`` a frozen text encoder's
    embedding ``(…, d_text)`` to unit vectors of width ``d_text``; :meth:`logits` is their
    cosine times a learnable scale (1 / temperature, at most :data:`MAX_LOGIT_SCALE`, CLIP's
    bound). The text projection starts as the identity, so that texts never seen in
    training keep the encoder's geometry.

    Parameters
    ----------
    d_model
        Width of the cell embedding.
    d_text
        Width of the text embeddings (and of the joint space).
    temperature
        Initial temperature; ``None``: :attr:`ScGPTConfig.text_temperature
        <celltx.nn.ScGPTConfig>`.
    """

    def __init__(self, d_model: int, d_text: int, temperature: float | None = None):
        super().__init__()
        self.cell_proj = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_text))
        self.text_proj = nn.Linear(d_text, d_text)
        nn.init.eye_(self.text_proj.weight)
        nn.init.zeros_(self.text_proj.bias)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config_default(temperature, "text_temperature")))
        )

    def cell(self, cell_emb: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space vectors of ``<cls>`` embeddings."""
        return F.normalize(self.cell_proj(cell_emb.float()), dim=-1)

    def text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space vectors of text embeddings."""
        return F.normalize(self.text_proj(text_emb.float()), dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        """1 / temperature, clamped to at most :data:`MAX_LOGIT_SCALE`."""
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def logits(self, cell_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(n_cells, n_texts)``."""
        return self.scale * self.cell(cell_emb) @ self.text(text_emb).T
