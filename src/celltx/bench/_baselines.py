"""The baselines every benchmark shares, written once.

Dense matrices (:func:`dense`), the sized scikit-learn PCA (:func:`fitted_pca`),
classifiers on a training / test split (:func:`logistic_regression`, :func:`knn_classify`),
the embeddings (:func:`pca_embedding`, :func:`scvi_embedding`, :func:`harmony_embedding`)
and scvi-tools' scVI / scANVI set up and trained in one place (:func:`train_scvi`,
:func:`train_scanvi`). The task modules (``_annotation``, ``_imputation``, ``_query``,
``_representation``, ``_integration``, ``_zero_shot``, ``_network``, ``_multiome``,
``_perturbation``) call these instead of writing their own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._inputs import get_expression, is_counts, normalize_log1p


def dense(x, dtype=None) -> np.ndarray:
    """``x`` as a dense NumPy array (sparse matrices densified), as ``dtype`` when given.

    Examples
    --------
    >>> from scipy import sparse
    >>> from celltx.bench._baselines import dense
    >>> dense(sparse.eye(2), np.float32).dtype
    dtype('float32')
    """
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=dtype)


def fitted_pca(n_comps: int, x, seed: int):
    """An (unfitted) scikit-learn PCA of at most ``n_comps`` components for the rows of ``x``.

    The components are capped at ``n_rows - 1`` and ``n_columns - 1``; call ``.fit`` or
    ``.fit_transform`` on the training rows.
    """
    from sklearn.decomposition import PCA

    n = min(n_comps, x.shape[0] - 1, x.shape[1] - 1)
    return PCA(n_components=n, random_state=seed)


def fitted_logistic_regression(
    x_train, y_train, max_iter: int = 1000, C: float = 1.0, seed: int | None = None
):
    """scikit-learn's logistic regression fitted on the training rows (the classifier)."""
    from sklearn.linear_model import LogisticRegression

    kw = {} if seed is None else {"random_state": seed}
    return LogisticRegression(max_iter=max_iter, C=C, **kw).fit(x_train, y_train)


def logistic_regression(
    x_train, y_train, x_test, max_iter: int = 1000, C: float = 1.0, seed: int | None = None
) -> np.ndarray:
    """scikit-learn's logistic regression fitted on the training rows; test predictions."""
    return fitted_logistic_regression(x_train, y_train, max_iter, C, seed).predict(x_test)


def knn_classify(z_train, y_train, z_test, n_neighbors: int = 15) -> np.ndarray:
    """k-nearest-neighbour labels of the test rows from the training rows."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(z_train, y_train)
    return knn.predict(z_test)


def train_scvi(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    seed: int | None = None,
    n_latent: int = 10,
    model_kwargs: dict | None = None,
    **train_kwargs,
):
    """scvi-tools' scVI registered on ``adata`` (in place: pass a copy) and trained.

    ``seed`` sets ``scvi.settings.seed`` (``None``: left as it is); ``model_kwargs`` go to
    ``scvi.model.SCVI`` (e.g. ``gene_likelihood``), ``train_kwargs`` to ``SCVI.train``
    (``max_epochs``, ``accelerator``, …; no progress bar unless asked for).
    """
    import scvi

    if seed is not None:
        scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)
    model = scvi.model.SCVI(adata, n_latent=n_latent, **dict(model_kwargs or {}))
    train_kwargs.setdefault("enable_progress_bar", False)
    model.train(**train_kwargs)
    return model


def train_scanvi(vae, labels_key: str, unlabeled_category: str, **train_kwargs):
    """A scANVI model initialised from a trained scVI model (:func:`train_scvi`), trained."""
    import scvi

    model = scvi.model.SCANVI.from_scvi_model(
        vae, unlabeled_category=unlabeled_category, labels_key=labels_key
    )
    train_kwargs.setdefault("enable_progress_bar", False)
    model.train(**train_kwargs)
    return model


def scvi_query(
    ref: AnnData,
    query: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
    reference_epochs: int = 100,
    query_epochs: int = 50,
    accelerator: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Latent spaces of ``ref`` and ``query``: scVI trained on ``ref``, ``query`` mapped onto it."""
    import scvi

    ref, query = ref.copy(), query.copy()
    vae = train_scvi(
        ref,
        layer=layer,
        batch_key=batch_key,
        n_latent=n_latent,
        max_epochs=reference_epochs,
        accelerator=accelerator,
    )
    q = scvi.model.SCVI.load_query_data(query, vae)
    q.train(
        max_epochs=query_epochs,
        plan_kwargs={"weight_decay": 0.0},
        accelerator=accelerator,
        enable_progress_bar=False,
    )
    return q.get_latent_representation(ref), q.get_latent_representation(query)


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
    n_latent = kwargs.pop("n_latent", 30)
    model = train_scvi(a, batch_key=batch_key, seed=seed, n_latent=n_latent, **kwargs)
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
