"""The one recipe the gene-level benchmarks use to train a celltx model on their data."""

from __future__ import annotations

from collections.abc import Mapping

from anndata import AnnData


def fit_celltx(
    adata: AnnData,
    defaults: Mapping,
    settings: Mapping,
    seed: int,
    labels_key: str | None = None,
    batch_key: str | None = None,
):
    """Set up a copy of ``adata`` and train an :class:`~celltx.model.ScGPT` on it.

    ``defaults`` and ``settings`` hold ``model`` (keyword arguments of the model, merged
    key by key), ``epochs``, ``lr``, ``batch_size``, ``accelerator`` and optionally
    ``budget_cells`` and ``budget_exponent`` (``epochs`` apply up to ``budget_cells`` cells,
    fewer above: :func:`~celltx.model.train_budget`, exponent 0.5 unless given; ``None``:
    exactly ``epochs``),
    ``task``, ``loss_weights``, ``chunk_size`` and ``class_weight`` (of
    :meth:`~celltx.model.ScGPT.train`) and ``label_texts`` (of
    :meth:`~celltx.model.ScGPT.set_label_texts`);
    ``settings`` wins. ``labels_key`` is registered when given (label-aware tasks), and
    ``batch_key`` (batch-aware tasks).
    Returns the trained model (its ``adata`` is the copy).
    """
    import scvi

    from celltx.model import ScGPT, train_budget

    cfg = {**defaults, **settings}
    cfg["model"] = {**defaults.get("model", {}), **settings.get("model", {})}
    a = adata.copy()
    scvi.settings.seed = seed
    ScGPT.setup_anndata(a, labels_key=labels_key, batch_key=batch_key)
    model = ScGPT(a, **cfg["model"])
    if cfg.get("label_texts") is not None:  # cell–text alignment: how labels become texts
        model.set_label_texts(**cfg["label_texts"])
    model.train(
        max_epochs=train_budget(
            a.n_obs, cfg["epochs"], cfg.get("budget_cells"), cfg.get("budget_exponent", 0.5)
        ),
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        accelerator=cfg["accelerator"],
        task=cfg.get("task"),
        loss_weights=cfg.get("loss_weights"),
        chunk_size=cfg.get("chunk_size"),
        class_weight=cfg.get("class_weight"),
        enable_progress_bar=False,
    )
    return model
