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
    fitted_logistic_regression,
    fitted_pca,
    knn_classify,
    logistic_regression,
    train_scanvi,
    train_scvi,
)
from ._inputs import log_normalized

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
    # "finetune": train the transformer's classifier on the labelled cells; or a few-label
    # head of FEW_LABEL_HEADS on the pretrained embedding of every cell (no fine-tuning)
    "head": "finetune",
}

#: celltx settings of :func:`annotation` with ``label_fraction < 1`` (over ``CELLTX_DEFAULTS``)
FEW_LABEL_CELLTX_DEFAULTS: dict[str, Any] = {
    # the representation recipe with neighbour positives (NNCLR-style kNN of the embedding)
    "model": preset("small", dropout=0.0, gene_selection="rank", contrast_positives="knn"),
    "pretrain_task": "contrastive",
    "head": "probe_genes",  # the best celltx head measured (docs: representation, "Few labels")
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


def _logreg_spread(data, y, train, test, seed, **kw):
    """Logistic regression on genes + label spreading over the PCA kNN graph of all cells.

    The semi-supervised baseline: it sees the same unlabelled cells as celltx and scANVI.
    """
    g = dense(data.X, np.float64)
    clf, pg = _logreg_proba(g, y, train, seed, C=kw.get("C", 1.0))
    z = fitted_pca(kw.get("n_comps", 50), g, seed).fit_transform(g)  # label-free, all cells
    classes, d = _spread(z, y, train, n_neighbors=kw.get("n_neighbors", 15))
    return classes[(pg + d)[test].argmax(1)]


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
    with warnings.catch_warnings():
        # celltypist's classifier module calls warnings.simplefilter("ignore", UserWarning)
        # (and FutureWarning, RuntimeWarning) at import, which would silence every later
        # warning of the user's session; the filters are restored when this block ends
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
    head = cfg["head"]
    if head != "finetune" and cache is not None and "emb" in cache:
        return _few_label_head(head, cache, data, y, train, test, seed)
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
    if head != "finetune":  # a head on the embedding of every cell, no fine-tuning
        # shared by the folds only when no label was read to make it
        label_free = cfg["pretrain_task"] in ("generative", "contrastive")
        store = cache if cache is not None and label_free else {}
        store["emb"] = model.get_latent_representation()
        return _few_label_head(head, store, data, y, train, test, seed)
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


def _few_label_head(head, cache, data, y, train, test, seed) -> np.ndarray:
    """``FEW_LABEL_HEADS[head]`` on the cached embedding and log-normalised genes."""
    if "genes" not in cache:
        cache["genes"] = log_normalized(data.X)
    return np.asarray(
        FEW_LABEL_HEADS[head](cache["emb"], cache["genes"], y, train, test, seed), dtype=str
    )


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


# --- few-label heads: a classifier on the pretrained embedding (and the genes) ------------
# ``fn(emb, genes, y, train, test, seed)``: ``emb`` the pretrained celltx embedding of every
# cell (it read no label), ``genes`` the log-normalised expression of every cell; trained on
# the labelled ``train`` cells (the others may be used unlabelled), predicts ``test``.


def _scaled(emb: np.ndarray) -> np.ndarray:
    """Embedding columns standardised over all cells (label-free, as the embedding)."""
    emb = np.asarray(emb, dtype=np.float64)
    sd = emb.std(0)
    return (emb - emb.mean(0)) / np.where(sd > 0, sd, 1.0)


def _logreg_proba(x, y, train, seed, C=1.0):
    clf = fitted_logistic_regression(x[train], y[train], C=C, seed=seed)
    return clf, clf.predict_proba(x)


def _with_genes(emb: np.ndarray, genes) -> np.ndarray:
    """``[embedding, genes]``, the standardised embedding block given the genes' total variance."""
    g = dense(genes, np.float64)
    e = _scaled(emb)
    scale = np.sqrt(g.var(0).sum() / e.shape[1])
    return np.hstack([e * scale, g])


def _spread(x, y, train, n_neighbors=15, alpha=0.2):
    """Label spreading over the kNN graph of ``x`` (all cells; only ``train`` labelled)."""
    from sklearn.semi_supervised import LabelSpreading

    classes = np.unique(y[train])
    code = np.full(len(y), -1)
    code[train] = np.searchsorted(classes, y[train])
    ls = LabelSpreading(kernel="knn", n_neighbors=n_neighbors, alpha=alpha, max_iter=100)
    ls.fit(x, code)
    dist = ls.label_distributions_
    dist = np.nan_to_num(dist / np.maximum(dist.sum(1, keepdims=True), 1e-12))
    return classes, dist


def _head_probe(emb, genes, y, train, test, seed):
    clf, p = _logreg_proba(_scaled(emb), y, train, seed)
    return clf.classes_[p[test].argmax(1)]


def _head_probe_genes(emb, genes, y, train, test, seed):
    clf, p = _logreg_proba(_with_genes(emb, genes), y, train, seed)
    return clf.classes_[p[test].argmax(1)]


def _head_spread(emb, genes, y, train, test, seed):
    classes, d = _spread(_scaled(emb), y, train)
    return classes[d[test].argmax(1)]


def _head_stack(emb, genes, y, train, test, seed):
    """Average of the probabilities of logistic regression on genes and the embedding probe."""
    g, pg = _logreg_proba(dense(genes, np.float64), y, train, seed)
    _, pe = _logreg_proba(_scaled(emb), y, train, seed)
    return g.classes_[(pg + pe)[test].argmax(1)]


def _head_stack_spread(emb, genes, y, train, test, seed):
    """Average of logistic regression on genes and label spreading over the embedding."""
    g, pg = _logreg_proba(dense(genes, np.float64), y, train, seed)
    classes, d = _spread(_scaled(emb), y, train)
    assert np.array_equal(classes, g.classes_)
    return classes[(pg + d)[test].argmax(1)]


def _head_selftrain(emb, genes, y, train, test, seed, threshold=0.9):
    """Self-training: ``probe_genes`` refitted once with its confident pseudo-labels.

    The unlabelled cells it predicts with probability >= ``threshold`` join the labelled ones.
    """
    x = _with_genes(emb, genes)
    clf, p = _logreg_proba(x, y, train, seed)
    yy = y.copy()
    pseudo = np.setdiff1d(np.flatnonzero(p.max(1) >= threshold), train)
    yy[pseudo] = clf.classes_[p[pseudo].argmax(1)]
    clf2, p2 = _logreg_proba(x, yy, np.union1d(train, pseudo), seed)
    return clf2.classes_[p2[test].argmax(1)]


def _pca_all(genes, seed, n_comps=50) -> np.ndarray:
    """Principal components of every cell's log-normalised genes (label-free)."""
    g = dense(genes, np.float64)
    return fitted_pca(n_comps, g, seed).fit_transform(g)


def _head_stack3(emb, genes, y, train, test, seed):
    """Logistic regression on genes + label spreading over the PCA graph + over the embedding's graph."""
    g, pg = _logreg_proba(dense(genes, np.float64), y, train, seed)
    _, dp = _spread(_pca_all(genes, seed), y, train)
    _, de = _spread(_scaled(emb), y, train)
    return g.classes_[(pg + dp + de)[test].argmax(1)]


def _head_joint_spread(emb, genes, y, train, test, seed):
    """Logistic regression on genes + label spreading over the kNN graph of [PCA, embedding]."""
    g, pg = _logreg_proba(dense(genes, np.float64), y, train, seed)
    z = np.hstack([_scaled(_pca_all(genes, seed)), _scaled(emb)])
    _, d = _spread(z, y, train)
    return g.classes_[(pg + d)[test].argmax(1)]


#: few-label heads on a pretrained celltx embedding (``fn(emb, genes, y, train, test, seed)``)
FEW_LABEL_HEADS = {
    "probe": _head_probe,
    "probe_genes": _head_probe_genes,
    "spread": _head_spread,
    "stack": _head_stack,
    "stack_spread": _head_stack_spread,
    "selftrain": _head_selftrain,
    "stack3": _head_stack3,
    "joint_spread": _head_joint_spread,
}
