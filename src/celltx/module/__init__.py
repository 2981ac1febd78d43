"""scvi-tools modules (tensors only): tokenizer + transformer + objectives as parts."""

from ._constants import ATAC_KEY, PERTURBATION_KEY, SCVI_UUID_KEY
from ._objectives import (
    PARTS,
    TASK_OPTIONS,
    TASKS,
    Part,
    PartLoss,
    cell_text_loss,
    contrastive_loss,
)
from ._scgpt import ScGPTModule

__all__ = [
    "ScGPTModule",
    "ATAC_KEY",
    "PERTURBATION_KEY",
    "SCVI_UUID_KEY",
    "PARTS",
    "TASKS",
    "TASK_OPTIONS",
    "Part",
    "PartLoss",
    "contrastive_loss",
    "cell_text_loss",
]
