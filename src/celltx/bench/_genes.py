"""Scores of gene programs: agreement with known modules and co-expression coherence."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ._inputs import lognorm_expression

#: label of the genes that belong to no program (as :func:`celltx.tl.gene_programs` writes)
UNASSIGNED = "unassigned"
#: index of the summary row
SUMMARY = "all"


def _as_labels(obj, what: str) -> pd.Series:
    """A gene → label Series from a DataFrame, Series or mapping (either direction)."""
    if isinstance(obj, pd.DataFrame):
        cols = [c for c in ("gene", "program") if c in obj.columns]
        if cols == ["gene", "program"]:
            series = pd.Series(obj["program"].to_numpy(), index=obj["gene"].to_numpy())
        elif obj.shape[1] == 1:
            series = obj.iloc[:, 0]
        else:
            raise ValueError(
                f"{what} as a DataFrame needs the columns 'gene' and 'program' (as "
                f"celltx.tl.gene_programs returns), not {list(obj.columns)}."
            )
    elif isinstance(obj, pd.Series):
        series = obj
    elif isinstance(obj, Mapping):
        values = list(obj.values())
        if values and all(
            isinstance(v, list | tuple | set | np.ndarray | pd.Index) for v in values
        ):
            pairs = [(str(g), str(label)) for label, genes in obj.items() for g in genes]
            series = pd.Series(
                [label for _, label in pairs], index=[g for g, _ in pairs], dtype=object
            )
        else:
            series = pd.Series(dict(obj), dtype=object)
    else:
        raise TypeError(
            f"{what} must be a DataFrame with 'gene' and 'program' columns, a Series gene → "
            f"label, or a mapping (gene → label or label → [genes]), not {type(obj).__name__}."
        )
    series = series.dropna()
    series = pd.Series(series.astype(str).to_numpy(), index=series.index.astype(str))
    dup = series.index[series.index.duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"{what} gives more than one label to {len(dup)} genes, e.g. {list(dup[:5])}."
        )
    return series


def _coherence_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) standard deviation of a cells × genes matrix."""
    if sparse.issparse(x):
        x = sparse.csc_matrix(x, dtype=np.float64)
        mean = np.asarray(x.mean(axis=0)).ravel()
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    else:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        sq = (x * x).mean(axis=0)
    return mean, np.sqrt(np.maximum(sq - mean * mean, 0.0))


