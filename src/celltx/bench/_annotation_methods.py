"""The methods of the annotation benchmark, each trained and applied on one fold.

``fn(data, y, train, test, seed, **settings)`` returns the predicted labels of the
``test`` cells after training on the labelled ``train`` cells of ``data`` (the input
:func:`~celltx.bench.annotation` made for the method). The baselines' models are those of
``_baselines``; celltx is pretrained once and fine-tuned per fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.nn import preset

from ._baselines import (
    dense,
    fitted_pca,
    knn_classify,
    logistic_regression,
    train_scanvi,
    train_scvi,
)

#: celltx settings of :func:`annotation` (override any with ``celltx_kwargs``)
CELLTX_DEFAULTS: dict[str, Any] = {
    "model": preset("small", max_seq_len=512, dropout=0.1),
    "pretrained": None,  # a scGPT model directory to start from instead of a new model
    "pretrain_epochs": 20,  # pretraining on all cells of the fold (no labels)
    # both stages' epochs apply up to this many cells, fewer above (celltx.model.train_budget)
    "budget_cells": 1_000,
    "pretrain_task": "generative",  # or "contrastive" (the representation recipe's)
    "pretrain_lr": 1e-2,
    "finetune_epochs": 40,
    "finetune_lr": 1e-3,
    "batch_size": 32,
    "class_weight": "balanced",
    "label_smoothing": 0.1,
    "freeze_layers": 0,
}


def _logreg(data, y, train, test, seed, **kw):
    X = data.X
    return logistic_regression(
        X[train], y[train], X[test], max_iter=kw.get("max_iter", 1000), C=kw.get("C", 1.0)
    )


def _knn_pca(data, y, train, test, seed, **kw):
    X = dense(data.X)
    xt = X[train]
    pca = fitted_pca(kw.get("n_comps", 50), xt, seed).fit(xt)  # on the fold's training cells
    n_neighbors = kw.get("n_neighbors", 15)
    return knn_classify(pca.transform(xt), y[train], pca.transform(X[test]), n_neighbors)


def _masked(data, y, train, unlabeled="<unlabeled>"):
    a = AnnData(X=data.X.copy(), obs=pd.DataFrame(index=data.obs_names.copy()))
    a.var_names = data.var_names.copy()
    lab = np.full(data.n_obs, unlabeled, dtype=object)
    lab[train] = y[train]
    a.obs["_label"] = pd.Categorical(lab)
    return a


def _scanvi(data, y, train, test, seed, **kw):
    a = _masked(data, y, train)  # raw counts (annotation() makes sure)
    progress = kw.get("enable_progress_bar", False)
    accelerator = kw.get("accelerator", "auto")
    vae = train_scvi(
        a,
        labels_key="_label",
        seed=seed,
        n_latent=kw.get("n_latent", 30),
        model_kwargs={"gene_likelihood": kw.get("gene_likelihood", "nb")},
        max_epochs=kw.get("scvi_epochs", 100),
        enable_progress_bar=progress,
        accelerator=accelerator,
    )
    lvae = train_scanvi(
        vae,
        "_label",
        "<unlabeled>",
        max_epochs=kw.get("scanvi_epochs", 20),
        enable_progress_bar=progress,
        accelerator=accelerator,
    )
    return np.asarray(lvae.predict(a))[test]


def _celltypist(data, y, train, test, seed, **kw):
    import celltypist

    X = data.X  # log1p-CP10k (or the caller's log-normalised values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = AnnData(
            X=X[train].copy(), obs=pd.DataFrame({"y": y[train]}, index=data.obs_names[train])
        )
        tr.var_names = data.var_names.copy()
        common = {
            "labels": "y",
            "check_expression": False,
            "n_jobs": 1,
            "feature_selection": kw.get("feature_selection", False),
        }
        try:
            model = celltypist.train(tr, max_iter=kw.get("max_iter", 1000), **common)
        except TypeError:
            # celltypist <= 1.7.1 passes multi_class= to LogisticRegression, which
            # scikit-learn >= 1.8 no longer accepts; its SGD logistic regression still works
            model = celltypist.train(tr, use_SGD=True, **common)
        te = AnnData(X=X[test].copy(), obs=pd.DataFrame(index=data.obs_names[test]))
        te.var_names = data.var_names.copy()
        res = celltypist.annotate(te, model=model)
    return res.predicted_labels["predicted_labels"].astype(str).to_numpy()


def _celltx(data, y, train, test, seed, cache: dict | None = None, **kw):
    """Pretrain (or reuse the pretraining of an earlier fold), fine-tune, predict.

    Pretraining sees every cell and no label (its generative and contrastive objectives do
    not read them), with the same seed in every fold, so its weights are the same in every
    fold: ``cache`` (one
    dict per :func:`annotation` call) keeps them after the first fold and later folds
    load them, and the random state pretraining left, instead of pretraining again.
    """
    import copy

    import scvi

    from celltx.model import ScGPT, train_budget

    cfg = {**CELLTX_DEFAULTS, **kw}
    cfg["model"] = {**CELLTX_DEFAULTS["model"], **kw.get("model", {})}
    if cfg["pretrain_epochs"]:  # pretraining sees every cell, fine-tuning the labelled ones
        cfg["pretrain_epochs"] = train_budget(
            data.n_obs, cfg["pretrain_epochs"], cfg["budget_cells"]
        )
    cfg["finetune_epochs"] = train_budget(len(train), cfg["finetune_epochs"], cfg["budget_cells"])
    a = AnnData(X=data.X.copy(), obs=pd.DataFrame(index=data.obs_names.copy()))
    a.var_names = data.var_names.copy()
    lab = pd.Series(np.nan, index=a.obs_names, dtype=object)
    lab.iloc[train] = y[train]
    a.obs["_label"] = lab.to_numpy()  # test cells unlabelled (NaN), as for scANVI
    scvi.settings.seed = seed
    ScGPT.setup_anndata(a, labels_key="_label")
    train_kw = {
        "batch_size": cfg["batch_size"],
        "accelerator": cfg.get("accelerator", "auto"),
        "enable_progress_bar": cfg.get("enable_progress_bar", False),
        "train_size": 1.0,
        "check_val_every_n_epoch": None,
    }
    if cfg["pretrained"] is not None:
        over = {k: v for k, v in cfg["model"].items() if k in ScGPT.PRETRAINED_OVERRIDES}
        model = ScGPT.load_pretrained(cfg["pretrained"], a, **over)
    else:
        model = ScGPT(a, **cfg["model"])
    if cfg["pretrain_epochs"]:
        label_free = cfg["pretrain_task"] in ("generative", "contrastive")
        state = (cache or {}).get("pretrained") if label_free else None
        if state is not None and _same_shapes(model.module.state_dict(), state):
            model.module.load_state_dict(state)
            assert cache is not None  # the state came from it
            _set_rng(cache["rng"])  # where pretraining left the random numbers
        else:
            model.train(
                max_epochs=cfg["pretrain_epochs"],
                lr=cfg["pretrain_lr"],
                task=cfg["pretrain_task"],
                **train_kw,
            )
            if cache is not None and label_free:
                cache["pretrained"] = copy.deepcopy(model.module.state_dict())
                cache["rng"] = _get_rng()
    model.train(
        max_epochs=cfg["finetune_epochs"],
        lr=cfg["finetune_lr"],
        task="annotation",
        class_weight=cfg["class_weight"],
        label_smoothing=cfg["label_smoothing"],
        freeze_layers=cfg["freeze_layers"],
        **train_kw,
    )
    return np.asarray(model.predict(indices=test), dtype=str)


def _get_rng() -> tuple:
    import random

    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002


def _set_rng(state: tuple) -> None:
    import random

    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])  # noqa: NPY002 (the state Lightning seeds)
    torch.set_rng_state(state[2])


def _same_shapes(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
