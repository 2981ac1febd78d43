"""Cross-modal prediction for models set up with RNA and ATAC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager

from celltx.module import ATAC_KEY

from ._checks import check_mudata, registration_undone_on_failure
from ._docs import doc_params
from ._fields import mudata_setup_fields
from ._host import ModelHost


class MultiomeMixin(ModelHost):
    """Multiome registration (:meth:`setup_mudata`) and cross-modal prediction."""

    @classmethod
    @doc_params
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols: str | None = None,
        modalities: Mapping[str, str] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with RNA and / or ATAC for :class:`ScGPT` (joint embedding).

        Uses scvi-tools' MuData fields, as ``MULTIVI.setup_mudata``: expression from the
        RNA modality, peak counts from the ATAC modality, batches and labels from
        ``mdata.obs`` or a modality. A cell becomes one token sequence: ``<cls>``, its
        genes (binned expression, at most ``max_seq_len - 1``) and its peaks (at most
        ``max_peaks``), each token with a modality embedding (see :class:`ScGPT`).

        Peak tokens are dataset-specific (built from the ATAC ``var_names``), accessibility
        is binarized by default, and mosaic data must first be padded with
        :func:`celltx.data.pad_mosaic`; :doc:`/multiome` explains each.

        Parameters
        ----------
        mdata
            MuData with cells × genes and cells × peaks modalities, fully paired.
        rna_layer, atac_layer
            Layers of the RNA / ATAC modality with the values (``None``: ``X``). RNA
            values may be counts or log-normalized; ATAC values fragment counts or binary.
        %(batch_key)s
        %(labels_key)s
        %(gene_symbols)s
        modalities
            Which modality holds what: ``{"rna_layer": "rna", "atac_layer": "atac",
            "batch_key": None, "labels_key": None}`` (``None``: ``mdata.obs``). Leave
            ``rna_layer`` or ``atac_layer`` out for a single-modality model. Default: the
            modalities named ``"rna"`` and ``"atac"``.

        Examples
        --------
        >>> import celltx
        >>> mdata = celltx.datasets.simulate_multiome(n_cells=200)
        >>> celltx.model.ScGPT.setup_mudata(
        ...     mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}
        ... )
        """
        modalities = check_mudata(
            mdata, rna_layer, atac_layer, batch_key, labels_key, gene_symbols, modalities
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = mudata_setup_fields(modalities, rna_layer, atac_layer, batch_key, labels_key)
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        with registration_undone_on_failure(mdata):
            adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    @doc_params
    @torch.inference_mode()
    def predict_rna_from_atac(
        self,
        mdata=None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        chunk_size: int = 512,
    ) -> AnnData:
        """Expression of every gene predicted from a cell's ATAC tokens alone.

        Cross-modal generation, e.g. to impute RNA for ATAC-only cells of a mosaic.

        Each cell is encoded from its peaks (its RNA, if any, is not used); every gene of
        the RNA panel that is in the vocabulary is a token to generate, and the gene-prompt
        decoder predicts its value. Trained by ``train()`` on paired cells (the RNA of a
        cell generated from its ATAC, and back).

        Parameters
        ----------
        mdata
            MuData set up with :meth:`setup_mudata` (default: the model's); its RNA modality
            only supplies the gene panel.
        %(indices)s
        %(batch_size)s
        chunk_size
            Genes generated per pass; the result does not depend on it (generated tokens
            never attend to each other), only memory does.

        Returns
        -------
        anndata.AnnData
            Cells × genes (the RNA panel's genes in the vocabulary, ``var`` from the RNA
            modality, ``obs`` from ``mdata.obs``). ``X`` is on the model's value scale: the
            expression bin, ``0`` = not expressed … ``n_bins - 1`` = among the cell's highest
            genes (a per-cell rank scale: compare genes within a cell, or a gene's values
            across cells as a relative level). Cells without ATAC counts get NaN rows.

        Examples
        --------
        >>> imputed = model.predict_rna_from_atac(mdata)  # doctest: +SKIP
        >>> mdata.mod["rna"].obsm["X_rna_from_atac"] = imputed.X  # doctest: +SKIP
        """
        return self._cross_predict(mdata, "rna", indices, batch_size, chunk_size)

    @torch.inference_mode()
    def predict_atac_from_rna(
        self,
        mdata=None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        chunk_size: int = 512,
    ) -> AnnData:
        """Accessibility of every peak predicted from a cell's RNA tokens alone.

        The reverse of :meth:`predict_rna_from_atac`, with the same parameters.

        Returns
        -------
        anndata.AnnData
            Cells × peaks; with ``atac_values="binary"`` ``X`` is the predicted openness in
            ``[0, 1]`` (the generated value / ``(n_bins - 1)``, clipped), else the predicted
            bin. Cells without RNA counts get NaN rows.
        """
        return self._cross_predict(mdata, "atac", indices, batch_size, chunk_size)

    def _cross_predict(self, mdata, target: str, indices, batch_size, chunk_size) -> AnnData:
        if not self.module.multimodal:
            raise ValueError(
                "Cross-modal prediction needs a model with RNA and ATAC: ScGPT.setup_mudata(mdata, "
                "modalities={'rna_layer': 'rna', 'atac_layer': 'atac'}), then build and train it."
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
        mdata = self._validate_anndata(mdata)
        key = REGISTRY_KEYS.X_KEY if target == "rna" else ATAC_KEY
        target_mod = self._modality(mdata, key)
        assert target_mod is not None  # a multiome model's data has both modalities
        rows = self._cells(mdata, indices)
        panel = {}

        def predict(b):
            pred, panel["cols"] = self.module.predict_modality(
                target=target, chunk_size=chunk_size, **b
            )
            source = b["x_atac"] if target == "rna" else b["x"]
            pred[~(source > 0).any(1)] = float("nan")
            return pred.float()

        X = self._run_inference(mdata, rows, batch_size, predict).numpy().astype(np.float32)
        config = self.config
        top = float(config.n_bins - 1) if config.n_bins else 1.0
        if target == "atac" and config.atac_values == "binary":
            X = np.clip(X / top, 0.0, 1.0)
        cols = panel["cols"].cpu().numpy()
        out = AnnData(X=X, obs=mdata.obs.iloc[rows].copy(), var=target_mod.var.iloc[cols].copy())
        out.uns["celltx"] = {
            "predicted_from": "atac" if target == "rna" else "rna",
            "scale": "expression bin (0 … n_bins-1)"
            if target == "rna" or config.atac_values == "binned"
            else "probability open",
        }
        return out
