"""Issue 29 targets of the integration bench: scANVI next to the other baselines."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import celltx

ONE_EPOCH = {"max_epochs": 1, "accelerator": "cpu"}


def _counts(n_per_type: int = 30, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts of 3 cell types in 2 batches (sparse float32)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["A", "B", "C"], n_per_type)
    mean = rng.gamma(2.0, 3.0, size=(3, n_genes))[np.repeat(np.arange(3), n_per_type)]
    mean = mean * rng.uniform(0.5, 2.0, size=(len(labels), 1))
    x = rng.negative_binomial(5, 5 / (5 + mean)).astype(np.float32)
    return ad.AnnData(
        sparse.csr_matrix(x),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels), "batch": np.tile(["b1", "b2"], len(labels) // 2)},
            index=[f"cell{i}" for i in range(len(labels))],
        ),
        var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]),
    )


class _SilhouetteBenchmarker:
    """Stand-in for scib-metrics' Benchmarker (which compiles jax code for a minute): each
    embedding scored by its label silhouette, in a table of the same layout."""

    def __init__(self, adata, batch_key, label_key, embedding_obsm_keys, **kwargs):
        self.adata, self.label_key, self.keys = adata, label_key, embedding_obsm_keys

    def prepare(self, neighbor_computer=None):
        pass

    def benchmark(self):
        from sklearn.metrics import silhouette_score

        labels = self.adata.obs[self.label_key].to_numpy()
        self.scores = {k: (silhouette_score(self.adata.obsm[k], labels) + 1) / 2 for k in self.keys}

    def get_results(self, min_max_scale=False):
        t = pd.DataFrame({"Bio conservation": self.scores, "Total": self.scores}).astype(object)
        t.loc["Metric Type"] = ["Aggregate score", "Aggregate score"]
        return t


@pytest.fixture
def stand_in(monkeypatch):
    import scib_metrics.benchmark

    monkeypatch.setattr(scib_metrics.benchmark, "Benchmarker", _SilhouetteBenchmarker)


def test_scanvi_is_a_default_integration_baseline():
    assert "scanvi" in celltx.bench.INTEGRATION_BASELINES
    assert "scanvi" in celltx.bench.INTEGRATION_METHODS


def test_integration_reports_scanvi_trained_on_the_labels(stand_in, monkeypatch):
    from celltx.bench import _integration

    seen = {}
    train_scanvi = _integration.train_scanvi

    def spy(vae, labels_key, unlabeled_category, **kw):
        seen["labels"] = vae.adata.obs[labels_key].astype(str).to_numpy()
        seen["unlabeled"] = unlabeled_category
        return train_scanvi(vae, labels_key, unlabeled_category, **kw)

    monkeypatch.setattr(_integration, "train_scanvi", spy)
    a = _counts()
    a.obs.loc[a.obs_names[:6], "cell_type"] = np.nan  # unlabelled cells: scANVI's to infer
    with pytest.warns(UserWarning, match="without label"):
        table = celltx.bench.integration(
            a,
            "batch",
            "cell_type",
            methods=("pca", "scvi", "scanvi"),
            scvi_kwargs=ONE_EPOCH,
            method_kwargs={"scanvi": {"max_epochs": 1}},
            fast=True,
        )
    assert list(table.index) == ["PCA (unintegrated)", "scVI", "scANVI", "Metric Type"]
    assert table.loc["scANVI", "error"] is None
    assert 0 < float(table.loc["scANVI", "Total"]) < 1
    # scANVI's seconds include the scVI model it starts from
    assert float(table.loc["scANVI", "seconds"]) > 0
    # it was given the labels, and the cells without one as unlabelled
    labels = a.obs["cell_type"].astype(object).to_numpy()
    expected = np.where(pd.isna(labels), seen["unlabeled"], labels.astype(str))
    np.testing.assert_array_equal(seen["labels"], expected)
    assert seen["unlabeled"] not in set(a.obs["cell_type"].dropna())


def test_integration_without_scanvi_has_no_scanvi_row(stand_in, monkeypatch):
    from celltx.bench import _integration

    def no_scanvi(*args, **kwargs):
        raise AssertionError("scANVI was not asked for")

    monkeypatch.setattr(_integration, "train_scanvi", no_scanvi)
    table = celltx.bench.integration(
        _counts(), "batch", "cell_type", methods=("pca", "scvi"), scvi_kwargs=ONE_EPOCH, fast=True
    )
    assert "scANVI" not in table.index and "scVI" in table.index


def test_integration_skips_scanvi_without_counts(stand_in):
    a = _counts()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    with pytest.warns(UserWarning, match="scANVI is skipped"):
        table = celltx.bench.integration(
            a, "batch", "cell_type", methods=("pca", "scanvi"), fast=True
        )
    assert table.loc["scANVI", "error"].startswith("skipped: scANVI needs raw counts")
    assert np.isnan(float(table.loc["scANVI", "Total"]))


def test_integration_method_kwargs_names_its_methods():
    with pytest.raises(ValueError, match="method_kwargs takes settings of"):
        celltx.bench.integration(
            _counts(), "batch", "cell_type", methods=("pca",), method_kwargs={"harmony": {}}
        )
