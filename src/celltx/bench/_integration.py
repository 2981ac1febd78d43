"""Batch-integration benchmark: scib-metrics on celltx and baseline embeddings.

The baselines (unintegrated PCA, scVI, Harmony, scANVI) are those of ``_baselines``;
:func:`integration` scores them next to celltx's recipe and the caller's embeddings.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.nn import preset

from ._baselines import (
    harmony_embedding,
    pca_embedding,
    scvi_embedding,
    train_scanvi,
    train_scvi,
)
from ._inputs import expression_kind, get_expression, is_counts, layer_label, skip_note
from ._runner import run_methods

logger = logging.getLogger(__name__)

#: the baselines of :func:`~celltx.bench.integration`
INTEGRATION_BASELINES = ("pca", "scvi", "harmony", "scanvi")

#: the table's row of each baseline that is not PCA, in the order they run
_BASELINE_ROWS = (("harmony", "Harmony"), ("scvi", "scVI"), ("scanvi", "scANVI"))

#: the methods of :func:`~celltx.bench.integration`: celltx's recipe and the baselines
INTEGRATION_METHODS = ("celltx", *INTEGRATION_BASELINES)

#: celltx's integration recipe, trained from scratch by :func:`~celltx.bench.integration`:
#: the representation recipe (rank-value tokens, contrastive ``<cls>``) with
#: ``task="integration"`` (positives: each cell's mutual nearest neighbours in the other
#: batches, in the input's PCA, with ``contrast_k=20``) and 10 epochs; see the
#: representation section of the docs for the measurements
INTEGRATION_CELLTX_DEFAULTS = {
    "model": preset("small", dropout=0.0, gene_selection="rank", contrast_k=20),
    "task": "integration",
    "epochs": 10,
    "budget_cells": 1_500,  # fewer epochs above: celltx.model.train_budget
    "lr": 1e-2,
    "batch_size": 32,
    "accelerator": "auto",
}


def celltx_integration_embedding(
    adata: AnnData,
    batch_key: str,
    layer: str | None = None,
    seed: int = 0,
    settings: Mapping | None = None,
) -> np.ndarray:
    """Train celltx's integration recipe from scratch on ``adata``; its cell embedding.

    :data:`INTEGRATION_CELLTX_DEFAULTS`, overridden key by key by ``settings`` (e.g.
    ``{"epochs": 10, "model": {"contrast_k": 20}}``); ``batch_key`` is registered.
    The data is not modified.

    Examples
    --------
    >>> emb = celltx.bench.celltx_integration_embedding(adata, "batch")  # doctest: +SKIP
    >>> emb.shape  # doctest: +SKIP
    (1021, 64)
    """
    from ._fit import fit_celltx

    a = AnnData(X=get_expression(adata, layer).copy(), obs=adata.obs[[batch_key]].copy())
    a.var_names = adata.var_names.copy()
    model = fit_celltx(
        a, INTEGRATION_CELLTX_DEFAULTS, dict(settings or {}), seed, batch_key=batch_key
    )
    return model.get_latent_representation()


def scanvi_embedding(
    adata: AnnData,
    batch_key: str,
    labels_key: str,
    layer: str | None = None,
    seed: int = 0,
    scvi_kwargs: Mapping | None = None,
    **kwargs,
) -> np.ndarray:
    """Latent space of scvi-tools' scANVI, started from scVI, with the labels of ``labels_key``.

    scVI is trained as :func:`~celltx.bench.scvi_embedding` trains it (raw counts, 2,000
    highly variable genes per batch, ``scvi_kwargs``: ``n_latent`` 30, ``max_epochs``, …),
    then scANVI from it (``SCANVI.from_scvi_model``; ``kwargs`` go to ``SCANVI.train``,
    e.g. ``max_epochs``). Cells without a label are scANVI's unlabelled cells. scANVI sees
    the labels it is scored on (as in scib's benchmarks): its bio conservation is that of
    a supervised method.

    Returns ``(n_cells, n_latent)`` float32 latent means; the data is not modified.

    Examples
    --------
    >>> emb = celltx.bench.scanvi_embedding(adata, "batch", "cell_type")  # doctest: +SKIP
    >>> emb.shape  # doctest: +SKIP
    (1021, 30)
    """
    import scanpy as sc

    x = get_expression(adata, layer)
    if not is_counts(x):
        raise ValueError(
            "scANVI needs raw counts (non-negative integers); pass the layer that holds them "
            "(counts_layer=...) or leave 'scanvi' out of the baselines."
        )
    labels = adata.obs[labels_key].astype(object)
    known = set(labels.dropna().astype(str))
    unlabeled = next(u for u in ("unlabeled", "<unlabeled>", "<no label>") if u not in known)
    a = AnnData(X=x.copy(), obs=adata.obs[[batch_key]].copy())
    a.var_names = adata.var_names.copy()
    a.obs["_scanvi_label"] = np.where(labels.isna(), unlabeled, labels.astype(str))
    kw = dict(scvi_kwargs or {})
    n_top = kw.pop("n_top_genes", 2000)
    if a.n_vars > n_top:
        sc.pp.highly_variable_genes(
            a, n_top_genes=n_top, flavor="seurat_v3", batch_key=batch_key, subset=True
        )
    n_latent = kw.pop("n_latent", 30)
    vae = train_scvi(
        a, batch_key=batch_key, labels_key="_scanvi_label", seed=seed, n_latent=n_latent, **kw
    )
    if "accelerator" in kw:
        kwargs.setdefault("accelerator", kw["accelerator"])
    model = train_scanvi(vae, "_scanvi_label", unlabeled, **kwargs)
    return model.get_latent_representation().astype(np.float32)


#: Up to this many cells, scib-metrics' neighbour graphs are exact (scikit-learn)
EXACT_NEIGHBORS_MAX = 50_000


def exact_neighbors(x: np.ndarray, k: int):
    """Exact ``k`` nearest neighbours of every row of ``x`` (itself first), for scib-metrics.

    scib-metrics' default is pynndescent's approximate search, whose numba kernels compile in
    every fresh process; for data of benchmark size the exact search is faster and gives
    the graphs the approximation aims at.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults, pynndescent
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float32)
    if k >= len(x):  # fewer cells than neighbours: scib-metrics' own search pads the rows
        return pynndescent(x, n_neighbors=k, random_state=0)
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return NeighborsResults(indices=idx, distances=dist)


