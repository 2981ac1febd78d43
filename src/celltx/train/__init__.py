"""Lightning training plans (generative pretraining, divide-and-conquer contrastive) and callbacks."""

from ._callbacks import EveryNEpochs, StepCheckpoint
from ._contrastive import divide_and_conquer_step, gather_rows
from ._plans import ContrastivePlan, PretrainingPlan

__all__ = [
    "PretrainingPlan",
    "ContrastivePlan",
    "divide_and_conquer_step",
    "StepCheckpoint",
    "EveryNEpochs",
    "gather_rows",
]
