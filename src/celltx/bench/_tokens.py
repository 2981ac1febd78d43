"""How much of a cell's identity survives tokenization: PCA on the tokenized input itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from sklearn.decomposition import PCA

from celltx.data import Tokenizer, highly_variable, nonzero_medians

from ._embedding import knn_accuracy
from ._inputs import get_expression

TOKEN_SELECTIONS = ("random", "rank", "hvg")


def _pca_knn(x: np.ndarray, labels, n_comps: int, seed: int) -> tuple[float, float]:
    n = int(min(n_comps, x.shape[0] - 1, x.shape[1] - 1))
    emb = PCA(n, random_state=seed).fit_transform(x - x.mean(0))
    acc = knn_accuracy(emb, labels, seed=seed)
    return float(acc.mean()), float(acc.std())


def token_retention(
    adata: AnnData,
    labels_key: str,
    max_seq_len: int | Sequence[int] = (256, 512, 1200),
    selections: Sequence[str] = TOKEN_SELECTIONS,
    *,
    layer: str | None = None,
    n_bins: int = 51,
    n_comps: int = 50,
    batch_size: int = 256,
    n_hvg: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy of kNN on PCA of what the model sees: the binned values of the chosen genes.

    Each cell is tokenized as a celltx model tokenizes it at inference (``max_seq_len - 1``
    expressed genes chosen by ``selection``, values binned per cell); the tokens are put
    back in a cells × genes matrix (0 at genes not chosen), and PCA + 5-fold kNN accuracy
    of ``labels_key`` on it tells how much cell identity the input still carries. The row
    ``selection="all"`` bins every gene (no selection): the ceiling for the tokenized
    input; ``retention`` is a row's accuracy divided by it. Use it to choose
    ``max_seq_len`` and ``gene_selection`` (:class:`~celltx.nn.ScGPTConfig`) for a data set.

    Parameters
    ----------
    adata
        Cells × genes, raw counts or log-normalised values (the data as the model gets it).
    labels_key
        ``obs`` column with the labels to recover (e.g. cell types).
    max_seq_len
        Token budgets to try (``<cls>`` included, as the model's setting).
    selections
        ``"random"`` (scGPT's reproducible random choice), ``"rank"`` (rank-value: the
        highest expression relative to the gene's non-zero median) and / or ``"hvg"``
        (rank-value, the cell's highly variable genes first).
    layer
        Layer with the expression (default ``.X``).
    n_bins
        Value bins per cell.
    n_comps
        Principal components.
    batch_size
        Cells tokenized at a time.
    n_hvg
        Highly variable genes of ``"hvg"`` (:func:`celltx.data.highly_variable`).
    seed
        Seed of the random choice, PCA and the folds.

    Returns
    -------
    pandas.DataFrame
        One row per selection and budget, plus ``"all"``: ``selection``, ``max_seq_len``,
        ``knn_accuracy``, ``knn_accuracy_sd`` (over folds), ``retention``,
        ``mean_tokens`` (the cells' mean number of gene tokens).

    Examples
    --------
    >>> import celltx
    >>> df = celltx.bench.token_retention(celltx.datasets.pbmc68k(), "cell_type", max_seq_len=[64])
    >>> df["selection"].tolist()
    ['all', 'random', 'rank', 'hvg']
    """
    if labels_key not in adata.obs.columns:
        raise ValueError(
            f"labels_key={labels_key!r} is not a column of adata.obs; columns: "
            f"{list(adata.obs.columns)}."
        )
    bad = sorted(set(selections) - set(TOKEN_SELECTIONS))
    if bad:
        raise ValueError(f"Unknown selections {bad}; use {list(TOKEN_SELECTIONS)}.")
    budgets = [max_seq_len] if isinstance(max_seq_len, int | np.integer) else list(max_seq_len)
    labels = adata.obs[labels_key]
    keep = labels.notna().to_numpy()
    labels = labels.to_numpy()[keep]
    x = get_expression(adata, layer)
    x = sparse.csr_matrix(x)[np.flatnonzero(keep)] if sparse.issparse(x) else np.asarray(x)[keep]
    G = x.shape[1]
    ids = torch.arange(2, G + 2)
    scale = torch.as_tensor(1.0 / nonzero_medians(x, seed=seed, linear=True))  # as the model
    priority = None
    if "hvg" in selections:
        priority = torch.as_tensor(highly_variable(x, n_top=n_hvg, seed=seed), dtype=torch.float32)

    def tokenized(sel: str | None, budget: int) -> tuple[np.ndarray, float]:
        tok = Tokenizer(max_seq_len=max(budget, 2), pad_id=0, cls_id=1, n_bins=n_bins, seed=seed)
        out = np.zeros(x.shape, dtype=np.float32)
        n_tokens = 0
        for lo in range(0, x.shape[0], batch_size):
            block = x[lo : lo + batch_size]
            xb = torch.as_tensor(block.toarray() if sparse.issparse(block) else block).float()
            if sel is None:
                out[lo : lo + len(xb)] = tok.bin(xb, ids).numpy()
                n_tokens += int((xb > 0).sum())
                continue
            if sel == "random":
                t = tok(xb, ids, sample="hash")
            else:
                t = tok(
                    xb,
                    ids,
                    sample="rank",
                    scale=scale,
                    priority=priority if sel == "hvg" else None,
                    linear=True,
                )
            real = ~t.padding_mask[:, 1:]
            rows = torch.nonzero(real)[:, 0]
            cols = t.gene_ids[:, 1:][real] - 2
            out[lo + rows.numpy(), cols.numpy()] = t.values[:, 1:][real].numpy()
            n_tokens += int(real.sum())
        return out, n_tokens / x.shape[0]

    rows = []
    full, n_full = tokenized(None, G + 1)
    ceiling, sd = _pca_knn(full, labels, n_comps, seed)
    rows.append(("all", G + 1, ceiling, sd, n_full))
    for sel in selections:
        for budget in budgets:
            mat, n_tok = tokenized(sel, int(budget))
            acc, sd = _pca_knn(mat, labels, n_comps, seed)
            rows.append((sel, int(budget), acc, sd, n_tok))
    df = pd.DataFrame(
        rows, columns=["selection", "max_seq_len", "knn_accuracy", "knn_accuracy_sd", "mean_tokens"]
    )
    df.insert(4, "retention", df["knn_accuracy"] / ceiling)
    return df
