"""scvi-tools modules (tensors only): tokenizer + transformer + objectives as parts."""

from ._constants import ATAC_KEY, PERTURBATION_KEY, SCVI_UUID_KEY
from ._cross_modal import CrossModal
from ._losses import cell_text_loss, contrastive_loss, cross_modal_loss
from ._objectives import PARTS, Part, PartLoss, register_part
from ._scgpt import ScGPTModule

__all__ = [
    "ScGPTModule",
    "ATAC_KEY",
    "PERTURBATION_KEY",
    "SCVI_UUID_KEY",
    "PARTS",
    "Part",
    "PartLoss",
    "register_part",
    "contrastive_loss",
    "cell_text_loss",
    "cross_modal_loss",
    "CrossModal",
]

#: names that moved to :mod:`celltx.model` with the task registry (tasks check the AnnData
#: registry, choose plans and run model hooks: the model layer's work)
_MOVED = {"TASKS": "TASKS", "TASK_OPTIONS": "TASK_OPTIONS"}


def __getattr__(name: str) -> object:
    """``celltx.module.TASKS`` / ``TASK_OPTIONS``: deprecated views of the task registry."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"celltx.module.{name} is deprecated: tasks live in celltx.model.TASK_REGISTRY "
            f"(celltx.model.Task, celltx.model.register_task); celltx.model.{_MOVED[name]} "
            "is the same view.",
            FutureWarning,
            stacklevel=2,
        )
        # read from the model layer at call time only (a deprecated alias, no import-time
        # dependency of the module layer on the model layer)
        return getattr(importlib.import_module("celltx.model"), _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
