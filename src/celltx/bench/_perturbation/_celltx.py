"""celltx as a method of the perturbation benchmark: a ``train_fn`` that trains ScGPT.

``mode="residual"`` (default): a short generative pretraining on the training data's
control cells gives gene features (token embeddings and attention between genes), and
:class:`~celltx.bench.PerturbationResidual` predicts condition means as the best simple
prior plus a cross-validated residual from those features. ``mode="cells"``: the
cell-level ScGPT perturbation model (``train(task="perturbation")``), which also predicts
single cells (``return_type="cells"``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.bench._inputs import is_counts, log1p_cp10k, lognorm_expression
from celltx.data import parse_conditions

from ._baselines import PERTURBATION_BASELINES, LinearGeneEmbedding, PerturbationBaseline
from ._residual import PerturbationResidual, _scaled
from ._split import _conditions_of

logger = logging.getLogger(__package__)

#: celltx settings of :func:`celltx_perturbation_model` (override any by keyword)
CELLTX_PERTURBATION_DEFAULTS = {
    "mode": "residual",  # condition means: prior + residual; "cells": the cell-level model
    "features": ("embedding", "attention"),  # residual features from the pretrained model
    "pretrain_cells": 2000,  # control cells for the generative pretraining (residual mode)
    "attention_cells": 256,  # control cells whose attention is averaged (residual mode)
    "folds": 5,  # inner cross-validation of the residual's ridge penalty
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
    "pretrain_epochs": 3,  # generative pretraining (gene co-expression); "cells" mode: 10
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

    if cfg["mode"] not in ("residual", "cells"):
        raise ValueError(f"mode must be 'residual' or 'cells', got {cfg['mode']!r}.")
    bad = set(cfg["features"]) - {"embedding", "attention"}
    if isinstance(cfg["features"], str) or bad:
        raise ValueError(
            f"features must be a tuple of 'embedding' and/or 'attention', got {cfg['features']!r}."
        )

    def train_fn(train: AnnData):
        if cfg["mode"] == "residual":
            return _fit_residual(train, cfg)
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


# the last pretraining's features, shared by the methods of one benchmark run
_CACHE: dict = {}


def _control_cells(train: AnnData, cfg: dict) -> AnnData:
    """Log-normalised control cells of ``train`` (at most ``pretrain_cells``, seeded)."""
    key, ctrl = cfg.get("perturbation_key", "condition"), cfg.get("control_value", "ctrl")
    names = parse_conditions(_conditions_of(train, key), control_value=ctrl, max_genes=10**6)[1]
    idx = np.flatnonzero((names == ctrl).to_numpy())
    if not idx.size:
        raise ValueError(f"No control cells ({key} == {ctrl!r}) to pretrain celltx on.")
    if idx.size > cfg["pretrain_cells"]:
        idx = np.sort(np.random.default_rng(0).choice(idx, cfg["pretrain_cells"], replace=False))
    x = lognorm_expression(train)[idx]
    return AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame(index=train.obs_names[idx].astype(str)),
        var=pd.DataFrame(index=train.var_names.astype(str)),
    )


def celltx_gene_features(train: AnnData, **kwargs) -> tuple[pd.DataFrame, float]:
    """Gene features from celltx pretrained generatively on the control cells of ``train``.

    ScGPT (``model`` settings) is trained for ``pretrain_epochs`` with the generative
    objective on up to ``pretrain_cells`` control cells (observational data: gene
    co-expression, no perturbation). The features of a gene are, per ``features``, its
    token embedding (``"embedding"``, ``d_model`` columns) and its row of the gene × gene
    attention of the last layer averaged over ``attention_cells`` control cells,
    symmetrised (``"attention"``, one column per gene); each block is centred and scaled
    to the same total. The result of the last call is cached (same cells and settings:
    no second pretraining).

    Parameters
    ----------
    train
        Training cells (control cells included), counts or log-normalised.
    **kwargs
        Overrides of :data:`CELLTX_PERTURBATION_DEFAULTS`.

    Returns
    -------
    tuple of pandas.DataFrame and float
        Genes × features, and the seconds the pretraining took.

    Examples
    --------
    >>> from celltx.bench import celltx_gene_features
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=30, n_perturbations=4, n_combos=0)  # doctest: +SKIP
    >>> feats, seconds = celltx_gene_features(adata, pretrain_epochs=1)  # doctest: +SKIP
    """
    cfg = {**CELLTX_PERTURBATION_DEFAULTS, **kwargs}
    cfg["model"] = {**CELLTX_PERTURBATION_DEFAULTS["model"], **kwargs.get("model", {})}
    ctrl = _control_cells(train, cfg)
    digest = hashlib.sha1("\n".join(ctrl.obs_names).encode() + repr(ctrl.shape).encode())
    key = (
        digest.hexdigest(),
        repr(sorted((k, repr(v)) for k, v in cfg.items() if k not in ("folds", "mode"))),
    )
    if key in _CACHE:
        return _CACHE[key]
    from celltx.model import ScGPT

    start = time.perf_counter()
    ScGPT.setup_anndata(ctrl)
    model_kw = {"max_seq_len": max(512, ctrl.n_vars + 1), **cfg["model"]}
    model = ScGPT(ctrl, **model_kw)
    if cfg["pretrain_epochs"]:
        model.train(
            max_epochs=cfg["pretrain_epochs"],
            task="generative",
            lr=cfg["pretrain_lr"],
            batch_size=cfg["batch_size"],
            accelerator=cfg["accelerator"],
            enable_progress_bar=False,
            train_size=1.0,
            check_val_every_n_epoch=None,
        )
    genes = list(ctrl.var_names)
    blocks = []
    if "embedding" in cfg["features"]:
        blocks.append(_scaled(model.get_gene_embeddings(genes)))
    if "attention" in cfg["features"]:
        n = min(cfg["attention_cells"], ctrl.n_obs)
        att = model.get_gene_interactions(genes=genes, indices=np.arange(n)).loc[genes, genes]
        att = att.to_numpy(dtype=np.float64)
        att = 0.5 * (att + att.T)
        np.fill_diagonal(att, 0.0)
        blocks.append(_scaled(pd.DataFrame(att, index=genes)))
    feats = pd.concat(blocks, axis=1, ignore_index=True) if blocks else pd.DataFrame(index=genes)
    feats.index = pd.Index(genes, name="gene")
    out = (feats, time.perf_counter() - start)
    _CACHE.clear()
    _CACHE[key] = out
    return out


def _fit_residual(train: AnnData, cfg: dict) -> PerturbationResidual:
    kw = {
        k: v
        for k, v in cfg.items()
        if k in CELLTX_PERTURBATION_DEFAULTS or k in ("perturbation_key", "control_value")
    }
    feats, seconds = celltx_gene_features(train, **kw)
    model = PerturbationResidual(
        feats,
        folds=cfg["folds"],
        perturbation_key=cfg.get("perturbation_key", "condition"),
        control_value=cfg.get("control_value", "ctrl"),
    ).fit(train)
    model.pretrain_seconds_ = seconds
    return model


class CelltxGeneEmbeddingLinear(LinearGeneEmbedding):
    """The linear gene-embedding baseline on celltx's gene features instead of PCA.

    :class:`LinearGeneEmbedding` with ``gene_embedding`` from
    :func:`celltx_gene_features` (celltx pretrained generatively on the training data's
    control cells; shared with ``model="celltx"`` in one benchmark run), as Ahlmann-Eltze
    et al. (2025) fed their linear model embeddings learned elsewhere.

    Parameters
    ----------
    ridge
        Ridge penalty.
    celltx
        Overrides of :data:`CELLTX_PERTURBATION_DEFAULTS` for the pretraining.
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import CelltxGeneEmbeddingLinear
    >>> m = CelltxGeneEmbeddingLinear(celltx={"pretrain_epochs": 1})
    >>> m.name
    'linear_celltx'
    """

    name = "linear_celltx"

    def __init__(
        self,
        ridge: float = 0.1,
        celltx: dict | None = None,
        perturbation_key: str = "condition",
        control_value: str = "ctrl",
        layer: str | None = None,
    ):
        super().__init__(
            ridge=ridge,
            perturbation_key=perturbation_key,
            control_value=control_value,
            layer=layer,
        )
        self.celltx = dict(celltx or {})

    def fit(self, adata: AnnData) -> PerturbationBaseline:
        """Pretrain celltx on the control cells (or reuse it), then fit the linear model."""
        self.gene_embedding, self.pretrain_seconds_ = celltx_gene_features(
            adata,
            perturbation_key=self.perturbation_key,
            control_value=self.control_value,
            **self.celltx,
        )
        return super().fit(adata)


PERTURBATION_BASELINES["linear_celltx"] = CelltxGeneEmbeddingLinear
