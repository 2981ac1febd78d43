"""scanpy-style tools that write model results into an AnnData."""

from __future__ import annotations

from anndata import AnnData


def embed(adata: AnnData, model, key_added: str = "X_scgpt", copy: bool = False, **kwargs):
    """Put a model's cell embeddings into ``adata.obsm[key_added]``.

    Parameters
    ----------
    adata
        Cells to embed (any gene panel that overlaps the model's vocabulary).
    model
        A trained or loaded :class:`~celltx.model.ScGPT`.
    key_added
        ``obsm`` key for the embedding.
    copy
        Return a copy instead of writing into ``adata``.
    **kwargs
        Passed to :meth:`~celltx.model.ScGPT.get_latent_representation`.

    Returns
    -------
    anndata.AnnData or None
        The annotated copy with ``copy=True``, else ``None``.

    Examples
    --------
    >>> celltx.tl.embed(adata, model)  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_scgpt")  # doctest: +SKIP
    """
    target = adata.copy() if copy else adata
    target.obsm[key_added] = model.get_latent_representation(target, **kwargs)
    return target if copy else None
