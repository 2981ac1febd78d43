"""Zero-shot annotation: cell–text alignment against a classifier mapped by text, chance, majority."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import f1_score

from celltx.nn import preset

from ._baselines import dense, fitted_pca, logistic_regression, pca_embedding
from ._fit import fit_celltx
from ._inputs import lognorm_expression

#: the celltx recipe of :func:`zero_shot`: a small rank-token model trained on the source's
#: labels with the cell–text objective only (measured in docs/zero_shot.md)
ZERO_SHOT_CELLTX_DEFAULTS: dict = {
    "model": preset("small", gene_selection="rank", dropout=0.0),
    "epochs": 30,
    "lr": 1e-3,
    "batch_size": 32,
    "accelerator": "cpu",
    "task": "cell_text",
}

#: pbmc68k's cell-type names -> an Azimuth-like short naming, fixed before any
#: measurement: the cross-naming target of ``benchmarks/zero_shot.py`` (and the tests)
PBMC68K_SHORT_NAMES = {
    "CD14+ Monocyte": "CD14 Mono",
    "CD19+ B": "B",
    "CD34+": "HSPC",
    "CD4+/CD25 T Reg": "Treg",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 Naive",
    "CD4+/CD45RO+ Memory": "CD4 TCM",
    "CD56+ NK": "NK",
    "CD8+ Cytotoxic T": "CD8 TEM",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 Naive",
    "Dendritic": "DC",
}

#: the query graphs :func:`zero_shot` can smooth celltx's scores over (``smooth_graphs``)
ZERO_SHOT_SMOOTH_GRAPHS = ("cells", "pca")

#: the methods of :func:`zero_shot`, in table order
ZERO_SHOT_METHODS = ("celltx zero-shot", "classifier + text mapping", "majority", "chance")


def _labels(adata: AnnData, key: str, what: str) -> np.ndarray:
    if key not in adata.obs:
        raise ValueError(f"{what} has no obs column {key!r}; its columns: {list(adata.obs)}.")
    lab = adata.obs[key]
    if lab.isna().any():
        raise ValueError(f"{what}.obs[{key!r}] has missing labels: drop those cells first.")
    return lab.astype(str).to_numpy()


def _scores(truth: np.ndarray, pred: np.ndarray, unseen: Sequence[str] | None) -> dict:
    out = {
        "accuracy": float((truth == pred).mean()),
        "macro_f1": float(
            f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0)
        ),
    }
    if unseen:
        sel = np.isin(truth, list(unseen))
        out["unseen_accuracy"] = float((truth[sel] == pred[sel]).mean()) if sel.any() else np.nan
    return out


def _classifier(source, s_labels, target, seed) -> np.ndarray:
    """Logistic regression on the source's 50 PCs of the shared genes: target predictions."""
    from sklearn.preprocessing import StandardScaler

    genes = source.var_names.intersection(target.var_names)
    if len(genes) < 2:
        raise ValueError("Source and target share fewer than 2 genes: the classifier needs both.")

    xs = dense(lognorm_expression(source[:, genes]), np.float32)
    xt = dense(lognorm_expression(target[:, genes]), np.float32)
    scale = StandardScaler().fit(xs)
    pca = fitted_pca(50, xs, seed)
    zs = pca.fit_transform(scale.transform(xs))
    zt = pca.transform(scale.transform(xt))
    return logistic_regression(zs, s_labels, zt, max_iter=2000, seed=seed)


def _nearest(encoder, queries: list[str], keys: list[str]) -> np.ndarray:
    """For each query text, the index of the most similar key text."""
    return (encoder.encode(queries) @ encoder.encode(keys).T).argmax(1)


