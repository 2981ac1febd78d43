"""scvi-tools registration fields of :class:`~celltx.model.ScGPT`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import (
    CategoricalObsField,
    LayerField,
    MuDataCategoricalObsField,
    MuDataWrapper,
)

from celltx.data import parse_conditions
from celltx.module import ATAC_KEY, PERTURBATION_KEY


class GeneLayerField(LayerField):
    """Expression field whose gene panel may differ between AnnData objects.

    scvi-tools' :class:`~scvi.data.fields.LayerField` requires a query AnnData to have
    exactly the registered number of genes. celltx matches genes to its vocabulary *by
    name*, so a query may hold another order or subset of genes; this field accepts that
    and records the query's own panel.
    """

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        self.validate_field(adata_target)
        return self.register_field(adata_target)


class LabelsField(CategoricalObsField):
    """Cell-type labels in which missing values (NaN) mean *unlabelled*.

    scvi-tools' :class:`~scvi.data.fields.CategoricalObsField` refuses NaN. Here NaN cells
    get code ``-1`` and are left out of classification losses (semi-supervised data
    works). A query AnnData may lack the column or hold labels unseen in training: those
    cells are unlabelled too; the registered categories never change.
    """

    def _values(self, adata: AnnData) -> pd.Series:
        """The column's values as they are coded (subclasses may canonicalize them)."""
        return adata.obs[self._original_attr_key]

    def register_field(self, adata: AnnData) -> dict:
        if self.is_default:
            return super().register_field(adata)
        cat = self._values(adata).astype("category")
        adata.obs[self.attr_key] = cat.cat.codes.to_numpy().astype(np.int64)
        return {
            self.CATEGORICAL_MAPPING_KEY: cat.cat.categories.to_numpy(copy=True),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        if self.is_default:
            return super().transfer_field(state_registry, adata_target, **kwargs)
        mapping = state_registry[self.CATEGORICAL_MAPPING_KEY]
        if self._original_attr_key in adata_target.obs:
            codes = pd.Categorical(self._values(adata_target), categories=mapping).codes
        else:
            codes = np.full(adata_target.n_obs, -1)
        adata_target.obs[self.attr_key] = np.asarray(codes, dtype=np.int64)
        return {
            self.CATEGORICAL_MAPPING_KEY: mapping.copy(),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }


class PerturbationField(LabelsField):
    """Perturbation conditions in GEARS notation or a plain gene column.

    GEARS notation: ``"ctrl"``, ``"A+ctrl"``, ``"A+B"``.

    Conditions are parsed and written canonically (``"ctrl+A"`` and ``"A"`` both become
    ``"A+ctrl"``); the codes follow the canonical names. A query AnnData may lack the
    column or hold new conditions: those cells get code ``-1``.
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None,
        control_value: str = "ctrl",
        max_genes: int = 2,
    ):
        super().__init__(registry_key, attr_key)
        self.control_value = control_value
        self.max_genes = max_genes

    def _values(self, adata: AnnData) -> pd.Series:
        col = adata.obs[self._original_attr_key].astype(object)
        return parse_conditions(col, control_value=self.control_value, max_genes=self.max_genes)[1]


MuDataGeneLayerField = MuDataWrapper(GeneLayerField)
MuDataLabelsField = MuDataWrapper(LabelsField)


def anndata_setup_fields(
    modality, layer, batch_key, labels_key, perturbation_key, control_value, max_perturbed_genes
) -> list:
    """The fields :meth:`~celltx.model.ScGPT.setup_anndata` registers."""
    fields = [
        GeneLayerField(
            REGISTRY_KEYS.X_KEY if modality == "rna" else ATAC_KEY, layer, is_count_data=False
        ),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        LabelsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
    ]
    if perturbation_key is not None:
        fields.append(
            PerturbationField(
                PERTURBATION_KEY, perturbation_key, control_value, max_perturbed_genes
            )
        )
    return fields


def mudata_setup_fields(modalities, rna_layer, atac_layer, batch_key, labels_key) -> list:
    """The fields :meth:`~celltx.model.ScGPT.setup_mudata` registers (modalities resolved)."""
    fields = [
        MuDataGeneLayerField(
            key, layer, mod_key=modalities[name], is_count_data=False, mod_required=True
        )
        for key, layer, name in (
            (REGISTRY_KEYS.X_KEY, rna_layer, "rna_layer"),
            (ATAC_KEY, atac_layer, "atac_layer"),
        )
        if modalities.get(name)
    ]
    return fields + [
        MuDataCategoricalObsField(
            REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.get("batch_key")
        ),
        MuDataLabelsField(
            REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=modalities.get("labels_key")
        ),
    ]
