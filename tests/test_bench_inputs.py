"""celltx.bench input handling: raw counts or log-normalised values, each method given the
input it needs, failures recorded as rows instead of losing finished work, bad arguments
refused before training, the caller's AnnData left alone."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import celltx
from celltx.bench import _annotation
from celltx.bench._inputs import expression_kind, is_counts, log1p_cp10k
from celltx.nn import preset

TINY_CELLTX = {
    "model": preset("tiny"),
    "pretrain_epochs": 1,
    "finetune_epochs": 1,
    "accelerator": "cpu",
}
TINY_SCANVI = {"scvi_epochs": 1, "scanvi_epochs": 1, "accelerator": "cpu"}


def _counts_adata(n_per_type: int = 30, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts of 3 cell types (distinct mean profiles), sparse float32,
    with a batch column, a counts layer and an obsm entry."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["A", "B", "C"], n_per_type)
    mean = rng.gamma(2.0, 3.0, size=(3, n_genes))[np.repeat(np.arange(3), n_per_type)]
    mean = mean * rng.uniform(0.5, 2.0, size=(len(labels), 1))  # library size
    x = rng.negative_binomial(5, 5 / (5 + mean)).astype(np.float32)
    a = ad.AnnData(
        sparse.csr_matrix(x),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels), "batch": np.tile(["b1", "b2"], len(labels) // 2)},
            index=[f"cell{i}" for i in range(len(labels))],
        ),
        var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]),
    )
    a.layers["counts"] = a.X.copy()
    a.obsm["X_random"] = rng.normal(size=(a.n_obs, 5)).astype(np.float32)
    return a


def _lognorm(a: ad.AnnData) -> ad.AnnData:
    out = a.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _snapshot(a: ad.AnnData) -> dict:
    return {
        "X": _dense(a.X).copy(),
        "X_type": type(a.X),
        "obs": a.obs.copy(),
        "var": a.var.copy(),
        "layers": {k: _dense(v).copy() for k, v in a.layers.items()},
        "obsm": {k: np.asarray(v).copy() for k, v in a.obsm.items()},
        "uns": sorted(a.uns),
    }


def _assert_unchanged(a: ad.AnnData, snap: dict) -> None:
    assert type(a.X) is snap["X_type"]
    np.testing.assert_array_equal(_dense(a.X), snap["X"])
    pd.testing.assert_frame_equal(a.obs, snap["obs"])
    pd.testing.assert_frame_equal(a.var, snap["var"])
    assert sorted(a.layers) == sorted(snap["layers"])
    for k, v in snap["layers"].items():
        np.testing.assert_array_equal(_dense(a.layers[k]), v)
    assert sorted(a.obsm) == sorted(snap["obsm"])
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(np.asarray(a.obsm[k]), v)
    assert sorted(a.uns) == snap["uns"]


def _spy_runners(monkeypatch) -> dict[str, list]:
    """Record the matrix each annotation method is given, then run the real method."""
    seen: dict[str, list] = {}
    for name, run in dict(_annotation._RUNNERS).items():

        def spy(data, *args, _run=run, _name=name, **kw):
            seen.setdefault(_name, []).append(_dense(data.X).copy())
            return _run(data, *args, **kw)

        monkeypatch.setitem(_annotation._RUNNERS, name, spy)
    return seen


# --- the shared input helper ----------------------------------------------------------------
def test_input_helper_kinds_and_log1p_cp10k():
    a = _counts_adata()
    assert expression_kind(a.X) == "counts" and is_counts(a.X)
    logged = log1p_cp10k(a.X)
    assert sparse.issparse(logged) and not is_counts(logged)
    np.testing.assert_allclose(np.expm1(_dense(logged)).sum(axis=1), 1e4, rtol=1e-4)
    np.testing.assert_allclose(_dense(logged), _dense(_lognorm(a).X), rtol=1e-6)
    assert expression_kind(logged) == "lognorm"
    assert expression_kind(_dense(a.X)) == "counts"  # dense input is sampled too
    with pytest.raises(ValueError, match="negative values"):
        expression_kind(_dense(logged) - 1.0)
    with pytest.raises(ValueError, match="sc.pp.log1p"):
        expression_kind(_dense(a.X) * 1.5 + 0.1)  # normalised, never logged


# --- annotation -------------------------------------------------------------------------------
def test_annotation_on_raw_counts_gives_each_method_its_input(monkeypatch):
    a = _counts_adata()
    snap = _snapshot(a)
    seen = _spy_runners(monkeypatch)
    df = celltx.bench.annotation(
        a,
        "cell_type",
        methods=["celltx", "logreg", "knn_pca", "scanvi", "celltypist"],
        n_splits=2,
        method_kwargs={"celltx": TINY_CELLTX, "scanvi": TINY_SCANVI},
    )
    assert len(df) == 10 and df["error"].isna().all(), df[["method", "error"]]
    assert df[["accuracy", "macro_f1", "weighted_f1"]].apply(lambda c: c.between(0, 1)).all().all()
    # 3 well separated types: the log-normalised baselines get them right
    assert df.loc[df["method"].isin(["logreg", "celltypist"]), "accuracy"].min() > 0.9
    counts = _dense(a.X)
    cp10k = _dense(_lognorm(a).X)
    for m in ("logreg", "knn_pca", "celltypist"):  # log1p-CP10k of the counts
        np.testing.assert_allclose(seen[m][0], cp10k, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seen["scanvi"][0], counts)  # raw counts
    np.testing.assert_array_equal(seen["celltx"][0], counts)  # the values as given
    _assert_unchanged(a, snap)


def test_annotation_on_log_normalised_input_skips_scanvi(monkeypatch):
    a = _lognorm(_counts_adata())
    del a.layers["counts"]
    snap = _snapshot(a)
    seen = _spy_runners(monkeypatch)
    with pytest.warns(UserWarning, match="scanvi is skipped: scANVI needs raw counts"):
        df = celltx.bench.annotation(
            a,
            "cell_type",
            methods=["logreg", "scanvi", "celltypist"],
            n_splits=2,
            method_kwargs={"scanvi": TINY_SCANVI},
        )
    assert "scanvi" not in seen  # never trained on non-counts
    assert list(df["method"]) == ["logreg", "scanvi", "celltypist"] * 2
    skipped = df[df["method"] == "scanvi"]
    assert skipped["error"].str.contains("counts_layer=").all() and skipped["accuracy"].isna().all()
    ok = df[df["method"] != "scanvi"]
    assert ok["error"].isna().all() and (ok["accuracy"] > 0.9).all()
    np.testing.assert_array_equal(seen["celltypist"][0], _dense(a.X))  # already log1p-CP10k
    _assert_unchanged(a, snap)


def test_annotation_counts_layer_feeds_scanvi(monkeypatch):
    a = _lognorm(_counts_adata())  # X log-normalised, layers["counts"] raw counts
    seen = _spy_runners(monkeypatch)
    df = celltx.bench.annotation(
        a,
        "cell_type",
        methods=["scanvi"],
        n_splits=2,
        counts_layer="counts",
        method_kwargs={"scanvi": TINY_SCANVI},
    )
    assert df["error"].isna().all() and df["accuracy"].notna().all()
    np.testing.assert_array_equal(seen["scanvi"][0], _dense(a.layers["counts"]))


def test_annotation_pbmc68k_log_normalised_celltypist(pbmc):
    """pbmc68k holds log-normalised values (not exactly CP10k of its 765 genes): celltypist
    takes them as they are."""
    small = pbmc[::3].copy()
    snap = _snapshot(small)
    df = celltx.bench.annotation(small, "cell_type", methods=["celltypist"], n_splits=2)
    assert df["error"].isna().all() and (df["accuracy"] > 0.5).all()
    _assert_unchanged(small, snap)


def test_annotation_failing_method_becomes_an_error_row(monkeypatch):
    a = _counts_adata()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(_annotation._RUNNERS, "knn_pca", broken)
    with pytest.warns(UserWarning, match=r"knn_pca \(fold 0\) failed \(RuntimeError: boom\)"):
        df = celltx.bench.annotation(a, "cell_type", methods=["knn_pca", "logreg"], n_splits=2)
    assert list(df["method"]) == ["knn_pca", "logreg"] * 2
    failed = df[df["method"] == "knn_pca"]
    assert (failed["error"] == "RuntimeError: boom").all()
    assert failed[["accuracy", "macro_f1", "weighted_f1"]].isna().all().all()
    kept = df[df["method"] == "logreg"]
    assert kept["error"].isna().all() and (kept["accuracy"] > 0.9).all()
    # summarize still works on a table with a failed method
    assert "±" in celltx.bench.summarize(df).loc["logreg", "accuracy"]


def test_annotation_bad_arguments_raise_before_training(monkeypatch):
    a = _counts_adata()
    seen = _spy_runners(monkeypatch)
    with pytest.raises(ValueError, match="unknown settings \\['epochs'\\]"):
        celltx.bench.annotation(
            a, "cell_type", methods=["logreg", "celltx"], method_kwargs={"celltx": {"epochs": 2}}
        )
    with pytest.raises(ValueError, match="unknown method 'svm'"):
        celltx.bench.annotation(a, "cell_type", methods=["logreg"], method_kwargs={"svm": {}})
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.annotation(a, "cell_type", methods=["logreg", "svm"])
    with pytest.raises(ValueError, match="labels_key"):
        celltx.bench.annotation(a, "celltype", methods=["logreg"])
    with pytest.raises(ValueError, match="layer='lognorm'"):
        celltx.bench.annotation(a, "cell_type", methods=["logreg"], layer="lognorm")
    scaled = _lognorm(a)
    sc.pp.scale(scaled)
    with pytest.raises(ValueError, match="negative values"):
        celltx.bench.annotation(scaled, "cell_type", methods=["logreg"])
    logged = _lognorm(a)
    logged.layers["lognorm"] = logged.X.copy()
    with pytest.raises(ValueError, match="counts_layer='lognorm' does not hold raw counts"):
        celltx.bench.annotation(logged, "cell_type", methods=["scanvi"], counts_layer="lognorm")
    assert seen == {}  # nothing was trained


# --- integration, multiome, perturbation, embedding scores -------------------------------------
class _FakeBenchmarker:
    """scib-metrics' Benchmarker compiles jax code for a minute: this stand-in scores each
    embedding by the label silhouette (scikit-learn) and returns a table of the
    same layout (metric columns, aggregates, a last ``Metric Type`` row)."""

    def __init__(self, adata, batch_key, label_key, embedding_obsm_keys, **kwargs):
        self.adata, self.label_key, self.keys = adata, label_key, embedding_obsm_keys

    def prepare(self, neighbor_computer=None):
        self.neighbor_computer = neighbor_computer

    def benchmark(self):
        from sklearn.metrics import silhouette_score

        labels = self.adata.obs[self.label_key].to_numpy()
        self.scores = {k: (silhouette_score(self.adata.obsm[k], labels) + 1) / 2 for k in self.keys}

    def get_results(self, min_max_scale=False):
        t = pd.DataFrame(
            {"Silhouette label": self.scores, "Bio conservation": self.scores, "Total": self.scores}
        ).astype(object)
        t.loc["Metric Type"] = ["Bio conservation", "Aggregate score", "Aggregate score"]
        return t


def test_integration_skips_scvi_on_log_normalised_input(monkeypatch):
    import scib_metrics.benchmark

    from celltx.bench import _integration

    a = _lognorm(_counts_adata())
    del a.layers["counts"]
    snap = _snapshot(a)

    def no_scvi(*args, **kwargs):
        raise AssertionError("scVI must not be trained on log-normalised values")

    monkeypatch.setattr(_integration, "scvi_embedding", no_scvi)
    monkeypatch.setattr(scib_metrics.benchmark, "Benchmarker", _FakeBenchmarker)
    with pytest.raises(ValueError, match="Nothing to score: scVI needs raw counts"):
        celltx.bench.integration(a, "batch", "cell_type", baselines=["scvi"], fast=True)
    with pytest.warns(UserWarning, match="scVI is skipped"):
        table = celltx.bench.integration(
            a, "batch", "cell_type", {"random": "X_random"}, baselines=["pca", "scvi"], fast=True
        )
    assert list(table.index) == ["random", "PCA (unintegrated)", "scVI", "Metric Type"]
    assert table.loc["scVI", "error"].startswith("skipped: scVI needs raw counts")
    assert np.isnan(float(table.loc["scVI", "Total"]))
    assert table.loc["PCA (unintegrated)", "error"] is None
    # 3 separated types: PCA of the log-normalised values keeps them apart, noise does not
    assert (
        float(table.loc["PCA (unintegrated)", "Total"]) > float(table.loc["random", "Total"]) + 0.1
    )
    _assert_unchanged(a, snap)


def test_integration_failing_baseline_keeps_the_others(monkeypatch):
    import scib_metrics.benchmark

    from celltx.bench import _integration

    def broken(*args, **kwargs):
        raise RuntimeError("scvi exploded")

    monkeypatch.setattr(_integration, "scvi_embedding", broken)
    monkeypatch.setattr(scib_metrics.benchmark, "Benchmarker", _FakeBenchmarker)
    a = _counts_adata()
    with pytest.warns(UserWarning, match="scVI failed"):
        table, embs = celltx.bench.integration(
            a, "batch", "cell_type", baselines=["pca", "scvi"], fast=True, return_embeddings=True
        )
    assert table.loc["scVI", "error"] == "RuntimeError: scvi exploded"
    assert np.isfinite(float(table.loc["PCA (unintegrated)", "Total"])) and list(embs) == [
        "PCA (unintegrated)"
    ]


def test_multiome_skips_multivi_without_counts_and_keeps_failures():
    mdata = celltx.datasets.simulate_multiome(n_cells=120, n_genes=40, n_peaks=80, seed=0)
    rna = mdata.mod["rna"]
    rna.layers["lognorm"] = log1p_cp10k(rna.X)
    before = _dense(rna.X).copy()
    with pytest.warns(UserWarning, match="multivi is skipped: MULTIVI needs raw counts"):
        table = celltx.bench.multiome(
            mdata, "cell_type", baselines=("rna_pca", "multivi"), rna_layer="lognorm", knn=False
        )
    assert table.index.tolist() == ["rna_pca", "multivi"]
    assert table.loc["rna_pca", "error"] is None and table.loc["rna_pca", "leiden_ari"] > 0.3
    assert "rna_layer=" in table.loc["multivi", "error"] and table.loc["multivi", "n_cells"] == 0
    assert np.isnan(table.loc["multivi", "leiden_ari"])
    with pytest.raises(ValueError, match="Nothing to score: MULTIVI needs raw counts"):
        celltx.bench.multiome(mdata, "cell_type", baselines=("multivi",), rna_layer="lognorm")
    np.testing.assert_array_equal(_dense(mdata.mod["rna"].X), before)


class _Broken:
    def fit(self, train):
        raise RuntimeError("cannot fit")

    def predict(self, conditions):  # pragma: no cover - never reached
        return None


def test_perturbation_failing_method_becomes_error_rows():
    sim = celltx.datasets.simulate_perturbseq(seed=0)
    snap = _snapshot(sim)
    with pytest.warns(UserWarning, match=r"broken failed \(RuntimeError: cannot fit\)"):
        df = celltx.bench.perturbation(
            sim,
            baselines=("no_change", "additive"),
            predictors={"broken": _Broken()},
            model=lambda train: object(),  # a train_fn returning no predictor
        )
    assert list(dict.fromkeys(df["method"])) == ["no_change", "additive", "broken", "celltx"]
    n = (df["method"] == "no_change").sum()
    assert n > 0 and (df.groupby("method").size() == n).all()  # a row per held-out condition each
    ok = df[df["method"].isin(["no_change", "additive"])]
    assert ok["error"].isna().all() and np.isfinite(ok["mse"]).all()
    broken = df[df["method"] == "broken"]
    assert (broken["error"] == "RuntimeError: cannot fit").all() and broken["mse"].isna().all()
    assert set(broken["condition"]) == set(ok["condition"])
    assert (
        df.loc[df["method"] == "celltx", "error"].str.contains("without predict_perturbation").all()
    )
    with pytest.raises(ValueError, match="Predictor 'bad' needs fit"):
        celltx.bench.perturbation(sim, predictors={"bad": object()})
    _assert_unchanged(sim, snap)


def test_embedding_scores_failing_embedding_becomes_error_row(pbmc, monkeypatch):
    from celltx.bench import _embedding

    real = _embedding.leiden_scores

    def flaky(X, *args, **kwargs):
        if X.shape[1] == 3:
            raise RuntimeError("leiden failed")
        return real(X, *args, **kwargs)

    monkeypatch.setattr(_embedding, "leiden_scores", flaky)
    small = pbmc[::2].copy()
    with pytest.warns(UserWarning, match="embedding 'bad' failed"):
        table = celltx.bench.embedding_scores(
            small, "cell_type", {"PCA": "X_pca", "bad": small.obsm["X_pca"][:, :3]}
        )
    assert table.loc["bad", "error"] == "RuntimeError: leiden failed" and np.isnan(
        table.loc["bad", "leiden_ari"]
    )
    assert table.loc["PCA", "error"] is None and table.loc["PCA", "knn_accuracy"] > 0.5
    with pytest.raises(ValueError, match="not a key of adata.obsm"):
        celltx.bench.embedding_scores(small, "cell_type", {"x": "X_missing"})
    nan = small.obsm["X_pca"].copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        celltx.bench.embedding_scores(small, "cell_type", {"nan": nan})


def test_exact_neighbors_for_scib_are_the_brute_force_graph():
    from celltx.bench._integration import exact_neighbors

    x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
    res = exact_neighbors(x, 10)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(120))  # itself first
    np.testing.assert_array_equal(np.sort(res.indices, 1), np.sort(np.argsort(d, 1)[:, :10], 1))
    np.testing.assert_allclose(res.distances, np.sqrt(np.sort(d, 1)[:, :10]), atol=1e-4)
