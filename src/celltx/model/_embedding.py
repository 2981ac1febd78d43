"""Cell and gene embeddings and the held-out generation score."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import closing

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch import LightningDataModule

from ._docs import doc_params
from ._host import ModelHost

#: batches between two returns of the C heap's free pages to the system (``trim_heap``)
TRIM_EVERY = 16


class EmbeddingMixin(ModelHost):
    """Cell and gene embeddings and the held-out generation score."""

    @doc_params
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
        normalize: bool = False,
        batch_tokens: int | str | None = "auto",
        pooling: str = "cls",
        datamodule: LightningDataModule | None = None,
    ) -> np.ndarray:
        """Cell embeddings: the transformer's ``<cls>`` output (or a pooling of its tokens).

        Deterministic: the same cell gives the same embedding in any call and batch.
        ``adata`` may have other genes, in another order, than the training data: genes are
        matched to the vocabulary by name and the others ignored (their number is logged).

        Parameters
        ----------
        %(adata)s
        %(indices)s
        %(batch_size)s
        %(max_seq_len)s
        normalize
            Divide each embedding by its L2 norm (as scGPT's ``embed_data``).
        batch_tokens
            Token-budget batching: sort cells by sequence length and fill each forward pass
            with at most ``batch_tokens`` padded tokens (``batch_size``, when given, caps the
            cells per pass). Short cells then share a pass instead of being padded to long
            ones, so throughput rises and peak memory follows the budget, not the longest
            cell. Results are returned in the cells' order and equal those of plain batches
            (to float tolerance). ``"auto"`` (default): :data:`celltx.data.DEFAULT_BATCH_TOKENS`
            (16,384) for RNA models, plain batches for models with ATAC; ``None``: plain
            batches of ``batch_size`` cells. Raise it on a GPU with memory to spare.
        pooling
            ``"cls"`` (default: the ``<cls>`` output, which every objective trains),
            ``"mean"`` (mean output of the cell's tokens), ``"weighted"`` (that mean weighted
            by expression bin) or ``"concat"`` (``<cls>`` and mean, ``2 × d_model``). Measured
            in the representation docs.
        datamodule
            Embed the cells of scvi-tools' :class:`~scvi.dataloaders.TileDBDataModule` (a SOMA
            query, ``pip install 'celltx[soma]'``) instead of an AnnData, one row per cell in
            the query's order. Build it with ``shuffle=False`` (and the default
            ``train_size=1.0``); its batches are used as they are (``batch_size`` and
            ``batch_tokens`` do not apply). Genes are matched by name (``var`` column
            :attr:`gene_column`). Or scvi-tools'
            :class:`~scvi.dataloaders.MappedCollectionDataModule` (a lamindb collection): its
            cells in the collection's order, ``batch_size`` cells at a time (default 64),
            genes by their ``var_names``.

        Returns
        -------
        numpy.ndarray
            ``float32`` array ``(n_cells, d_model)`` (``2 × d_model`` with
            ``pooling="concat"``). Cells without any expressed vocabulary
            gene get the embedding of a sequence holding only ``<cls>`` (a warning says how
            many).

        Examples
        --------
        >>> adata.obsm["X_scgpt"] = model.get_latent_representation()  # doctest: +SKIP
        >>> sc.pp.neighbors(adata, use_rep="X_scgpt")  # doctest: +SKIP

        From a SOMA experiment, in the query's cell order:

        >>> dm = TileDBDataModule(query, layer_name="data", shuffle=False,
        ...                       batch_column_names=["dataset_id"])  # doctest: +SKIP
        >>> emb = model.get_latent_representation(datamodule=dm)  # doctest: +SKIP
        """
        if not self.is_trained_:
            warnings.warn(
                "This model was neither trained nor loaded from a checkpoint: its embeddings come "
                "from random weights. Call model.train() or ScGPT.load_pretrained(...) first.",
                UserWarning,
                stacklevel=2,
            )
        if datamodule is not None:
            if adata is not None or indices is not None:
                raise ValueError(
                    "Pass datamodule alone: its query selects the cells (not adata or indices)."
                )
        else:
            adata = self._validate_anndata(adata)
        emb, n_genes = self._run_inference(
            adata,
            indices,
            batch_size,
            lambda b: self.module.cell_embedding(**b, max_seq_len=max_seq_len, pooling=pooling),
            batch_tokens=batch_tokens,
            max_seq_len=max_seq_len,
            datamodule=datamodule,
            trim_every=TRIM_EVERY,
        )
        n_empty = int((n_genes == 0).sum())
        if n_empty:
            warnings.warn(
                f"{n_empty} cells have no expressed gene of the vocabulary; their embedding is "
                "that of an empty cell (only <cls>). Filter them with "
                "sc.pp.filter_cells(adata, min_genes=1) if unwanted.",
                UserWarning,
                stacklevel=2,
            )
        # after contrastive training: the training cells' mean <cls> output (a constant offset)
        emb = self.module.remove_cell_offset(emb, pooling).numpy().astype(np.float32)
        if normalize:
            emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        return emb

    @torch.inference_mode()
    def get_gene_embeddings(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """Gene token embeddings (embedding + LayerNorm) as a genes × ``d_model`` DataFrame.

        Parameters
        ----------
        genes
            Genes to return (default: every gene of the vocabulary). Unknown genes raise.
        """
        genes = self.vocab.genes if genes is None else [str(g) for g in genes]
        ids = self.vocab.lookup(genes)
        if (ids < 0).any():
            missing = [g for g, i in zip(genes, ids, strict=True) if i < 0]
            raise ValueError(f"{len(missing)} genes are not in the vocabulary, e.g. {missing[:5]}.")
        self.module.eval()
        emb = self.module.gene_embeddings(torch.as_tensor(ids, device=self.device))
        return pd.DataFrame(emb.float().cpu().numpy(), index=pd.Index(genes, name="gene"))

    @torch.inference_mode()
    def score_generation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        reference_indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        """Held-out generation error next to a per-gene mean baseline.

        For each cell of ``indices`` (default: the validation cells) a reproducible
        known / unknown split is drawn (ratios from ``mask_ratio``); the model predicts the
        unknown genes' bins from the known ones. The baseline predicts each unknown gene's
        mean bin over the ``reference_indices`` cells (default: the training cells).

        Returns
        -------
        dict
            ``{"gep_mse", "mvc_mse", "gene_mean_mse", "n_tokens"}``: mean squared error of
            the gene-prompt and cell-prompt predictions and of the baseline over all unknown
            tokens.
        """
        adata = self._validate_anndata(adata)
        if indices is None:
            indices = getattr(self, "validation_indices", None)
            if indices is None or len(indices) == 0:
                indices = np.arange(adata.n_obs)
        if reference_indices is None:
            reference_indices = getattr(self, "train_indices", None)
            if reference_indices is None:
                reference_indices = np.arange(adata.n_obs)
        sq = {"gep": 0.0, "mvc": 0.0, "mean": 0.0, "n": 0}
        gen = torch.Generator(device=self.device).manual_seed(seed)
        ref, _ = self._inference_batches(adata, reference_indices, batch_size)
        with closing(ref):
            gene_mean = self.module.mean_token_values(
                {"x": b["x"], "x_atac": b["x_atac"]} for b in ref
            )

        def add_errors(b):
            errors = self.module.heldout_squared_errors(
                b["x"], gen, gene_mean, b["batch"], x_atac=b["x_atac"]
            )
            for key in sq:
                sq[key] += errors[key]

        self._run_inference(adata, indices, batch_size, add_errors)
        n = max(sq["n"], 1)
        return {
            "gep_mse": sq["gep"] / n,
            "mvc_mse": sq["mvc"] / n,
            "gene_mean_mse": sq["mean"] / n,
            "n_tokens": int(sq["n"]),
        }
