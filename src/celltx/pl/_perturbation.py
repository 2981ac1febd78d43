"""Plots of perturbation-prediction results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def perturbation_deltas(
    true_delta,
    pred_delta,
    genes: Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
    annotate: int = 0,
    show: bool | None = None,
    save: str | None = None,
):
    """Scatter plot of predicted against true expression changes of one perturbation.

    Typically drawn on the condition's DE genes: ``true_delta`` is the observed mean minus
    the control mean, ``pred_delta`` the predicted mean minus the control mean. The title
    carries the Pearson correlation; the diagonal ``y = x`` marks a perfect prediction.

    Parameters
    ----------
    true_delta
        True changes, one per gene (array or :class:`pandas.Series`; a Series supplies the
        gene names when ``genes`` is not given).
    pred_delta
        Predicted changes, same genes and order.
    genes
        Gene names, used to label points.
    ax
        Matplotlib axes to draw into (default: a new figure).
    title
        Title; the Pearson correlation is appended.
    annotate
        Label this many genes with the largest true change (needs gene names).
    show
        Show the figure (default: when no ``ax`` is given and ``save`` is not set).
    save
        Path to save the figure to.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into.

    Raises
    ------
    ValueError
        If the inputs differ in length, are empty or not finite, or ``genes`` has the
        wrong length.

    Examples
    --------
    >>> import numpy as np
    >>> import celltx
    >>> true = np.array([-2.0, -1.0, 0.5, 1.5])
    >>> ax = celltx.pl.perturbation_deltas(true, true + 0.1, title="KLF1+ctrl", show=False)
    >>> ax.get_title()
    'KLF1+ctrl (Pearson 1.000)'
    """
    import matplotlib.pyplot as plt

    if genes is None and isinstance(true_delta, pd.Series):
        genes = [str(g) for g in true_delta.index]
    t = np.asarray(true_delta, dtype=np.float64).ravel()
    p = np.asarray(pred_delta, dtype=np.float64).ravel()
    if t.size == 0 or t.shape != p.shape:
        raise ValueError(
            f"true_delta ({t.size} values) and pred_delta ({p.size} values) must be non-empty and "
            "of the same length (one value per gene)."
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise ValueError("true_delta and pred_delta must be finite (no NaN or inf).")
    if genes is not None and len(genes) != t.size:
        raise ValueError(f"genes has {len(genes)} names for {t.size} values.")
    if t.size > 1 and t.std() > 0 and p.std() > 0:
        r = float(np.corrcoef(t, p)[0, 1])
    else:
        r = float("nan")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
        show = save is None if show is None else show
    ax.scatter(t, p, s=14, alpha=0.8, linewidths=0)
    lo = float(min(t.min(), p.min()))
    hi = float(max(t.max(), p.max()))
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.8, ls="--")
    ax.axhline(0, color="0.8", lw=0.6)
    ax.axvline(0, color="0.8", lw=0.6)
    if annotate and genes is not None:
        for i in np.argsort(-np.abs(t))[: int(annotate)]:
            ax.annotate(
                str(genes[i]), (t[i], p[i]), fontsize=7, xytext=(2, 2), textcoords="offset points"
            )
    ax.set_xlabel("true change from control")
    ax.set_ylabel("predicted change from control")
    label = f"Pearson {r:.3f}"
    ax.set_title(f"{title} ({label})" if title else label)
    if save:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax
