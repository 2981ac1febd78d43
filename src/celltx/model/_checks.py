"""Input checks of :class:`~celltx.model.ScGPT`: clear errors before anything is registered or built."""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.data import GeneVocab, check_expression, gene_names, modality_presence, parse_conditions

logger = logging.getLogger(__name__)

#: keys of setup_mudata's ``modalities``
MODALITY_KEYS = ("rna_layer", "atac_layer", "batch_key", "labels_key")
PEAK_NAME = r"^(chr)?[0-9A-Za-z_.]+[:_-][0-9,]+[-_:][0-9,]+$"


def check_modality_kind(adata: AnnData, expected: str, mod: str) -> None:
    """Refuse a modality that holds the other kind of features (swapped modalities)."""
    wrong = None
    if "feature_types" in adata.var.columns:
        kinds = set(adata.var["feature_types"].astype(str).unique())
        if expected == "rna" and kinds == {"Peaks"}:
            wrong = "ATAC peaks (var['feature_types'] is 'Peaks')"
        if expected == "atac" and kinds == {"Gene Expression"}:
            wrong = "genes (var['feature_types'] is 'Gene Expression')"
    if wrong is None and adata.n_vars:
        looks_like_peaks = pd.Index(adata.var_names.astype(str)).str.match(PEAK_NAME).mean()
        if expected == "rna" and looks_like_peaks > 0.9:
            wrong = "ATAC peaks (its var_names are genomic intervals such as 'chr1:100-600')"
        if expected == "atac" and looks_like_peaks < 0.1 and "chrom" not in adata.var.columns:
            wrong = "no peaks (its var_names are not genomic intervals and var has no 'chrom')"
    if wrong:
        other = "atac_layer" if expected == "rna" else "rna_layer"
        raise ValueError(
            f"Modality {mod!r} is registered as {expected.upper()} but holds {wrong}. Check "
            f"modalities={{'{expected}_layer': ..., '{other}': ...}}: the modality names may be swapped."
        )


def check_mudata(
    mdata, rna_layer, atac_layer, batch_key, labels_key, gene_symbols, modalities
) -> dict:
    """Bad MuData input for setup_mudata, before registration.

    Clear errors, nothing changed. Returns the resolved ``modalities``.
    """
    from mudata import MuData

    if not isinstance(mdata, MuData):
        raise ValueError(
            f"setup_mudata expects a MuData, not {type(mdata).__name__}; for an AnnData use "
            "setup_anndata (modality='atac' for peaks)."
        )
    if modalities is None:
        modalities = {
            k: v for k, v in (("rna_layer", "rna"), ("atac_layer", "atac")) if v in mdata.mod
        }
        if not modalities:
            raise ValueError(
                f"No modality named 'rna' or 'atac' (modalities: {list(mdata.mod)}); pass "
                "modalities={'rna_layer': '<RNA modality>', 'atac_layer': '<ATAC modality>'}."
            )
    modalities = dict(modalities)
    unknown = set(modalities) - set(MODALITY_KEYS)
    if unknown:
        raise ValueError(
            f"Unknown keys {sorted(unknown)} in modalities; use {list(MODALITY_KEYS)}."
        )
    if not modalities.get("rna_layer") and not modalities.get("atac_layer"):
        raise ValueError(
            "modalities names neither an RNA nor an ATAC modality: pass "
            "modalities={'rna_layer': 'rna', 'atac_layer': 'atac'}."
        )
    for key, mod in modalities.items():
        if mod is not None and mod not in mdata.mod:
            raise ValueError(
                f"modalities[{key!r}]={mod!r} is not a modality of the MuData "
                f"(modalities: {list(mdata.mod)})."
            )
    presence = modality_presence(mdata)
    used = [m for m in (modalities.get("rna_layer"), modalities.get("atac_layer")) if m]
    if not presence[used].all().all():
        counts = presence[used].value_counts().to_dict()
        raise ValueError(
            f"The MuData is a mosaic: not every cell is in every modality ({counts}, "
            "columns " + ", ".join(used) + "). scvi-tools registers fully paired data: "
            "mdata = celltx.data.pad_mosaic(mdata) gives every modality every cell (all-zero "
            "rows where a cell was not measured), then call setup_mudata on it."
        )
    check_modality_order(mdata, used)
    measured = np.zeros(mdata.n_obs, dtype=bool)
    for kind, key, layer in (("rna", "rna_layer", rna_layer), ("atac", "atac_layer", atac_layer)):
        mod = modalities.get(key)
        if not mod:
            if layer is not None:
                raise ValueError(f"{key}={layer!r} given but modalities has no {key!r} modality.")
            continue
        a = mdata.mod[mod]
        if layer is not None and layer not in a.layers:
            raise ValueError(
                f"{key}={layer!r} is not a layer of modality {mod!r} (layers: {list(a.layers)}); "
                f"pass an existing layer or {key}=None for X."
            )
        check_modality_kind(a, kind, mod)
        if kind == "rna":
            gene_names(a, gene_symbols)
        else:
            gene_names(a)  # duplicate peak names
        values = a.X if layer is None else a.layers[layer]
        where = f"mdata.mod[{mod!r}]." + ("X" if layer is None else f"layers[{layer!r}]")
        check_expression(values, where)
        row_sums = np.asarray(values.sum(1)).ravel()
        pos = mdata.obs_names.get_indexer(a.obs_names)
        measured[pos[row_sums > 0]] = True
        if kind == "atac":
            from scipy import sparse

            v = values.data if sparse.issparse(values) else np.asarray(values)
            if v.size and v.max() > 1:
                logger.info(
                    "%s holds fragment counts (up to %g); ScGPT binarizes them (open = count > 0) "
                    "unless built with atac_values='binned'.",
                    where,
                    float(v.max()),
                )
    if not measured.all():
        raise ValueError(
            f"{int((~measured).sum())} cells have no counts in any registered modality (e.g. "
            f"{mdata.obs_names[~measured][:3].tolist()}): they cannot be embedded. Remove them, "
            "e.g. mdata = mdata[<mask of measured cells>].copy()."
        )
    if modalities.get("rna_layer") and modalities.get("atac_layer"):
        genes = set(gene_names(mdata.mod[modalities["rna_layer"]], gene_symbols))
        clash = [p for p in mdata.mod[modalities["atac_layer"]].var_names if p in genes]
        if clash:
            raise ValueError(
                f"{len(clash)} peak names are also gene names (e.g. {clash[:3]}); rename the peaks "
                "(e.g. to 'chrom:start-end')."
            )
    for key, name in (("batch_key", batch_key), ("labels_key", labels_key)):
        if name is None:
            continue
        where_obs = mdata.obs if modalities.get(key) is None else mdata.mod[modalities[key]].obs
        if name not in where_obs.columns:
            place = (
                "mdata.obs"
                if modalities.get(key) is None
                else f"mdata.mod[{modalities[key]!r}].obs"
            )
            raise ValueError(
                f"{key}={name!r} is not a column of {place} (columns: {list(where_obs.columns)[:20]}). "
                "If it lives in a modality, name it in modalities, or call mdata.pull_obs()."
            )
    return modalities


def check_modality_order(mdata, mods: Sequence[str]) -> None:
    """Refuse modalities whose rows are not ``mdata.obs_names`` in order.

    scvi-tools reads each registered modality by row position, so a modality listing the
    same cells in another order would pair one cell's RNA with another cell's ATAC.
    """
    for mod in mods:
        names = mdata.mod[mod].obs_names
        if not names.equals(mdata.obs_names):
            same_cells = len(names) == mdata.n_obs and names.isin(mdata.obs_names).all()
            what = (
                "lists the same cells in another order"
                if same_cells
                else "does not list mdata.obs_names"
            )
            raise ValueError(
                f"Modality {mod!r} {what}: its rows would be paired with the other modalities' "
                "rows by position, i.e. with other cells. Order every modality like mdata.obs: "
                "mdata = celltx.data.pad_mosaic(mdata) (returns a copy whose modalities all follow "
                "mdata.obs_names), then set it up."
            )


def check_perturbations(
    adata: AnnData, key: str, control_value: str, max_genes: int, min_cells: int
) -> None:
    """Bad perturbation input, before registration: clear errors, nothing changed."""
    genes, names = parse_conditions(
        adata.obs[key].astype(object), control_value=control_value, max_genes=max_genes
    )
    counts = names.value_counts()
    if control_value not in counts.index:
        raise ValueError(
            f"No control cells: no cell of obs[{key!r}] is {control_value!r} (values: "
            f"{list(counts.index[:10])}). Pass control_value= with the label of the control cells."
        )
    few = counts[counts < min_cells]
    if len(few):
        raise ValueError(
            f"{len(few)} condition(s) have fewer than {min_cells} cells: "
            f"{dict(few.head(10))}. Remove them (adata = adata[~adata.obs[{key!r}].isin([...])]."
            "copy()) or lower min_cells_per_condition."
        )


def check_log_normalized(values, where: str) -> None:
    """Perturbation responses are predicted in the data's own units: refuse raw counts."""
    from scipy import sparse

    if not (sparse.issparse(values) or isinstance(values, np.ndarray)):
        values = values[: min(values.shape[0], 5_000)]  # backed data: the first rows suffice
    v = values.data if sparse.issparse(values) else np.asarray(values)
    v = np.asarray(v).ravel()[:1_000_000]
    v = v[v != 0]
    # log-normalized values are (almost) never whole numbers; counts always are, whatever
    # their maximum (a shallow panel can have counts <= 30 everywhere)
    if v.size and np.all(np.mod(v, 1) == 0):
        raise ValueError(
            f"{where} looks like raw counts (whole numbers up to {v.max():.0f}); perturbation "
            "responses are learned and predicted on log-normalized expression, as GEARS: "
            "run sc.pp.normalize_total(adata); sc.pp.log1p(adata) (or put those values in "
            "a layer and pass layer=)."
        )


def check_obs_key(adata: AnnData, key: str | None, arg: str) -> None:
    if key is not None and key not in adata.obs.columns:
        raise ValueError(
            f"{arg}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]}). "
            f"Pass an existing column or {arg}=None."
        )
    if key is not None and arg == "batch_key" and adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise ValueError(
            f"batch_key={key!r} has {n} missing values (NaN); every cell needs a batch. Fill them, "
            f"e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str) (NaN becomes 'nan'), or drop "
            "those cells."
        )


@contextmanager
def registration_undone_on_failure(data):
    """Put back scvi-tools' ``_scvi_*`` keys of ``data`` as they were if the block raises.

    ``data`` is an AnnData or a MuData and its modalities; a failed setup or load leaves the
    user's object as it was.
    """
    parts = [data, *getattr(data, "mod", {}).values()]
    saved = [
        (
            part,
            {k: part.obs[k].copy() for k in part.obs.columns if str(k).startswith("_scvi")},
            {k: part.uns[k] for k in part.uns if str(k).startswith("_scvi")},
        )
        for part in parts
    ]
    try:
        yield
    except BaseException:
        for part, obs, uns in saved:
            for k in [c for c in part.obs.columns if str(c).startswith("_scvi")]:
                if k in obs:
                    part.obs[k] = obs[k]
                else:
                    del part.obs[k]
            for k in [c for c in part.uns if str(c).startswith("_scvi")]:
                if k not in uns:
                    del part.uns[k]
            part.uns.update(uns)
        raise


def resolve_vocab(vocab) -> GeneVocab:
    if isinstance(vocab, GeneVocab):
        return vocab
    if isinstance(vocab, Mapping):
        return GeneVocab(vocab)
    if isinstance(vocab, str | os.PathLike):
        return GeneVocab.from_file(vocab)
    raise ValueError(
        f"vocab must be a GeneVocab, a {{token: id}} dict or a path, not {type(vocab)}."
    )


def resolve_device(accelerator: str = "auto", device: int | str | list = "auto") -> str:
    """The torch device for Lightning-style ``accelerator`` / ``device`` arguments.

    ``"auto"``: the first GPU when there is one, else the CPU.
    """
    import torch

    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"accelerator={accelerator!r}; use 'auto', 'cpu' or 'gpu'.")
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not cuda:
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError(
            f"accelerator={accelerator!r} but torch sees no CUDA GPU; use accelerator='cpu'."
        )
    if isinstance(device, list | tuple):
        if len(device) != 1:
            raise ValueError(f"device={device!r}: a model lives on one device; pass one index.")
        device = device[0]
    # (a list or tuple is its one index by now)
    index = 0 if device in ("auto", None, -1) else int(device)  # type: ignore[arg-type]
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device={device!r}: there are {torch.cuda.device_count()} CUDA devices.")
    return f"cuda:{index}"


