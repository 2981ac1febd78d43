"""Rank the targets of a gene whose interaction scores change between two groups of cells."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def interaction_changes(
    interactions: Mapping[str, pd.DataFrame],
    gene: str,
    group: str,
    reference: str,
    n_top: int | None = None,
) -> pd.DataFrame:
    """The targets of ``gene`` ranked by how much their score changes from ``reference`` to ``group``.

    Parameters
    ----------
    interactions
        Group → genes × genes scores, rows the source genes (as
        :meth:`celltx.model.ScGPT.get_gene_interactions` returns with ``groupby``).
    gene
        Source gene whose targets (its row) are compared.
    group, reference
        The groups compared, e.g. perturbed and control cells.
    n_top
        Keep this many targets (default all).

    Returns
    -------
    pandas.DataFrame
        One row per target (``gene`` itself left out): ``target``, the score in ``group``
        and in ``reference`` (columns named after them), ``change`` (``group`` minus
        ``reference``) and ``fold_change`` (their ratio), sorted by the absolute change,
        largest first. Targets without a score in either group (``NaN``) come last.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.tl import interaction_changes
    >>> genes = ["A", "B", "C"]
    >>> ctrl = pd.DataFrame([[0.2, 0.3, 0.5]] * 3, index=genes, columns=genes)
    >>> stim = pd.DataFrame([[0.2, 0.6, 0.1]] * 3, index=genes, columns=genes)
    >>> interaction_changes({"stim": stim, "ctrl": ctrl}, "A", "stim", "ctrl")["target"].tolist()
    ['C', 'B']
    """
    if not isinstance(interactions, Mapping):
        raise TypeError(
            "interactions must be a dict group -> scores (get_gene_interactions(..., groupby=...)), "
            f"not {type(interactions).__name__}."
        )
    for name in (group, reference):
        if name not in interactions:
            raise ValueError(
                f"{name!r} is not a group of the interactions; groups: {list(interactions)}."
            )
    if group == reference:
        raise ValueError(f"group and reference are both {group!r}; compare two different groups.")
    a, b = interactions[group], interactions[reference]
    if gene not in a.index or gene not in b.index:
        raise ValueError(f"{gene!r} is not a source gene of the interactions (their rows).")
    targets = a.columns.intersection(b.columns, sort=False).drop(gene, errors="ignore")
    sa = a.loc[gene, targets].to_numpy(dtype=np.float64)
    sb = b.loc[gene, targets].to_numpy(dtype=np.float64)
    change = sa - sb
    with np.errstate(divide="ignore", invalid="ignore"):
        fold = sa / sb
    out = pd.DataFrame(
        {
            "target": np.asarray(targets),
            group: sa,
            reference: sb,
            "change": change,
            "fold_change": fold,
        }
    )
    order = np.argsort(-np.nan_to_num(np.abs(change), nan=-1.0), kind="stable")
    out = out.iloc[order].reset_index(drop=True)
    return out if n_top is None else out.head(int(n_top))
