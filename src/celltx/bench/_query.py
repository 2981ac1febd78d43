"""Query mapping: label transfer from reference batches to a held-out query batch."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import f1_score

from celltx.nn import preset

from ._baselines import dense, fitted_pca, knn_classify, scvi_query
from ._inputs import expression_kind, get_expression, log_normalized, skip_note
from ._runner import method_rows

logger = logging.getLogger(__name__)

QUERY_METHODS = ("celltx", "pca", "scvi")

#: the celltx recipe of :func:`query_mapping` (reference training, then query training)
QUERY_CELLTX_DEFAULTS: dict[str, Any] = {
    "model": preset("small", dropout=0.1, dsbn=True, batch_token=True),
    "reference_epochs": 10,
    "query_epochs": 5,
    "batch_size": 32,
    "accelerator": "auto",
}


def _transfer(z_ref, z_query, labels_ref, n_neighbors):
    return knn_classify(z_ref, labels_ref, z_query, min(n_neighbors, len(z_ref)))


def _pca(ref: AnnData, query: AnnData, layer, n_comps: int, seed: int):
    x_ref = log_normalized(get_expression(ref, layer))
    x_q = log_normalized(get_expression(query, layer))
    x_ref, x_q = dense(x_ref), dense(x_q)
    pca = fitted_pca(n_comps, x_ref, seed).fit(x_ref)
    return pca.transform(x_ref), pca.transform(x_q)


def _scvi(ref: AnnData, query: AnnData, batch_key, layer, settings: Mapping):
    return scvi_query(
        ref,
        query,
        layer=layer,
        batch_key=batch_key,
        n_latent=settings.get("n_latent", 10),
        reference_epochs=settings.get("reference_epochs", 100),
        query_epochs=settings.get("query_epochs", 50),
        accelerator=settings.get("accelerator", "auto"),
    )


def _celltx(
    ref: AnnData, query: AnnData, batch_key, labels_key, layer, settings: Mapping, seed: int
):
    import scvi

    from celltx.model import ScGPT

    cfg = {**QUERY_CELLTX_DEFAULTS, **settings}
    cfg["model"] = {**QUERY_CELLTX_DEFAULTS["model"], **settings.get("model", {})}
    ref, query = ref.copy(), query.copy()
    scvi.settings.seed = seed
    ScGPT.setup_anndata(ref, layer=layer, batch_key=batch_key)
    model = ScGPT(ref, **cfg["model"])
    fit = {
        "batch_size": cfg["batch_size"],
        "accelerator": cfg["accelerator"],
        "enable_progress_bar": False,
    }
    model.train(max_epochs=cfg["reference_epochs"], **fit)
    q = ScGPT.load_query_data(query, model)
    if any(p.requires_grad for p in q.module.parameters()):
        q.train(max_epochs=cfg["query_epochs"], **fit)
    return q.get_latent_representation(ref), q.get_latent_representation(query)


def query_mapping(
    adata: AnnData,
    batch_key: str,
    labels_key: str,
    query_batches: str | Sequence[str],
    *,
    methods: Sequence[str] = QUERY_METHODS,
    layer: str | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
    n_neighbors: int = 15,
    n_comps: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """Map held-out batches onto a model of the other batches and transfer labels by kNN.

    The cells of ``query_batches`` are the query, the others the reference. Each method
    embeds the reference, then the query without refitting on the reference: celltx trains
    a model on the reference (``QUERY_CELLTX_DEFAULTS``: DSBN and batch token) and maps the
    query with :meth:`~celltx.model.ScGPT.load_query_data`; ``"pca"`` fits PCA on the
    reference's log1p-CP10k values and projects the query; ``"scvi"`` trains scVI on the
    reference and maps the query with scvi-tools' ``load_query_data`` (counts only). A kNN
    classifier on the reference embedding then labels the query cells.

    Parameters
    ----------
    adata
        Cells × genes with raw counts (or log-normalised values: scVI is then skipped).
    batch_key, labels_key
        ``obs`` columns with batches and the labels to transfer.
    query_batches
        The batch (or batches) held out as the query.
    methods
        Any of ``"celltx"``, ``"pca"``, ``"scvi"``.
    layer
        Layer with the expression (default ``.X``).
    method_kwargs
        Per method settings: ``celltx`` as :data:`QUERY_CELLTX_DEFAULTS`; ``scvi``:
        ``reference_epochs``, ``query_epochs``, ``n_latent``, ``accelerator``.
    n_neighbors
        Neighbours of the kNN label transfer.
    n_comps
        Principal components of the PCA baseline.
    seed
        Seed of every method.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``accuracy``, ``macro_f1`` (of the query's
        transferred labels), ``n_reference``, ``n_query``, ``seconds``, ``error`` (``None``
        when the method worked; a failing method keeps the others' rows).

    Examples
    --------
    >>> import celltx, numpy as np
    >>> adata = celltx.datasets.pbmc68k()
    >>> adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 4 == 0, "q", "r")
    >>> celltx.bench.query_mapping(adata, "batch", "cell_type", "q", methods=["pca"])[["method", "n_query"]]
      method  n_query
    0    pca      175
    """
    unknown = sorted(set(methods) - set(QUERY_METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use {list(QUERY_METHODS)}.")
    for key in (batch_key, labels_key):
        if key not in adata.obs.columns:
            raise ValueError(
                f"{key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]})."
            )
    queries = [query_batches] if isinstance(query_batches, str) else list(query_batches)
    batches = adata.obs[batch_key].astype(str)
    absent = [q for q in queries if q not in set(batches)]
    if absent:
        raise ValueError(
            f"Query batches {absent} are not in obs[{batch_key!r}] ({sorted(set(batches))})."
        )
    is_query = batches.isin(queries).to_numpy()
    if is_query.all():
        raise ValueError("Every cell is in the query batches; leave at least one reference batch.")
    kind = expression_kind(get_expression(adata, layer))
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    labels_ref = ref.obs[labels_key].astype(str).to_numpy()
    truth = query.obs[labels_key].astype(str).to_numpy()
    kwargs = dict(method_kwargs or {})

    def run(method, _seed):  # the embeddings and the label transfer (both in the seconds)
        if method == "pca":
            z_ref, z_query = _pca(ref, query, layer, n_comps, seed)
        elif method == "scvi":
            z_ref, z_query = _scvi(ref, query, batch_key, layer, kwargs.get("scvi", {}))
        else:
            z_ref, z_query = _celltx(
                ref, query, batch_key, labels_key, layer, kwargs.get("celltx", {}), seed
            )
        pred = _transfer(z_ref, z_query, labels_ref, n_neighbors)
        return {
            "accuracy": float((pred == truth).mean()),
            "macro_f1": float(f1_score(truth, pred, average="macro")),
        }

    skipped = {}
    if kind != "counts" and "scvi" in methods:
        skipped["scvi"] = skip_note("scvi", "scVI needs raw counts")
    columns = {
        "accuracy": np.nan,
        "macro_f1": np.nan,
        "n_reference": ref.n_obs,
        "n_query": query.n_obs,
    }
    rows = []
    for row in method_rows(methods, run, skipped=skipped, columns=columns):
        logger.info(
            "query mapping %s: accuracy %.3f, macro-F1 %.3f",
            row["method"],
            row["accuracy"],
            row["macro_f1"],
        )
        rows.append(row)
    return pd.DataFrame(rows)
