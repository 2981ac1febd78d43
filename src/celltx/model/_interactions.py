"""Attention-based gene–gene interactions, averaged per group of cells."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ._docs import doc_params
from ._host import ModelHost

logger = logging.getLogger(__name__)

#: upper bound of one forward pass's attention tensor (B · heads · L² float32), in elements
_ATTENTION_ELEMENTS = 1 << 26


class InteractionMixin(ModelHost):
    """:meth:`get_gene_interactions`: attention between genes, per group of cells."""

    @doc_params
    @torch.inference_mode()
    def get_gene_interactions(
        self,
        adata: AnnData | None = None,
        genes: Sequence[str] | None = None,
        groupby: str | None = None,
        layer: int = -1,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        include_zeros: bool = True,
    ) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Gene × gene attention scores, averaged over cells (per group of cells).

        Every cell is encoded with the same genes (``genes``, in this order, binned as the
        model bins them), and the attention probabilities of ``layer`` are averaged over its
        heads and then over the cells — of each ``groupby`` group, e.g. perturbed and control
        cells (the workflow of scGPT's attention-based GRN tutorial). Attention is computed
        a few cells at a time (memory ``batch_size · heads · (len(genes) + 1)²`` floats), never
        for all cells at once.

        ``scores.loc[a, b]`` is the attention gene ``b``'s token pays to gene ``a``'s token:
        how much the model's representation of ``b`` reads ``a`` — an ``a → b`` score. A row
        is a gene's candidate targets; :func:`celltx.tl.interaction_changes` ranks the
        targets of one gene whose scores change most between two groups.

        Parameters
        ----------
        %(adata)s
        genes
            Genes to score, all of them in the data and in the vocabulary. Default: the data's
            vocabulary genes if at most ``max_seq_len - 1``, else that many of them — the
            ``highly_variable`` ones when ``var`` has that column, else the most expressed.
        groupby
            ``obs`` column: one matrix per category (cells with a missing value are left out).
            Default: one matrix over all cells.
        layer
            Transformer layer whose attention is read (negative: from the last, ``-1``).
        %(indices)s
        batch_size
            Cells per forward pass (default: as many as keep the attention tensor of one pass
            under 2**26 elements, at most 128).
        include_zeros
            Genes a cell does not express are tokens of value 0 (default, as in scGPT's
            tutorial). With ``False`` they are left out of that cell, and a pair's score is
            averaged over the cells that express both genes (``NaN`` if none does).

        Returns
        -------
        pandas.DataFrame or dict of pandas.DataFrame
            Genes × genes (index ``source``, columns ``target``); with ``groupby`` a dict
            group → matrix (groups without cells are left out).

        Examples
        --------
        >>> scores = model.get_gene_interactions(genes=hvgs, groupby="condition")  # doctest: +SKIP
        >>> celltx.tl.interaction_changes(scores, "STAT1", "stim", "ctrl").head()  # doctest: +SKIP
        """
        if not self.is_trained_:
            warnings.warn(
                "This model was neither trained nor loaded from a checkpoint: its attention "
                "comes from random weights. Call model.train() or ScGPT.load_pretrained(...) "
                "first.",
                UserWarning,
                stacklevel=2,
            )
        adata = self._validate_anndata(adata)
        names, columns = self._interaction_genes(adata, genes)
        rows = self._cells(adata, indices)
        if groupby is None:
            labels = pd.Categorical(np.zeros(len(rows), dtype=np.int8))
        else:
            if groupby not in adata.obs.columns:
                raise ValueError(
                    f"groupby={groupby!r} is not a column of adata.obs; columns: "
                    f"{list(adata.obs.columns)}."
                )
            labels = pd.Categorical(adata.obs[groupby].to_numpy()[rows])
        codes = torch.as_tensor(np.asarray(labels.codes, dtype=np.int64))
        k, n_groups = len(columns), len(labels.categories)
        if batch_size is None:
            per_cell = self.config.n_heads * (k + 1) ** 2  # attention entries per cell
            batch_size = int(max(1, min(128, _ATTENTION_ELEMENTS // per_cell)))
        sums = torch.zeros(n_groups, k, k, dtype=torch.float64)
        counts = torch.zeros(n_groups, k, k, dtype=torch.float64)
        cols = torch.as_tensor(columns, device=self.device)
        start = 0

        def accumulate(inputs):  # per-group sums of the batch's attention, in place
            nonlocal start
            code = codes[start : start + inputs["x"].shape[0]]
            start += inputs["x"].shape[0]
            attn, present = self.module.gene_attention(
                inputs["x"], cols, inputs["batch"], layer=layer, include_zeros=include_zeros
            )
            keep = code >= 0
            if keep.any():
                pair = (present[:, :, None] & present[:, None, :]).cpu()[keep]
                sums.index_add_(0, code[keep], attn.double().cpu()[keep] * pair)
                counts.index_add_(0, code[keep], pair.double())

        self._run_inference(adata, rows, batch_size, accumulate)
        index = pd.Index(names, name="source")
        n_cells = np.bincount(labels.codes[labels.codes >= 0], minlength=n_groups)
        out = {}
        for g, group in enumerate(labels.categories):
            if not n_cells[g]:
                continue  # a group without cells among indices
            # NaN where no cell of the group contributes to a pair (include_zeros=False)
            mean = (sums[g] / counts[g]).numpy().T  # rows: attended (source), cols: attending
            out[str(group)] = pd.DataFrame(mean, index=index, columns=index.rename("target"))
        if groupby is None:
            return out["0"]
        return out

    def _interaction_genes(self, adata, genes) -> tuple[list[str], np.ndarray]:
        """Names and data columns of the genes to score (checked against data and vocabulary)."""
        symbols = self._setup_args(adata).get("gene_symbols")
        var_names = adata.var_names if not symbols else pd.Index(adata.var[symbols].astype(str))
        var_names = pd.Index(np.asarray(var_names).astype(str))
        ids = np.asarray(self._gene_ids(adata))
        if genes is not None:
            if isinstance(genes, str):
                raise TypeError(f"genes must be a list of gene names, not the string {genes!r}.")
            wanted = [str(g) for g in genes]
            if not wanted:
                raise ValueError("genes is empty; pass at least two gene names.")
            dup = pd.Index(wanted)
            dup = dup[dup.duplicated()].unique()
            if len(dup):
                raise ValueError(f"genes has {len(dup)} duplicated names: {list(dup[:10])}.")
            pos = var_names.get_indexer(wanted)
            absent = [g for g, p in zip(wanted, pos, strict=True) if p < 0]
            if absent:
                raise ValueError(
                    f"{len(absent)} of the genes are not genes of the data: {absent[:20]}."
                )
            unknown = [g for g, p in zip(wanted, pos, strict=True) if ids[p] < 0]
            if unknown:
                raise ValueError(
                    f"{len(unknown)} of the genes are not in the model's vocabulary, so the model "
                    f"has no token for them: {unknown[:20]}. Leave them out of genes=."
                )
            return wanted, pos
        pos = np.flatnonzero(ids >= 0)
        limit = self.config.max_seq_len - 1
        if len(pos) > limit:
            how = "most expressed"
            if "highly_variable" in adata.var.columns:
                hv = adata.var["highly_variable"].to_numpy(dtype=bool)[pos]
                if hv.any():
                    pos, how = pos[hv], "highly variable"
            if len(pos) > limit:
                x = self.get_anndata_manager(adata).get_from_registry(REGISTRY_KEYS.X_KEY)
                mean = np.asarray(x[:, pos].mean(0)).ravel()
                pos = pos[np.sort(np.argsort(-mean, kind="stable")[:limit])]
                how = f"most expressed {how}" if how != "most expressed" else how
            logger.info(
                "Scoring %d genes (%s; at most the model's max_seq_len - 1); pass genes= to "
                "choose others.",
                len(pos),
                how,
            )
        return [var_names[p] for p in pos], pos
