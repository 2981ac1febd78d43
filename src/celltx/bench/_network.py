"""Gene-network recovery: celltx's gene–gene scores against a known network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import average_precision_score

from celltx.nn import preset

from ._baselines import dense
from ._fit import fit_celltx
from ._inputs import get_expression, guarded, log_normalized
from ._runner import method_rows

NETWORK_METHODS = ("attention", "embedding", "pearson", "random")

#: the celltx recipe of :func:`gene_network` when no trained model is given
NETWORK_CELLTX_DEFAULTS = {
    "model": preset("small", dropout=0.1),
    "epochs": 20,
    "lr": 3e-3,
    "batch_size": 32,
    "accelerator": "auto",
}


def _edges(truth, genes: pd.Index) -> pd.DataFrame:
    """The truth's edges among ``genes`` as a ``source``, ``target`` frame (no self-loops)."""
    if isinstance(truth, AnnData):
        sim = truth.uns.get("simulation", {})
        if "grn" not in sim:
            raise ValueError(
                "truth is an AnnData without uns['simulation']['grn'] (the network of "
                "celltx.datasets.simulate_perturbseq); pass an edge list with 'source' and "
                "'target' columns instead."
            )
        truth = sim["grn"]
    if not isinstance(truth, pd.DataFrame) or not {"source", "target"} <= set(truth.columns):
        raise ValueError(
            "truth must be a DataFrame edge list with 'source' and 'target' columns (e.g. "
            "adata.uns['simulation']['grn'] of celltx.datasets.simulate_perturbseq)."
        )
    e = truth[["source", "target"]].astype(str)
    e = e[e["source"].isin(genes) & e["target"].isin(genes) & (e["source"] != e["target"])]
    return e.drop_duplicates()


