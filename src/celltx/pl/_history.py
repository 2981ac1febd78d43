"""Plots of training results."""

from __future__ import annotations

from collections.abc import Sequence


def training_curves(
    model,
    keys: Sequence[str] = ("train_loss", "validation_loss"),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Plot per-epoch curves from ``model.history``.

    Parameters
    ----------
    model
        A trained scvi-tools model (e.g. :class:`~celltx.model.ScGPT`).
    keys
        History entries to draw; missing ones are skipped.
    ax
        Matplotlib axes to draw into (default: a new figure).
    show
        Show the figure (default: when no ``ax`` is given and ``save`` is not set).
    save
        Path to save the figure to.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into.
    """
    import matplotlib.pyplot as plt

    if not getattr(model, "history", None):
        raise ValueError("The model has no training history; call model.train() first.")
    drawn = [k for k in keys if k in model.history]
    if not drawn:
        raise ValueError(f"None of {list(keys)} is in model.history ({list(model.history)}).")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
        show = save is None if show is None else show
    for k in drawn:
        df = model.history[k]
        ax.plot(df.index, df.iloc[:, 0], label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    if save:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax
