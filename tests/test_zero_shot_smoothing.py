"""Zero-shot scores smoothed over the query's kNN graph (``predict_zero_shot(smooth_neighbors=k)``)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from celltx.model._zero_shot import _neighbour_mean

from _helpers import SMALL


def test_neighbour_mean_flips_an_outlier():
    """A cell whose own scores disagree with all its neighbours' takes theirs; far cells
    are untouched by the other cluster."""
    # two clusters on a line: cells 0-4 near 0 (cell 2 an outlier preferring candidate B),
    # cells 5-8 near 100 (all preferring B)
    rep = np.array([[0.0], [0.1], [0.2], [0.3], [0.4], [100], [100.1], [100.2], [100.3]])
    scores = np.array([[0.9, 0.1]] * 5 + [[0.2, 0.8]] * 4)
    scores[2] = [0.3, 0.7]
    assert scores.argmax(1)[2] == 1
    smooth = _neighbour_mean(scores, rep, k=3)
    assert smooth.argmax(1)[2] == 0  # the outlier now agrees with its neighbours
    assert (smooth.argmax(1)[:5] == 0).all() and (smooth.argmax(1)[5:] == 1).all()
    # cell 2's neighbours are 1, 3 and one of 0 / 4: the mean of four rows
    np.testing.assert_allclose(smooth[2], (scores[2] + scores[1] + scores[3] + [0.9, 0.1]) / 4)
    np.testing.assert_allclose(smooth[5:], scores[5:])  # a cluster of identical rows stays


sentence_transformers = pytest.importorskip(
    "sentence_transformers", reason="needs the text extra: celltx[text]"
)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A small untrained model with a cell–text head (names as texts) on 59 PBMCs."""
    import scanpy as sc
    import scvi

    import celltx

    mp = pytest.MonkeyPatch()
    mp.setenv("CELLTX_CACHE_DIR", str(tmp_path_factory.mktemp("celltx-cache")))
    adata = celltx.datasets.pbmc68k()[::12].copy()
    sc.pp.pca(adata, n_comps=10)
    scvi.settings.seed = 0
    celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = celltx.model.ScGPT(adata, **SMALL)
    model.set_label_texts(ontology=False)
    # predict_zero_shot refuses a text head never trained; these tests check the smoothing
    # arithmetic on whatever scores the head gives, so the head counts as trained here
    model.module.text_trained.fill_(True)
    yield model, adata
    mp.undo()


def _expected(raw: np.ndarray, rep: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k + 1).fit(rep)
    dist, idx = nn.kneighbors(rep)
    out = np.empty_like(raw)
    for i in range(len(raw)):  # reference: the cell itself plus its k nearest others
        others = [j for j in idx[i] if j != i][:k]
        out[i] = (raw[i] + raw[others].sum(0)) / (k + 1)
    return out


def test_smoothing_over_an_obsm_graph(untrained):
    model, adata = untrained
    kw = {"ontology": False}
    raw_pred = model.predict_zero_shot(adata, key_added="raw", **kw)
    raw = adata.obsm["raw_similarity"]
    pred = model.predict_zero_shot(
        adata, key_added="smooth", smooth_neighbors=5, smooth_use_rep="X_pca", **kw
    )
    smooth = adata.obsm["smooth_similarity"]
    np.testing.assert_allclose(smooth, _expected(raw, adata.obsm["X_pca"], 5), atol=1e-6)
    names = np.asarray(adata.uns["smooth_candidates"]["name"])
    assert (pred == names[smooth.argmax(1)]).all()
    assert len(raw_pred) == len(pred) == adata.n_obs
    assert not np.allclose(smooth, raw)