def zero_shot(
    source: AnnData,
    source_labels_key: str,
    target: AnnData,
    target_labels_key: str,
    candidates: Mapping[str, str] | None = None,
    seed: int = 0,
    unseen: Sequence[str] | None = None,
    celltx: Mapping | None = None,
    methods: Sequence[str] = ZERO_SHOT_METHODS,
    smooth_neighbors: int | Sequence[int] | None = None,
    smooth_graphs: Sequence[str] = ZERO_SHOT_SMOOTH_GRAPHS,
) -> pd.DataFrame:
    """Zero-shot annotation of ``target`` after training on ``source``'s labels.

    celltx is trained with the cell–text objective on ``source`` (labels described by their
    Cell Ontology text) and annotates ``target`` by similarity to the candidates' texts
    (:meth:`~celltx.model.ScGPT.predict_zero_shot`). Baselines: ``classifier + text
    mapping`` (logistic regression on the source's 50 PCs of the shared genes; each predicted
    source label replaced by the most similar candidate, comparing either the names as
    written or the same ontology descriptions celltx uses, with the same encoder: two rows), ``majority`` (every cell gets the target's most frequent
    label: an upper bound for a constant answer) and ``chance`` (a uniformly random
    candidate, drawn with ``seed``).

    Use it (a) across datasets whose labels are named differently, (b) for types absent from
    training (``unseen``: target labels to score separately).

    Parameters
    ----------
    source, source_labels_key
        Training cells and their label column.
    target, target_labels_key
        Cells to annotate and the column they are scored against.
    candidates
        ``{target label: candidate}``: the name, free text or CL id offered for each
        target label (described through the Cell Ontology as names are). Default: the
        labels themselves.
    seed
        Seed of training, the classifier and chance.
    unseen
        Target labels to report separately (``unseen_accuracy``): types absent from the
        source.
    celltx
        Overrides of :data:`ZERO_SHOT_CELLTX_DEFAULTS` (``model``, ``epochs``, ``lr``,
        ``batch_size``, ``accelerator``, ``loss_weights``, ``class_weight``, and
        ``label_texts``: arguments of :meth:`~celltx.model.ScGPT.set_label_texts`, e.g.
        ``{"ontology": False}`` to use the names as texts, for labels and candidates alike).
    methods
        Which of :data:`ZERO_SHOT_METHODS` to run.
    smooth_neighbors
        With ``"celltx zero-shot"``: also score the same model's annotation with each cell's
        similarities averaged over its ``k`` nearest target cells
        (:meth:`~celltx.model.ScGPT.predict_zero_shot`'s ``smooth_neighbors``), one row
        ``celltx zero-shot, smoothed (k=…, <graph>)`` per ``k`` (an int or a list) and
        graph of ``smooth_graphs``.
        ``None`` (default): no smoothed rows.
    smooth_graphs
        The neighbour graphs of the smoothed rows: ``"cells"`` (celltx's cell vectors in
        the cell–text space) and ``"pca"`` (50 PCs of the target's log-normalised
        expression, :func:`~celltx.bench.pca_embedding`; GRIT's choice).

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``accuracy``, ``macro_f1`` (over the target's labels),
        ``unseen_accuracy`` (with ``unseen``) and ``n_candidates``. ``df.attrs`` holds the
        candidate texts (``"candidates"``), the source label texts (``"label_texts"``) and
        the classifier's label mappings (``"mapping_names"``, ``"mapping_descriptions"``).

    Examples
    --------
    >>> from celltx.bench import zero_shot
    >>> zero_shot(ref, "cell_type", query, "annotation")  # doctest: +SKIP
    """
    unknown = sorted(set(methods) - set(ZERO_SHOT_METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use {list(ZERO_SHOT_METHODS)}.")
    bad = sorted(set(smooth_graphs) - set(ZERO_SHOT_SMOOTH_GRAPHS))
    if isinstance(smooth_graphs, str) or bad:
        raise ValueError(
            f"smooth_graphs={smooth_graphs!r}: use a list of {list(ZERO_SHOT_SMOOTH_GRAPHS)}."
        )
    ks = [] if smooth_neighbors is None else smooth_neighbors
    ks = [ks] if isinstance(ks, int | np.integer) else list(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < target.n_obs:
            raise ValueError(
                f"smooth_neighbors={smooth_neighbors!r}: each must be a whole number from 1 to "
                f"{target.n_obs - 1} (the target's cells - 1), or None."
            )
    s_labels = _labels(source, source_labels_key, "source")
    t_labels = _labels(target, target_labels_key, "target")
    present = list(dict.fromkeys(sorted(t_labels)))
    candidates = dict(candidates) if candidates is not None else {t: t for t in present}
    missing = sorted(set(present) - set(candidates))
    if missing:
        raise ValueError(f"candidates has no entry for the target labels {missing}.")
    offered = list(candidates.values())
    if len(set(offered)) < len(offered):
        raise ValueError("candidates maps two target labels to the same candidate.")
    back = {v: k for k, v in candidates.items()}
    rows: list[dict[str, Any]] = []
    attrs: dict[str, Any] = {}
    model = None
    if "celltx zero-shot" in methods or "classifier + text mapping" in methods:
        model = fit_celltx(
            source, ZERO_SHOT_CELLTX_DEFAULTS, dict(celltx or {}), seed, source_labels_key
        )
        attrs["label_texts"] = model.label_texts_
    # candidates are described as the labels were (Cell Ontology texts unless
    # celltx={"label_texts": {"ontology": False}})
    ontology = bool(dict((celltx or {}).get("label_texts") or {}).get("ontology", True))
    if "celltx zero-shot" in methods:
        assert model is not None  # fitted above for this method
        t = target.copy()
        chosen = model.predict_zero_shot(
            t, candidates=offered, key_added="zero_shot", ontology=ontology
        )
        pred = np.asarray([back[c] for c in chosen])
        attrs["candidates"] = model._candidate_texts(offered, ontology, None)
        rows.append({"method": "celltx zero-shot", **_scores(t_labels, pred, unseen)})
        if ks and "pca" in smooth_graphs:
            t.obsm["X_pca_bench"] = pca_embedding(target, seed=seed)
        for k in ks:
            for graph in smooth_graphs:
                chosen = model.predict_zero_shot(
                    t,
                    candidates=offered,
                    key_added="zero_shot_smoothed",
                    ontology=ontology,
                    smooth_neighbors=int(k),
                    smooth_use_rep="X_pca_bench" if graph == "pca" else None,
                )
                pred = np.asarray([back[c] for c in chosen])
                rows.append(
                    {
                        "method": f"celltx zero-shot, smoothed (k={k}, {graph})",
                        **_scores(t_labels, pred, unseen),
                    }
                )
    if "classifier + text mapping" in methods:
        assert model is not None  # fitted above for this method
        texts = attrs.get("candidates")
        if texts is None:
            texts = model._candidate_texts(offered, ontology, None)
        s_pred = _classifier(source, s_labels, target, seed)
        enc = model._text_encoder()
        s_names = list(model.label_texts_.index)
        # each predicted source label -> the most similar candidate: by name (as the labels
        # are written) and by description (the same ontology texts celltx uses)
        for how, q, cands in (
            ("names", s_names, offered),
            ("descriptions", model.label_texts_.text.tolist(), texts.text.tolist()),
        ):
            to = dict(zip(s_names, _nearest(enc, q, cands), strict=True))
            pred = np.asarray([back[offered[to[p]]] for p in s_pred])
            attrs[f"mapping_{how}"] = {n: back[offered[i]] for n, i in to.items()}
            rows.append(
                {"method": f"classifier + text mapping ({how})", **_scores(t_labels, pred, unseen)}
            )
    if "majority" in methods:
        vals, counts = np.unique(t_labels, return_counts=True)
        pred = np.full(len(t_labels), vals[counts.argmax()])
        rows.append({"method": "majority", **_scores(t_labels, pred, unseen)})
    if "chance" in methods:
        rng = np.random.default_rng(seed)
        pred = np.asarray(list(candidates))[rng.integers(len(candidates), size=len(t_labels))]
        rows.append({"method": "chance", **_scores(t_labels, pred, unseen)})
    out = pd.DataFrame(rows)
    out["n_candidates"] = len(candidates)
    out.attrs.update(attrs)
    return out
