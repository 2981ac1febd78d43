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

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """scvi-tools' metric logging, under ``torch.no_grad`` instead of inference mode.

        Under DDP Lightning averages each logged metric across processes by updating its
        tensor in place, which inference-mode tensors refuse (``RuntimeError: Inplace update
        to inference tensor``); no_grad logs the same values with ordinary tensors.
        """
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)

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


class ContrastivePlan(PretrainingPlan):
    """Divide-and-conquer contrastive training (CellLM): contrastive batch ≠ memory batch.

    Each training step takes the loader's whole minibatch as the contrastive batch and runs
    :func:`~celltx.train.divide_and_conquer_step` on it, ``chunk_size`` cells at a time
    (Lightning's manual optimisation): the contrastive loss (the RNA two-view ``contrast``
    or the multiome ``cross_modal``) sees every pair of the batch,
    memory grows with ``chunk_size`` only. Validation is as in :class:`PretrainingPlan`.

    Parameters
    ----------
    module
        A :class:`~celltx.module.ScGPTModule` whose objective includes a chunked part
        (:attr:`celltx.module.Part.chunked`: ``contrast`` or ``cross_modal``).
    chunk_size
        Cells encoded with gradients at a time.
    **kwargs
        As :class:`PretrainingPlan`. Gradient clipping is done here
        (``gradient_clip_val``), not by the Lightning trainer.
    """

    def __init__(
        self, module, *, chunk_size: int = 64, gradient_clip_val: float | None = None, **kwargs
    ):
        super().__init__(module, **kwargs)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
        self.chunk_size = int(chunk_size)
        self.gradient_clip_val = gradient_clip_val
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        from ._contrastive import divide_and_conquer_step

        opt = self.optimizers()
        opt.zero_grad()
        out = divide_and_conquer_step(self.module, batch, self.chunk_size, self.manual_backward)
        if self.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val)
        opt.step()
        sch = self.lr_schedulers()
        if sch is not None and not self.reduce_lr_on_plateau:  # plateau: stepped on validation
            sch.step()
        self.log(
            "train_loss",
            out.loss,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            prog_bar=True,
            sync_dist=self.use_sync_dist,
        )
        self.compute_and_log_metrics(out, self.train_metrics, "train")
        return out.loss