def integration(
    adata: AnnData,
    batch_key: str,
    labels_key: str,
    embeddings: Mapping[str, str | np.ndarray] | None = None,
    baselines: Sequence[str] = INTEGRATION_BASELINES,
    counts_layer: str | None = None,
    seed: int = 0,
    scvi_kwargs: Mapping | None = None,
    fast: bool = False,
    plot_dir: str | None = None,
    return_embeddings: bool = False,
    *,
    methods: Sequence[str] | None = None,
    method_kwargs: Mapping[str, Mapping] | None = None,
):
    """Score embeddings with scib-metrics (bio conservation + batch correction).

    The embeddings are scored next to baselines computed here. Wraps scib-metrics'
    :class:`~scib_metrics.benchmark.Benchmarker`. The baselines: ``"pca"``
    (unintegrated; also the pre-integration reference of the PCR comparison),
    ``"scvi"`` (scvi-tools' scVI with ``batch_key``, on counts), ``"harmony"``
    (harmonypy on that PCA, when installed) and ``"scanvi"`` (scANVI started from scVI and
    given the labels of ``labels_key``, on counts; :func:`scanvi_embedding`).

    The expression (``X`` or ``counts_layer``) may hold raw counts or log-normalised values
    (told apart on a sample of the values): PCA normalises counts (10,000 per cell, log1p)
    and takes log-normalised values as they are; scVI and scANVI need counts and are
    skipped (with a warning and a row saying why) when there are none. A baseline that fails (Harmony,
    scVI) does not stop the benchmark: its row has NaN scores and the exception in
    ``error``, with a warning. Bad arguments raise before anything is trained.

    Parameters
    ----------
    adata
        Cells × genes with raw counts or log-normalised expression; not modified.
    batch_key, labels_key
        ``obs`` columns with batches and cell types. Cells with a missing label are left
        out of the scores (with a warning); scANVI trains on them as unlabelled cells.
    embeddings
        ``{name: obsm key or (n_cells, d) array}`` to score, e.g. ``{"celltx":
        "X_scgpt"}``.
    baselines
        Any of ``"pca"``, ``"scvi"``, ``"harmony"``, ``"scanvi"`` (ignored when ``methods``
        is given).
    methods
        Any of ``"celltx"``, ``"pca"``, ``"scvi"``, ``"harmony"``, ``"scanvi"``: the
        baselines plus
        ``"celltx"``, celltx's integration recipe trained from scratch here
        (:func:`celltx_integration_embedding`, :data:`INTEGRATION_CELLTX_DEFAULTS`).
    method_kwargs
        ``{"celltx": settings}``: overrides of the recipe (``epochs``, ``lr``,
        ``batch_size``, ``accelerator``, ``model``: keyword arguments of the model);
        ``{"scanvi": kwargs}``: arguments of scANVI's ``SCANVI.train`` (``max_epochs``, …;
        its scVI model takes ``scvi_kwargs``).
    counts_layer
        Layer with the expression for PCA / scVI (default ``X``): raw counts (needed by
        scVI) or log-normalised values.
    seed
        Seed of the baselines.
    scvi_kwargs
        Arguments of :func:`scvi_embedding` (``max_epochs``, ``n_latent``, …), also those
        of the scVI model scANVI starts from.
    fast
        Skip the slowest metrics (kBET, isolated labels) — for tests and quick looks.
    plot_dir
        Write scib-metrics' results table figure there.
    return_embeddings
        Also return the ``{name: array}`` embeddings that were scored.

    Returns
    -------
    pandas.DataFrame
        scib-metrics' results (``Benchmarker.get_results(min_max_scale=False)``): one row
        per embedding, metric columns, aggregate ``Bio conservation``, ``Batch
        correction`` and ``Total``, ``seconds`` (time to compute the embedding, scANVI's
        with its scVI pretraining; NaN for embeddings passed in), and ``error`` (``None``, or why a baseline failed or
        was skipped: its scores are then NaN); the last row, ``Metric Type``, names each
        column's group. With ``return_embeddings``, ``(table, embeddings)`` (the
        embeddings that were computed).

    Raises
    ------
    ValueError
        Before any training: an unknown baseline, a missing column, layer or obsm key, an
        embedding of the wrong shape or with NaN, fewer than 2 batches, expression that is
        neither raw counts nor log-normalised, or nothing left to score.

    Examples
    --------
    >>> table = celltx.bench.integration(adata, "batch", "cell_line", {"celltx": "X_scgpt"})  # doctest: +SKIP
    """
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    train_celltx = False
    if methods is not None:
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in methods if m not in INTEGRATION_METHODS]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from {list(INTEGRATION_METHODS)}.")
        train_celltx = "celltx" in methods
        baselines = [m for m in methods if m != "celltx"]
    baselines = [baselines] if isinstance(baselines, str) else list(baselines)
    unknown = [b for b in baselines if b not in INTEGRATION_BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {list(INTEGRATION_BASELINES)}.")
    extra = set(method_kwargs or {}) - {"celltx", "scanvi"}
    if extra:
        raise ValueError(
            f"method_kwargs takes settings of 'celltx' and 'scanvi' only; got {sorted(extra)}."
        )
    for key, arg in ((batch_key, "batch_key"), (labels_key, "labels_key")):
        if key not in adata.obs:
            raise ValueError(f"{arg}={key!r} is not a column of adata.obs.")
    embeddings = dict(embeddings or {})
    if train_celltx and "celltx" in embeddings:
        raise ValueError(
            "'celltx' is both a method to train and an embedding passed in; rename one."
        )
    if not embeddings and not baselines and not train_celltx:
        raise ValueError("Nothing to score: pass embeddings and/or baselines.")
    arrays = {}
    for name, e in embeddings.items():
        if isinstance(e, str) and e not in adata.obsm:
            raise ValueError(
                f"Embedding {name!r}: {e!r} is not a key of adata.obsm ({list(adata.obsm)})."
            )
        arr = np.asarray(adata.obsm[e] if isinstance(e, str) else e, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != adata.n_obs:
            raise ValueError(
                f"Embedding {name!r} has shape {arr.shape}; expected ({adata.n_obs}, d)."
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"Embedding {name!r} has NaN or infinite values.")
        arrays[name] = arr
    keep = adata.obs[labels_key].notna().to_numpy() & adata.obs[batch_key].notna().to_numpy()
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} cells without label or batch are left out.",
            UserWarning,
            stacklevel=2,
        )
    n_batches = adata.obs[batch_key][keep].nunique()
    if n_batches < 2:
        raise ValueError(f"Integration needs at least 2 batches; {batch_key!r} has {n_batches}.")
    layer = counts_layer
    where = layer_label(layer)
    kind = expression_kind(get_expression(adata, layer), where)
    errors: dict[str, str] = {}  # failed or skipped baselines
    no_harmony = "harmony" in baselines and importlib.util.find_spec("harmonypy") is None
    no_counts = {  # the baselines that need raw counts, where there are none
        b: f"{n} needs raw counts and {where} holds log-normalised values; pass counts_layer= "
        "naming a layer of raw counts to include it."
        for b, n in (("scvi", "scVI"), ("scanvi", "scANVI"))
        if b in baselines and kind != "counts"
    }
    runnable = [b for b in baselines if not (b == "harmony" and no_harmony) and b not in no_counts]
    if not arrays and not runnable:
        why = (
            "harmonypy is not installed"
            if no_harmony and not no_counts
            else next(iter(no_counts.values()))
        )
        raise ValueError(f"Nothing to score: {why}; pass embeddings or other baselines.")
    if no_harmony:
        warnings.warn("harmonypy is not installed; leaving Harmony out.", UserWarning, stacklevel=2)
        baselines.remove("harmony")
    for b, n in _BASELINE_ROWS:
        if b in no_counts:
            errors[n] = skip_note(n, no_counts[b])
    seconds: dict[str, float] = {}

    def _keep(runs) -> None:  # the embeddings of the runs that worked, the others' errors
        for r in runs:
            seconds[r.method] = r.seconds
            if r.error is None:
                arrays[r.method] = r.value
                logger.info("%s embedding done", r.method)
            else:
                errors[r.method] = r.error

    settings = (method_kwargs or {}).get("celltx")
    if train_celltx:
        _keep(
            run_methods(
                ["celltx"],
                lambda m, s: celltx_integration_embedding(adata, batch_key, layer, seed, settings),
            )
        )
    # PCA is also the pre-integration reference of the scores: computed first, not guarded
    t0 = time.perf_counter()
    x_pca = pca_embedding(adata, layer, seed=seed, counts=kind == "counts")
    t_pca = time.perf_counter() - t0
    if "pca" in baselines:
        arrays["PCA (unintegrated)"] = x_pca
        seconds["PCA (unintegrated)"] = t_pca
    order = (["celltx"] if train_celltx and "celltx" in errors else []) + list(arrays)
    rows = [n for b, n in _BASELINE_ROWS if b in baselines]
    order += rows

    def run(method, _seed):
        if method == "Harmony":
            return harmony_embedding(x_pca, adata.obs[[batch_key]].copy(), batch_key, seed)
        if method == "scANVI":
            return scanvi_embedding(
                adata,
                batch_key,
                labels_key,
                layer,
                seed,
                scvi_kwargs,
                **dict((method_kwargs or {}).get("scanvi", {})),
            )
        return scvi_embedding(adata, batch_key, layer, seed, **dict(scvi_kwargs or {}))

    _keep(run_methods(rows, run, skipped={n: errors[n] for n in ("scVI", "scANVI") if n in errors}))
    if "Harmony" in seconds:
        seconds["Harmony"] += t_pca  # Harmony corrects the PCA
    if not arrays:  # every baseline failed at run time
        table = pd.DataFrame(
            {
                "seconds": [seconds.get(n, np.nan) for n in order],
                "error": [errors[n] for n in order],
            },
            index=order,
        )
        return (table, arrays) if return_embeddings else table
    b = AnnData(
        X=np.zeros((int(keep.sum()), 1), dtype=np.float32),
        obs=adata.obs.loc[keep, [batch_key, labels_key]].copy(),
    )
    for c in (batch_key, labels_key):
        b.obs[c] = b.obs[c].astype(str).astype("category")
    b.obsm["X_pca"] = x_pca[keep]
    keys = []
    for name, arr in arrays.items():
        key = "emb_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        b.obsm[key] = arr[keep]
        keys.append((key, name))
    bio = BioConservation(isolated_labels=not fast)
    batch = BatchCorrection(kbet_per_label=not fast)
    bm = Benchmarker(
        b,
        batch_key=batch_key,
        label_key=labels_key,
        embedding_obsm_keys=[k for k, _ in keys],
        bio_conservation_metrics=bio,
        batch_correction_metrics=batch,
        pre_integrated_embedding_obsm_key="X_pca",
        progress_bar=False,
    )
    # exact neighbours for data of benchmark size: the same graphs as pynndescent's there,
    # without its numba compilation (~40 s in every fresh process)
    bm.prepare(neighbor_computer=exact_neighbors if b.n_obs <= EXACT_NEIGHBORS_MAX else None)
    bm.benchmark()
    table = bm.get_results(min_max_scale=False)
    table = table.rename(index=dict(keys))
    body, kinds = table.drop(index="Metric Type"), table.loc[["Metric Type"]]
    body = body.reindex([n for n in order if n in body.index or n in errors])
    body["seconds"] = pd.Series(seconds, dtype=float).reindex(body.index)
    body["error"] = pd.Series(errors, dtype=object).reindex(body.index).astype(object)
    body["error"] = body["error"].where(body["error"].notna(), None)
    kinds = kinds.assign(seconds="Time", error=None)
    table = pd.concat([body, kinds])
    if plot_dir is not None:
        from pathlib import Path

        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        bm.plot_results_table(min_max_scale=False, show=False, save_dir=str(plot_dir))
    return (table, arrays) if return_embeddings else table
