"""Accuracy of predicted perturbation responses, per condition and summarised per method."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._split import TEST_SUBGROUPS

#: columns of :func:`perturbation_metrics`, in order
PERTURBATION_METRICS = (
    "mse",
    "mse_de",
    "pearson_delta",
    "pearson_delta_de",
    "direction_de",
    "spread_de",
    "spread_de_true",
    "pearson_delta_pert",
    "pearson_delta_disjoint",
    "de_rank",
)


#: the default columns of :func:`summarize_perturbation`, in order
SUMMARY_METRICS = (
    "pearson_delta_de",
    "pearson_delta",
    "pearson_delta_pert",
    "pearson_delta_disjoint",
    "de_rank",
    "direction_de",
    "mse_de",
    "mse",
    "spread_de",
    "seconds",
)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` (prediction) and ``b`` (truth).

    0 when the prediction is constant, NaN when the truth is.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
    if nb <= 1e-12 * np.sqrt(b.size):
        return float("nan")
    if na <= 1e-6 * nb:  # constant up to rounding
        return 0.0
    return float(np.clip((a @ b) / (na * nb), -1.0, 1.0))


def _desc_ranks(a: np.ndarray) -> np.ndarray:
    """0-based ranks of each row's values, largest first, ties given their average rank."""
    from scipy.stats import rankdata

    return a.shape[1] - rankdata(a, axis=1, method="average")


def perturbation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    control: np.ndarray,
    de_genes: Sequence[np.ndarray] | None = None,
    n_de: int = 20,
    conditions: Sequence[str] | None = None,
    perturbed_mean: np.ndarray | None = None,
    control_disjoint: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-condition accuracy of predicted mean expression profiles.

    All inputs are mean log-normalised expression. With ``d = x - control`` the change from
    control, the metrics of a condition are:

    - ``mse``, ``mse_de``: mean squared error of the profile on all genes / the DE genes.
    - ``pearson_delta``, ``pearson_delta_de``: Pearson correlation of predicted and true
      ``d`` on all genes / the DE genes. A constant prediction (e.g. no change) scores 0.
    - ``direction_de``: fraction of DE genes whose predicted change has the sign of the
      true change (a zero predicted change counts as wrong unless the truth is zero).
    - ``spread_de`` / ``spread_de_true``: how far the condition's predicted (true) change
      lies from the average predicted (true) change over all conditions given, as the root
      mean square over the condition's DE genes of ``d_c - mean_c' d_c'``. A predictor that
      gives every condition the same response has ``spread_de = 0`` while the truth's
      spread is positive; the mean of ``spread_de`` over conditions, divided by that of
      ``spread_de_true``, measures how much of the real diversity of responses is kept.
      NaN when fewer than two conditions are given.
    - ``pearson_delta_pert`` (Systema-style): Pearson on all genes of ``pred -
      perturbed_mean`` and ``truth - perturbed_mean``, the changes against the mean of all
      perturbed training cells. The shift that every perturbation shares (perturbed vs
      control cells) is removed, so predicting that shared shift scores 0 (the training
      mean scores exactly 0) and only what is specific to the condition counts. NaN
      without ``perturbed_mean``.
    - ``pearson_delta_disjoint``: Pearson on all genes of ``pred - control`` and
      ``truth - control_disjoint``, where ``control_disjoint`` is the mean of control
      cells that no method saw (a disjoint half of the controls). With one control mean on
      both sides its sampling noise appears in both deltas and inflates the correlation;
      here it cannot. NaN without ``control_disjoint``.
    - ``de_rank``: where the condition's true DE genes land when the genes are ranked by
      the predicted absolute change ``|pred - control|``, largest first: the mean over the
      DE genes of their rank (0-based, ties averaged) divided by ``n_genes - 1``. **Lower
      is better**: 0.5 is chance (and what a constant prediction such as no change gets),
      the best possible value is ``(n_de - 1) / (2 (n_genes - 1))`` (the DE genes ranked
      first), 1 the worst.

    Parameters
    ----------
    pred
        Predicted mean expression, conditions × genes.
    truth
        True (observed) mean expression, conditions × genes.
    control
        Mean expression of control cells, one value per gene.
    de_genes
        Per condition, the column indices of its DE genes. Default: the ``n_de`` genes with
        the largest ``|truth - control|``.
    n_de
        Number of DE genes when ``de_genes`` is not given.
    conditions
        Row labels of the result.
    perturbed_mean
        Mean expression of all perturbed training cells, one value per gene (for
        ``pearson_delta_pert``).
    control_disjoint
        Mean expression of control cells disjoint from those of ``control`` (for
        ``pearson_delta_disjoint``).

    Returns
    -------
    pandas.DataFrame
        One row per condition, columns as listed above plus ``n_de``.

    Raises
    ------
    ValueError
        If the shapes disagree, a DE index is out of range, or a value is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench import perturbation_metrics
    >>> rng = np.random.default_rng(0)
    >>> control = rng.normal(size=50)
    >>> truth = control + rng.normal(size=(3, 50))
    >>> m = perturbation_metrics(truth, truth, control, n_de=10)
    >>> round(float(m[["pearson_delta_de", "direction_de"]].to_numpy().min()), 6)
    1.0
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    control = np.asarray(control, dtype=np.float64).ravel()
    if pred.shape != truth.shape or truth.shape[1] != control.size:
        raise ValueError(
            f"Shapes disagree: pred {pred.shape}, truth {truth.shape}, control {control.shape}; "
            "pred and truth must be conditions × genes and control one value per gene."
        )
    refs = {}
    for name, ref in (("perturbed_mean", perturbed_mean), ("control_disjoint", control_disjoint)):
        if ref is not None:
            ref = np.asarray(ref, dtype=np.float64).ravel()
            if ref.size != control.size:
                raise ValueError(
                    f"{name} has {ref.size} values for {control.size} genes; pass one per gene."
                )
            refs[name] = ref
    for name, arr in (("pred", pred), ("truth", truth), ("control", control), *refs.items()):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has NaN or infinite values; predictions must be finite.")
    n_cond, n_genes = truth.shape
    dp = pred - control
    dt = truth - control
    if de_genes is None:
        k = min(int(n_de), n_genes)
        if k < 1:
            raise ValueError(f"n_de must be at least 1, got {n_de}.")
        de_genes = list(np.argsort(-np.abs(dt), axis=1, kind="stable")[:, :k])
    if len(de_genes) != n_cond:
        raise ValueError(f"de_genes has {len(de_genes)} entries for {n_cond} conditions.")
    de_genes = [np.asarray(d, dtype=np.int64).ravel() for d in de_genes]
    for d in de_genes:
        if d.size == 0 or d.min() < 0 or d.max() >= n_genes:
            raise ValueError("Every condition needs at least one DE gene index in [0, n_genes).")
    mean_dp = dp.mean(axis=0)
    mean_dt = dt.mean(axis=0)
    # rank of every gene by predicted |change|, largest first, ties averaged, in [0, 1]
    ranks = _desc_ranks(np.abs(dp)) / max(n_genes - 1, 1)
    pm, cd = refs.get("perturbed_mean"), refs.get("control_disjoint")
    rows = []
    for i in range(n_cond):
        de = de_genes[i]
        rows.append(
            {
                "mse": float(np.mean((pred[i] - truth[i]) ** 2)),
                "mse_de": float(np.mean((pred[i, de] - truth[i, de]) ** 2)),
                "pearson_delta": _pearson(dp[i], dt[i]),
                "pearson_delta_de": _pearson(dp[i, de], dt[i, de]),
                "direction_de": float(np.mean(np.sign(dp[i, de]) == np.sign(dt[i, de]))),
                "spread_de": float(np.sqrt(np.mean((dp[i, de] - mean_dp[de]) ** 2)))
                if n_cond > 1
                else np.nan,
                "spread_de_true": float(np.sqrt(np.mean((dt[i, de] - mean_dt[de]) ** 2)))
                if n_cond > 1
                else np.nan,
                "pearson_delta_pert": _pearson(pred[i] - pm, truth[i] - pm)
                if pm is not None
                else np.nan,
                "pearson_delta_disjoint": _pearson(dp[i], truth[i] - cd)
                if cd is not None
                else np.nan,
                "de_rank": float(ranks[i, de].mean()),
                "n_de": int(de.size),
            }
        )
    index = pd.Index(list(conditions), name="condition") if conditions is not None else None
    return pd.DataFrame(rows, index=index)


