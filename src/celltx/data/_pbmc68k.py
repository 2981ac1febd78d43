"""Small real datasets that ship with the dependencies (no download needed)."""

from __future__ import annotations

import anndata as ad


def pbmc68k() -> ad.AnnData:
    """700 real PBMCs (Zheng et al. 2017) with FACS-based cell-type labels.

    scanpy's bundled ``pbmc68k_reduced``, taken at its full gene panel: ``.X`` holds the
    log-normalized expression of 765 genes (scanpy's ``.raw``), ``obs["cell_type"]`` the
    10 ``bulk_labels`` types, and the original ``obs`` columns and ``obsm`` (``X_pca``,
    ``X_umap``) are kept. Needs no network access.

    Returns
    -------
    anndata.AnnData
        A new AnnData (700 × 765, sparse CSR float32).

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> adata.shape, adata.obs["cell_type"].nunique()
    ((700, 765), 10)
    """
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    adata = reduced.raw.to_adata()
    adata.obs = reduced.obs.copy()
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype("category")
    for key in ("X_pca", "X_umap"):
        adata.obsm[key] = reduced.obsm[key].copy()
    adata.uns["bulk_labels_colors"] = list(reduced.uns.get("bulk_labels_colors", []))
    if adata.uns["bulk_labels_colors"]:
        adata.uns["cell_type_colors"] = list(adata.uns["bulk_labels_colors"])
    adata.X = adata.X.astype("float32")
    adata.var_names_make_unique()
    return adata
