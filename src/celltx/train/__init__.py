"""Lightning training plans: generative pretraining and divide-and-conquer contrastive."""

from ._contrastive import divide_and_conquer_step
from ._plans import ContrastivePlan, PretrainingPlan

__all__ = ["PretrainingPlan", "ContrastivePlan", "divide_and_conquer_step"]