def check_anndata_setup(
    adata,
    layer,
    batch_key,
    labels_key,
    gene_symbols,
    perturbation_key,
    control_value,
    max_perturbed_genes,
    min_cells_per_condition,
    modality,
) -> None:
    """Bad input for :meth:`~celltx.model.ScGPT.setup_anndata`, before registration.

    Clear errors, nothing changed.
    """
    if not isinstance(adata, AnnData):
        raise ValueError(
            f"setup_anndata expects an AnnData, not {type(adata).__name__}; for MuData use "
            "setup_mudata."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    if adata.is_view:
        raise ValueError(
            "adata is a view of another AnnData (e.g. adata[mask]); scvi-tools registers fields "
            "by writing to it, which would silently copy it. Set up a copy: "
            "adata = adata[mask].copy(); ScGPT.setup_anndata(adata)."
        )
    if layer is not None and layer not in adata.layers:
        raise ValueError(
            f"layer={layer!r} is not in adata.layers (layers: {list(adata.layers)}). "
            "Pass an existing layer, or layer=None to use adata.X."
        )
    if modality not in ("rna", "atac"):
        raise ValueError(f"modality={modality!r}; use 'rna' or 'atac'.")
    if modality == "atac":
        if perturbation_key is not None or gene_symbols is not None:
            raise ValueError("perturbation_key and gene_symbols apply to RNA (modality='rna').")
        check_modality_kind(adata, "atac", "adata")
    check_obs_key(adata, batch_key, "batch_key")
    check_obs_key(adata, labels_key, "labels_key")
    check_obs_key(adata, perturbation_key, "perturbation_key")
    gene_names(adata, gene_symbols)  # duplicate names / missing symbol column
    values = adata.X if layer is None else adata.layers[layer]
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_expression(values, where)
    if perturbation_key is not None:
        check_perturbations(
            adata, perturbation_key, control_value, max_perturbed_genes, min_cells_per_condition
        )
        check_log_normalized(values, where)


def check_indices(indices, n_obs: int) -> np.ndarray | None:
    """``indices`` of a query as integer positions into ``n_obs`` cells (``None``: all cells).

    Integer positions may come in any order and repeat (the result follows them); negative
    ones count from the end, as in numpy. A boolean mask over all ``n_obs`` cells selects its
    ``True`` cells. Refused with a ``ValueError``: a mask of another length, positions out of
    range, fractional or named positions, and a selection of no cell.
    """
    if indices is None:
        return None
    if isinstance(indices, str | bytes):
        raise ValueError(
            f"indices={indices!r}: pass integer positions or a boolean mask over the cells "
            "(for cell names: adata.obs_names.get_indexer(names))."
        )
    arr = np.asarray(indices)
    if arr.dtype == object and arr.size:  # e.g. a list mixing Python and numpy values
        if all(isinstance(v, bool | np.bool_) for v in arr.flat):
            arr = arr.astype(bool)
        elif all(isinstance(v, numbers.Integral) for v in arr.flat):
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(
            f"indices must be one-dimensional (integer positions or a boolean mask over the "
            f"cells), not an array of shape {arr.shape}."
        )
    if arr.dtype == bool:
        if len(arr) != n_obs:
            raise ValueError(
                f"indices is a boolean mask of length {len(arr)}, but the data has {n_obs} "
                "cells; a mask must have one value per cell (e.g. adata.obs['x'] == 'y')."
            )
        arr = np.flatnonzero(arr)
    elif arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"indices must be integer positions or a boolean mask over the cells, not "
            f"{arr.dtype} values such as {arr[:3].tolist()} (for cell names: "
            "adata.obs_names.get_indexer(names))."
        )
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise ValueError(
            "indices selects no cells (an empty list or an all-False mask); pass at least one cell."
        )
    bad = (arr < -n_obs) | (arr >= n_obs)
    if bad.any():
        raise ValueError(
            f"indices {arr[bad][:5].tolist()} are out of range for data with {n_obs} cells "
            f"(positions 0 … {n_obs - 1}, or -{n_obs} … -1 from the end)."
        )
    return np.where(arr < 0, arr + n_obs, arr)


def check_batch_size(batch_size) -> int | None:
    """``batch_size`` of a query: ``None`` (the default) or a positive integer."""
    if batch_size is None:
        return None
    if (
        isinstance(batch_size, bool | np.bool_)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (cells per pass).")
    return int(batch_size)
