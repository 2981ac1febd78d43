"""The multiome benchmark: joint embeddings scored next to RNA PCA, ATAC LSI and MULTIVI."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from mudata import MuData

from celltx.bench._embedding import knn_accuracy, leiden_scores
from celltx.bench._inputs import (
    expression_kind,
    get_expression,
    guarded,
    is_counts,
    layer_label,
    skip_note,
)
from celltx.bench._runner import run_methods

from ._baselines import (
    MULTIOME_BASELINES,
    MULTIOME_METHODS,
    _atac_lsi,
    _multivi_run,
    _rna_pca,
    wnn_graph,
)
from ._celltx import (
    celltx_multiome_embeddings,
    fit_celltx_multiome,
    multiome_recipe_epochs,
)
from ._glue import _GLUE_MISSING, _GLUE_OPTIONS, _glue_links, _glue_run, _link_kwargs
from ._metrics import _modality_groups, _modality_scores, _silhouette_label, foscttm, graph_scores
from ._mudata import _get_mod

# the task's logger, ``celltx.bench._multiome``
logger = logging.getLogger(__package__)


def multiome(
    mdata: MuData,
    labels_key: str | None,
    embeddings: Mapping[str, np.ndarray | str] | None = None,
    baselines: Sequence[str] = MULTIOME_BASELINES,
    modality_key: str | None = None,
    leiden_resolution: float | Sequence[float] = 1.0,
    seed: int = 0,
    multivi_kwargs: Mapping | None = None,
    n_neighbors: int = 15,
    knn: bool = True,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    rna_layer: str | None = None,
    atac_layer: str | None = None,
    return_embeddings: bool = False,
    methods: Sequence[str] | None = None,
    celltx_kwargs: Mapping | None = None,
    glue_kwargs: Mapping | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Score joint (and single-modality) embeddings of RNA + ATAC cells next to baselines.

    Every embedding (``embeddings``, e.g. celltx joint, RNA-only and ATAC-only, plus each
    of ``baselines``) is an ``(mdata.n_obs, d)`` array in ``mdata.obs_names`` order. Rows
    with a NaN (a cell the embedding does not cover, e.g. an ATAC-only cell in RNA PCA) or
    with a missing label are left out of that embedding's scores; ``n_cells`` says how many
    were scored. Scores, on the remaining cells:

    * ``leiden_ari``, ``leiden_nmi``, ``n_clusters``, ``leiden_resolution``: Leiden
      clusters (scanpy's igraph Leiden on scanpy's graph of the exact 15 nearest
      neighbours, as :func:`~celltx.bench.leiden_scores` computes them) against the
      labels. With several ``leiden_resolution`` values, the clustering of highest NMI is
      kept (scib's optimised clustering) and its resolution reported: a fixed resolution
      penalises embeddings whose scale makes Leiden over- or under-cluster.
    * ``silhouette_label``: scikit-learn's silhouette of the labels on the embedding
      (Euclidean), rescaled as scib does: ``(s + 1) / 2`` in [0, 1], higher is better.
    * ``knn_accuracy`` (with ``knn``): mean 5-fold cross-validated accuracy of a 15-NN
      classifier of the labels (:func:`~celltx.bench.knn_accuracy`); NaN when a label has
      fewer than 2 cells.

    * ``foscttm``: for a method with an embedding of each modality alone in one space
      (celltx: ``celltx_rna`` / ``celltx_atac``; MULTIVI: its expression and
      accessibility latents; GLUE: its RNA and ATAC encoders' embeddings; a caller's
      ``<name>_rna`` / ``<name>_atac`` embeddings), the FOSCTTM (:func:`foscttm`) of the
      two over the cells measured in both, on the row of the joint embedding
      (``celltx_joint``, ``multivi``, ``glue``, ``<name>_joint``); NaN elsewhere.
      Lower is better (0: every cell's RNA is nearest its own ATAC).
    * ``seconds``: wall-clock time to compute the embedding (training included; celltx's
      training is counted on ``celltx_joint``, the single-modality rows have their own
      inference time); NaN for embeddings passed in. ``epochs``: epochs trained (celltx,
      MULTIVI; GLUE: pretraining plus fine-tuning), else NaN.

    ``"wnn"`` (muon's weighted-nearest-neighbour graph, :func:`wnn_graph`) is a graph,
    not an embedding: it is scored on the graph itself (Leiden on the WNN graph; kNN
    accuracy as the edge-weighted vote of each cell's graph neighbours) and covers the
    cells measured in both modalities; its silhouette, FOSCTTM and mixing scores are NaN.

    Without labels (``labels_key=None``, e.g. the 10x Multiome PBMC subset) only the
    label-free scores are computed: ``foscttm``, ``seconds``, ``epochs`` and, with
    ``modality_key``, ``modality_mixing``; the label columns (Leiden, silhouette, kNN
    accuracy, ``cross_modality_label_agreement``) are NaN, ``n_clusters`` 0, and
    ``n_cells`` counts the cells the embedding covers.

    With ``modality_key`` (mosaic data; values ``"paired"``, ``"rna"``/``"expression"``,
    ``"atac"``/``"accessibility"``), two more, NaN when the embedding covers no RNA-only or
    no ATAC-only cell:

    * ``modality_mixing``: for every RNA-only cell, the fraction of its ``n_neighbors``
      nearest neighbours (Euclidean, among all scored cells, itself excluded) that are
      ATAC-only, divided by the fraction expected if neighbours were drawn at random
      (``n_atac_only / (n_cells - 1)``); the same for ATAC-only cells with RNA-only
      neighbours; the mean of the two ratios. 1: as mixed as random; 0: the unpaired
      modalities never meet. It can exceed 1 slightly.
    * ``cross_modality_label_agreement``: for every ATAC-only cell, the fraction of its
      ``n_neighbors`` nearest RNA-only cells with its label, averaged over ATAC-only cells;
      the same for RNA-only cells and their nearest ATAC-only cells; the mean of the two.
      High when the modalities are aligned cell type by cell type (label-transfer quality).

    Baselines: ``"rna_pca"`` (RNA counts normalised to 10,000 per cell, log1p, up to
    2,000 highly variable genes, scaled, 50-component PCA; :func:`~celltx.bench.pca_embedding`),
    ``"atac_lsi"`` (:func:`atac_lsi_embedding`, 30 components) and ``"multivi"``
    (:func:`multivi_embedding` with ``multivi_kwargs``). RNA PCA covers only cells with RNA
    and ATAC LSI only cells with ATAC; MULTIVI covers all.

    ``"glue"`` (with ``methods=``; needs ``scglue``, ``pip install celltx[glue]``) is GLUE
    (Cao & Gao 2022) by scglue's standard recipe: RNA PCA and ATAC LSI (100 components) as
    the encoders' inputs, negative-binomial decoders, a guidance graph linking each gene
    (body and 2 kb promoter) to the peaks within ``extend_range`` (default 20 kb, scglue's
    distance-decayed weights), ``fit_SCGLUE``'s pretraining, balancing and fine-tuning,
    then each modality's cells encoded by its own encoder. Its row ``glue`` is the mean of
    a cell's RNA and ATAC embeddings (the one it has, in a mosaic), with the ``foscttm`` of
    the two. GLUE never sees which profiles are paired. The graph is built from
    coordinates only: genes from ``rna.var`` columns ``chrom``, ``start``, ``end`` (as
    :func:`~celltx.datasets.simulate_multiome` writes them) or, with ``glue_kwargs={"genome":
    "hg38"}``, their start sites in the offline TSS table (:func:`~celltx.data.tss_table`,
    by symbol); peaks from ``var`` columns or ``chr:start-end`` names. Data without
    coordinates, or whose peaks lie near no gene, get an error row saying so.

    Inputs: RNA PCA takes raw counts (normalised as above) or log-normalised values (used
    as they are; told apart on a sample of the values); ATAC LSI takes counts or binary
    accessibility; MULTIVI needs raw counts of both and is skipped (with a warning and a
    row saying why) without them. A baseline that fails does not stop the benchmark: its
    row has NaN scores and the exception in ``error``, with a warning. Bad arguments raise
    before anything is trained.

    Parameters
    ----------
    mdata
        MuData with RNA and ATAC modalities (raw counts, or log-normalised RNA, for the
        baselines); not modified.
    labels_key
        Column of ``mdata.obs`` with cell types; ``None`` for data without labels
        (label-free scores only, see above).
    embeddings
        ``{name: array (n_obs, d) or key of mdata.obsm}``; NaN rows mark uncovered cells.
    baselines
        Any of ``"rna_pca"``, ``"atac_lsi"``, ``"wnn"``, ``"multivi"``.
    modality_key
        Column of ``mdata.obs`` saying which modalities each cell was measured in; adds
        the mixing scores.
    leiden_resolution
        Resolution of the Leiden clustering, or several to choose from by NMI (e.g.
        ``(0.25, 0.5, 1.0, 1.5, 2.0)``).
    seed
        Seed of the baselines, Leiden and the kNN folds.
    multivi_kwargs
        Arguments of :func:`multivi_embedding` (``max_epochs``, ``max_seconds``: a
        wall-clock budget, ``batch_key``, ``accelerator``, ``lr``, …).
    n_neighbors
        Neighbours of the mixing scores.
    knn
        Compute the kNN accuracy.
    rna_mod, atac_mod
        Names of the RNA and ATAC modalities.
    rna_layer, atac_layer
        Layers with the values for the baselines (default ``X``): raw counts (needed by
        MULTIVI), or log-normalised RNA for RNA PCA.
    return_embeddings
        Also return the ``{name: array}`` embeddings that were scored.
    methods
        The methods to run, instead of ``baselines``: any of :data:`MULTIOME_METHODS`
        (``"celltx"``, ``"rna_pca"``, ``"atac_lsi"``, ``"wnn"``, ``"multivi"``, ``"glue"``).
        ``"celltx"`` trains an :class:`~celltx.model.ScGPT` from scratch with
        :data:`MULTIOME_CELLTX_DEFAULTS` (overridden by ``celltx_kwargs``, e.g.
        ``{"epochs": 10, "model": {"max_peaks": 400}}``) on a padded copy of ``mdata`` and
        adds the rows ``celltx_joint``, ``celltx_rna``, ``celltx_atac``
        (:func:`celltx_multiome_embeddings`).
    celltx_kwargs
        Settings of the celltx recipe (see ``methods``).
    glue_kwargs
        Settings of GLUE (``"glue"`` in ``methods``): ``max_seconds`` (a wall-clock budget
        of training: half for pretraining at most, the rest for fine-tuning, each ending
        after the epoch in which it runs out), ``max_epochs`` (a cap per stage; default
        scglue's, from the data size, with early stopping), ``genome`` and
        ``gene_symbols`` (gene start sites from the TSS table), ``extend_range``,
        ``n_comps``, ``n_top_genes``, ``init_kws`` / ``fit_kws`` (of scglue's
        ``SCGLUEModel`` and its ``fit``).

    Returns
    -------
    pandas.DataFrame
        One row per embedding (the caller's names, then the baselines' names), columns
        ``n_cells``, ``leiden_ari``, ``leiden_nmi``, ``n_clusters``, ``leiden_resolution``,
        ``silhouette_label``,
        ``knn_accuracy`` (with ``knn``), ``foscttm``, ``seconds``, ``epochs``, and
        ``modality_mixing``,
        ``cross_modality_label_agreement`` (with ``modality_key``), and ``error``
        (``None``, or why a baseline failed or was skipped: its scores are then NaN and
        ``n_cells`` 0). With ``return_embeddings``, ``(table, embeddings)`` (the
        embeddings that were computed).

    Raises
    ------
    ValueError
        For an unknown baseline, a missing ``labels_key``, ``modality_key``, modality or
        layer, an embedding with the wrong number of rows, RNA values that are neither raw
        counts nor log-normalised, or nothing to score.

    Examples
    --------
    >>> import celltx
    >>> mdata = celltx.datasets.simulate_multiome(n_cells=300, mosaic=True)
    >>> table = celltx.bench.multiome(
    ...     mdata, "cell_type", baselines=("rna_pca", "atac_lsi"), modality_key="modality"
    ... )
    >>> table.index.tolist()
    ['rna_pca', 'atac_lsi']
    >>> table["n_cells"].tolist()
    [210, 210]
    """
    if methods is not None:
        methods = list(dict.fromkeys([methods] if isinstance(methods, str) else methods))
        unknown = [m for m in methods if m not in MULTIOME_METHODS]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from {list(MULTIOME_METHODS)}.")
        baselines = [m for m in methods if m != "celltx"]
        run_celltx = "celltx" in methods
    else:
        baselines = list(dict.fromkeys([baselines] if isinstance(baselines, str) else baselines))
        allowed = [m for m in MULTIOME_METHODS if m != "celltx"]
        unknown = [b for b in baselines if b not in allowed]
        if unknown:
            raise ValueError(f"Unknown baselines {unknown}; choose from {allowed}.")
        run_celltx = False
    if celltx_kwargs is not None and not run_celltx:
        raise ValueError('celltx_kwargs is given but "celltx" is not among methods.')
    if glue_kwargs is not None and "glue" not in baselines:
        raise ValueError('glue_kwargs is given but "glue" is not among methods.')
    unknown = sorted(set(glue_kwargs or {}) - set(_GLUE_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown glue_kwargs {unknown}; choose from {list(_GLUE_OPTIONS)}.")
    errors_early: dict[str, str] = {}
    if "glue" in baselines:
        import importlib.util

        # no coordinates, or no peak near a gene: raise before anything trains
        _glue_links(
            _get_mod(mdata, rna_mod), _get_mod(mdata, atac_mod), **_link_kwargs(glue_kwargs)
        )
        if importlib.util.find_spec("scglue") is None:
            errors_early = {"glue": skip_note("glue", _GLUE_MISSING)}
    if labels_key is not None and labels_key not in mdata.obs:
        raise ValueError(
            f"labels_key={labels_key!r} is not a column of mdata.obs (columns: "
            f"{list(mdata.obs.columns)}); if it lives in a modality, call mdata.pull_obs(); "
            "for data without labels pass labels_key=None (label-free scores only)."
        )
    if modality_key is not None and modality_key not in mdata.obs:
        raise ValueError(f"modality_key={modality_key!r} is not a column of mdata.obs.")
    embeddings = dict(embeddings or {})
    if not embeddings and not baselines and not run_celltx:
        raise ValueError("Nothing to score: pass embeddings and/or baselines.")
    resolutions = np.atleast_1d(np.asarray(leiden_resolution, dtype=float))
    if resolutions.size == 0 or not (np.isfinite(resolutions).all() and (resolutions > 0).all()):
        raise ValueError(
            f"leiden_resolution must be a positive number or a non-empty sequence of them; got "
            f"{leiden_resolution!r}."
        )
    n = mdata.n_obs
    arrays: dict[str, np.ndarray] = {}
    for name, e in embeddings.items():
        if isinstance(e, str):
            if e not in mdata.obsm:
                raise ValueError(f"Embedding {name!r}: {e!r} is not a key of mdata.obsm.")
            e = mdata.obsm[e]
        arr = np.asarray(e, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(
                f"Embedding {name!r} has shape {arr.shape}; expected ({n}, d), one row per cell "
                "of mdata in mdata.obs_names order (NaN rows for cells it does not cover)."
            )
        arrays[name] = arr
    group = _modality_groups(mdata.obs[modality_key], modality_key) if modality_key else None
    errors: dict[str, str] = dict(errors_early)  # failed or skipped baselines
    kinds: dict[str, str] = {}
    count_reasons: dict[str, str] = {}  # methods that need raw counts and lack them
    for b, mod, layer, what in (
        ("rna_pca", rna_mod, rna_layer, "RNA"),
        ("atac_lsi", atac_mod, atac_layer, "ATAC"),
    ):
        if b in baselines or {"multivi", "wnn", "glue"} & set(baselines):
            owner = f"mdata.mod[{mod!r}]"
            where = layer_label(layer, owner)
            x = get_expression(_get_mod(mdata, mod), layer, owner)
            # RNA: raw counts or log-normalised; ATAC: counts or binary accessibility
            kinds[what] = (
                expression_kind(x, where)
                if what == "RNA"
                else ("counts" if is_counts(x) else "other")
            )
            for m, label in (("multivi", "MULTIVI"), ("glue", "GLUE")):
                if kinds[what] != "counts" and m in baselines and m not in count_reasons:
                    count_reasons[m] = (
                        f"{label} needs raw counts and {where} does not hold them; pass "
                        f"{'rna' if what == 'RNA' else 'atac'}_layer= naming a layer of raw "
                        "counts to include it."
                    )
    for m, reason in count_reasons.items():
        if not arrays and baselines == [m]:
            raise ValueError(f"Nothing to score: {reason}")
        errors[m] = skip_note(m, reason)
    seconds: dict[str, float] = {}
    epochs: dict[str, int] = {}
    graphs: dict[str, tuple] = {}  # name: (connectivities, rows in mdata.obs_names)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # joint row: (rna view, atac view)
    names: list[str] = list(embeddings)
    if run_celltx:
        start = time.perf_counter()
        fitted, err = guarded(
            "celltx",
            fit_celltx_multiome,
            mdata,
            dict(celltx_kwargs or {}),
            seed,
            rna_mod,
            atac_mod,
            rna_layer,
            atac_layer,
        )
        cx_names = ["celltx_joint", "celltx_rna", "celltx_atac"]
        names += cx_names
        if err is None:
            model, padded = fitted
            seconds["celltx_joint"] = time.perf_counter() - start
            epochs["celltx_joint"] = multiome_recipe_epochs(padded.n_obs, dict(celltx_kwargs or {}))
            start = time.perf_counter()
            emb, err = guarded(
                "celltx embeddings", celltx_multiome_embeddings, model, padded, rna_mod, atac_mod
            )
            if err is None:
                # padded rows are in mdata.obs_names order (pad_mosaic keeps it)
                arrays.update(emb)
                seconds["celltx_joint"] += time.perf_counter() - start
        for name in cx_names:
            if err is not None:
                errors[name] = err
    runs = {
        "rna_pca": lambda: _rna_pca(mdata, rna_mod, rna_layer, seed, kinds.get("RNA") == "counts"),
        "atac_lsi": lambda: _atac_lsi(mdata, atac_mod, atac_layer, seed),
        "wnn": lambda: wnn_graph(
            mdata,
            rna_layer=rna_layer,
            atac_layer=atac_layer,
            n_neighbors=15,
            seed=seed,
            rna_mod=rna_mod,
            atac_mod=atac_mod,
            rna_counts=kinds.get("RNA") == "counts",
        ),
        "multivi": lambda: _multivi_run(
            mdata,
            rna_layer=rna_layer,
            atac_layer=atac_layer,
            rna_mod=rna_mod,
            atac_mod=atac_mod,
            **{"seed": seed, **dict(multivi_kwargs or {})},
        ),
        "glue": lambda: _glue_run(
            mdata,
            rna_layer=rna_layer,
            atac_layer=atac_layer,
            rna_mod=rna_mod,
            atac_mod=atac_mod,
            **{"seed": seed, **dict(glue_kwargs or {})},
        ),
    }
    todo = [b for b in baselines if b not in errors]
    for r in run_methods(todo, lambda b, _seed: runs[b]()):
        b, out = r.method, r.value
        if r.error is not None:
            errors[b] = r.error
            continue
        seconds[b] = r.seconds
        if b == "wnn":
            graphs[b] = out
        elif b in ("multivi", "glue"):
            joint, per_mod, n_epochs = out
            arrays[b] = joint
            pairs[b] = (per_mod["rna"], per_mod["atac"])
            epochs[b] = n_epochs
        else:
            arrays[b] = out
        logger.info("%s done", b)
    for name in list(arrays):
        stem = name[: -len("_joint")] if name.endswith("_joint") else None
        if stem and f"{stem}_rna" in arrays and f"{stem}_atac" in arrays:
            pairs[name] = (arrays[f"{stem}_rna"], arrays[f"{stem}_atac"])
    labelled = labels_key is not None
    if labelled:
        labels_all = mdata.obs[labels_key]
        has_label = labels_all.notna().to_numpy()
        labels_all = labels_all.astype(str).to_numpy()
    else:  # label-free scores only: every cell counts, the label columns stay NaN
        has_label = np.ones(n, dtype=bool)
        labels_all = np.zeros(n, dtype=str)

    def _empty() -> dict[str, float]:
        return dict(
            leiden_ari=np.nan,
            leiden_nmi=np.nan,
            n_clusters=0,
            leiden_resolution=np.nan,
            silhouette_label=np.nan,
        )

    def _scores(arr: np.ndarray) -> dict[str, float]:
        keep = has_label & np.isfinite(arr).all(axis=1)
        X, labels = arr[keep], labels_all[keep]
        row: dict[str, float] = {"n_cells": int(keep.sum())}
        if keep.sum() < 3 or not labelled:
            row.update(_empty())
        else:
            row.update(leiden_scores(X, labels, resolutions, seed=seed))
            row["silhouette_label"] = _silhouette_label(X, labels)
        if knn:
            try:
                row["knn_accuracy"] = (
                    float(knn_accuracy(X, labels, seed=seed).mean()) if labelled else np.nan
                )
            except ValueError:
                row["knn_accuracy"] = float("nan")
        if group is not None:
            row.update(_modality_scores(X, labels, group[keep], n_neighbors))
            if not labelled:
                row["cross_modality_label_agreement"] = np.nan
        return row

    def _graph_scores(graph, rows) -> dict[str, float]:
        keep = has_label[rows]
        G = graph[keep][:, keep]
        row: dict[str, float] = {"n_cells": int(keep.sum()), **_empty()}
        if knn:
            row["knn_accuracy"] = np.nan
        if keep.sum() >= 3 and labelled:
            row.update(graph_scores(G, labels_all[rows][keep], resolutions, seed=seed, knn=knn))
        return row

    def _foscttm(rna: np.ndarray, atac: np.ndarray) -> float:
        both = np.isfinite(rna).all(axis=1) & np.isfinite(atac).all(axis=1)
        return foscttm(rna[both], atac[both]) if both.sum() >= 2 else float("nan")

    cols = [
        "n_cells",
        "leiden_ari",
        "leiden_nmi",
        "n_clusters",
        "leiden_resolution",
        "silhouette_label",
    ]
    cols += ["knn_accuracy"] if knn else []
    cols += ["foscttm", "seconds", "epochs"]
    cols += ["modality_mixing", "cross_modality_label_agreement"] if group is not None else []
    rows = {}
    for name in dict.fromkeys([*names, *baselines]):
        if name in arrays:
            row, err = guarded(f"scoring {name!r}", _scores, arrays[name])
            errors.update({name: err} if err else {})
            rows[name] = row or {}
        elif name in graphs:
            row, err = guarded(f"scoring {name!r}", _graph_scores, *graphs[name])
            errors.update({name: err} if err else {})
            rows[name] = row or {}
        else:
            rows[name] = {}
        if name in pairs and name not in errors:
            value, err = guarded(f"foscttm of {name!r}", _foscttm, *pairs[name])
            rows[name]["foscttm"] = value if err is None else np.nan
        rows[name]["seconds"] = seconds.get(name, np.nan)
        rows[name]["epochs"] = epochs.get(name, np.nan)
        rows[name]["error"] = errors.get(name)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*cols, "error"])
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    for col in ("n_cells", "n_clusters"):
        table[col] = table[col].fillna(0).astype(int)
    for m in ("multivi", "glue"):
        if return_embeddings and m in pairs:
            arrays[f"{m}_rna"], arrays[f"{m}_atac"] = pairs[m]
    return (table, arrays) if return_embeddings else table
