"""Plots of gene-program scores per group of cells."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

_KINDS = ("dotplot", "heatmap", "matrixplot")


def _programs_of(adata: AnnData, key: str) -> dict[str, list[str]]:
    """``{program: [genes]}`` from ``adata.uns[key]``, else from ``adata.var[key]``."""
    if key in adata.uns:
        stored = adata.uns[key]
        if not hasattr(stored, "items"):
            raise ValueError(
                f"adata.uns[{key!r}] must map each program to its genes ({{program: [genes]}}), "
                f"not a {type(stored).__name__}."
            )
        return {str(p): [str(g) for g in np.atleast_1d(genes)] for p, genes in stored.items()}
    if key in adata.var:
        labels = adata.var[key]
        groups = labels.dropna().astype(str)
        groups = groups[groups != "unassigned"]
        order = (
            [str(c) for c in labels.cat.categories if str(c) in set(groups)]
            if isinstance(labels.dtype, pd.CategoricalDtype)
            else sorted(set(groups))
        )
        return {p: [str(g) for g in groups.index[groups == p]] for p in order}
    raise ValueError(
        f"No gene programs under key {key!r}: neither adata.uns[{key!r}] nor adata.var[{key!r}] "
        "exists. Run celltx.tl.gene_programs(..., adata=adata) first, or pass key=."
    )


def gene_programs(
    adata: AnnData,
    groupby: str,
    *,
    programs: Sequence[str] | None = None,
    key: str = "gene_program",
    layer: str | None = None,
    kind: str = "dotplot",
    show: bool | None = None,
    save: str | None = None,
    **kwargs,
):
    """Score gene programs in every cell and plot the scores per group of cells.

    Each program's score is scanpy's gene-set score (:func:`scanpy.tl.score_genes`: the
    mean expression of the program's genes minus that of random reference genes of
    similar expression), written to ``adata.obs[f"program_{p}"]`` (existing columns of
    that name are overwritten). The scores are drawn with scanpy, one column per program:
    a dot plot (colour: mean score; size: fraction of cells with a positive score), a
    matrix plot (mean score per group) or a heatmap (one row per cell).

    Parameters
    ----------
    adata
        Cells × genes with log-normalised expression in ``.X`` or ``layer`` (``.raw`` is
        not used) and the programs in ``adata.uns[key]`` (``{program: [genes]}``, as
        written by :func:`celltx.tl.gene_programs`) or ``adata.var[key]``.
    groupby
        ``obs`` column with the cell groups (e.g. ``"cell_type"``).
    programs
        Programs to score and draw, in this order (default: all of them). A program's
        genes that are not in ``adata`` are left out; a program with none left is skipped
        with a warning.
    key
        Key of the programs in ``adata.uns`` / ``adata.var``.
    layer
        Layer with the expression (default: ``.X``).
    kind
        ``"dotplot"``, ``"matrixplot"`` or ``"heatmap"``.
    show
        Show the figure (default: when ``save`` is not set).
    save
        Path to save the figure to.
    **kwargs
        Passed to :func:`scanpy.pl.dotplot`, :func:`scanpy.pl.matrixplot` or
        :func:`scanpy.pl.heatmap` (e.g. ``standard_scale="var"``, ``cmap``).

    Returns
    -------
    dict
        scanpy's axes of the plot (``"mainplot_ax"``, …; ``"heatmap_ax"`` for a heatmap).

    Raises
    ------
    ValueError
        If ``groupby``, ``layer``, the programs or a requested program are missing, no
        program has a gene in ``adata``, or ``kind`` is unknown.

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> adata.uns["gene_program"] = {"0": ["CD79A", "CD79B", "MS4A1"], "1": ["NKG7", "GNLY"]}
    >>> axes = celltx.pl.gene_programs(adata, "cell_type", kind="matrixplot", show=False)
    >>> [c for c in adata.obs if c.startswith("program_")]
    ['program_0', 'program_1']
    >>> "mainplot_ax" in axes
    True
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {list(_KINDS)}, not {kind!r}.")
    if groupby not in adata.obs:
        raise ValueError(
            f"groupby={groupby!r} is not a column of adata.obs ({list(adata.obs.columns)})."
        )
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer={layer!r} is not in adata.layers ({list(adata.layers)}).")
    available = _programs_of(adata, key)
    if programs is None:
        chosen = list(available)
    else:
        if isinstance(programs, str | int):
            programs = [programs]
        chosen = [str(p) for p in programs]
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise ValueError(
                f"Programs {unknown} are not among those of {key!r}: {list(available)}."
            )

    var_names = set(adata.var_names)
    columns: dict[str, str] = {}
    for p in chosen:
        genes = [g for g in available[p] if g in var_names]
        if not genes:
            warnings.warn(
                f"Program {p!r} has none of its {len(available[p])} genes in adata; skipped.",
                UserWarning,
                stacklevel=2,
            )
            continue
        column = f"program_{p}"
        sc.tl.score_genes(
            adata, genes, score_name=column, layer=layer, use_raw=False, random_state=0
        )
        columns[p] = column
    if not columns:
        raise ValueError(f"None of the programs {chosen} has a gene in adata.var_names.")

    # the scores as a cells × programs AnnData, so scanpy draws them like genes
    scores = AnnData(
        X=adata.obs[list(columns.values())].to_numpy(dtype=np.float32),
        obs=adata.obs[[groupby]].copy(),
        var=pd.DataFrame(index=pd.Index(list(columns.values()))),
    )
    if kind == "heatmap":
        kwargs.setdefault("swap_axes", True)
    else:
        kwargs.setdefault("colorbar_title", "Mean program\nscore in group")
        if kind == "dotplot":
            kwargs.setdefault("size_title", "Fraction of cells\nwith score > 0")
    draw = {"dotplot": sc.pl.dotplot, "matrixplot": sc.pl.matrixplot, "heatmap": sc.pl.heatmap}
    axes = draw[kind](scores, list(columns.values()), groupby, show=False, **kwargs)
    show = save is None if show is None else show
    if save:
        first = next(iter(axes.values())) if isinstance(axes, dict) else axes
        first.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return axes
