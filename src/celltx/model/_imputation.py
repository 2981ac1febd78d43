"""Imputation / denoising: every gene's value predicted from the rest of the cell."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._docs import doc_params
from ._host import ModelHost


class ImputationMixin(ModelHost):
    """:meth:`get_normalized_expression`, scvi-tools' name for a model's denoised expression."""

    @doc_params
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        chunk_size: int = 512,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Each gene's value predicted by the generative decoder from the rest of the cell.

        The cell's expressed genes (as many as ``max_seq_len`` allows, chosen reproducibly)
        are the known tokens; every gene of the panel is a query whose value the gene-prompt
        decoder generates (:meth:`celltx.module.ScGPTModule.impute`). Genes that are zero in
        the input (dropouts, or values hidden for an evaluation) are imputed from the others;
        an expressed gene among the known tokens sees its own value and is reconstructed.

        The scale is the model's value scale: the per-cell expression bin, ``0`` = not
        expressed … ``n_bins - 1`` = among the cell's highest genes (ranks within the cell,
        so raw counts and log-normalized input give the same scale). Compare genes within a
        cell, or a gene's values across cells as a relative level; unlike scVI's it is not a
        library-size normalised count.

        Parameters
        ----------
        %(adata)s
        %(indices)s
        gene_list
            Genes to return: a list of names, or one name (default: every gene of the data
            that is in the vocabulary).
        %(batch_size)s
        chunk_size
            Genes generated per forward pass (memory; the result does not depend on it).
        return_numpy
            Return an array instead of a DataFrame.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            Cells × genes, indexed by ``obs_names`` and gene names.

        Examples
        --------
        >>> denoised = model.get_normalized_expression(gene_list=["CD3E", "MS4A1"])  # doctest: +SKIP
        """
        if isinstance(gene_list, str):
            gene_list = [gene_list]  # one gene, not the characters of its name
        adata = self._validate_anndata(adata)
        symbols = self._setup_args(adata).get("gene_symbols")
        var_names = adata.var_names if not symbols else pd.Index(adata.var[symbols].astype(str))
        rows = self._cells(adata, indices)
        panel = {}
        subset = None
        if gene_list is not None:  # generate only the listed genes (the cost scales with them)
            pos = pd.Index(np.asarray(var_names).astype(str)).get_indexer(
                [str(g) for g in gene_list]
            )
            if (pos >= 0).any():  # none known: the full panel, and the error below names them
                subset = torch.as_tensor(np.unique(pos[pos >= 0]), dtype=torch.long)

        def impute(b):
            pred, panel["cols"] = self.module.impute(**b, chunk_size=chunk_size, genes=subset)
            return pred.float()

        X = self._run_inference(adata, rows, batch_size, impute).numpy().astype(np.float32)
        cols = panel["cols"].cpu().numpy()
        genes = pd.Index(np.asarray(var_names)[cols].astype(str), name="gene")
        if gene_list is not None:
            wanted = [str(g) for g in gene_list]
            missing = [g for g in wanted if g not in set(genes)]
            if missing:
                raise ValueError(
                    f"{len(missing)} genes of gene_list are not genes of the data in the model's "
                    f"vocabulary, e.g. {missing[:5]}."
                )
            pos = genes.get_indexer(wanted)
            X, genes = X[:, pos], pd.Index(wanted, name="gene")
        if return_numpy:
            return X
        return pd.DataFrame(X, index=adata.obs_names[rows], columns=genes)
