"""Registry keys of the fields celltx registers beyond scvi-tools' own, and view codes."""

from scvi import REGISTRY_KEYS

# view codes of multimodal training rows (the cell itself, its RNA alone, its ATAC alone),
# defined with the tokenizer that makes the rows
from celltx.data import VIEW_ATAC, VIEW_JOINT, VIEW_RNA

__all__ = ["ATAC_KEY", "PERTURBATION_KEY", "SCVI_UUID_KEY", "VIEW_ATAC", "VIEW_JOINT", "VIEW_RNA"]

#: registry key of the perturbation condition codes
PERTURBATION_KEY = "perturbation"
#: registry key of ATAC peak counts (as MULTIVI)
ATAC_KEY = REGISTRY_KEYS.ATAC_X_KEY
#: key of ``adata.uns`` under which scvi-tools records the id of an object's registration
SCVI_UUID_KEY = "_scvi_uuid"
