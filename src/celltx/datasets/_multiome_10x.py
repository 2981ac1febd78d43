"""10x Genomics Multiome files: the reader and the public PBMC dataset."""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._download import _download
from ._multiome import peak_coordinates

_PBMC_URLS = {
    "10k": (
        "https://cf.10xgenomics.com/samples/cell-arc/1.0.0/pbmc_granulocyte_sorted_10k/"
        "pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5"
    ),
    "3k": (
        "https://cf.10xgenomics.com/samples/cell-arc/1.0.0/pbmc_granulocyte_sorted_3k/"
        "pbmc_granulocyte_sorted_3k_filtered_feature_bc_matrix.h5"
    ),
}


def _ensure_peak_coordinates(atac: AnnData) -> None:
    """Add ``chrom``/``start``/``end`` to ``atac.var`` (from ``interval`` or the names)."""
    if {"chrom", "start", "end"}.issubset(atac.var.columns):
        return
    sources = []
    if "interval" in atac.var.columns:
        sources.append(("var['interval']", atac.var["interval"].astype(str).to_numpy()))
    sources.append(("var_names", atac.var_names.to_numpy()))
    errors = []
    for what, names in sources:
        try:
            coords = peak_coordinates(names)
        except ValueError as err:
            errors.append(f"{what}: {err}")
            continue
        atac.var["chrom"] = pd.Categorical(coords["chrom"].to_numpy())
        atac.var["start"] = coords["start"].to_numpy()
        atac.var["end"] = coords["end"].to_numpy()
        return
    raise ValueError(
        "The ATAC peaks have no genomic coordinates: var has no 'chrom'/'start'/'end' "
        "columns and neither the 'interval' column nor the peak names could be parsed ("
        + " | ".join(errors)
        + "). Add var columns 'chrom', 'start', 'end' or name the peaks 'chrom:start-end'."
    )


def read_10x_multiome(path: str | PathLike) -> MuData:
    """Read a 10x Genomics Multiome ``filtered_feature_bc_matrix.h5`` into a MuData.

    Uses ``muon.read_10x_h5``: the ``Gene Expression`` features become modality ``"rna"``
    and the ``Peaks`` features modality ``"atac"``. Duplicate feature names are made unique
    (``-1``, ``-2``, … suffixes), and ``atac.var`` gets ``chrom``, ``start`` and ``end``
    (from existing columns, from the file's ``interval`` field, or parsed from the peak
    names). ``X`` keeps the raw counts.

    Parameters
    ----------
    path
        Path to a Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` (or ``raw_…``) file.

    Returns
    -------
    mudata.MuData
        Modalities ``"rna"`` and ``"atac"`` with raw counts (CSR float32).

    Raises
    ------
    ValueError
        If the file is missing, has no ``Gene Expression`` or no ``Peaks`` features, or
        the peaks carry no genomic coordinates.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.read_10x_multiome("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    >>> mdata.mod["atac"].var[["chrom", "start", "end"]].head()  # doctest: +SKIP
    """
    import mudata
    import muon

    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; pass the path of a 10x Multiome "
            "'filtered_feature_bc_matrix.h5' (or use celltx.datasets.pbmc10x_multiome())."
        )
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*not unique.*")
        mdata = muon.read_10x_h5(str(path))
        missing = [m for m in ("rna", "atac") if m not in mdata.mod]
        if missing:
            found = sorted(
                {str(v) for a in mdata.mod.values() for v in a.var.get("feature_types", [])}
            )
            raise ValueError(
                f"{path} has no {' and no '.join(missing)} modality (feature types found: "
                f"{found}); a 10x Multiome file has 'Gene Expression' and 'Peaks' features."
            )
        for name in ("rna", "atac"):
            mdata.mod[name].var_names_make_unique()
        _ensure_peak_coordinates(mdata.mod["atac"])
        mdata.update()
    return mdata


def pbmc10x_multiome(data_dir: str | PathLike | None = None, size: str = "10k") -> MuData:
    """10x Genomics' public PBMC Multiome (granulocytes removed by sorting), as a MuData.

    Downloads (once, with pooch) Cell Ranger ARC 1.0.0's
    ``pbmc_granulocyte_sorted_{size}_filtered_feature_bc_matrix.h5`` from
    ``cf.10xgenomics.com`` and reads it with :func:`read_10x_multiome`. The file has no
    cell-type labels. Needs network access on the first call.

    Parameters
    ----------
    data_dir
        Folder of the download; default: pooch's cache folder for ``celltx``.
    size
        ``"10k"`` (about 11,900 cells) or ``"3k"`` (about 2,700 cells).

    Returns
    -------
    mudata.MuData
        Modalities ``"rna"`` (36,601 genes) and ``"atac"`` (peaks with ``chrom``,
        ``start``, ``end``), raw counts.

    Raises
    ------
    ValueError
        If ``size`` is not ``"10k"`` or ``"3k"``.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.pbmc10x_multiome()  # doctest: +SKIP
    >>> sorted(mdata.mod)  # doctest: +SKIP
    ['atac', 'rna']
    """
    if size not in _PBMC_URLS:
        raise ValueError(f"size={size!r} is not available; choose one of {sorted(_PBMC_URLS)}.")
    url = _PBMC_URLS[size]
    return read_10x_multiome(_download(url, url.rsplit("/", 1)[-1], data_dir))
