"""Gene programs: Leiden clusters of a model's gene embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

#: label of the genes whose cluster is smaller than ``min_size``
UNASSIGNED = "unassigned"


def _embedding_frame(model_or_embeddings, genes: Sequence[str] | None) -> pd.DataFrame:
    """The genes × d embedding of ``genes`` (all genes when ``None``), checked."""
    if genes is not None:
        if isinstance(genes, str):
            raise TypeError(f"genes must be a list of gene names, not the string {genes!r}.")
        genes = [str(g) for g in genes]
        dup = pd.Index(genes)
        dup = dup[dup.duplicated()].unique()
        if len(dup):
            raise ValueError(f"genes has {len(dup)} duplicated names: {list(dup[:10])}.")
    if isinstance(model_or_embeddings, pd.DataFrame):
        emb = model_or_embeddings
        known = pd.Index([str(g) for g in emb.index])
        if known.duplicated().any():
            dup = known[known.duplicated()].unique()
            raise ValueError(
                f"The embedding DataFrame has {len(dup)} duplicated gene names in its index: "
                f"{list(dup[:10])}."
            )
        source = "the embedding DataFrame's index"
    elif hasattr(model_or_embeddings, "get_gene_embeddings"):
        vocab = getattr(model_or_embeddings, "vocab", None)
        known = pd.Index(vocab.genes) if vocab is not None else None
        source = "the model's vocabulary"
        emb = None
    else:
        raise TypeError(
            "model_or_embeddings must be a trained celltx.model.ScGPT (anything with "
            "get_gene_embeddings) or a pandas DataFrame genes × dimensions, not "
            f"{type(model_or_embeddings).__name__}."
        )
    if genes is not None and known is not None:
        known_set = set(known)
        missing = [g for g in genes if g not in known_set]
        if missing:
            more = f" and {len(missing) - 50} more" if len(missing) > 50 else ""
            raise ValueError(
                f"{len(missing)} of {len(genes)} genes are not in {source}: "
                f"{missing[:50]}{more}. Pass only genes that are in it."
            )
    if emb is None:
        emb = model_or_embeddings.get_gene_embeddings(genes)
    else:
        emb = emb.set_axis(known, axis=0)
        if genes is not None:
            emb = emb.loc[genes]
    values = emb.to_numpy(dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError("The gene embedding needs at least one dimension (column).")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} genes have non-finite (NaN or inf) embeddings, e.g. "
            f"{list(emb.index[bad][:10])}; drop them with genes=."
        )
    zero = np.linalg.norm(values, axis=1) == 0
    if zero.any():
        raise ValueError(
            f"{int(zero.sum())} genes have all-zero embeddings (no cosine similarity), e.g. "
            f"{list(emb.index[zero][:10])}; drop them with genes=."
        )
    return pd.DataFrame(values, index=pd.Index(emb.index.astype(str), name="gene"))


def gene_programs(
    model_or_embeddings,
    genes: Sequence[str] | None = None,
    *,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    min_size: int = 5,
    seed: int = 0,
    adata: AnnData | None = None,
    key_added: str = "gene_program",
) -> pd.DataFrame:
    """Group genes into programs: Leiden clusters of their embeddings' cosine kNN graph.

    The gene embeddings (genes × d) are put into an AnnData (one observation per gene);
    scanpy builds the exact kNN graph on cosine similarity (``sc.pp.neighbors`` with
    ``metric="cosine"``) and clusters it with Leiden (``sc.tl.leiden``, igraph flavour,
    two iterations, undirected). Each cluster of at least ``min_size`` genes is a program,
    labelled ``"0"``, ``"1"``, … from the largest down; the genes of smaller clusters are
    labelled ``"unassigned"``.

    Parameters
    ----------
    model_or_embeddings
        A trained :class:`~celltx.model.ScGPT` (its
        :meth:`~celltx.model.ScGPT.get_gene_embeddings` are used), or a DataFrame genes ×
        dimensions with gene names as index.
    genes
        Genes to group (default: every gene of the vocabulary or DataFrame). Genes that
        are not in it raise a :class:`ValueError` listing them.
    n_neighbors
        Neighbours of each gene in the kNN graph (the gene itself included, as in scanpy).
    resolution
        Leiden resolution: higher gives more, smaller programs.
    min_size
        Smallest program; genes of smaller clusters are ``"unassigned"``.
    seed
        Random seed of the graph and of Leiden.
    adata
        Cells × genes to annotate (optional): ``adata.var[key_added]`` gets each gene's
        program (categorical; genes without an embedding get NaN) and
        ``adata.uns[key_added]`` the programs as ``{program: [genes]}`` (all their genes,
        ``"unassigned"`` left out; plain strings and lists, JSON-friendly).
    key_added
        ``var`` / ``uns`` key written into ``adata``.

    Returns
    -------
    pandas.DataFrame
        One row per gene, sorted by program (then in the genes' order): ``gene`` and
        ``program`` (categorical: ``"0"``, ``"1"``, …, then ``"unassigned"``).

    Raises
    ------
    ValueError
        If genes are unknown or duplicated, embeddings are not finite or all zero, there
        are fewer than ``n_neighbors + 1`` genes, or ``adata`` shares no gene with them.
    TypeError
        If ``model_or_embeddings`` is neither a model nor a DataFrame.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> import celltx
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(2, 8))
    >>> emb = pd.DataFrame(
    ...     np.repeat(centres, 10, axis=0) + rng.normal(scale=0.2, size=(20, 8)),
    ...     index=[f"g{i}" for i in range(20)],
    ... )
    >>> programs = celltx.tl.gene_programs(emb, n_neighbors=8)
    >>> programs["program"].value_counts().sort_index().to_dict()
    {'0': 10, '1': 10, 'unassigned': 0}
    >>> programs.groupby("program", observed=True)["gene"].first().to_dict()
    {'0': 'g0', '1': 'g10'}
    """
    import scanpy as sc

    n_neighbors = _positive_int("n_neighbors", n_neighbors, 2)
    min_size = _positive_int("min_size", min_size, 1)
    if not (np.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a positive number, not {resolution!r}.")
    emb = _embedding_frame(model_or_embeddings, genes)
    if emb.shape[0] < n_neighbors + 1:
        raise ValueError(
            f"{emb.shape[0]} genes are too few for a kNN graph with n_neighbors={n_neighbors}: "
            f"pass at least n_neighbors + 1 = {n_neighbors + 1} genes, or a smaller n_neighbors."
        )
    if adata is not None:
        shared = adata.var_names.isin(emb.index)
        if not shared.any():
            raise ValueError(
                f"adata shares no gene with the {emb.shape[0]} embedded genes (e.g. "
                f"{list(adata.var_names[:3])} vs {list(emb.index[:3])}); are they named the "
                "same way (symbols vs Ensembl IDs)?"
            )

    tmp = AnnData(X=emb.to_numpy(dtype=np.float32), obs=pd.DataFrame(index=emb.index.copy()))
    sc.pp.neighbors(
        tmp,
        n_neighbors=n_neighbors,
        use_rep="X",
        metric="cosine",
        transformer="sklearn",
        random_state=seed,
    )
    sc.tl.leiden(
        tmp,
        resolution=float(resolution),
        random_state=seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    clusters = tmp.obs["leiden"].astype(str).to_numpy()
    names, counts = np.unique(clusters, return_counts=True)
    # largest first; ties by Leiden's label, so the order is reproducible
    order = sorted(zip(names, counts, strict=True), key=lambda nc: (-nc[1], int(nc[0])))
    kept = [name for name, count in order if count >= min_size]
    relabel = {name: str(i) for i, name in enumerate(kept)}
    labels = [relabel.get(c, UNASSIGNED) for c in clusters]
    categories = [*relabel.values(), UNASSIGNED]
    result = pd.DataFrame(
        {
            "gene": emb.index.to_numpy(dtype=object),
            "program": pd.Categorical(labels, categories=categories),
        }
    )
    result = result.sort_values("program", kind="stable").reset_index(drop=True)

    if adata is not None:
        assigned = pd.Series(result["program"].to_numpy(), index=result["gene"].to_numpy())
        adata.var[key_added] = pd.Categorical(
            assigned.reindex(adata.var_names).to_numpy(), categories=categories
        )
        adata.uns[key_added] = {
            p: [str(g) for g in result.loc[result["program"] == p, "gene"]]
            for p in categories
            if p != UNASSIGNED
        }
    return result


def _positive_int(name: str, value, low: int) -> int:
    """``value`` as an int of at least ``low``, else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, not {value!r}.")
    return int(value)
