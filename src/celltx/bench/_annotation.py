"""Cell-type annotation benchmark: celltx next to standard baselines, same folds.

The methods (celltx and the baselines, each trained and applied on one fold) are in
``_annotation_methods``; here are the per-fold scores, :func:`annotation` and
:func:`summarize`.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from ._annotation_methods import (
    CELLTX_DEFAULTS,
    FEW_LABEL_CELLTX_DEFAULTS,
    FEW_LABEL_HEADS,
    _celltx,
    _celltypist,
    _knn_pca,
    _logreg,
    _logreg_spread,
    _scanvi,
)
from ._inputs import (
    expression_kind,
    get_expression,
    is_counts,
    layer_label,
    log_normalized,
    skip_note,
)
from ._runner import method_rows

logger = logging.getLogger(__name__)

#: the methods of :func:`~celltx.bench.annotation`
ANNOTATION_METHODS = ("celltx", "logreg", "knn_pca", "logreg_spread", "scanvi", "celltypist")

_RUNNERS: dict[str, Callable] = {
    "celltx": _celltx,
    "logreg": _logreg,
    "knn_pca": _knn_pca,
    "logreg_spread": _logreg_spread,
    "scanvi": _scanvi,
    "celltypist": _celltypist,
}

#: settings each method reads from ``method_kwargs``
_SETTINGS = {
    "celltx": frozenset(CELLTX_DEFAULTS) | {"accelerator", "enable_progress_bar"},
    "logreg": frozenset({"max_iter", "C"}),
    "knn_pca": frozenset({"n_comps", "n_neighbors"}),
    "logreg_spread": frozenset({"C", "n_comps", "n_neighbors"}),
    "scanvi": frozenset(
        {
            "scvi_epochs",
            "scanvi_epochs",
            "n_latent",
            "gene_likelihood",
            "accelerator",
            "enable_progress_bar",
        }
    ),
    "celltypist": frozenset({"max_iter", "feature_selection"}),
}

#: the input each method gets: the values as given, log-normalised values or raw counts
_INPUT = {
    "celltx": "given",
    "logreg": "lognorm",
    "knn_pca": "lognorm",
    "logreg_spread": "lognorm",
    "scanvi": "counts",
    "celltypist": "lognorm",
}

#: the score columns of :func:`~celltx.bench.annotation`
_SCORES = ("accuracy", "macro_f1", "weighted_f1")


def _fold_scores(runner, data, y, train, test, seed, classes, kw) -> dict[str, float]:
    """Run one method on one fold and score its predictions of the test cells."""
    pred = np.asarray(runner(data, y, train, test, seed, **kw))
    truth = y[test]
    if pred.shape != truth.shape:
        raise ValueError(
            f"predicted {pred.shape[0] if pred.ndim else 0} labels for {len(test)} test cells."
        )
    return {
        "accuracy": accuracy_score(truth, pred),
        "macro_f1": f1_score(truth, pred, average="macro", labels=classes, zero_division=0),
        "weighted_f1": f1_score(truth, pred, average="weighted", labels=classes, zero_division=0),
    }


def _check_label_fraction(label_fraction) -> float | None:
    """``label_fraction`` of :func:`annotation`, validated (``None`` or 1: every label)."""
    if label_fraction is None:
        return None
    if (
        isinstance(label_fraction, bool)
        or not isinstance(label_fraction, int | float | np.integer | np.floating)
        or not 0 < label_fraction <= 1
    ):
        raise ValueError(
            f"label_fraction={label_fraction!r} must be a number in (0, 1]: the fraction of "
            "each fold's training labels kept (e.g. 0.1), or None for all of them."
        )
    return None if label_fraction == 1 else float(label_fraction)


def _n_labelled(n: np.ndarray, fraction: float) -> np.ndarray:
    """Labelled cells kept of ``n`` training cells of a label (``fraction × n``, half up)."""
    return np.floor(fraction * n + 0.5).astype(int)


def _few_labels(
    folds: list[tuple[np.ndarray, np.ndarray]],
    y: np.ndarray,
    classes: np.ndarray,
    fraction: float,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's training cells cut to a stratified ``fraction`` of every label.

    Refuses (``ValueError`` naming the labels) when a label would keep no cell in a fold,
    before anything is trained.
    """
    empty: dict[Any, int] = {}
    for train, _ in folds:
        n = np.array([(y[train] == c).sum() for c in classes])
        for c, k, m in zip(classes, _n_labelled(n, fraction), n, strict=True):
            if k < 1:
                empty[c] = min(empty.get(c, m), m)
    if empty:
        need = 0.5 / min(empty.values())
        raise ValueError(
            f"label_fraction={fraction:g} leaves no labelled cell of "
            + ", ".join(f"{c!r} ({m} training cells in a fold)" for c, m in sorted(empty.items()))
            + f": raise label_fraction to at least {np.ceil(need * 1000) / 1000:g}, or drop "
            "these labels from adata."
        )
    out = []
    for fold, (train, test) in enumerate(folds):
        rng = np.random.default_rng([seed, fold])
        keep = []
        for c in classes:
            idx = train[y[train] == c]
            keep.append(rng.choice(idx, _n_labelled(np.array(len(idx)), fraction), replace=False))
        out.append((np.sort(np.concatenate(keep)), test))
    return out