def _pearson(adata: AnnData, genes: pd.Index, layer) -> np.ndarray:
    cols = adata.var_names.astype(str).get_indexer(genes)
    values = log_normalized(get_expression(adata, layer))[:, cols]
    values = dense(values, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(values, rowvar=False)
    return np.abs(np.nan_to_num(r))


def _embedding(model, genes: pd.Index) -> np.ndarray:
    e = model.get_gene_embeddings(list(genes)).to_numpy(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)
    return e @ e.T


def _attention(model, adata: AnnData, genes: pd.Index, layer: int) -> np.ndarray:
    s = model.get_gene_interactions(adata, genes=list(genes), layer=layer)
    return np.nan_to_num(s.loc[genes, genes].to_numpy(np.float64))


def _pair_scores(m: np.ndarray, directed: bool) -> np.ndarray:
    """Scores of the ordered (off-diagonal) or unordered pairs, in a fixed order."""
    n = len(m)
    if directed:
        return m[~np.eye(n, dtype=bool)]
    i, j = np.triu_indices(n, 1)
    return (m[i, j] + m[j, i]) / 2


def _scores(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    k = int(label.sum())
    density = k / len(label)
    top = np.argsort(-score, kind="stable")[:k]
    ap = float(average_precision_score(label, score))
    ep = float(label[top].mean()) if k else np.nan
    return {
        "auprc": ap,
        "auprc_ratio": ap / density,
        "early_precision": ep,
        "early_precision_ratio": ep / density,
    }


def gene_network(
    adata: AnnData,
    truth,
    methods: Sequence[str] = NETWORK_METHODS,
    *,
    model=None,
    genes: Sequence[str] | None = None,
    directed: bool = False,
    layer: int = -1,
    expression_layer: str | None = None,
    seed: int = 0,
    method_kwargs: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """Score gene–gene scores against a known network: AUPRC and early precision.

    Every pair of ``genes`` is scored by each method and ranked; the true edges are those of
    ``truth`` between them. ``auprc`` is the average precision; ``early_precision`` the
    precision of the top ``k`` pairs, ``k`` the number of true edges (BEELINE's early
    precision); both also as ratios to the edge density (what random scores get on average).

    Methods: ``"attention"`` (:meth:`celltx.model.ScGPT.get_gene_interactions`, layer
    ``layer``, averaged over all cells), ``"embedding"`` (cosine similarity of
    :meth:`~celltx.model.ScGPT.get_gene_embeddings`), ``"pearson"`` (absolute Pearson
    correlation of the log-normalised expression: co-expression) and ``"random"`` (uniform
    scores, ``seed``).

    Parameters
    ----------
    adata
        Cells × genes (raw counts or log-normalised values).
    truth
        The known network: a DataFrame with ``source`` and ``target`` columns, or an AnnData
        from :func:`celltx.datasets.simulate_perturbseq` (its ``uns["simulation"]["grn"]``).
    methods
        Any of ``"attention"``, ``"embedding"``, ``"pearson"``, ``"random"``.
    model
        A trained :class:`~celltx.model.ScGPT` for the celltx methods. Default: one is
        trained on ``adata`` with :data:`NETWORK_CELLTX_DEFAULTS` (overridden by
        ``method_kwargs["celltx"]``).
    genes
        Genes to score (default: the genes of ``adata``; the model's ``max_seq_len`` does not
        limit them, but attention costs grow with their square).
    directed
        Score ordered pairs against directed edges (a source's row of the attention scores).
        Default: unordered pairs, an edge in either direction, a pair's score the mean of
        its two directions.
    layer
        Transformer layer of the attention scores.
    expression_layer
        ``adata`` layer with the expression (default ``.X``).
    seed
        Seed of the random scores and of the default model's training.
    method_kwargs
        ``celltx``: the recipe of the default model (as :data:`NETWORK_CELLTX_DEFAULTS`).

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``auprc``, ``auprc_ratio``, ``early_precision``,
        ``early_precision_ratio``, ``n_pairs``, ``n_edges``, ``seconds`` and ``error`` (a
        failing method keeps the others' rows).

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.simulate_perturbseq(n_genes=60, n_perturbations=6, n_combos=0, seed=0)
    >>> df = celltx.bench.gene_network(adata, adata, methods=["pearson", "random"])
    >>> list(df["method"]), bool(df["auprc"].notna().all())
    (['pearson', 'random'], True)
    """
    unknown = sorted(set(methods) - set(NETWORK_METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use {list(NETWORK_METHODS)}.")
    names = pd.Index(adata.var_names.astype(str) if genes is None else [str(g) for g in genes])
    if names.duplicated().any():
        raise ValueError(f"genes has duplicated names: {list(names[names.duplicated()][:10])}.")
    absent = names.difference(adata.var_names.astype(str))
    if len(absent):
        raise ValueError(f"{len(absent)} genes are not genes of adata: {list(absent[:20])}.")
    if len(names) < 3:
        raise ValueError("Score at least 3 genes.")
    edges = _edges(truth, names)
    if edges.empty:
        raise ValueError(
            "The network has no edge between the scored genes; check that the truth's gene "
            "names match adata.var_names."
        )
    n = len(names)
    adj = np.zeros((n, n), dtype=bool)
    adj[names.get_indexer(edges["source"]), names.get_indexer(edges["target"])] = True
    label = _pair_scores(adj.astype(np.float64), directed) > 0
    kwargs = dict(method_kwargs or {})
    trained: dict = {}  # the default model, trained once for the celltx methods

    def run(method, _seed):  # the gene-gene scores and their scores (both in the seconds)
        if method == "pearson":
            m = _pearson(adata, names, expression_layer)
        elif method == "random":
            m = np.random.default_rng(seed).random((n, n))
        else:
            use = model
            if use is None:
                if not trained:
                    trained["model"], trained["error"] = guarded(
                        "celltx",
                        fit_celltx,
                        adata,
                        NETWORK_CELLTX_DEFAULTS,
                        kwargs.get("celltx", {}),
                        seed,
                    )
                if trained["error"] is not None:
                    return {"error": trained["error"]}  # the default model failed to train
                use = trained["model"]
            m = (
                _embedding(use, names)
                if method == "embedding"
                else _attention(use, adata, names, layer)
            )
        return _scores(_pair_scores(np.asarray(m, np.float64), directed), label)

    columns = {
        **dict.fromkeys(
            ("auprc", "auprc_ratio", "early_precision", "early_precision_ratio"), np.nan
        ),
        "n_pairs": len(label),
        "n_edges": int(label.sum()),
    }
    return pd.DataFrame(list(method_rows(methods, run, columns=columns)))
