"""Perturb-seq screens in GEARS format: the reader and the loaders of the published screens.

The public loaders fetch the preprocessed screens that GEARS (Roohani, Huang & Leskovec,
*Nat. Biotechnol.* 2024) publishes on the Harvard Dataverse (doi:10.7910/DVN/Q2ZV3E).
Each is a zip archive holding ``<name>/perturb_processed.h5ad``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from celltx.data import condition_name, parse_conditions

from ._download import _cache_dir, _download

logger = logging.getLogger(__name__)

#: Harvard Dataverse download addresses of the GEARS-preprocessed screens (the file ids
#: that GEARS' ``PertData`` uses). The name is also the folder inside each archive.
GEARS_URLS: dict[str, str] = {
    "norman": "https://dataverse.harvard.edu/api/access/datafile/6154020",
    "adamson": "https://dataverse.harvard.edu/api/access/datafile/6154417",
    "dixit": "https://dataverse.harvard.edu/api/access/datafile/6154416",
    "replogle_k562_essential": "https://dataverse.harvard.edu/api/access/datafile/7458695",
    "replogle_rpe1_essential": "https://dataverse.harvard.edu/api/access/datafile/7458694",
}

_GEARS_FILE = "perturb_processed.h5ad"
# uns entries of a GEARS file that map a condition to a list of gene ids (var index).
_GEARS_DE_KEYS = ("rank_genes_groups_cov_all", "top_non_dropout_de_20", "top_non_zero_de_20")
_GEARS_IDX_KEYS = ("non_zeros_gene_idx", "non_dropout_gene_idx")


# ----------------------------------------------------------------------------------------
# GEARS format
# ----------------------------------------------------------------------------------------
def _translate_gene_lists(value, id_to_name: dict[str, str]):
    """Map a dict condition → list of gene ids onto gene symbols (unknown ids kept)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, genes in value.items():
        arr = np.asarray(genes)
        if arr.dtype.kind in "OUS":
            out[key] = np.array([id_to_name.get(str(g), str(g)) for g in arr], dtype=object).astype(
                str
            )
        else:
            out[key] = arr
    return out


def read_gears(path: str | os.PathLike) -> ad.AnnData:
    """Read a GEARS ``perturb_processed.h5ad`` and check its layout.

    GEARS files hold log-normalised expression in ``.X``, the perturbation of each cell in
    ``obs["condition"]`` (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``), ``obs["cell_type"]`` and
    gene symbols in ``var["gene_name"]`` (the index is often an Ensembl id). Differential
    expression results keyed by ``obs["condition_name"]`` (e.g. ``"K562_A+ctrl_1+1"``) may
    sit in ``uns`` (``rank_genes_groups_cov_all``, ``top_non_dropout_de_20``, ...).

    Parameters
    ----------
    path
        The ``.h5ad`` file, or a folder that holds ``perturb_processed.h5ad``.

    Returns
    -------
    anndata.AnnData
        The data with ``var_names`` set to the (made unique) gene symbols, the original
        index kept in ``var["gene_id"]``, and the gene lists in the ``uns`` DE entries
        translated from ids to the new ``var_names``. ``.X`` is returned as CSR.

    Raises
    ------
    ValueError
        If the file is missing, or ``obs["condition"]``, ``obs["cell_type"]`` or
        ``var["gene_name"]`` is absent, or a condition cannot be parsed.

    Examples
    --------
    >>> from celltx.datasets import read_gears
    >>> adata = read_gears("data/norman/perturb_processed.h5ad")  # doctest: +SKIP
    >>> adata.obs["condition"].head(2).tolist()  # doctest: +SKIP
    ['TSC22D1+ctrl', 'KLF1+MAP2K6']
    """
    path = Path(path)
    if path.is_dir():
        path = path / _GEARS_FILE
    if not path.is_file():
        raise ValueError(
            f"No GEARS file at {str(path)!r}; pass the path of a perturb_processed.h5ad (or the "
            "folder holding it)."
        )
    adata = ad.read_h5ad(path)
    missing = [f"obs[{c!r}]" for c in ("condition", "cell_type") if c not in adata.obs]
    if "gene_name" not in adata.var:
        missing.append("var['gene_name']")
    if missing:
        raise ValueError(
            f"{path.name} is not in GEARS format: {', '.join(missing)} missing. A GEARS file "
            "needs obs['condition'] (e.g. 'ctrl', 'A+ctrl', 'A+B'), obs['cell_type'] and "
            "var['gene_name'] (gene symbols); add them, or build the AnnData yourself."
        )
    parse_conditions(adata.obs["condition"].astype(str), max_genes=10**6)  # validates every value
    if not (adata.obs["condition"].astype(str) == "ctrl").any():
        logger.warning("%s has no control cells (condition 'ctrl').", path)

    old_ids = adata.var_names.astype(str)
    adata.var["gene_id"] = np.asarray(old_ids)
    adata.var_names = pd.Index(adata.var["gene_name"].astype(str).to_numpy())
    adata.var_names_make_unique()
    id_to_name = dict(zip(old_ids, adata.var_names.astype(str), strict=True))
    for key in _GEARS_DE_KEYS:
        if key in adata.uns:
            adata.uns[key] = _translate_gene_lists(adata.uns[key], id_to_name)
    if sparse.issparse(adata.X) and not sparse.isspmatrix_csr(adata.X):
        adata.X = sparse.csr_matrix(adata.X)
    return adata