def test_smoothing_over_all_cells_gives_everyone_the_mean(untrained):
    """k = n - 1: every cell's neighbours are all the others, so every row is the mean;
    default graph (the cell–text vectors) and a subset through ``indices``."""
    model, adata = untrained
    model.predict_zero_shot(adata, key_added="raw", ontology=False)
    raw = adata.obsm["raw_similarity"]
    n = adata.n_obs
    pred = model.predict_zero_shot(adata, key_added="all", ontology=False, smooth_neighbors=n - 1)
    np.testing.assert_allclose(
        adata.obsm["all_similarity"], np.broadcast_to(raw.mean(0), raw.shape), atol=1e-6
    )
    assert len(set(pred)) == 1
    idx = np.arange(0, n, 3)
    sub = model.predict_zero_shot(adata, indices=idx, ontology=False, smooth_neighbors=len(idx) - 1)
    assert len(sub) == len(idx) and len(set(sub)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"smooth_neighbors": 0}, "smooth_neighbors=0 must be a whole number >= 1"),
        ({"smooth_neighbors": -2}, "must be a whole number >= 1"),
        ({"smooth_neighbors": 2.5}, "must be a whole number >= 1"),
        ({"smooth_neighbors": True}, "must be a whole number >= 1"),
        ({"smooth_neighbors": 59}, "query has 59: pass smooth_neighbors <= 58"),
        ({"smooth_neighbors": 5, "smooth_use_rep": "X_missing"}, "not in adata.obsm"),
        ({"smooth_use_rep": "X_pca"}, "smooth_use_rep is for smooth_neighbors"),
    ],
)
def test_smoothing_bad_input(untrained, kwargs, match):
    model, adata = untrained
    with pytest.raises(ValueError, match=match):
        model.predict_zero_shot(adata, ontology=False, **kwargs)


@pytest.fixture(scope="module")
def halves():
    import celltx

    adata = celltx.datasets.pbmc68k()
    idx = np.random.default_rng(0).permutation(adata.n_obs)
    return adata[np.sort(idx[:350])].copy(), adata[np.sort(idx[350:])].copy()


@pytest.mark.slow
def test_bench_zero_shot_smoothed_rows(halves, tmp_path, monkeypatch):
    import celltx

    monkeypatch.setenv("CELLTX_CACHE_DIR", str(tmp_path))
    source, target = halves
    df = celltx.bench.zero_shot(
        source,
        "cell_type",
        target,
        "cell_type",
        celltx={"model": {**SMALL}, "epochs": 1},
        methods=["celltx zero-shot"],
        smooth_neighbors=[3, 10],
    )
    assert list(df.method) == [
        "celltx zero-shot",
        "celltx zero-shot, smoothed (k=3, cells)",
        "celltx zero-shot, smoothed (k=3, pca)",
        "celltx zero-shot, smoothed (k=10, cells)",
        "celltx zero-shot, smoothed (k=10, pca)",
    ]
    assert df.macro_f1.between(0, 1).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"smooth_neighbors": 0}, "each must be a whole number from 1 to 349"),
        ({"smooth_neighbors": [5, 350]}, "each must be a whole number from 1 to 349"),
        ({"smooth_neighbors": 5, "smooth_graphs": "pca"}, "use a list of"),
        ({"smooth_neighbors": 5, "smooth_graphs": ["umap"]}, "use a list of"),
    ],
)
def test_bench_zero_shot_smoothing_bad_input(halves, kwargs, match):
    import celltx

    source, target = halves
    with pytest.raises(ValueError, match=match):
        celltx.bench.zero_shot(source, "cell_type", target, "cell_type", **kwargs)


def test_smoothing_follows_the_order_of_indices(untrained):
    """With shuffled ``indices`` the graph rows (``obsm``) line up with the scores' rows."""
    model, adata = untrained
    model.predict_zero_shot(adata, key_added="raw", ontology=False)
    raw = adata.obsm["raw_similarity"]
    names = np.asarray(adata.uns["raw_candidates"]["name"])
    idx = np.random.default_rng(0).permutation(adata.n_obs)[:40]
    plain = model.predict_zero_shot(adata, indices=idx, ontology=False)
    assert (plain == names[raw[idx].argmax(1)]).all()
    smooth = model.predict_zero_shot(
        adata, indices=idx, ontology=False, smooth_neighbors=4, smooth_use_rep="X_pca"
    )
    expected = _expected(raw[idx], adata.obsm["X_pca"][idx], 4)
    assert (smooth == names[expected.argmax(1)]).all()
