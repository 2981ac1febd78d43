"""Batch-integration benchmark: scib-metrics on celltx and baseline embeddings.

The baselines (unintegrated PCA, scVI, Harmony) come first, then :func:`integration`,
which scores them next to the caller's embeddings.
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

from ._inputs import (
    expression_kind,
    get_expression,
    guarded,
    is_counts,
    layer_label,
    normalize_log1p,
    skip_note,
)

logger = logging.getLogger(__name__)

#: the baselines of :func:`~celltx.bench.integration`
INTEGRATION_BASELINES = ("pca", "scvi", "harmony")

#: the methods of :func:`~celltx.bench.integration`: celltx's recipe and the baselines
INTEGRATION_METHODS = ("celltx", *INTEGRATION_BASELINES)

#: celltx's integration recipe, trained from scratch by :func:`~celltx.bench.integration`:
#: the representation recipe (rank-value tokens, contrastive ``<cls>``) with
#: ``task="integration"`` (positives: each cell's mutual nearest neighbours in the other
#: batches, in the input's PCA, with ``contrast_k=20``) and 10 epochs; see the
#: representation section of the docs for the measurements
INTEGRATION_CELLTX_DEFAULTS = {
    "model": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "max_seq_len": 256,
        "dropout": 0.0,
        "gene_selection": "rank",
        "contrast_k": 20,
    },
    "task": "integration",
    "epochs": 10,
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


def pca_embedding(
    adata: AnnData,
    layer: str | None = None,
    n_comps: int = 50,
    counts: bool | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Unintegrated PCA of the expression; the data is not modified.

    Counts are normalised to 10,000 per cell and ``log1p``-transformed (log-normalised
    values are used as they are), then restricted to 2,000 highly variable genes (or all
    when fewer), scaled (clipped at 10) and decomposed by scanpy's PCA.

    Parameters
    ----------
    adata
        Cells × genes.
    layer
        Layer with the expression (default ``X``).
    n_comps
        Number of components (capped at ``n_cells - 1`` and ``n_genes - 1``).
    counts
        Whether ``X`` / ``layer`` holds raw counts (``None``: judged on a sample of the
        values, as :func:`~celltx.bench.integration` does).
    seed
        Seed of the PCA.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_comps)`` float32.

    Examples
    --------
    >>> import celltx
    >>> celltx.bench.pca_embedding(celltx.datasets.pbmc68k(), n_comps=5).shape
    (700, 5)
    """
    import scanpy as sc

    a = AnnData(X=get_expression(adata, layer).copy())
    a.obs_names, a.var_names = adata.obs_names.copy(), adata.var_names.copy()
    if counts is None:
        counts = is_counts(a.X)
    if counts:
        normalize_log1p(a)
    if a.n_vars > 2000:
        sc.pp.highly_variable_genes(a, n_top_genes=2000)
        a = a[:, a.var["highly_variable"]].copy()
    sc.pp.scale(a, max_value=10)
    n = min(n_comps, a.n_obs - 1, a.n_vars - 1)
    sc.pp.pca(a, n_comps=n, random_state=seed)
    return np.asarray(a.obsm["X_pca"], dtype=np.float32)


def scvi_embedding(
    adata: AnnData, batch_key: str, layer: str | None = None, seed: int = 0, **kwargs
) -> np.ndarray:
    """Latent space of scvi-tools' scVI on raw counts, with ``batch_key`` as batch covariate.

    Parameters
    ----------
    adata
        Cells × genes with raw counts; not modified.
    batch_key
        ``obs`` column with the batches.
    layer
        Layer with the counts (default ``X``).
    seed
        ``scvi.settings.seed``.
    **kwargs
        ``n_latent`` (30), ``max_epochs`` (scvi-tools' default), ``n_top_genes`` (2,000
        highly variable genes, flavor ``seurat_v3``), and Lightning arguments of
        ``SCVI.train``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_latent)`` float32 latent means.

    Raises
    ------
    ValueError
        If the matrix does not hold raw counts.
    """
    import scanpy as sc
    import scvi

    x = get_expression(adata, layer)
    if not is_counts(x):
        raise ValueError(
            "scVI needs raw counts (non-negative integers); pass the layer that holds them "
            "(counts_layer=...) or leave 'scvi' out of the baselines."
        )
    a = AnnData(X=x.copy(), obs=adata.obs[[batch_key]].copy())
    a.var_names = adata.var_names.copy()
    n_top = kwargs.pop("n_top_genes", 2000)
    if a.n_vars > n_top:
        sc.pp.highly_variable_genes(
            a, n_top_genes=n_top, flavor="seurat_v3", batch_key=batch_key, subset=True
        )
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(a, batch_key=batch_key)
    model = scvi.model.SCVI(a, n_latent=kwargs.pop("n_latent", 30))
    kwargs.setdefault("enable_progress_bar", False)
    model.train(**kwargs)
    return model.get_latent_representation().astype(np.float32)


