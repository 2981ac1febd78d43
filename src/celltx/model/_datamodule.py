"""Data from a Lightning datamodule: scvi-tools' SOMA and lamindb datamodules.

``TileDBDataModule`` streams a SOMA experiment, ``MappedCollectionDataModule`` a lamindb
collection of ``.h5ad`` artifacts. celltx reads no such data itself: batches come from the
scvi-tools datamodule (``tiledbsoma_ml``'s or lamindb's ``MappedCollection`` loader underneath). What celltx needs
beyond the batches is which gene each column of ``X`` is: for SOMA, read from the query's
``var`` in the order of ``query.var_joinids()`` (the column order of ``tiledbsoma_ml``'s
batches); for a lamindb collection, the datamodule's ``var_names`` (the collection's joined
genes, the column order of ``MappedCollection``'s batches).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse


def _is_mapped(datamodule) -> bool:
    """Whether ``datamodule`` is scvi-tools' ``MappedCollectionDataModule`` (lamindb)."""
    from scvi.dataloaders import MappedCollectionDataModule

    return isinstance(datamodule, MappedCollectionDataModule)


def _soma_query(datamodule):
    query = getattr(datamodule, "query", None)
    if query is None or not all(
        hasattr(query, a) for a in ("var", "var_joinids", "experiment", "measurement_name")
    ):
        raise ValueError(
            f"datamodule={type(datamodule).__name__}: celltx trains and embeds from scvi-tools' "
            "TileDBDataModule over a SOMA query, e.g. scvi.dataloaders.TileDBDataModule("
            "experiment.axis_query('RNA'), layer_name='data', batch_column_names=[...]) "
            "(pip install 'celltx[soma]'), or from its MappedCollectionDataModule over a "
            "lamindb collection (pip install 'celltx[lamindb]')."
        )
    return query


def _mapped_genes(datamodule) -> np.ndarray:
    try:
        genes = datamodule.var_names
    except AttributeError:
        genes = None
    if genes is None:
        raise ValueError(
            "The MappedCollectionDataModule has no joined genes: build it with "
            "join='inner' (the default) or join='outer', so that the columns of its batches "
            "are one list of genes."
        )
    return np.asarray(genes).astype(str)


def check_datamodule_config(config) -> None:
    """Raise unless a model of ``config`` can take a datamodule's batches.

    A datamodule brings genes only: no AnnData batch codes for the batch-aware parts.
    """
    if config.dsbn or config.dab or config.batch_token:
        raise ValueError(
            "A model fed by a datamodule has no batch-aware parts (dsbn, dab, batch_token): "
            "their batches come from an AnnData setup, and a datamodule's batch codes would "
            "not match. Use an AnnData, or a model without batch-aware parts."
        )


def has_validation(datamodule) -> bool:
    """Whether the datamodule holds validation cells (a split, or a validation collection)."""
    if _is_mapped(datamodule):
        return datamodule.val_dataloader() is not None
    return getattr(datamodule, "validation_size", 0.0) > 0


def _layer_name(datamodule) -> str | None:
    kwargs = getattr(datamodule, "dataset_kwargs", None) or {}
    if "layer_name" in kwargs:
        return kwargs["layer_name"]
    args = getattr(datamodule, "dataset_args", None) or ()
    return args[0] if args and isinstance(args[0], str) else None


def check_datamodule(datamodule, gene_column: str) -> None:
    """Raise a :class:`ValueError` naming the fix when ``datamodule`` cannot feed a model.

    Checks that it is built on a SOMA query, that its ``layer_name`` is an ``X`` layer of the
    query's measurement and that ``gene_column`` is a column of the measurement's ``var``; or
    that a lamindb datamodule has one list of genes (``gene_column`` does not apply: its genes
    are the artifacts' ``var_names``).
    """
    if _is_mapped(datamodule):
        _mapped_genes(datamodule)
        return
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
        scvi-tools' ``TileDBDataModule`` (any object with a SOMA ``query`` attribute) or
        ``MappedCollectionDataModule``.
    gene_column
        Column of the measurement's ``var`` with the gene names (SOMA only).

    Returns
    -------
    anndata.AnnData
        ``0 × n_vars``; gene ``j`` is column ``j`` of the datamodule's batches.
    """
    check_datamodule(datamodule, gene_column)
    if _is_mapped(datamodule):
        genes, name = _mapped_genes(datamodule), None
    else:
        query = _soma_query(datamodule)
        var = query.var(column_names=["soma_joinid", gene_column]).concat().to_pandas()
        names = var.set_index("soma_joinid")[gene_column]
        joinids = np.asarray(query.var_joinids().to_numpy())
        genes, name = names.reindex(joinids).astype(str).to_numpy(), gene_column
    return AnnData(
        X=sparse.csr_matrix((0, len(genes)), dtype=np.float32),
        var=pd.DataFrame(index=pd.Index(genes, name=name)),
    )


def datamodule_registry(datamodule, model_name: str, genes) -> dict:
    """The datamodule's scvi-tools registry, naming the model and its genes, JSON-ready.

    ``TileDBDataModule`` names the ``X`` columns by SOMA joinid and the model ``"SCVI"``;
    ``MappedCollectionDataModule`` keeps its genes as an index and its label encoders keyed by
    label; the model's registry names its genes (what :meth:`~scvi.model.base.BaseModelClass.get_var_names`
    and a save report) and its class. Tensors become lists (celltx saves registries as JSON).
    """

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray | pd.Index):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        return value

    registry = plain(datamodule.registry)  # a new dict
    registry["model_name"] = model_name
    registry["field_registries"]["X"]["state_registry"]["column_names"] = [str(g) for g in genes]
    return registry


def inference_loader(datamodule, batch_size: int = 64):
    """The datamodule's inference loader, after checking that it keeps the cells' order.

    ``batch_size``: cells per batch of a lamindb datamodule (a SOMA datamodule's batches are
    its own).
    """
    if _is_mapped(datamodule):
        return datamodule.inference_dataloader(shuffle=False, batch_size=batch_size)
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
