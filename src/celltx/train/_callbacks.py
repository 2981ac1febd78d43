"""Lightning callbacks of celltx's training."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scvi.train import SaveCheckpoint


class StepCheckpoint(SaveCheckpoint):
    """A checkpoint every ``every_n_train_steps`` optimizer steps: resumable and loadable.

    Each checkpoint is Lightning's ``.ckpt`` (weights, optimizer and scheduler state, loop
    position; resume with ``model.train(..., ckpt_path=...)``) and, beside it, a save of the
    model (scvi-tools' :class:`~scvi.train.SaveCheckpoint` calls the model's ``save``; for
    celltx that is safetensors and JSON). ``save_top_k=1`` keeps only the latest.

    scvi-tools' ``SaveCheckpoint`` replaces Lightning's per-step hook with a NaN check, so
    step checkpoints would never be written; this class runs both.

    Examples
    --------
    >>> from celltx.train import StepCheckpoint
    >>> cb = StepCheckpoint(dirpath="ckpts", every_n_train_steps=500)
    >>> cb.filename
    'step={step}'
    """

    def __init__(self, dirpath: str, every_n_train_steps: int, save_top_k: int = 1, **kwargs):
        kwargs.setdefault("filename", "step={step}")
        kwargs.setdefault("auto_insert_metric_name", False)
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            every_n_train_steps=every_n_train_steps,
            save_top_k=save_top_k,
            **kwargs,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        ModelCheckpoint.on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)


class EveryNEpochs(Callback):
    """Call ``fn()`` at the end of every ``every``-th training epoch (not after the last).

    For work between epochs that needs the model as trained so far, e.g. refreshing the
    neighbour positives of contrastive training from the current embedding. The module is
    put back in training mode afterwards.

    Examples
    --------
    >>> from celltx.train import EveryNEpochs
    >>> cb = EveryNEpochs(lambda: None, every=5)
    >>> cb.every
    5
    """

    def __init__(self, fn, every: int):
        if int(every) < 1:
            raise ValueError(f"every={every} must be >= 1.")
        self.fn, self.every = fn, int(every)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every or epoch >= (trainer.max_epochs or 0):
            return
        self.fn()
        pl_module.module.train()
