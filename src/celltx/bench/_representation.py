"""Cell representations on the user's data: celltx next to PCA and scVI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.nn import preset

from ._baselines import pca_embedding, scvi_embedding
from ._embedding import embedding_scores
from ._fit import fit_celltx
from ._inputs import get_expression, is_counts, skip_note
from ._runner import method_rows

EMBEDDING_METHODS = ("celltx", "pca", "scvi")

#: the celltx recipe of :func:`embedding` (trained from scratch on the data; see the
#: representation section of the docs for the measurements behind it)
EMBED_CELLTX_DEFAULTS = {
    "model": preset("small", dropout=0.0, gene_selection="rank"),
    "task": "contrastive",
    "epochs": 20,
    "budget_cells": 1_500,  # fewer epochs above: celltx.model.train_budget
    "lr": 1e-2,
    "batch_size": 32,
    "accelerator": "auto",
}

#: the score columns of :func:`embedding`
_SCORES = ("knn_accuracy", "knn_accuracy_sd", "leiden_nmi", "leiden_ari")


def _celltx(adata: AnnData, layer, settings: Mapping, seed: int) -> np.ndarray:
    a = AnnData(X=get_expression(adata, layer).copy(), obs=adata.obs[[]].copy())
    a.var_names = adata.var_names.copy()
    model = fit_celltx(a, EMBED_CELLTX_DEFAULTS, settings, seed)
    return model.get_latent_representation(pooling=settings.get("pooling", "cls"))


def embedding(
    adata: AnnData,
    labels_key: str,
    methods: Sequence[str] = EMBEDDING_METHODS,
    *,
    seed: int = 0,
    layer: str | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """Train each method on ``adata`` and score its cell embedding against known labels.

    ``"celltx"`` trains an :class:`~celltx.model.ScGPT` from scratch with
    :data:`EMBED_CELLTX_DEFAULTS` (overridden by ``method_kwargs["celltx"]``, e.g.
    ``{"epochs": 40, "model": {"max_seq_len": 512}}``); ``"pca"`` is
    :func:`~celltx.bench.pca_embedding` (log-normalised, 2,000 HVGs, 50 PCs); ``"scvi"`` is
    :func:`~celltx.bench.scvi_embedding` (raw counts only; skipped with a note otherwise;
    ``method_kwargs["scvi"]`` as its keyword arguments). Scores from
    :func:`~celltx.bench.embedding_scores`: 5-fold kNN accuracy and Leiden ARI / NMI.

    Parameters
    ----------
    adata
        Cells × genes, raw counts or log-normalised values; not modified.
    labels_key
        ``obs`` column with the labels (e.g. cell types).
    methods
        Any of ``"celltx"``, ``"pca"``, ``"scvi"``.
    seed
        Seed of every method and of the scores.
    layer
        Layer with the expression (default ``.X``).
    method_kwargs
        Per-method settings (see above).

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``knn_accuracy``, ``knn_accuracy_sd``,
        ``leiden_nmi``, ``leiden_ari``, ``seconds``, ``error``.

    Examples
    --------
    >>> import celltx
    >>> df = celltx.bench.embedding(celltx.datasets.pbmc68k(), "cell_type", methods=["pca"])
    >>> df["method"].tolist(), bool(df["knn_accuracy"].iloc[0] > 0.5)
    (['pca'], True)
    """
    unknown = sorted(set(methods) - set(EMBEDDING_METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use {list(EMBEDDING_METHODS)}.")
    if labels_key not in adata.obs.columns:
        raise ValueError(
            f"labels_key={labels_key!r} is not a column of adata.obs; columns: "
            f"{list(adata.obs.columns)}."
        )
    kwargs = dict(method_kwargs or {})
    counts = is_counts(get_expression(adata, layer))

    def run(method, _seed):
        if method == "celltx":
            return _celltx(adata, layer, kwargs.get("celltx", {}), seed)
        if method == "pca":
            return pca_embedding(adata, layer=layer, seed=seed)
        one = adata.copy()
        one.obs["_one_batch"] = "all"
        return scvi_embedding(
            one, "_one_batch", layer=layer, seed=seed, **dict(kwargs.get("scvi", {}))
        )

    def score(method, _seed, emb):  # not part of the method's seconds
        s = embedding_scores(adata, labels_key, {method: emb}, seed=seed).iloc[0]
        return {c: s[c] for c in (*_SCORES, "error")}

    skipped = {} if counts else {"scvi": "scVI needs raw counts"}
    skipped = {m: skip_note(m, why) for m, why in skipped.items() if m in methods}
    rows = list(method_rows(methods, run, skipped=skipped, score=score))
    return pd.DataFrame(rows).reindex(columns=["method", *_SCORES, "seconds", "error"])
