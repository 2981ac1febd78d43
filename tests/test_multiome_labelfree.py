"""celltx.bench.multiome without labels (``labels_key=None``): label-free scores only."""

import numpy as np
import pytest

import celltx

LABEL_COLS = ["leiden_ari", "leiden_nmi", "leiden_resolution", "silhouette_label", "knn_accuracy"]


@pytest.fixture(scope="module")
def unlabelled():
    mdata = celltx.datasets.simulate_multiome(n_cells=120, n_genes=50, n_peaks=100, seed=5)
    latent = np.asarray(mdata.uns["simulation"]["latent"], dtype=np.float32)
    del mdata.obs["cell_type"]  # as the 10x Multiome PBMC subset: no labels
    for mod in mdata.mod.values():
        mod.obs = mod.obs.drop(columns=["cell_type"], errors="ignore")
    return mdata, latent


def test_labels_key_none_scores_foscttm_and_seconds(unlabelled):
    mdata, z = unlabelled
    noise = np.random.default_rng(0).normal(scale=5.0, size=z.shape).astype(np.float32)
    table = celltx.bench.multiome(
        mdata,
        None,
        embeddings={
            "x_joint": z,
            "x_rna": z,
            "x_atac": z,
            "y_joint": z,
            "y_rna": z,
            "y_atac": noise,
        },
        methods=("rna_pca", "atac_lsi"),
    )
    assert table.index.tolist() == ["x_joint", "x_rna", "x_atac", "y_joint", "y_rna", "y_atac"] + [
        "rna_pca",
        "atac_lsi",
    ]
    assert table["error"].isna().all(), table["error"].tolist()
    # label-free: FOSCTTM where a joint / RNA / ATAC triple is given, seconds for the baselines
    assert table.loc["x_joint", "foscttm"] == 0.0
    assert 0.2 < table.loc["y_joint", "foscttm"] < 0.6
    assert (table.loc[["rna_pca", "atac_lsi"], "seconds"] > 0).all()
    # every cell is counted; the label columns are NaN (not scored, not an error)
    assert (table["n_cells"] == mdata.n_obs).all()
    assert table[LABEL_COLS].isna().all().all()
    assert (table["n_clusters"] == 0).all()


def test_labels_key_none_keeps_the_label_free_mixing_score(unlabelled):
    mdata, z = unlabelled
    modality = np.array(["paired", "rna", "atac"])[np.arange(mdata.n_obs) % 3]
    mdata.obs["modality"] = modality
    try:
        table = celltx.bench.multiome(
            mdata, None, embeddings={"x": z}, baselines=(), modality_key="modality", knn=False
        )
    finally:
        del mdata.obs["modality"]
    assert np.isfinite(table.loc["x", "modality_mixing"])
    assert np.isnan(table.loc["x", "cross_modality_label_agreement"])
    assert "knn_accuracy" not in table.columns


def test_a_missing_labels_key_still_raises(unlabelled):
    mdata, z = unlabelled
    with pytest.raises(ValueError, match="labels_key=None"):
        celltx.bench.multiome(mdata, "cell_type", embeddings={"x": z}, baselines=())
