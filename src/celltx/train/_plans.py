"""Lightning training plans."""

from __future__ import annotations

import math
from typing import Literal

import torch
from scvi.train import TrainingPlan


class PretrainingPlan(TrainingPlan):
    """scvi-tools :class:`~scvi.train.TrainingPlan` for attention-masked generative pretraining.

    The module's loss is logged as ``train_loss`` / ``validation_loss`` (and scvi-tools'
    ``elbo_*`` / ``reconstruction_loss_*``, which equal it here since there is no KL
    term), together with the two parts ``gep_mse_*`` (gene prompt) and ``mvc_mse_*``
    (cell prompt).

    Parameters
    ----------
    module
        A :class:`~celltx.module.ScGPTModule`.
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    eps
        AdamW epsilon (transformers want the usual 1e-8, not scvi's VAE default 0.01).
    lr_schedule
        ``"cosine"``: linear warm-up over ``warmup_ratio`` of the steps, then cosine decay
        to zero; ``"constant"``: no schedule. Ignored with ``reduce_lr_on_plateau=True``.
    warmup_ratio
        Fraction of all training steps used for warm-up.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (``reduce_lr_on_plateau``, …).
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        eps: float = 1e-8,
        optimizer: Literal["Adam", "AdamW", "Custom"] = "AdamW",
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        warmup_ratio: float = 0.05,
        **kwargs,
    ):
        kwargs.setdefault("n_epochs_kl_warmup", None)
        kwargs.setdefault("lr_scheduler_metric", "elbo_validation")
        super().__init__(
            module, lr=lr, weight_decay=weight_decay, eps=eps, optimizer=optimizer, **kwargs
        )
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule={lr_schedule!r}; use 'cosine' or 'constant'.")
        self.lr_schedule = lr_schedule
        self.warmup_ratio = warmup_ratio

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if self.reduce_lr_on_plateau or self.lr_schedule == "constant":
            return config
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(self.warmup_ratio * total), 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(config["optimizer"], factor)
        config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config