def summarize_perturbation(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    as_text: bool = True,
) -> pd.DataFrame:
    """Mean ± sd over conditions of the perturbation metrics, per method and subgroup.

    A subgroup ``"all"`` pools every held-out condition. ``spread_ratio`` is the mean
    ``spread_de`` of the method over the mean ``spread_de_true`` (1 when the predicted
    responses are as diverse as the real ones, 0 for one response for all conditions).

    Parameters
    ----------
    df
        Output of :func:`perturbation`.
    metrics
        Metric columns to summarise (default: those of :data:`SUMMARY_METRICS` that
        ``df`` has).
    as_text
        Return ``"mean ± sd"`` strings (default) or numbers with ``(metric, "mean"/"sd")``
        columns.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(method, subgroup)``.

    Raises
    ------
    ValueError
        If a metric column or ``method``/``subgroup`` is missing.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.bench import summarize_perturbation
    >>> df = pd.DataFrame({"method": ["a", "a"], "subgroup": ["unseen_single"] * 2,
    ...                    "pearson_delta_de": [0.5, 0.7], "spread_de": [1.0, 1.0],
    ...                    "spread_de_true": [2.0, 2.0]})
    >>> summarize_perturbation(df, metrics=["pearson_delta_de"]).loc[("a", "all"), "pearson_delta_de"]
    '0.600 ± 0.141'
    """
    if metrics is None:
        metrics = [m for m in SUMMARY_METRICS if m in df]
    need = ["method", "subgroup", *metrics]
    missing = [c for c in need if c not in df]
    if missing:
        raise ValueError(f"Columns {missing} are missing; pass the output of perturbation().")
    pooled = pd.concat([df, df.assign(subgroup="all")], ignore_index=True)
    order = [s for s in (*TEST_SUBGROUPS, "all") if s in set(pooled["subgroup"])]
    g = pooled.groupby(["method", "subgroup"], sort=False)
    mean, sd = g[list(metrics)].mean(), g[list(metrics)].std()
    if {"spread_de", "spread_de_true"} <= set(df.columns):
        sums = g[["spread_de", "spread_de_true"]].mean()
        mean["spread_ratio"] = sums["spread_de"] / sums["spread_de_true"]
        sd["spread_ratio"] = np.nan
    methods = list(dict.fromkeys(df["method"]))
    idx = pd.MultiIndex.from_tuples(
        [(m, s) for m in methods for s in order if (m, s) in mean.index],
        names=["method", "subgroup"],
    )
    mean, sd = mean.loc[idx], sd.loc[idx]
    if not as_text:
        return (
            pd.concat({"mean": mean, "sd": sd}, axis=1)
            .swaplevel(axis=1)
            .sort_index(axis=1, level=0, sort_remaining=False)
        )
    text = mean.map("{:.3f}".format) + " ± " + sd.map("{:.3f}".format)
    if "spread_ratio" in mean:
        text["spread_ratio"] = mean["spread_ratio"].map("{:.3f}".format)
    return text