def _check_method_kwargs(methods: list[str], method_kwargs: Mapping | None) -> dict[str, dict]:
    """The settings of each method, refusing unknown methods and settings."""
    out = {}
    for m, kw in (method_kwargs or {}).items():
        if m not in _RUNNERS:
            raise ValueError(
                f"method_kwargs names an unknown method {m!r}; choose from {list(_RUNNERS)}."
            )
        kw = dict(kw or {})
        bad = sorted(set(kw) - _SETTINGS[m])
        if bad and m in methods:
            raise ValueError(
                f"method_kwargs[{m!r}] has unknown settings {bad}; {m} reads {sorted(_SETTINGS[m])}."
            )
        out[m] = kw
    head = out.get("celltx", {}).get("head", "finetune")
    if "celltx" in methods and head != "finetune" and head not in FEW_LABEL_HEADS:
        raise ValueError(
            f"method_kwargs['celltx']['head']={head!r} is not a celltx head; choose "
            f"'finetune' or one of {sorted(FEW_LABEL_HEADS)}."
        )
    return out


def _celltx_settings(kw: Mapping, few_labels: bool) -> dict:
    """The celltx settings: the caller's over ``FEW_LABEL_CELLTX_DEFAULTS`` with few labels."""
    if not few_labels:
        return dict(kw)
    model = {**FEW_LABEL_CELLTX_DEFAULTS["model"], **kw.get("model", {})}
    return {**FEW_LABEL_CELLTX_DEFAULTS, **kw, "model": model}