# ----------------------------------------------------------------------------------------
# pertpy / scPerturb layout
# ----------------------------------------------------------------------------------------
#: obs columns that hold the perturbation in pertpy's loaders, tried in this order:
#: ``perturbation_name`` (``pt.dt.norman_2019()``), ``perturbation`` (the scPerturb files:
#: ``adamson_2016_*``, ``replogle_2022_*``, ``norman_2019_raw``...), ``gene_target``
#: (``pt.dt.papalexi_2021()["rna"]``), ``target_gene`` (cell-eval / Arc), ``condition`` (GEARS)
PERTPY_PERTURBATION_KEYS = (
    "perturbation_name",
    "perturbation",
    "gene_target",
    "target_gene",
    "condition",
)
#: labels of control cells: ``"control"`` (pertpy, scPerturb), ``"NT"`` (Papalexi),
#: ``"non-targeting"`` (cell-eval / Arc), ``"ctrl"`` (GEARS) and two common spellings
PERTPY_CONTROL_VALUES = ("control", "ctrl", "non-targeting", "non_targeting", "NT", "NTC")


def from_pertpy(
    adata: ad.AnnData,
    perturbation_key: str | None = None,
    control_values: str | tuple[str, ...] | list[str] | None = None,
    sep: str = "+",
    mapping: dict[str, str] | None = None,
    key_added: str = "condition",
    nperts_key: str | None = "nperts",
    copy: bool = True,
) -> ad.AnnData:
    """Add GEARS-notation conditions to an AnnData from pertpy (or scPerturb, cell-eval).

    pertpy's loaders keep each source's labels: ``pt.dt.norman_2019()`` has
    ``obs["perturbation_name"]`` with ``"control"``, ``"KLF1"`` and ``"FEV+ISL2"``; the
    scPerturb files behind ``pt.dt.adamson_2016_*()``, ``replogle_2022_*()`` and others
    have ``obs["perturbation"]`` with ``"control"`` and pairs joined by ``"_"`` (with
    ``obs["nperts"]``, the number of perturbed genes); ``pt.dt.papalexi_2021()["rna"]``
    has ``obs["gene_target"]`` with ``"NT"``. This writes ``obs[key_added]`` in GEARS
    notation (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``), which ``ScGPT.setup_anndata``,
    :func:`celltx.bench.perturbation` and the GEARS loaders' data share (their defaults,
    ``perturbation_key="condition"``, ``control_value="ctrl"``, then apply).

    A label is converted in this order: replaced by ``mapping[label]`` when given (the
    value is a control label, a gene symbol or genes joined by ``"+"``); a label in
    ``control_values`` becomes ``"ctrl"``; otherwise it is split at ``sep`` into genes
    (control labels among the parts are dropped, so ``"KLF1+ctrl"`` is ``KLF1``).

    Labels that only ``"+"``-joined genes or single genes already work without this
    function: pass ``perturbation_key="perturbation_name", control_value="control"`` (the
    conditions are then named ``"KLF1+control"``). Use it for ``"_"``-joined pairs,
    several control labels, guide-level labels (through ``mapping``) or to get the GEARS
    names themselves.

    Parameters
    ----------
    adata
        The AnnData (for ``pt.dt.papalexi_2021()``, its ``"rna"`` modality).
    perturbation_key
        The obs column with the labels; default: the first of
        :data:`PERTPY_PERTURBATION_KEYS` that ``adata.obs`` has.
    control_values
        The label(s) of control cells (default :data:`PERTPY_CONTROL_VALUES`).
    sep
        What joins the genes of a combination: ``"+"`` (pertpy's Norman 2019) or ``"_"``
        (scPerturb). Gene symbols must not contain it.
    mapping
        Labels to replace first, e.g. guide names → genes (``{"ATF6_pDS269": "ATF6",
        "62(mod)_pBA581": "control"}``).
    key_added
        The obs column written.
    nperts_key
        An obs column with the number of perturbed genes per cell (scPerturb's
        ``"nperts"``): when ``adata`` has it, every perturbed cell's count of parsed genes
        must equal it (catching a wrong ``sep`` or guide-level labels). ``None`` skips the
        check.
    copy
        Return a copy (default) or write into ``adata`` and return it.

    Returns
    -------
    anndata.AnnData
        With ``obs[key_added]`` (categorical) in GEARS notation; the labels are kept in
        ``obs[perturbation_key]``.

    Raises
    ------
    ValueError
        If no perturbation column is found, a cell has no label (NaN), no cell is a control
        cell (the message lists the most frequent labels), a label has an empty part or a
        gene containing ``"+"``, or the counts disagree with ``nperts_key``.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from celltx.datasets import from_pertpy
    >>> labels = ["control", "control", "KLF1", "CEBPA_KLF1"]
    >>> a = ad.AnnData(np.zeros((4, 2)), obs=pd.DataFrame({"perturbation": labels}))
    >>> from_pertpy(a, sep="_").obs["condition"].tolist()
    ['ctrl', 'ctrl', 'KLF1+ctrl', 'CEBPA+KLF1']
    """
    if perturbation_key is None:
        found = [k for k in PERTPY_PERTURBATION_KEYS if k in adata.obs]
        if not found:
            raise ValueError(
                "No perturbation column found: adata.obs has none of "
                f"{list(PERTPY_PERTURBATION_KEYS)} (columns: {list(adata.obs.columns)[:20]}). "
                "Pass perturbation_key= the column with each cell's perturbation."
            )
        perturbation_key = found[0]
    elif perturbation_key not in adata.obs:
        raise ValueError(
            f"obs[{perturbation_key!r}] is missing (columns: {list(adata.obs.columns)[:20]})."
        )
    if control_values is None:
        control_values = PERTPY_CONTROL_VALUES
    elif isinstance(control_values, str):
        control_values = (control_values,)
    controls = {str(c) for c in control_values}
    if not sep:
        raise ValueError("sep must be a non-empty string.")
    col = adata.obs[perturbation_key]
    if col.isna().any():
        raise ValueError(
            f"{int(col.isna().sum())} cell(s) have no label in obs[{perturbation_key!r}] (NaN), "
            "e.g. cells without an assigned guide; drop them first "
            f"(adata[adata.obs[{perturbation_key!r}].notna()]) or label them."
        )
    labels = col.astype(str)
    mapping = {str(k): str(v) for k, v in (mapping or {}).items()}

    def _convert(label: str) -> tuple[str, int]:
        text, split_at = label, sep
        if label in mapping:
            text, split_at = mapping[label], "+"
        if text.strip() in controls:
            return "ctrl", 0
        parts = [t.strip() for t in text.split(split_at)]
        if any(not t for t in parts):
            raise ValueError(
                f"Label {label!r} has an empty part when split at {split_at!r}; fix it with "
                "mapping= or drop these cells."
            )
        genes = [t for t in parts if t not in controls]
        try:
            name = condition_name(tuple(dict.fromkeys(genes)), control_value="ctrl")
        except ValueError as err:
            raise ValueError(
                f"Label {label!r} does not convert to GEARS notation ({err}); pass the right "
                "sep= or map it with mapping=."
            ) from err
        return name, len(dict.fromkeys(genes))

    uniques = pd.unique(labels)
    converted = {u: _convert(u) for u in uniques}
    names = labels.map(lambda u: converted[u][0])
    if not (names == "ctrl").any():
        top = labels.value_counts().index[:8].tolist()
        raise ValueError(
            f"No control cell: none of obs[{perturbation_key!r}] is one of {sorted(controls)}. "
            f"The most frequent labels are {top}; pass control_values= the label(s) of your "
            "control cells (or map them to 'control' with mapping=)."
        )
    if nperts_key is not None and nperts_key in adata.obs:
        n_parsed = labels.map(lambda u: converted[u][1]).to_numpy()
        nperts = pd.to_numeric(adata.obs[nperts_key], errors="coerce").to_numpy()
        bad = (n_parsed > 0) & (n_parsed != nperts)
        if bad.any():
            examples = (
                pd.DataFrame(
                    {"label": labels[bad], "genes": n_parsed[bad], nperts_key: nperts[bad]}
                )
                .drop_duplicates("label")
                .head(5)
                .to_dict("records")
            )
            raise ValueError(
                f"{int(bad.sum())} cell(s) have labels whose number of genes (split at "
                f"{sep!r}) differs from obs[{nperts_key!r}], e.g. {examples}. Pass the right "
                "sep=, map guide-level labels to genes with mapping=, or nperts_key=None."
            )
    out = adata.copy() if copy else adata
    out.obs[key_added] = pd.Categorical(names.to_numpy())
    return out


