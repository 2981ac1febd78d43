"""Tokenization of :class:`~celltx.module.ScGPTModule`: what it asks its :class:`~celltx.data.CellTokenizer`.

The tokenizer (``module.tokenizer``) holds the panel, the selection statistics and the
sequence assembly; these methods and attributes are the module's own names for them (as
they were before the tokenizer moved to :mod:`celltx.data`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from celltx.data import CellTokenizer, TokenizedBatch, Tokenizer

if TYPE_CHECKING:
    import numpy as np
    from scipy import sparse

from ._host import ModuleHost

#: buffers that moved from the module into its tokenizer (old state-dict key -> new one)
_MOVED = ("gene_medians", "rank_linear", "peak_idf", "gene_hvg")


def _tokenizer_attribute(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.tokenizer, name), doc=doc)


class TokenizationMixin(ModuleHost):
    """The module's tokenization, asked of its :class:`~celltx.data.CellTokenizer`."""

    tokenizer: CellTokenizer

    @staticmethod
    def _map_tokenizer_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
        """Saves from before the tokenizer was a submodule hold its buffers at the top."""
        for name in _MOVED:
            if prefix + name in state_dict:
                state_dict.setdefault(f"{prefix}tokenizer.{name}", state_dict.pop(prefix + name))

    @property
    def panel_gene_ids(self) -> torch.Tensor:
        """Vocabulary id of each RNA column (``-1``: not in the vocabulary)."""
        return self.tokenizer.gene_ids

    @panel_gene_ids.setter
    def panel_gene_ids(self, ids: torch.Tensor) -> None:
        self.tokenizer.gene_ids = ids

    @property
    def panel_atac_ids(self) -> torch.Tensor:
        """Vocabulary id of each ATAC column (``-1``: not in the vocabulary)."""
        return self.tokenizer.atac_ids

    @panel_atac_ids.setter
    def panel_atac_ids(self, ids: torch.Tensor) -> None:
        self.tokenizer.atac_ids = ids

    @property
    def atac_tokenizer(self) -> Tokenizer | None:
        """The ATAC :class:`~celltx.data.Tokenizer` (``tokenizer.atac``)."""
        return self.tokenizer.atac

    atac_values = _tokenizer_attribute("atac_values", "ATAC input values: binary or binned.")
    mask_ratio = _tokenizer_attribute("mask_ratio", "Held-out fractions of the generative split.")
    gene_medians = _tokenizer_attribute("gene_medians", "Non-zero median of each vocabulary gene.")
    rank_linear = _tokenizer_attribute("rank_linear", "Whether ranks use linear-scale medians.")
    peak_idf = _tokenizer_attribute("peak_idf", "IDF of each vocabulary peak.")
    gene_hvg = _tokenizer_attribute("gene_hvg", "1 for each highly variable vocabulary gene.")

    @contextmanager
    def gene_panel(
        self, gene_ids: torch.Tensor | None, atac_ids: torch.Tensor | None = None
    ) -> Iterator[TokenizationMixin]:
        """Temporarily use another column -> vocabulary-id mapping (other data)."""
        with self.tokenizer.panel(gene_ids, atac_ids):
            yield self

    @property
    def tokenizer_learns_from(self) -> tuple[str, ...]:
        """Modalities whose training cells :meth:`fit_tokenizer` needs (may be empty)."""
        return tuple(self.tokenizer.learns_from)

    def fit_tokenizer(
        self,
        x: np.ndarray | sparse.spmatrix | None = None,
        x_atac: np.ndarray | sparse.spmatrix | None = None,
    ) -> None:
        """Learn the tokenizer's selection statistics from training cells.

        See :meth:`celltx.data.CellTokenizer.fit`.
        """
        self.tokenizer.fit(x, x_atac)

    def set_gene_medians(self, ids: torch.Tensor, medians: torch.Tensor) -> None:
        """Store the non-zero medians of the genes ``ids`` (rank-value gene selection)."""
        self.tokenizer.set_gene_medians(ids, medians)

    def set_peak_idf(self, ids: torch.Tensor, idf: torch.Tensor) -> None:
        """Store the IDF of the peaks ``ids`` (TF-IDF peak selection)."""
        self.tokenizer.set_peak_idf(ids, idf)

    def set_gene_hvg(self, ids: torch.Tensor, mask: np.ndarray | torch.Tensor) -> None:
        """Mark the genes ``ids`` whose ``mask`` is true as highly variable (the others not)."""
        self.tokenizer.set_gene_hvg(ids, mask)

    def peak_scale(self) -> torch.Tensor:
        """Per ATAC panel column: the peak's IDF (0 outside the vocabulary)."""
        return self.tokenizer.peak_scale()

    def hvg_priority(self) -> torch.Tensor:
        """Per panel column: 1 for the highly variable genes of HVG-aware selection, else 0."""
        return self.tokenizer.hvg_priority()

    def rank_scale(self) -> torch.Tensor:
        """Per panel column: 1 / the gene's non-zero median (0 outside the vocabulary)."""
        return self.tokenizer.rank_scale()

    def atac_input(self, x_atac: torch.Tensor) -> torch.Tensor:
        """Peak values as the ATAC tokenizer takes them (see :meth:`CellTokenizer.atac_input`)."""
        return self.tokenizer.atac_input(x_atac)

    def tokenize(
        self,
        x: torch.Tensor | None,
        sample: str | None = None,
        max_seq_len: int | None = None,
        x_atac: torch.Tensor | None = None,
    ) -> TokenizedBatch:
        """Tokenize ``x`` ``(B, G)`` (and ``x_atac`` ``(B, P)`` for an ATAC part).

        Random genes while training, reproducible otherwise (see
        :meth:`celltx.data.CellTokenizer.forward`).
        """
        if sample is None:
            sample = "random" if self.training else "hash"
        tokens: TokenizedBatch = self.tokenizer(
            x, sample=sample, max_seq_len=max_seq_len, x_atac=x_atac
        )
        return tokens

    def generative_views(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> tuple[TokenizedBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training rows of a multimodal batch and their known / unknown split.

        See :meth:`celltx.data.CellTokenizer.generative_views`.
        """
        return self.tokenizer.generative_views(tokens, generator)

    def split_known(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the known / unknown split: ``(B, L)`` bool, True at ``<cls>`` and known genes."""
        return self.tokenizer.split_known(tokens, generator)