def annotation(
    adata: AnnData,
    labels_key: str,
    methods: Sequence[str] = ANNOTATION_METHODS,
    n_splits: int = 5,
    seed: int = 0,
    layer: str | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
    counts_layer: str | None = None,
    label_fraction: float | None = None,
) -> pd.DataFrame:
    """Cross-validated cell-type annotation: celltx and baselines on the same folds.

    Cells are split into ``n_splits`` stratified folds (``seed``); each method is trained
    on the other folds' labels and predicts the held-out fold. With ``label_fraction``
    (few-label annotation) only a stratified fraction of those training labels is given,
    the same cells to every method; celltx and scANVI still see every cell's expression
    (the others unlabelled), the classifiers only the labelled cells. The expression (``X`` or
    ``layer``) may hold raw counts or log-normalised values (told apart on a sample of
    the values); each method gets the input it needs, computed on a copy. Methods:

    ``"celltx"``
        :class:`~celltx.model.ScGPT` on the values as given: pretraining (generative, or
        ``"pretrain_task": "contrastive"``) on all cells of the data (held-out labels
        hidden, as for scANVI; it reads no label, so it runs once and later folds start
        from its weights), then
        ``train(task="annotation")`` on the labelled cells, then
        :meth:`~celltx.model.ScGPT.predict`. Settings: ``celltx.bench.CELLTX_DEFAULTS``,
        overridden by ``method_kwargs["celltx"]`` (e.g. ``{"pretrained": "scGPT_human",
        "pretrain_epochs": 0}`` to fine-tune a published checkpoint). The setting ``head``
        replaces the fine-tuning by a classifier on the pretrained ``<cls>`` embedding of
        every cell (computed once, shared by the folds when pretraining read no label):
        ``"probe"`` (logistic regression on the embedding), ``"probe_genes"`` (on
        [embedding, log-normalised genes]), ``"spread"`` (label spreading over the
        embedding's kNN graph), ``"stack"`` / ``"stack_spread"`` (logistic regression on
        the genes, its probabilities averaged with the probe's / the spreading's),
        ``"stack3"`` (genes + spreading over the PCA graph + spreading over the embedding's
        graph), ``"joint_spread"`` (genes + spreading over the graph of [PCA, embedding]),
        ``"selftrain"`` (``probe_genes`` refitted with its confident pseudo-labels). With
        ``label_fraction`` below 1, ``celltx.bench.FEW_LABEL_CELLTX_DEFAULTS`` comes
        between the two: the representation recipe's contrastive pretraining with kNN
        positives (``contrast_positives="knn"``) and the head that measured best with
        10 % of the labels (see "Few labels" in the representation docs);
        ``{"head": "finetune"}`` fine-tunes instead.
    ``"logreg"``
        scikit-learn logistic regression on log-normalised expression (``C=1``).
    ``"knn_pca"``
        kNN (15 neighbours) on 50 principal components of log-normalised expression,
        fitted on the training cells.
    ``"logreg_spread"``
        the semi-supervised baseline: logistic regression on log-normalised expression,
        its class probabilities averaged with scikit-learn's ``LabelSpreading`` over the
        15-nearest-neighbour graph of 50 principal components of all cells (held-out labels
        hidden): it sees the same unlabelled cells as celltx and scANVI.
    ``"scanvi"``
        scvi-tools' scVI (100 epochs) then scANVI (20 epochs) on all cells with held-out
        labels hidden, on raw counts (negative-binomial likelihood). Without counts (the
        values are log-normalised and no ``counts_layer`` is given) it is skipped: its rows
        say why in ``error``.
    ``"celltypist"``
        celltypist's logistic-regression model trained on the training cells, on
        log1p-CP10k values (``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p`` of
        the counts; log-normalised input is used as is). Left out with a warning when
        celltypist is not installed; with scikit-learn >= 1.8, celltypist 1.7.1 can only
        train its SGD variant, which is then used.

    Log-normalised values for logreg, kNN, logreg_spread and celltypist are made from counts (as for
    celltypist) when the input holds counts. A method that fails on a fold does not stop
    the benchmark: its row gets NaN scores and the exception in ``error`` (with a
    warning), and the other rows are kept. Each row is logged (logger
    ``celltx.bench._annotation``, level INFO) as it finishes. Bad arguments raise before
    anything is trained. ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells × genes with raw counts or log-normalized expression in ``X`` or ``layer``
        (e.g. the ``.raw`` of a scanpy object as an AnnData). Cells whose label is missing
        are left out (with a warning).
    labels_key
        ``obs`` column with the cell types.
    methods
        Any of ``"celltx"``, ``"logreg"``, ``"knn_pca"``, ``"logreg_spread"``,
        ``"scanvi"``, ``"celltypist"``.
    n_splits
        Folds (capped by the smallest class).
    seed
        Seed of the folds and of the methods.
    layer
        Layer with the expression values (default ``X``).
    method_kwargs
        ``{method: {setting: value}}`` overrides (epochs, ``accelerator``, …): celltx
        reads the keys of ``CELLTX_DEFAULTS``, ``accelerator`` and ``enable_progress_bar``;
        logreg ``max_iter``, ``C``; knn_pca ``n_comps``, ``n_neighbors``; logreg_spread
        ``C``, ``n_comps``, ``n_neighbors``; scanvi
        ``scvi_epochs``, ``scanvi_epochs``, ``n_latent``, ``gene_likelihood``,
        ``accelerator``, ``enable_progress_bar``; celltypist ``max_iter``,
        ``feature_selection``.
    counts_layer
        Layer with raw counts for scANVI when ``X`` / ``layer`` holds log-normalised
        values (default: use ``X`` / ``layer`` when it holds counts).
    label_fraction
        Keep this fraction of each fold's training labels, per label (``fraction × n``
        cells of a label with ``n`` training cells, rounded half up; drawn with ``seed``
        and the fold), e.g. ``0.1``; the test cells are unchanged. ``None`` (default) or
        ``1``: all training labels.

    Returns
    -------
    pandas.DataFrame
        One row per method and fold: ``method``, ``fold``, ``accuracy``, ``macro_f1``,
        ``weighted_f1``, ``n_labelled`` (the labelled training cells), ``seconds``,
        ``error`` (``None``, or why the method failed or was skipped; its scores are then
        NaN). :func:`summarize` turns it into mean ± sd.

    Raises
    ------
    ValueError
        Before any training: an unknown method, setting or celltx ``head``, a missing
        ``labels_key`` or layer, fewer than 2 cell types or a type with a single cell, values that are
        neither raw counts nor log-normalised (negative, NaN, or non-integers above 30),
        a ``counts_layer`` without counts, a ``label_fraction`` outside (0, 1], or one
        that leaves a label without a labelled cell in a fold (the error names it).

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> df = celltx.bench.annotation(adata, "cell_type", methods=["logreg", "knn_pca"], n_splits=2)
    >>> sorted(df["method"].unique())
    ['knn_pca', 'logreg']
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in _RUNNERS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {list(_RUNNERS)}.")
    if not methods:
        raise ValueError("No methods to benchmark.")
    methods = list(dict.fromkeys(methods))
    kwargs = _check_method_kwargs(methods, method_kwargs)
    label_fraction = _check_label_fraction(label_fraction)
    if labels_key not in adata.obs:
        raise ValueError(f"labels_key={labels_key!r} is not a column of adata.obs.")
    where = layer_label(layer)
    x = get_expression(adata, layer)
    kind = expression_kind(x, where)
    if counts_layer is not None:
        counts = get_expression(adata, counts_layer)
        if not is_counts(counts):
            raise ValueError(
                f"counts_layer={counts_layer!r} does not hold raw counts (non-negative integers); "
                "pass the layer with the unnormalised counts, or counts_layer=None."
            )
    else:
        counts = x if kind == "counts" else None
    if "celltypist" in methods:
        # found, not imported: celltypist's import silences every later UserWarning
        if importlib.util.find_spec("celltypist") is None:
            warnings.warn("celltypist is not installed; leaving it out.", UserWarning, stacklevel=2)
            methods.remove("celltypist")
    reasons = {}
    if "scanvi" in methods and counts is None:
        reasons["scanvi"] = (
            f"scANVI needs raw counts and {where} holds log-normalised values; pass counts_layer= "
            "naming a layer of raw counts (or layer= if the counts are there) to include it."
        )
    labels = adata.obs[labels_key]
    keep = labels.notna().to_numpy()
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} cells have no label and are left out of the benchmark.",
            UserWarning,
            stacklevel=2,
        )
    y = labels[keep].astype(str).to_numpy()
    classes, n_per_class = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"Annotation needs at least 2 cell types; {labels_key!r} has {list(classes)}."
        )
    n_splits = int(min(n_splits, n_per_class.min()))
    if n_splits < 2:
        small = classes[n_per_class < 2].tolist()
        raise ValueError(
            f"Cell types {small} have a single cell; cross-validation needs >= 2 per type."
        )
    skipped = {m: skip_note(m, why) for m, why in reasons.items()}

    def _rows(m):  # the labelled cells of a matrix (a view of the caller's data when all are)
        return m if keep.all() else m[np.flatnonzero(keep)]

    x = _rows(x)
    inputs = {"given": x}
    if any(_INPUT[m] == "lognorm" for m in methods):
        inputs["lognorm"] = log_normalized(x, kind)
    if counts is not None and "scanvi" in methods:
        inputs["counts"] = _rows(counts)
    obs = pd.DataFrame(index=adata.obs_names[keep].copy())
    var = pd.DataFrame(index=adata.var_names.copy())
    data = {
        m: AnnData(X=inputs[_INPUT[m]], obs=obs.copy(), var=var.copy())
        for m in methods
        if m not in skipped
    }
    folds = list(
        StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
            np.zeros(len(y)), y
        )
    )
    if label_fraction is not None:
        folds = _few_labels(folds, y, classes, label_fraction, seed)
    rows = []
    cache: dict = {}  # celltx's pretrained weights, shared by the folds

    def run(m, fold):
        train, test = folds[fold]
        kw = kwargs.get(m, {})
        if m == "celltx":
            kw = {**_celltx_settings(kw, label_fraction is not None), "cache": cache}
        return _fold_scores(_RUNNERS[m], data[m], y, train, test, seed, classes, kw)

    for fold, (train, _) in enumerate(folds):
        for row in method_rows(
            methods,
            run,
            [fold],
            seed_column="fold",
            columns={**dict.fromkeys(_SCORES, np.nan), "n_labelled": len(train)},
            skipped=skipped,
            label=lambda m, f: f"{m} (fold {f})",
        ):
            rows.append(row)
            if row["error"] is None:
                logger.info(
                    "fold %d %s: accuracy %.3f, macro-F1 %.3f (%.0f s)",
                    fold,
                    row["method"],
                    row["accuracy"],
                    row["macro_f1"],
                    row["seconds"],
                )
    return pd.DataFrame(
        rows, columns=["method", "fold", *_SCORES, "n_labelled", "seconds", "error"]
    )


def summarize(df: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Mean ± sd over folds of every numeric column of a benchmark table.

    Parameters
    ----------
    df
        A table with one row per method and fold, e.g. the output of
        :func:`~celltx.bench.annotation`; the ``fold`` column is not summarised.
    by
        The column whose values become the rows.

    Returns
    -------
    pandas.DataFrame
        ``"mean ± sd"`` strings (three decimals), one row per value of ``by``.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.bench import summarize
    >>> table = summarize(pd.DataFrame({"method": ["a", "a"], "fold": [0, 1], "accuracy": [0.8, 0.9]}))
    >>> table.loc["a", "accuracy"]
    '0.850 ± 0.071'
    """
    cols = [c for c in df.select_dtypes("number").columns if c != "fold"]
    g = df.groupby(by, sort=False)[cols]
    mean, sd = g.mean(), g.std()
    return mean.combine(sd, lambda m, s: m.map("{:.3f}".format) + " ± " + s.map("{:.3f}".format))
