"""Lightning training plans (generative pretraining; later: fine-tuning, contrastive)."""

from ._plans import PretrainingPlan

__all__ = ["PretrainingPlan"]
