"""Data from a Lightning datamodule: scvi-tools' ``TileDBDataModule`` over a SOMA experiment.

celltx reads no SOMA data itself: batches come from scvi-tools' ``TileDBDataModule``
(``tiledbsoma_ml``'s loader underneath). What celltx needs beyond the batches is which gene
each column of ``X`` is, read here from the query's ``var`` in the order of
``query.var_joinids()`` (the column order of ``tiledbsoma_ml``'s batches).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse


def _soma_query(datamodule):
    query = getattr(datamodule, "query", None)
    if query is None or not all(
        hasattr(query, a) for a in ("var", "var_joinids", "experiment", "measurement_name")
    ):
        raise ValueError(
            f"datamodule={type(datamodule).__name__}: celltx trains and embeds from scvi-tools' "
            "TileDBDataModule over a SOMA query, e.g. scvi.dataloaders.TileDBDataModule("
            "experiment.axis_query('RNA'), layer_name='data', batch_column_names=[...]) "
            "(pip install 'celltx[soma]')."
        )
    return query


def _layer_name(datamodule) -> str | None:
    kwargs = getattr(datamodule, "dataset_kwargs", None) or {}
    if "layer_name" in kwargs:
        return kwargs["layer_name"]
    args = getattr(datamodule, "dataset_args", None) or ()
    return args[0] if args and isinstance(args[0], str) else None


def check_datamodule(datamodule, gene_column: str) -> None:
    """Raise a :class:`ValueError` naming the fix when ``datamodule`` cannot feed a model.

    Checks that it is built on a SOMA query, that its ``layer_name`` is an ``X`` layer of the
    query's measurement and that ``gene_column`` is a column of the measurement's ``var``.
    """
    query = _soma_query(datamodule)
    ms = query.experiment.ms[query.measurement_name]
    layers = sorted(ms.X.keys())
    layer = _layer_name(datamodule)
    if layer not in layers:
        raise ValueError(
            f"layer_name={layer!r} is not an X layer of measurement "
            f"{query.measurement_name!r} (its layers: {layers}); pass "
            f"TileDBDataModule(query, layer_name={layers[0] if layers else 'data'!r}, ...)."
        )
    columns = [c for c in ms.var.schema.names if c != "soma_joinid"]
    if gene_column not in columns:
        raise ValueError(
            f"gene_column={gene_column!r} is not a var column of measurement "
            f"{query.measurement_name!r} (its columns: {columns}); pass the column of gene "
            "names the vocabulary uses, e.g. gene_column='feature_name' for CELLxGENE Census."
        )


def datamodule_panel(datamodule, gene_column: str) -> AnnData:
    """A cell-less AnnData whose ``var_names`` are the genes of the datamodule's ``X`` columns.

    Parameters
    ----------
    datamodule
        scvi-tools' ``TileDBDataModule`` (any object with a SOMA ``query`` attribute).
    gene_column
        Column of the measurement's ``var`` with the gene names.

    Returns
    -------
    anndata.AnnData
        ``0 × n_vars``; gene ``j`` is column ``j`` of the datamodule's batches.
    """
    check_datamodule(datamodule, gene_column)
    query = _soma_query(datamodule)
    var = query.var(column_names=["soma_joinid", gene_column]).concat().to_pandas()
    names = var.set_index("soma_joinid")[gene_column]
    joinids = np.asarray(query.var_joinids().to_numpy())
    genes = names.reindex(joinids).astype(str).to_numpy()
    return AnnData(
        X=sparse.csr_matrix((0, len(genes)), dtype=np.float32),
        var=pd.DataFrame(index=pd.Index(genes, name=gene_column)),
    )


def datamodule_registry(datamodule, model_name: str, genes) -> dict:
    """The datamodule's scvi-tools registry, naming the model and its genes, JSON-ready.

    ``TileDBDataModule`` names the ``X`` columns by SOMA joinid and the model ``"SCVI"``;
    the model's registry names its genes (what :meth:`~scvi.model.base.BaseModelClass.get_var_names`
    and a save report) and its class. Tensors become lists (celltx saves registries as JSON).
    """

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    registry = plain(datamodule.registry)  # a new dict
    registry["model_name"] = model_name
    registry["field_registries"]["X"]["state_registry"]["column_names"] = [str(g) for g in genes]
    return registry


def inference_loader(datamodule):
    """The datamodule's inference loader, after checking that it keeps the query's cell order."""
    _soma_query(datamodule)
    kwargs = getattr(datamodule, "dataset_kwargs", None) or {}
    if kwargs.get("shuffle", True):
        raise ValueError(
            "The datamodule shuffles its cells (tiledbsoma_ml's ExperimentDataset shuffles by "
            "default), so embeddings would come in random order. For embedding, build it with "
            "TileDBDataModule(query, ..., shuffle=False)."
        )
    if getattr(datamodule, "train_size", 1.0) < 1.0:
        raise ValueError(
            f"The datamodule keeps train_size={datamodule.train_size} of the cells for "
            "training; for embedding, build it with train_size=1.0 (the default)."
        )
    datamodule.setup()
    return datamodule.inference_dataloader()
