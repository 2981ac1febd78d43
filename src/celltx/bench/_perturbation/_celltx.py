"""celltx as a method of the perturbation benchmark: a ``train_fn`` that trains ScGPT."""

from __future__ import annotations

from collections.abc import Callable

from anndata import AnnData

from celltx.bench._inputs import is_counts, log1p_cp10k

#: celltx settings of :func:`celltx_perturbation_model` (override any by keyword)
CELLTX_PERTURBATION_DEFAULTS = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
    "pretrain_epochs": 10,  # generative pretraining on the training cells (gene co-expression)
    "pretrain_lr": 3e-3,
    "epochs": 20,  # perturbation fine-tuning
    "lr": 3e-3,
    "freeze_layers": 0,  # keep embeddings + the first k layers fixed while fine-tuning
    "batch_size": 64,
    "n_cells": 100,  # control cells averaged per predicted condition
    "accelerator": "auto",
}


class _CelltxPredictor:
    """A trained ScGPT whose ``predict_perturbation`` averages ``n_cells`` control cells."""

    def __init__(self, model, n_cells: int):
        self.model, self.n_cells = model, n_cells

    def predict_perturbation(self, conditions, return_type: str = "mean"):
        """Predict ``conditions`` with the model, from ``n_cells`` control cells."""
        return self.model.predict_perturbation(
            conditions, n_cells=self.n_cells, return_type=return_type
        )


def celltx_perturbation_model(**kwargs) -> Callable[[AnnData], object]:
    """A ``train_fn`` for :func:`perturbation` that trains celltx's ScGPT.

    It gets the split's training cells: they are log-normalised when they hold counts (as
    the benchmark scores them), registered with ``perturbation_key``, pretrained with the
    generative objective (``pretrain_epochs``: the gene embeddings learn co-expression,
    which is what lets an unseen target's effect be inferred), then fine-tuned with
    ``task="perturbation"``.

    Parameters
    ----------
    **kwargs
        Overrides of :data:`CELLTX_PERTURBATION_DEFAULTS`: ``model`` (ScGPT arguments),
        ``pretrain_epochs``, ``pretrain_lr``, ``epochs``, ``lr``, ``freeze_layers``, ``batch_size``,
        ``n_cells``, ``accelerator``, and ``perturbation_key`` / ``control_value``.

    Returns
    -------
    Callable
        ``train_fn(train_adata)`` returning an object with ``predict_perturbation``.

    Examples
    --------
    >>> import celltx
    >>> fn = celltx.bench.celltx_perturbation_model(epochs=5, pretrain_epochs=0)
    >>> callable(fn)
    True
    """
    cfg = {**CELLTX_PERTURBATION_DEFAULTS, **kwargs}
    cfg["model"] = {**CELLTX_PERTURBATION_DEFAULTS["model"], **kwargs.get("model", {})}
    unknown = set(cfg) - set(CELLTX_PERTURBATION_DEFAULTS) - {"perturbation_key", "control_value"}
    if unknown:
        raise ValueError(
            f"Unknown celltx settings {sorted(unknown)}; use {sorted(CELLTX_PERTURBATION_DEFAULTS)}."
        )

    def train_fn(train: AnnData):
        from celltx.model import ScGPT

        a = train.copy()
        if is_counts(a.X):
            a.X = log1p_cp10k(a.X)
        ScGPT.setup_anndata(
            a,
            perturbation_key=cfg.get("perturbation_key", "condition"),
            control_value=cfg.get("control_value", "ctrl"),
        )
        model = ScGPT(a, **cfg["model"])
        common = {
            "batch_size": cfg["batch_size"],
            "accelerator": cfg["accelerator"],
            "enable_progress_bar": False,
            "train_size": 1.0,
            "check_val_every_n_epoch": None,
        }
        if cfg["pretrain_epochs"]:
            model.train(
                max_epochs=cfg["pretrain_epochs"],
                task="generative",
                lr=cfg["pretrain_lr"],
                **common,
            )
        model.train(
            max_epochs=cfg["epochs"],
            task="perturbation",
            lr=cfg["lr"],
            freeze_layers=cfg["freeze_layers"],
            **common,
        )
        return _CelltxPredictor(model, cfg["n_cells"])

    return train_fn
