"""Shared plumbing of the task mixins: registry look-ups and gene panels.

The loader, precision and inference loop live in ``_inference.py`` (``InferenceMixin``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
from anndata import AnnData
from scvi import REGISTRY_KEYS

from celltx.data import (
    GeneMatch,
    GeneVocab,
    check_expression,
    gene_names,
    match_genes,
)
from celltx.module import ATAC_KEY

from ._checks import check_modality_order
from ._datamodule import check_datamodule_config, datamodule_panel
from ._inference import InferenceMixin

logger = logging.getLogger(__name__)


class DataMixin(InferenceMixin):
    """Shared plumbing of the task mixins: registry look-ups, gene panels, the inference loop."""

    def _setup_args(self, adata: AnnData) -> dict:
        if adata is None and self.adata is None:
            # built from a datamodule: no AnnData setup (no labels, batches, perturbations)
            return {}
        return self.get_anndata_manager(adata, required=True).registry["setup_args"]

    def _modality(self, adata, key: str) -> AnnData | None:
        """The AnnData (a MuData's modality) registered under ``key``, or ``None``."""
        manager = self.get_anndata_manager(adata, required=True)
        if key not in manager.data_registry:
            return None
        mod = manager.data_registry[key].get("mod_key")
        return adata if mod is None else adata.mod[mod]

    def _match(self, adata, vocab: GeneVocab | None = None) -> GeneMatch | None:
        """Match the genes of ``adata`` (its RNA modality) to the vocabulary.

        Raises if too few match. ``None`` without RNA.
        """
        rna = self._modality(adata, REGISTRY_KEYS.X_KEY)
        if rna is None:
            return None
        return match_genes(
            rna,
            self.vocab if vocab is None else vocab,
            self._setup_args(adata).get("gene_symbols"),
            min_genes=min(self.min_genes, rna.n_vars),
            min_fraction=self.min_gene_fraction,
        )

    def _gene_ids(self, adata) -> np.ndarray | None:
        """Vocabulary id of each gene of ``adata`` (-1 if absent); raises if too few match."""
        match = self._match(adata)
        return None if match is None else match.ids

    def _atac_ids(self, adata, vocab: GeneVocab | None = None) -> np.ndarray | None:
        """Vocabulary id of each peak of ``adata`` (its ATAC modality; -1 if absent)."""
        atac = self._modality(adata, ATAC_KEY)
        if atac is None:
            return None
        vocab = self.vocab if vocab is None else vocab
        names = gene_names(atac)
        ids = vocab.lookup(names)
        if not (ids >= 0).any():
            raise ValueError(
                f"None of the {atac.n_vars} peaks (e.g. {names[:3].tolist()}) is in the model's "
                "vocabulary. Peak tokens are dataset-specific: the data must use the model's peak "
                "set (same names 'chrom:start-end'); count its fragments in those peaks."
            )
        if (ids < 0).any():
            logger.info(
                "%d of %d peaks are not in the vocabulary and are ignored.",
                int((ids < 0).sum()),
                len(ids),
            )
        return ids

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        if self.adata is None:
            raise ValueError(
                "This model was built from a datamodule and has no AnnData. Pass the "
                "datamodule (train(datamodule=...), get_latent_representation(datamodule=...)), "
                "or save it and load it onto an AnnData: model.save(dir); "
                "ScGPT.load(dir, adata)."
            )
        if adata is not None and hasattr(adata, "mod"):
            # a MuData: its modalities must follow mdata.obs_names (checked before scvi-tools
            # transfers the registration onto it)
            registry = self.adata_manager.data_registry
            mods = [
                registry[k].get("mod_key") for k in (REGISTRY_KEYS.X_KEY, ATAC_KEY) if k in registry
            ]
            check_modality_order(adata, [m for m in mods if m and m in adata.mod])
        adata = super()._validate_anndata(adata, copy_if_view=copy_if_view)
        manager = self.get_anndata_manager(adata, required=True)
        if adata is not self.adata:
            for key in (REGISTRY_KEYS.X_KEY, ATAC_KEY):
                a = self._modality(adata, key)
                if a is not None:
                    layer = manager.data_registry[key].attr_key
                    check_expression(a.X if layer is None else a.layers[layer])
        return adata

    @contextmanager
    def _panel(self, adata):
        with self.module.gene_panel(self._gene_ids(adata), self._atac_ids(adata)):
            yield

    def _require_head(self, name: str, missing: str, untrained: str) -> None:
        """Refuse a query of a task head that is not built (``missing``) or never trained.

        ``untrained``: the message when the head was neither trained nor loaded.
        """
        if not self.module.has_head(name):
            raise ValueError(missing)
        if not self.module.head_trained(name):
            raise ValueError(untrained)

    def _check_datamodule_model(self) -> None:
        """Raise unless this model can take a datamodule's batches (genes only, no batches)."""
        if self.module.multimodal or "rna" not in self.module.modalities:
            raise ValueError("A datamodule feeds RNA models (genes), not models with ATAC.")
        check_datamodule_config(self.config)

    @contextmanager
    def _datamodule_panel(self, datamodule):
        """Map the columns of a datamodule's batches to the vocabulary (genes matched by name)."""
        self._check_datamodule_model()
        match = self._match_panel(datamodule_panel(datamodule, self.gene_column))
        with self.module.gene_panel(match.ids):
            yield

    def _match_panel(self, panel: AnnData, vocab: GeneVocab | None = None) -> GeneMatch:
        """Match the genes of a cell-less panel (a datamodule's columns) to the vocabulary."""
        return match_genes(
            panel,
            self.vocab if vocab is None else vocab,
            min_genes=min(self.min_genes, panel.n_vars),
            min_fraction=self.min_gene_fraction,
        )

    @property
    def gene_column(self) -> str:
        """The ``var`` column with gene names in SOMA data (``ScGPT(datamodule=..., gene_column=...)``).

        Default ``"var_id"``, where ``tiledbsoma.io.from_h5ad`` puts an AnnData's
        ``var_names``; CELLxGENE Census keeps gene symbols in ``"feature_name"``. Settable.
        """
        return self.__dict__.get("gene_column_", "var_id")

    @gene_column.setter
    def gene_column(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"gene_column={value!r} must be the name of a var column.")
        self.__dict__["gene_column_"] = value

    def _summary(self, config, match, rna, atac_ids, n_labels, conditions) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        panel = [] if match is None else [f"{match.n_matched}/{rna.n_vars} genes matched"]
        if atac_ids is not None:
            panel.append(
                f"{int((atac_ids >= 0).sum())} peaks (max_peaks {config.max_peaks}, {config.atac_values})"
            )
        text = (
            f"ScGPT: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
            f"max_seq_len {config.max_seq_len}, n_bins {config.n_bins}, vocab {len(self.vocab)} tokens, "
            f"{', '.join(panel)}, {n_params / 1e6:.2f}M parameters"
        )
        extras = [f"classifier ({n_labels} labels)"] if n_labels else []
        extras += [
            name
            for name, on in (
                ("DSBN", config.dsbn),
                ("DAB", config.dab),
                ("batch token", config.batch_token),
            )
            if on
        ]
        if conditions is not None:
            extras.append(f"perturbation ({len(conditions)} conditions)")
        return text + (", " + ", ".join(extras) if extras else "")
