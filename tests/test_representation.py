"""celltx.bench.embedding: celltx's cell representation next to PCA and scVI."""

from __future__ import annotations

import numpy as np
import pytest

import celltx


def test_embedding_bench_rows_and_skips(pbmc):
    small = pbmc[:200].copy()
    df = celltx.bench.embedding(
        small,
        "cell_type",
        methods=["celltx", "pca", "scvi"],
        method_kwargs={"celltx": {"epochs": 1, "accelerator": "cpu", "model": {"d_model": 16}}},
    ).set_index("method")
    assert list(df.index) == ["celltx", "pca", "scvi"]
    assert df.loc["celltx", "error"] is None, df.loc["celltx", "error"]
    for m in ("celltx", "pca"):
        assert 0 < df.loc[m, "knn_accuracy"] <= 1 and np.isfinite(df.loc[m, "leiden_nmi"])
    # pbmc68k holds log-normalised values: scVI is skipped with the reason, not run
    assert np.isnan(df.loc["scvi", "knn_accuracy"]) and "raw counts" in df.loc["scvi", "error"]
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.embedding(small, "cell_type", methods=["umap"])
    with pytest.raises(ValueError, match="not a column"):
        celltx.bench.embedding(small, "nope")
