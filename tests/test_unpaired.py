"""The unpaired RNA -> ATAC benchmark's bridge (benchmarks/unpaired.py): peak-smoothed gene
activity and the peak-graph label vote."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "unpaired.py"
GRANJA = ROOT.parent / "shared" / "data" / "granja2019_bmmc_scatac.h5ad"


@pytest.fixture(scope="module")
def unpaired():
    spec = importlib.util.spec_from_file_location("unpaired_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _two_groups(rng, n=20):
    """Cells of two groups: peak LSI along two directions, gene activity = group mean + noise."""
    group = np.repeat([0, 1], n)
    lsi = np.where(group[:, None] == 0, [1.0, 0.0], [0.0, 1.0]) + rng.normal(0, 0.05, (2 * n, 2))
    means = np.array([[5.0, 0.0, 1.0], [0.0, 5.0, 1.0]])
    ga = ad.AnnData((means[group] + rng.normal(0, 2.0, (2 * n, 3))).astype(np.float32))
    ga.obsm["X_peaks_lsi"] = lsi.astype(np.float32)
    return ga, group, means


def test_smooth_bridge_averages_gene_activity_over_peak_neighbours(unpaired):
    ga, group, means = _two_groups(np.random.default_rng(0))
    out = unpaired.smooth_bridge(ga, k=20)  # k = group size: each cell gets its group's mean
    for g in (0, 1):
        np.testing.assert_allclose(
            out.X[group == g], np.tile(ga.X[group == g].mean(0), (20, 1)), rtol=1e-5
        )
    assert np.abs(out.X - means[group]).mean() < np.abs(ga.X - means[group]).mean() / 3
    np.testing.assert_array_equal(out.obsm["X_peaks_lsi"], ga.obsm["X_peaks_lsi"])
    assert not np.shares_memory(out.X, ga.X)  # a copy; the input is kept
    one = unpaired.smooth_bridge(ga, k=1)  # the cell itself only
    np.testing.assert_allclose(one.X, ga.X)


def test_smooth_bridge_uses_cosine_distance_in_the_lsi(unpaired):
    # same direction, very different norm (sequencing depth): neighbours by angle, not length
    ga = ad.AnnData(np.array([[1.0], [3.0], [10.0], [20.0]], dtype=np.float32))
    ga.obsm["X_peaks_lsi"] = np.array([[1.0, 0.0], [50.0, 0.0], [0.0, 1.0], [0.0, 50.0]])
    np.testing.assert_allclose(unpaired.smooth_bridge(ga, k=2).X.ravel(), [2, 2, 15, 15])


def test_peak_vote_takes_the_majority_of_peak_neighbours(unpaired):
    ga, group, _ = _two_groups(np.random.default_rng(1))
    pred = np.where(group == 0, "B", "NK").astype(object)
    pred[[0, 25]] = ["NK", "B"]  # one wrong label in each group
    voted = unpaired.peak_vote(pred, ga, k=15)
    np.testing.assert_array_equal(voted, np.where(group == 0, "B", "NK"))
    same = unpaired.peak_vote(pred, ga, k=1)
    np.testing.assert_array_equal(same, pred.astype(str))


@pytest.mark.slow
@pytest.mark.skipif(not GRANJA.exists(), reason=f"Granja 2019 scATAC not at {GRANJA}")
def test_smoothed_bridge_classifies_granja_cells_better_than_raw_gene_activity(unpaired):
    from sklearn.decomposition import PCA
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from celltx.data import gene_activity, tss_table

    try:
        tss_table("hg19")
    except ValueError as err:  # celloracle (its packaged TSS table) not installed
        pytest.skip(str(err))

    atac = ad.read_h5ad(GRANJA)
    atac = atac[atac.obs["cell_type"].isin(list(unpaired.GRANJA_TYPES))]
    atac = atac[np.sort(np.random.default_rng(0).choice(atac.n_obs, 800, replace=False))].copy()
    ga = gene_activity(atac, genome="hg19")
    x = ga.X.toarray()
    ga.X = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    ga.obsm["X_peaks_lsi"] = unpaired.peak_lsi(ga.obs_names, seed=0)
    y = atac.obs["cell_type"].map(unpaired.GRANJA_TYPES).to_numpy()

    def knn(x):
        x = PCA(30, random_state=0).fit_transform(x)
        return cross_val_score(KNeighborsClassifier(15), x, y, cv=5).mean()

    raw, smoothed = knn(ga.X), knn(unpaired.smooth_bridge(ga, k=50).X)
    assert smoothed > raw + 0.1, (raw, smoothed)


def test_smooth_gene_activity_from_peak_counts_and_bad_input():
    """The library function: from the cells' own peak counts (LSI inside), and clear refusals."""
    from anndata import AnnData

    from celltx.data import smooth_gene_activity

    rng = np.random.default_rng(0)
    # two groups of 30 cells with disjoint open peaks; activity: group 0 has gene 0 in one
    # cell only, which smoothing spreads over the group and keeps out of the other
    peaks = np.zeros((60, 40))
    peaks[:30, :20] = rng.binomial(1, 0.5, (30, 20))
    peaks[30:, 20:] = rng.binomial(1, 0.5, (30, 20))
    act = AnnData(np.zeros((60, 2), dtype=np.float32))
    act.X[0, 0] = 30.0
    out = smooth_gene_activity(act, peaks=peaks, k=10, n_comps=5)
    assert act.X[0, 0] == 30.0  # the input is not modified
    assert (out.X[:30, 0] > 0).sum() >= 10  # spread within the group
    assert np.all(out.X[30:, 0] == 0)  # not into the other group
    with pytest.raises(ValueError, match="one"):
        smooth_gene_activity(act)
    with pytest.raises(ValueError, match="same cells"):
        smooth_gene_activity(act, emb=np.ones((5, 2)))
    with pytest.raises(ValueError, match="positive"):
        smooth_gene_activity(act, peaks=peaks, k=0)
