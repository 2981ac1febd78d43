"""Attention inspection of :class:`~celltx.module.ScGPTModule`: gene–gene attention maps."""

from __future__ import annotations

import torch

from celltx.data import MOD_CLS, MOD_RNA

from ._host import ModuleHost


class AttentionMixin(ModuleHost):
    """:meth:`gene_attention`: one layer's attention among a fixed list of genes."""

    @torch.inference_mode()
    def gene_attention(
        self,
        x: torch.Tensor,
        columns: torch.Tensor,
        batch: torch.Tensor | None = None,
        layer: int = -1,
        include_zeros: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-averaged attention among the genes ``columns`` of ``x``, per cell.

        Every cell is encoded as ``<cls>`` followed by the same genes (the panel columns
        ``columns`` of ``x``, binned as the model's tokenizer bins them), so that position
        ``j`` means the same gene in every cell (:func:`celltx.data.fixed_gene_tokens`).

        Returns ``(B, K, K)`` attention probabilities between gene tokens (query rows, key
        columns; ``<cls>`` left out, so a row sums to at most 1), averaged over the heads of
        ``layer``, and ``(B, K)`` True where the gene is a token of the cell (all of them with
        ``include_zeros``).
        """
        tokens = self.tokenizer.fixed_genes(x, columns, include_zeros=include_zeros)
        modality = None
        if self.transformer.mod_encoder is not None:
            modality = torch.full_like(tokens.gene_ids, MOD_RNA)
            modality[:, 0] = MOD_CLS
        attn = self.transformer.attention_weights(
            tokens.gene_ids,
            tokens.values,
            tokens.padding_mask,
            batch=self._batch(batch),
            modality=modality,
            layer=layer,
        )
        return attn.mean(1)[:, 1:, 1:], ~tokens.padding_mask[:, 1:]
