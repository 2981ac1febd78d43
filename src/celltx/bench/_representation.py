"""Cell representations on the user's data: celltx next to PCA and scVI."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ._embedding import embedding_scores
from ._fit import fit_celltx
from ._inputs import get_expression, guarded, is_counts, skip_note
from ._integration import pca_embedding, scvi_embedding

EMBEDDING_METHODS = ("celltx", "pca", "scvi")

#: the celltx recipe of :func:`embedding` (trained from scratch on the data; see the
#: representation section of the docs for the measurements behind it)
EMBED_CELLTX_DEFAULTS = {
    "model": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "max_seq_len": 256,
        "dropout": 0.0,
        "gene_selection": "rank",
    },
    "task": "contrastive",
    "epochs": 20,
    "lr": 1e-2,
    "batch_size": 32,
    "accelerator": "auto",
}


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
    rows = []
    for method in methods:
        start = time.perf_counter()
        if method == "celltx":
            emb, error = guarded("celltx", _celltx, adata, layer, kwargs.get("celltx", {}), seed)
        elif method == "pca":
            emb, error = guarded("pca", pca_embedding, adata, layer=layer, seed=seed)
        elif not counts:
            emb, error = None, skip_note("scvi", "scVI needs raw counts")
        else:
            one = adata.copy()
            one.obs["_one_batch"] = "all"
            emb, error = guarded(
                "scvi",
                scvi_embedding,
                one,
                "_one_batch",
                layer=layer,
                seed=seed,
                **dict(kwargs.get("scvi", {})),
            )
        seconds = time.perf_counter() - start
        row = {"method": method, "seconds": seconds, "error": error}
        if emb is not None:
            s = embedding_scores(adata, labels_key, {method: emb}, seed=seed).iloc[0]
            row.update(
                knn_accuracy=s["knn_accuracy"],
                knn_accuracy_sd=s["knn_accuracy_sd"],
                leiden_nmi=s["leiden_nmi"],
                leiden_ari=s["leiden_ari"],
            )
            row["error"] = row["error"] or s["error"]
        rows.append(row)
    cols = [
        "method",
        "knn_accuracy",
        "knn_accuracy_sd",
        "leiden_nmi",
        "leiden_ari",
        "seconds",
        "error",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)