def _mean_correlation(x, idx: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> float:
    """Mean Pearson correlation over the pairs of the genes (columns) ``idx`` of ``x``.

    With ``z_j`` the standardised gene ``j``, the correlations of a set sum to
    ``(|sum_j z_j|^2 - k n) / n`` over its ordered pairs; computed as ``x[:, idx] @ (1/sd)``
    minus a constant, so sparse input stays sparse.
    """
    k = len(idx)
    if k < 2:
        return float("nan")
    w = 1.0 / sd[idx]
    total = x[:, idx] @ w
    total = np.asarray(total, dtype=np.float64).ravel() - float(np.sum(mean[idx] * w))
    n = total.size
    return float((total @ total / n - k) / (k * (k - 1)))


def gene_program_scores(
    programs,
    adata: AnnData | None = None,
    truth=None,
    *,
    layer: str | None = None,
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Score gene programs against known gene modules and by their co-expression.

    With ``truth``, the programs are compared with known modules on the genes both
    assign: adjusted Rand index and normalised mutual information (summary row), and per
    program the module most of its genes belong to (``best_match``) and that share
    (``purity``). With ``adata``, a program's coherence is the mean Pearson correlation
    over all pairs of its genes across the cells (log-normalised expression: counts are
    log1p-CP10k normalised first); it is compared with ``n_random`` random sets of genes
    of ``adata`` of the same size (``random_coherence`` and its standard deviation
    ``random_coherence_sd``, ``coherence_z`` the distance in standard deviations). Genes
    without variation across the cells are left out of both. In the summary row,
    coherence is the mean over the programs and the random values are the mean and
    standard deviation over the draws of that mean.

    Parameters
    ----------
    programs
        The programs: the DataFrame of :func:`celltx.tl.gene_programs` (``gene``,
        ``program``), a Series gene → program, or a mapping gene → program or program →
        [genes] (e.g. ``adata.uns["gene_program"]``). Genes labelled ``"unassigned"`` (or
        NaN) belong to no program and are left out.
    adata
        Cells × genes with raw counts or log-normalised expression, for coherence.
    truth
        Known modules, in any of the forms of ``programs`` (e.g. ``{gene: module}``).
    layer
        Layer of ``adata`` with the expression (default: ``.X``).
    n_random
        Random gene sets per program.
    seed
        Seed of the random gene sets.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``program`` (strings), one row per program and a last row ``"all"``.
        Always ``n_genes`` (genes of the program). With ``truth``: ``n_shared`` (genes also
        in ``truth``), ``best_match``, ``purity``, ``ari`` and ``nmi`` (summary row only).
        With ``adata``: ``n_measured`` (genes in ``adata`` that vary), ``coherence``,
        ``random_coherence``, ``random_coherence_sd``, ``coherence_z``. A program with
        fewer than two measured genes has NaN coherence. The summary row holds totals of
        the counts and, for ``purity``, the share of all shared genes that lie in their
        program's best match.

    Raises
    ------
    ValueError
        If neither ``adata`` nor ``truth`` is given, there is no program, the programs
        share fewer than two genes with ``truth`` or no gene with ``adata``, or the
        expression is neither counts nor log-normalised.

    Examples
    --------
    >>> from celltx.bench import gene_program_scores
    >>> programs = {"0": ["a", "b", "c"], "1": ["d", "e", "f"]}
    >>> truth = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "y"}
    >>> scores = gene_program_scores(programs, truth=truth)
    >>> scores.loc["all", ["ari", "nmi"]].astype(float).round(3).to_dict()
    {'ari': 1.0, 'nmi': 1.0}
    >>> scores.loc["0", ["best_match", "purity"]].to_dict()
    {'best_match': 'x', 'purity': 1.0}
    """
    if adata is None and truth is None:
        raise ValueError("Pass truth= (known gene modules), adata= (for coherence), or both.")
    if isinstance(n_random, bool) or not isinstance(n_random, int | np.integer) or n_random < 1:
        raise ValueError(f"n_random must be a positive integer, not {n_random!r}.")
    labels = _as_labels(programs, "programs")
    labels = labels[labels != UNASSIGNED]
    if labels.empty:
        raise ValueError("programs has no gene in a program (all are unassigned or NaN).")
    if isinstance(programs, pd.DataFrame) and isinstance(
        programs.get("program", pd.Series(dtype=object)).dtype, pd.CategoricalDtype
    ):
        order = [str(c) for c in programs["program"].cat.categories if str(c) in set(labels)]
    else:
        order = list(dict.fromkeys(labels.to_numpy()))
    members = {p: labels.index[labels == p] for p in order}
    table = pd.DataFrame(
        {"n_genes": [len(members[p]) for p in order]}, index=pd.Index(order, name="program")
    )
    summary: dict[str, float] = {"n_genes": float(len(labels))}

    if truth is not None:
        known = _as_labels(truth, "truth")
        known = known[known != UNASSIGNED]
        shared = labels.index.intersection(known.index)
        if len(shared) < 2:
            raise ValueError(
                f"programs and truth share {len(shared)} genes; at least 2 are needed (e.g. "
                f"{list(labels.index[:3])} vs {list(known.index[:3])})."
            )
        best: list[str | None] = []
        purity: list[float] = []
        n_shared: list[int] = []
        for p in order:
            hits = known.reindex(members[p].intersection(shared))
            n_shared.append(len(hits))
            if len(hits):
                counts = hits.value_counts()
                best.append(str(counts.index[0]))
                purity.append(float(counts.iloc[0] / len(hits)))
            else:
                best.append(None)
                purity.append(float("nan"))
        table["n_shared"] = n_shared
        table["best_match"] = best
        table["purity"] = purity
        a, b = labels[shared].to_numpy(), known[shared].to_numpy()
        summary.update(
            n_shared=float(len(shared)),
            purity=float(np.nansum(np.asarray(purity) * np.asarray(n_shared)) / len(shared)),
            ari=float(adjusted_rand_score(b, a)),
            nmi=float(normalized_mutual_info_score(b, a)),
        )

    if adata is not None:
        x = lognorm_expression(adata, layer)
        mean, sd = _coherence_stats(x)
        varies = sd > 0
        if sparse.issparse(x):
            x = sparse.csc_matrix(x)
        position = pd.Series(np.arange(adata.n_vars), index=adata.var_names.astype(str))
        position = position[~position.index.duplicated()]
        pool = np.flatnonzero(varies)
        rng = np.random.default_rng(seed)
        coherence, n_measured = [], []
        draws = np.full((len(order), n_random), np.nan)
        for i, p in enumerate(order):
            idx = position.reindex(members[p]).dropna().to_numpy(dtype=np.int64)
            idx = idx[varies[idx]]
            n_measured.append(len(idx))
            coherence.append(_mean_correlation(x, idx, mean, sd))
            if 2 <= len(idx) <= len(pool):
                for r in range(n_random):
                    pick = rng.choice(pool, size=len(idx), replace=False)
                    draws[i, r] = _mean_correlation(x, pick, mean, sd)
        if not any(n_measured):
            raise ValueError(
                "No gene of the programs is in adata.var_names (with variation across cells), "
                f"e.g. {list(labels.index[:3])} vs {list(adata.var_names[:3])}."
            )
        coherence_arr = np.asarray(coherence)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # programs without draws: NaN
            random_mean = np.nanmean(draws, axis=1)
            random_sd = np.std(draws, axis=1, ddof=1) if n_random > 1 else np.nan * draws[:, 0]
            z = (coherence_arr - random_mean) / random_sd
        table["n_measured"] = n_measured
        table["coherence"] = coherence_arr
        table["random_coherence"] = random_mean
        table["random_coherence_sd"] = random_sd
        table["coherence_z"] = z
        summary["n_measured"] = float(sum(n_measured))
        scored = np.isfinite(coherence_arr) & np.isfinite(draws).all(axis=1)
        if scored.any():
            per_draw = draws[scored].mean(axis=0)
            coh = float(coherence_arr[scored].mean())
            sd_all = float(np.std(per_draw, ddof=1)) if n_random > 1 else float("nan")
            summary.update(
                coherence=coh,
                random_coherence=float(per_draw.mean()),
                random_coherence_sd=sd_all,
                coherence_z=(coh - float(per_draw.mean())) / sd_all if sd_all > 0 else np.nan,
            )

    columns = [*table.columns, *[c for c in ("ari", "nmi") if c in summary]]
    row = pd.DataFrame([summary], index=pd.Index([SUMMARY], name="program"))
    out = pd.concat([table, row.reindex(columns=columns)])[columns]
    for c in ("n_genes", "n_shared", "n_measured"):
        if c in out:
            out[c] = out[c].astype("Int64")
    return out
