"""Imputation: ``ScGPT.get_normalized_expression`` and ``celltx.bench.imputation``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import celltx
from celltx.model import ScGPT
from celltx.nn import preset

TINY = preset("tiny", d_model=32, n_heads=4)


@pytest.fixture(scope="module")
def model():
    adata = celltx.datasets.pbmc68k()[:120].copy()
    ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    m = ScGPT(adata, **TINY)
    m.train(max_epochs=1, batch_size=32, accelerator="cpu", enable_progress_bar=False)
    return m


def test_normalized_expression_shape_chunks_and_genes(model):
    adata = model.adata
    full = model.get_normalized_expression(indices=np.arange(8), chunk_size=1000)
    assert isinstance(full, pd.DataFrame) and full.shape == (8, adata.n_vars)
    assert list(full.index) == list(adata.obs_names[:8]) and list(full.columns) == list(
        adata.var_names
    )
    chunked = model.get_normalized_expression(indices=np.arange(8), chunk_size=37)
    np.testing.assert_allclose(chunked.to_numpy(), full.to_numpy(), atol=1e-4)
    # within the value-bin scale
    assert np.isfinite(full.to_numpy()).all()
    some = list(adata.var_names[[5, 1]])
    part = model.get_normalized_expression(indices=np.arange(8), gene_list=some, return_numpy=True)
    np.testing.assert_allclose(part, full[some].to_numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="not genes of the data"):
        model.get_normalized_expression(gene_list=["NOTAGENE"])


def test_imputation_bench_baselines_and_input_untouched(pbmc):
    before = pbmc.X.copy()
    df = celltx.bench.imputation(pbmc, methods=["mean", "knn"], fraction=0.1, seed=0)
    assert list(df["method"]) == ["mean", "knn"]
    assert (df["n_hidden"] > 100).all() and (df["scored_on"] == "lognorm").all()
    assert df["error"].isna().all()
    # smoothing over neighbours recovers hidden values better than the gene mean
    assert df.loc[1, "pearson"] > df.loc[0, "pearson"]
    np.testing.assert_array_equal(
        pbmc.X.toarray() if hasattr(pbmc.X, "toarray") else pbmc.X,
        before.toarray() if hasattr(before, "toarray") else before,
    )
    with pytest.raises(ValueError, match="fraction"):
        celltx.bench.imputation(pbmc, methods=["mean"], fraction=1.5)
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.imputation(pbmc, methods=["magic"])


def test_imputation_bench_runs_celltx_and_skips_scvi_without_counts(pbmc):
    small = pbmc[:150].copy()
    settings = {"celltx": {"model": TINY, "epochs": 1, "accelerator": "cpu"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = celltx.bench.imputation(small, methods=["celltx", "scvi"], method_kwargs=settings)
    row = df.set_index("method")
    assert row.loc["celltx", "error"] is None or pd.isna(row.loc["celltx", "error"])
    assert np.isfinite(row.loc["celltx", ["pearson", "mse", "pearson_bins"]].astype(float)).all()
    assert str(row.loc["scvi", "error"]).startswith("skipped")


def test_from_bins_maps_into_the_cells_visible_values():
    from celltx.bench._imputation import _from_bins

    masked = np.array([[0.0, 1.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    rows = np.array([0, 0, 0, 1])
    vals = _from_bins(np.array([0.0, 25.0, 50.0, 25.0]), masked, rows, 51)
    assert np.all(np.diff(vals[:3]) > 0)  # higher bins, higher values
    assert vals[0] >= 1.0 and vals[2] <= 3.0  # within the cell's visible non-zero values
    assert vals[3] == 0.0  # a cell with nothing visible
    # without the window: the bin's centre quantile itself
    exact = _from_bins(np.array([0.5, 50.5]), masked, rows[:2], 51, window=0.0)
    np.testing.assert_allclose(exact, [1.0, 3.0])