def _find_member(names: list[str], dataset: str) -> str | None:
    """The archive member that is ``dataset``'s GEARS file (``None`` if there is none)."""
    hits = [n for n in names if n.rstrip("/").split("/")[-1] == _GEARS_FILE]
    if not hits:
        return None
    preferred = [n for n in hits if n.replace("\\", "/").endswith(f"{dataset}/{_GEARS_FILE}")]
    return sorted(preferred or hits, key=len)[0]


def _extract_gears(archive: Path, dataset: str, dest_dir: Path) -> Path:
    """Extract the GEARS file of ``dataset`` from a zip or tar archive, once.

    The file goes to ``dest_dir/dataset/perturb_processed.h5ad``; its path is returned.
    """
    target = dest_dir / dataset / _GEARS_FILE
    if target.is_file() and target.stat().st_mtime >= archive.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".h5ad.part")
    open_member: Callable[[str], IO[bytes]]
    with contextlib.ExitStack() as stack:
        if zipfile.is_zipfile(archive):
            zf = stack.enter_context(zipfile.ZipFile(archive))
            names, open_member = zf.namelist(), zf.open
        elif tarfile.is_tarfile(archive):
            tf = stack.enter_context(tarfile.open(archive))
            names = [m.name for m in tf.getmembers() if m.isfile()]
            # regular files only: extractfile returns a file object for each
            open_member = cast(Callable[[str], IO[bytes]], tf.extractfile)
        else:
            raise ValueError(
                f"{archive} is neither a zip nor a tar archive nor an .h5ad file; pass the GEARS "
                "archive as downloaded, the extracted folder, or the perturb_processed.h5ad itself."
            )
        member = _find_member(names, dataset)
        if member is None:
            raise ValueError(f"{archive} holds no {_GEARS_FILE}; is it a GEARS dataset archive?")
        with open_member(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    tmp.replace(target)
    return target


# the Parameters and Returns sections of every GEARS loader
_LOADER_SECTIONS = """Parameters
    ----------
    data_dir
        Folder for the download and the extracted file (default:
        ``pooch.os_cache("celltx")``). Nothing is downloaded when the archive is there.
    path
        An already downloaded copy: the archive, the extracted folder or the
        ``perturb_processed.h5ad`` itself. Then nothing is downloaded; an archive is
        extracted next to it (or into ``data_dir`` when given).
    progressbar
        Show a download progress bar (needs ``tqdm``).

    Returns
    -------
    anndata.AnnData
        See :func:`read_gears`."""


def _loader_doc(fn):
    """Fill ``{loader_sections}`` in the docstring of a GEARS loader."""
    if fn.__doc__:  # None under python -OO
        fn.__doc__ = fn.__doc__.replace("{loader_sections}", _LOADER_SECTIONS)
    return fn


def _load_gears_dataset(
    dataset: str,
    path: str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
    progressbar: bool,
) -> ad.AnnData:
    """Read ``dataset`` from ``path`` (archive, folder or file), else from the cache."""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            for candidate in (path / _GEARS_FILE, path / dataset / _GEARS_FILE):
                if candidate.is_file():
                    return read_gears(candidate)
            raise ValueError(f"{path} holds neither {_GEARS_FILE} nor {dataset}/{_GEARS_FILE}.")
        if not path.is_file():
            raise ValueError(
                f"{path} does not exist; pass a downloaded GEARS archive, folder or .h5ad."
            )
        if path.suffix == ".h5ad":
            return read_gears(path)
        out_dir = Path(data_dir) if data_dir is not None else path.parent
        return read_gears(_extract_gears(path, dataset, out_dir))

    cache = _cache_dir(data_dir)
    extracted = cache / dataset / _GEARS_FILE
    archive_name = f"{dataset}.zip"
    if extracted.is_file() and not (cache / archive_name).is_file():
        return read_gears(extracted)
    archive = _download(GEARS_URLS[dataset], archive_name, data_dir, progressbar)
    return read_gears(_extract_gears(archive, dataset, cache))


@_loader_doc
def norman2019(
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    progressbar: bool = False,
) -> ad.AnnData:
    """Norman et al. 2019: CRISPRa Perturb-seq in K562, single and paired perturbations.

    The GEARS release (about 91,000 cells × 5,045 genes), downloaded once from the
    Harvard Dataverse (an archive of about 170 MB; the extracted file is about 2.2 GB)
    and read with :func:`read_gears`.

    {loader_sections}

    Examples
    --------
    >>> from celltx.datasets import norman2019
    >>> adata = norman2019()  # doctest: +SKIP
    >>> adata.obs["condition"].str.contains("ctrl").mean()  # doctest: +SKIP
    """
    return _load_gears_dataset("norman", path, data_dir, progressbar)


@_loader_doc
def adamson2016(
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    progressbar: bool = False,
) -> ad.AnnData:
    """Adamson et al. 2016: CRISPRi Perturb-seq of unfolded-protein-response genes in K562.

    The GEARS release (single-gene perturbations only), downloaded once from the Harvard
    Dataverse and read with :func:`read_gears`.

    {loader_sections}

    Examples
    --------
    >>> from celltx.datasets import adamson2016
    >>> adata = adamson2016()  # doctest: +SKIP
    >>> adata.obs["condition"].nunique()  # doctest: +SKIP
    """
    return _load_gears_dataset("adamson", path, data_dir, progressbar)


@_loader_doc
def replogle2022_k562_essential(
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    progressbar: bool = False,
) -> ad.AnnData:
    """Replogle et al. 2022: genome-scale CRISPRi Perturb-seq, K562 essential genes.

    The filtered GEARS release (single-gene knock-downs of essential genes; not the full
    screen), downloaded once from the Harvard Dataverse and read with :func:`read_gears`.

    {loader_sections}

    Examples
    --------
    >>> from celltx.datasets import replogle2022_k562_essential
    >>> adata = replogle2022_k562_essential()  # doctest: +SKIP
    >>> adata.n_vars  # doctest: +SKIP
    """
    return _load_gears_dataset("replogle_k562_essential", path, data_dir, progressbar)
