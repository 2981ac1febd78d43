"""Cell-type annotation benchmark: celltx next to standard baselines, same folds."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

logger = logging.getLogger(__name__)

ANNOTATION_METHODS = ("celltx", "logreg", "knn_pca", "scanvi", "celltypist")

#: celltx settings of :func:`annotation` (override any with ``celltx_kwargs``)
CELLTX_DEFAULTS = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 512, "dropout": 0.1},
    "pretrained": None,  # a scGPT model directory to start from instead of a new model
    "pretrain_epochs": 20,  # generative pretraining on all cells of the fold (no labels)
    "pretrain_lr": 1e-2,
    "finetune_epochs": 40,
    "finetune_lr": 1e-3,
    "batch_size": 32,
    "class_weight": "balanced",
    "label_smoothing": 0.1,
    "freeze_layers": 0,
}


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _expression(adata: AnnData, layer: str | None):
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer={layer!r} is not in adata.layers ({list(adata.layers)}).")
    return adata.X if layer is None else adata.layers[layer]


def _logreg(adata, y, train, test, layer, seed, **kw):
    from sklearn.linear_model import LogisticRegression

    X = _expression(adata, layer)
    clf = LogisticRegression(max_iter=kw.get("max_iter", 1000), C=kw.get("C", 1.0))
    clf.fit(X[train], y[train])
    return clf.predict(X[test])


def _knn_pca(adata, y, train, test, layer, seed, **kw):
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    X = _dense(_expression(adata, layer))
    n_comps = min(kw.get("n_comps", 50), len(train) - 1, X.shape[1] - 1)
    pca = PCA(n_components=n_comps, random_state=seed).fit(X[train])  # fitted on the fold's training cells
    knn = KNeighborsClassifier(n_neighbors=kw.get("n_neighbors", 15))
    knn.fit(pca.transform(X[train]), y[train])
    return knn.predict(pca.transform(X[test]))


def _masked(adata, y, train, layer, unlabeled="<unlabeled>"):
    a = AnnData(X=_expression(adata, layer).copy(), obs=pd.DataFrame(index=adata.obs_names.copy()))
    a.var_names = adata.var_names.copy()
    lab = np.full(adata.n_obs, unlabeled, dtype=object)
    lab[train] = y[train]
    a.obs["_label"] = pd.Categorical(lab)
    return a


def _scanvi(adata, y, train, test, layer, seed, **kw):
    import scvi

    a = _masked(adata, y, train, layer)
    X = a.X.data if sparse.issparse(a.X) else a.X
    counts = bool(np.all(np.mod(X, 1) == 0))
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(a, labels_key="_label")
    vae = scvi.model.SCVI(
        a, gene_likelihood=kw.get("gene_likelihood", "nb" if counts else "normal"), n_latent=kw.get("n_latent", 30)
    )
    progress = kw.get("enable_progress_bar", False)
    vae.train(max_epochs=kw.get("scvi_epochs", 100), enable_progress_bar=progress, accelerator=kw.get("accelerator", "auto"))
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="<unlabeled>", labels_key="_label")
    lvae.train(max_epochs=kw.get("scanvi_epochs", 20), enable_progress_bar=progress, accelerator=kw.get("accelerator", "auto"))
    return np.asarray(lvae.predict(a))[test]


def _celltypist(adata, y, train, test, layer, seed, **kw):
    import celltypist

    X = _expression(adata, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = AnnData(X=X[train].copy(), obs=pd.DataFrame({"y": y[train]}, index=adata.obs_names[train]))
        tr.var_names = adata.var_names.copy()
        common = {"labels": "y", "check_expression": False, "n_jobs": 1,
                  "feature_selection": kw.get("feature_selection", False)}
        try:
            model = celltypist.train(tr, max_iter=kw.get("max_iter", 1000), **common)
        except TypeError:
            # celltypist <= 1.7.1 passes multi_class= to LogisticRegression, which
            # scikit-learn >= 1.8 no longer accepts; its SGD logistic regression still works
            model = celltypist.train(tr, use_SGD=True, **common)
        te = AnnData(X=X[test].copy(), obs=pd.DataFrame(index=adata.obs_names[test]))
        te.var_names = adata.var_names.copy()
        res = celltypist.annotate(te, model=model)
    return res.predicted_labels["predicted_labels"].astype(str).to_numpy()


def _celltx(adata, y, train, test, layer, seed, **kw):
    import scvi

    from celltx.model import ScGPT

    cfg = {**CELLTX_DEFAULTS, **kw}
    cfg["model"] = {**CELLTX_DEFAULTS["model"], **kw.get("model", {})}
    a = AnnData(X=_expression(adata, layer).copy(), obs=pd.DataFrame(index=adata.obs_names.copy()))
    a.var_names = adata.var_names.copy()
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
        over = {k: v for k, v in cfg["model"].items() if k in ScGPT._PRETRAINED_OVERRIDES}
        model = ScGPT.load_pretrained(cfg["pretrained"], a, **over)
    else:
        model = ScGPT(a, **cfg["model"])
    if cfg["pretrain_epochs"]:
        model.train(max_epochs=cfg["pretrain_epochs"], lr=cfg["pretrain_lr"], task="generative", **train_kw)
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


_RUNNERS: dict[str, Callable] = {
    "celltx": _celltx,
    "logreg": _logreg,
    "knn_pca": _knn_pca,
    "scanvi": _scanvi,
    "celltypist": _celltypist,
}


def annotation(
    adata: AnnData,
    labels_key: str,
    methods: Sequence[str] = ANNOTATION_METHODS,
    n_splits: int = 5,
    seed: int = 0,
    layer: str | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """Cross-validated cell-type annotation: celltx and baselines on the same folds.

    Cells are split into ``n_splits`` stratified folds (``seed``); each method is trained
    on the other folds' labels and predicts the held-out fold. Methods:

    ``"celltx"``
        :class:`~celltx.model.ScGPT`: generative pretraining on all cells of the data
        (held-out labels hidden, as for scANVI), then ``train(task="annotation")`` on the
        labelled cells, then :meth:`~celltx.model.ScGPT.predict`. Settings:
        ``celltx.bench.CELLTX_DEFAULTS``, overridden by ``method_kwargs["celltx"]`` (e.g.
        ``{"pretrained": "scGPT_human", "pretrain_epochs": 0}`` to fine-tune a published
        checkpoint).
    ``"logreg"``
        scikit-learn logistic regression on the expression values (``C=1``).
    ``"knn_pca"``
        kNN (15 neighbours) on 50 principal components fitted on the training cells.
    ``"scanvi"``
        scvi-tools' scVI (100 epochs) then scANVI (20 epochs) on all cells with held-out
        labels hidden; negative-binomial likelihood for counts, normal otherwise.
    ``"celltypist"``
        celltypist's logistic-regression model trained on the training cells (when
        celltypist is installed; with scikit-learn >= 1.8, celltypist 1.7.1 can only train
        its SGD variant, which is then used).

    Parameters
    ----------
    adata
        Cells × genes with log-normalized expression in ``X`` or ``layer`` (e.g. the
        ``.raw`` of a scanpy object as an AnnData). Cells whose label is missing are left
        out (with a warning).
    labels_key
        ``obs`` column with the cell types.
    methods
        Any of ``"celltx"``, ``"logreg"``, ``"knn_pca"``, ``"scanvi"``, ``"celltypist"``.
    n_splits
        Folds (capped by the smallest class).
    seed
        Seed of the folds and of the methods.
    layer
        Layer with the expression values (default ``X``).
    method_kwargs
        ``{method: {setting: value}}`` overrides (epochs, ``accelerator``, …).

    Returns
    -------
    pandas.DataFrame
        One row per method and fold: ``method``, ``fold``, ``accuracy``, ``macro_f1``,
        ``weighted_f1``, ``seconds``. :func:`summarize` turns it into mean ± sd.

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> df = celltx.bench.annotation(adata, "cell_type", methods=["logreg", "knn_pca"], n_splits=2)
    >>> sorted(df["method"].unique())
    ['knn_pca', 'logreg']
    """
    methods = list(methods)
    unknown = [m for m in methods if m not in _RUNNERS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {list(_RUNNERS)}.")
    if not methods:
        raise ValueError("No methods to benchmark.")
    if labels_key not in adata.obs:
        raise ValueError(f"labels_key={labels_key!r} is not a column of adata.obs.")
    if "celltypist" in methods:
        try:
            import celltypist  # noqa: F401
        except ImportError:
            warnings.warn("celltypist is not installed; leaving it out.", UserWarning, stacklevel=2)
            methods.remove("celltypist")
    labels = adata.obs[labels_key]
    keep = labels.notna().to_numpy()
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} cells have no label and are left out of the benchmark.",
            UserWarning,
            stacklevel=2,
        )
        adata = adata[keep].copy()
    y = adata.obs[labels_key].astype(str).to_numpy()
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"Annotation needs at least 2 cell types; {labels_key!r} has {list(classes)}.")
    n_splits = int(min(n_splits, counts.min()))
    if n_splits < 2:
        small = classes[counts < 2].tolist()
        raise ValueError(f"Cell types {small} have a single cell; cross-validation needs >= 2 per type.")
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    rows = []
    for fold, (train, test) in enumerate(folds):
        for m in methods:
            t0 = time.perf_counter()
            pred = np.asarray(_RUNNERS[m](adata, y, train, test, layer, seed, **dict((method_kwargs or {}).get(m, {}))))
            truth = y[test]
            rows.append(
                {
                    "method": m,
                    "fold": fold,
                    "accuracy": accuracy_score(truth, pred),
                    "macro_f1": f1_score(truth, pred, average="macro", labels=classes, zero_division=0),
                    "weighted_f1": f1_score(truth, pred, average="weighted", labels=classes, zero_division=0),
                    "seconds": time.perf_counter() - t0,
                }
            )
            logger.info(
                "fold %d %s: accuracy %.3f, macro-F1 %.3f (%.0f s)",
                fold, m, rows[-1]["accuracy"], rows[-1]["macro_f1"], rows[-1]["seconds"],
            )
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Mean ± sd over folds of every numeric column of a benchmark table.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.bench import summarize
    >>> summarize(pd.DataFrame({"method": ["a", "a"], "fold": [0, 1], "accuracy": [0.8, 0.9]}))
             accuracy
    method
    a       0.850 ± 0.071
    """
    cols = [c for c in df.select_dtypes("number").columns if c != "fold"]
    g = df.groupby(by, sort=False)[cols]
    mean, sd = g.mean(), g.std()
    return mean.combine(sd, lambda m, s: m.map("{:.3f}".format) + " ± " + s.map("{:.3f}".format))
