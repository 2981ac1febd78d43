"""scvi-tools registry keys of the fields celltx registers beyond scvi-tools' own."""

from scvi import REGISTRY_KEYS

#: registry key of the perturbation condition codes
PERTURBATION_KEY = "perturbation"
#: registry key of ATAC peak counts (as MULTIVI)
ATAC_KEY = REGISTRY_KEYS.ATAC_X_KEY
#: key of ``adata.uns`` under which scvi-tools records the id of an object's registration
SCVI_UUID_KEY = "_scvi_uuid"
