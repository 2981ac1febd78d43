"""Query mapping: label transfer from reference batches to a held-out query batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from ._inputs import expression_kind, get_expression, guarded, log_normalized, skip_note

logger = logging.getLogger(__name__)

QUERY_METHODS = ("celltx", "pca", "scvi")

#: the celltx recipe of :func:`query_mapping` (reference training, then query training)
QUERY_CELLTX_DEFAULTS = {
    "model": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "max_seq_len": 256,
        "dropout": 0.1,
        "dsbn": True,
        "batch_token": True,
    },
    "reference_epochs": 10,
    "query_epochs": 5,
    "batch_size": 32,
    "accelerator": "auto",
}


def _transfer(z_ref, z_query, labels_ref, n_neighbors):
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(z_ref))).fit(z_ref, labels_ref)
    return knn.predict(z_query)


def _pca(ref: AnnData, query: AnnData, layer, n_comps: int, seed: int):
    x_ref = log_normalized(get_expression(ref, layer))
    x_q = log_normalized(get_expression(query, layer))
    x_ref = x_ref.toarray() if hasattr(x_ref, "toarray") else np.asarray(x_ref)
    x_q = x_q.toarray() if hasattr(x_q, "toarray") else np.asarray(x_q)
    n = min(n_comps, x_ref.shape[0] - 1, x_ref.shape[1] - 1)
    pca = PCA(n_components=n, random_state=seed).fit(x_ref)
    return pca.transform(x_ref), pca.transform(x_q)


def _scvi(ref: AnnData, query: AnnData, batch_key, layer, settings: Mapping):
    import scvi

    ref, query = ref.copy(), query.copy()
    scvi.model.SCVI.setup_anndata(ref, layer=layer, batch_key=batch_key)
    vae = scvi.model.SCVI(ref, n_latent=settings.get("n_latent", 10))
    vae.train(
        max_epochs=settings.get("reference_epochs", 100),
        accelerator=settings.get("accelerator", "auto"),
        enable_progress_bar=False,
    )
    q = scvi.model.SCVI.load_query_data(query, vae)
    q.train(
        max_epochs=settings.get("query_epochs", 50),
        plan_kwargs={"weight_decay": 0.0},
        accelerator=settings.get("accelerator", "auto"),
        enable_progress_bar=False,
    )
    return q.get_latent_representation(ref), q.get_latent_representation(query)


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
    rows = []
    for method in methods:
        start = time.perf_counter()
        error = None
        if method == "scvi" and kind != "counts":
            result, error = None, skip_note("scvi", "scVI needs raw counts")
        elif method == "pca":
            result, error = guarded("pca", _pca, ref, query, layer, n_comps, seed)
        elif method == "scvi":
            result, error = guarded(
                "scvi", _scvi, ref, query, batch_key, layer, kwargs.get("scvi", {})
            )
        else:
            result, error = guarded(
                "celltx",
                _celltx,
                ref,
                query,
                batch_key,
                labels_key,
                layer,
                kwargs.get("celltx", {}),
                seed,
            )
        acc = f1 = np.nan
        if result is not None:
            pred = _transfer(result[0], result[1], labels_ref, n_neighbors)
            acc = float((pred == truth).mean())
            f1 = float(f1_score(truth, pred, average="macro"))
        rows.append(
            {
                "method": method,
                "accuracy": acc,
                "macro_f1": f1,
                "n_reference": ref.n_obs,
                "n_query": query.n_obs,
                "seconds": time.perf_counter() - start,
                "error": error,
            }
        )
        logger.info("query mapping %s: accuracy %.3f, macro-F1 %.3f", method, acc, f1)
    return pd.DataFrame(rows)