def harmony_embedding(
    X_pca: np.ndarray, obs: pd.DataFrame, batch_key: str, seed: int = 0
) -> np.ndarray:
    """Harmony (harmonypy) on a PCA embedding.

    Parameters
    ----------
    X_pca
        ``(n_cells, d)`` PCA embedding, e.g. of :func:`pca_embedding`.
    obs
        Cell annotations with ``batch_key``, one row per cell.
    batch_key
        Column of ``obs`` with the batches.
    seed
        Harmony's ``random_state``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32 corrected embedding.
    """
    import harmonypy

    ho = harmonypy.run_harmony(
        np.asarray(X_pca, dtype=np.float64), obs, [batch_key], random_state=seed, verbose=False
    )
    Z = np.asarray(ho.Z_corr)
    if Z.shape[0] != len(obs):
        Z = Z.T
    return Z.astype(np.float32)


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
    ``"scvi"`` (scvi-tools' scVI with ``batch_key``, on counts) and ``"harmony"``
    (harmonypy on that PCA, when installed).

    The expression (``X`` or ``counts_layer``) may hold raw counts or log-normalised values
    (told apart on a sample of the values): PCA normalises counts (10,000 per cell, log1p)
    and takes log-normalised values as they are; scVI needs counts and is skipped (with a
    warning and a row saying why) when there are none. A baseline that fails (Harmony,
    scVI) does not stop the benchmark: its row has NaN scores and the exception in
    ``error``, with a warning. Bad arguments raise before anything is trained.

    Parameters
    ----------
    adata
        Cells × genes with raw counts or log-normalised expression; not modified.
    batch_key, labels_key
        ``obs`` columns with batches and cell types. Cells with a missing label are left
        out (with a warning).
    embeddings
        ``{name: obsm key or (n_cells, d) array}`` to score, e.g. ``{"celltx":
        "X_scgpt"}``.
    baselines
        Any of ``"pca"``, ``"scvi"``, ``"harmony"`` (ignored when ``methods`` is given).
    methods
        Any of ``"celltx"``, ``"pca"``, ``"scvi"``, ``"harmony"``: the baselines plus
        ``"celltx"``, celltx's integration recipe trained from scratch here
        (:func:`celltx_integration_embedding`, :data:`INTEGRATION_CELLTX_DEFAULTS`).
    method_kwargs
        ``{"celltx": settings}``: overrides of the recipe (``epochs``, ``lr``,
        ``batch_size``, ``accelerator``, ``model``: keyword arguments of the model).
    counts_layer
        Layer with the expression for PCA / scVI (default ``X``): raw counts (needed by
        scVI) or log-normalised values.
    seed
        Seed of the baselines.
    scvi_kwargs
        Arguments of :func:`scvi_embedding` (``max_epochs``, ``n_latent``, …).
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
        correction`` and ``Total``, ``seconds`` (time to compute the embedding; NaN for
        embeddings passed in), and ``error`` (``None``, or why a baseline failed or
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
    extra = set(method_kwargs or {}) - {"celltx"}
    if extra:
        raise ValueError(f"method_kwargs takes settings of 'celltx' only; got {sorted(extra)}.")
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
    no_scvi = (
        f"scVI needs raw counts and {where} holds log-normalised values; pass counts_layer= "
        "naming a layer of raw counts to include it."
        if "scvi" in baselines and kind != "counts"
        else None
    )
    runnable = [
        b
        for b in baselines
        if not (b == "harmony" and no_harmony) and not (b == "scvi" and no_scvi)
    ]
    if not arrays and not runnable:
        why = "harmonypy is not installed" if no_harmony and not no_scvi else no_scvi
        raise ValueError(f"Nothing to score: {why}; pass embeddings or other baselines.")
    if no_harmony:
        warnings.warn("harmonypy is not installed; leaving Harmony out.", UserWarning, stacklevel=2)
        baselines.remove("harmony")
    if no_scvi:
        errors["scVI"] = skip_note("scVI", no_scvi)
    seconds: dict[str, float] = {}
    if train_celltx:
        t0 = time.perf_counter()
        z, err = guarded(
            "celltx",
            celltx_integration_embedding,
            adata,
            batch_key,
            layer,
            seed,
            (method_kwargs or {}).get("celltx"),
        )
        seconds["celltx"] = time.perf_counter() - t0
        if err is None:
            arrays["celltx"] = z
            logger.info("celltx embedding done")
        else:
            errors["celltx"] = err
    # PCA is also the pre-integration reference of the scores: computed first, not guarded
    t0 = time.perf_counter()
    x_pca = pca_embedding(adata, layer, seed=seed, counts=kind == "counts")
    t_pca = time.perf_counter() - t0
    if "pca" in baselines:
        arrays["PCA (unintegrated)"] = x_pca
        seconds["PCA (unintegrated)"] = t_pca
    order = (["celltx"] if train_celltx and "celltx" in errors else []) + list(arrays)
    order += [n for b, n in (("harmony", "Harmony"), ("scvi", "scVI")) if b in baselines]
    if "harmony" in baselines:
        t0 = time.perf_counter()
        z, err = guarded(
            "Harmony", harmony_embedding, x_pca, adata.obs[[batch_key]].copy(), batch_key, seed
        )
        seconds["Harmony"] = t_pca + time.perf_counter() - t0  # Harmony corrects the PCA
        if err is None:
            arrays["Harmony"] = z
            logger.info("Harmony embedding done")
        else:
            errors["Harmony"] = err
    if "scvi" in baselines and "scVI" not in errors:
        t0 = time.perf_counter()
        z, err = guarded(
            "scVI", scvi_embedding, adata, batch_key, layer, seed, **dict(scvi_kwargs or {})
        )
        seconds["scVI"] = time.perf_counter() - t0
        if err is None:
            arrays["scVI"] = z
            logger.info("scVI embedding done")
        else:
            errors["scVI"] = err
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
