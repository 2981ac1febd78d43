"""Multiome (RNA + ATAC): simulator, 10x loaders and the multiome benchmark."""

from __future__ import annotations

import logging
import warnings

import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import celltx
from celltx.datasets._multiome import peak_coordinates

from _helpers import DATA, need

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)


def _is_counts(x) -> bool:
    v = x.data if sparse.issparse(x) else np.asarray(x)
    return bool(np.all(v >= 0)) and bool(np.all(v == np.round(v)))


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


@pytest.fixture(scope="module")
def paired():
    return celltx.datasets.simulate_multiome(seed=0)


@pytest.fixture(scope="module")
def mosaic():
    return celltx.datasets.simulate_multiome(n_cells=400, mosaic=True, seed=0)


# --------------------------------------------------------------------------------------
# simulator
# --------------------------------------------------------------------------------------
def test_simulator_shapes_counts_labels(paired):
    rna, atac = paired.mod["rna"], paired.mod["atac"]
    assert paired.n_obs == 600
    assert rna.shape == (600, 200) and atac.shape == (600, 400)
    for a in (rna, atac):
        assert sparse.issparse(a.X) and _is_counts(a.X) and a.X.sum() > 0
        assert (a.obs_names == paired.obs_names).all()
        assert (a.obs["cell_type"] == paired.obs["cell_type"]).all()
    assert paired.obs["cell_type"].nunique() == 5
    assert "modality" not in paired.obs and "batch" not in paired.obs
    # ATAC is sparse small counts, RNA has ~1,000 UMIs per cell
    density = atac.X.nnz / np.prod(atac.shape)
    assert 0.05 < density < 0.6 and atac.X.max() <= 20
    assert 500 < rna.X.sum(axis=1).mean() < 2000
    # peak names and coordinates agree; every peak is linked to a real gene
    coords = peak_coordinates(atac.var_names)
    assert (coords["chrom"].to_numpy() == atac.var["chrom"].astype(str).to_numpy()).all()
    assert (coords["start"].to_numpy() == atac.var["start"].to_numpy()).all()
    assert (coords["end"].to_numpy() == atac.var["end"].to_numpy()).all()
    assert atac.var_names.is_unique
    assert atac.var["linked_gene"].notna().all()
    assert set(atac.var["linked_gene"].astype(str)) <= set(rna.var_names)
    assert (atac.var["linked_gene"].value_counts() == 2).all()
    # a linked peak lies near its gene, on the same chromosome
    genes = rna.var.loc[atac.var["linked_gene"].astype(str)]
    assert (genes["chrom"].astype(str).to_numpy() == atac.var["chrom"].astype(str).to_numpy()).all()
    assert (np.abs(genes["start"].to_numpy() - atac.var["start"].to_numpy()) < 50_000).all()
    truth = paired.uns["simulation"]
    assert truth["latent"].shape == (600, 10)
    assert (truth["rna_counts"] != rna.X).nnz == 0


def test_simulator_extra_peaks_and_batches():
    m = celltx.datasets.simulate_multiome(n_cells=100, n_genes=20, n_peaks=50, n_batches=3, seed=2)
    atac = m.mod["atac"]
    assert atac.var["linked_gene"].notna().sum() == 40  # 20 genes × 2 peaks
    assert atac.var["linked_gene"].isna().sum() == 10
    assert atac.var_names.is_unique
    assert m.obs["batch"].nunique() == 3
    assert (m.mod["rna"].obs["batch"] == m.obs["batch"]).all()


def test_linked_peaks_correlate_with_their_gene(mosaic):
    paired = mosaic.obs_names[(mosaic.obs["modality"] == "paired").to_numpy()]
    rna = mosaic.mod["rna"][paired].X.toarray()
    atac = mosaic.mod["atac"][paired].X.toarray()
    expr = np.log1p(rna / rna.sum(axis=1, keepdims=True) * 1e4)
    gene = mosaic.mod["rna"].var_names.get_indexer(
        mosaic.mod["atac"].var["linked_gene"].astype(str)
    )
    linked = (_standardize(expr[:, gene]) * _standardize(atac)).mean(axis=0)
    shuffled_gene = np.random.default_rng(0).permutation(gene)
    shuffled = (_standardize(expr[:, shuffled_gene]) * _standardize(atac)).mean(axis=0)
    assert linked.mean() > 0.15
    assert (linked > 0).mean() > 0.9
    assert linked.mean() > shuffled.mean() + 0.15
    assert abs(shuffled.mean()) < 0.05


def test_simulator_mosaic_structure(mosaic):
    obs = mosaic.obs
    assert list(obs["modality"].cat.categories) == ["paired", "rna", "atac"]
    counts = obs["modality"].value_counts()
    assert (counts["paired"], counts["rna"], counts["atac"]) == (160, 120, 120)
    rna_cells = set(mosaic.mod["rna"].obs_names)
    atac_cells = set(mosaic.mod["atac"].obs_names)
    mod = obs["modality"].astype(str)
    assert rna_cells == set(obs_names_of(mod, "paired", "rna"))
    assert atac_cells == set(obs_names_of(mod, "paired", "atac"))
    assert not rna_cells & set(obs_names_of(mod, "atac"))
    # muon's own bookkeeping agrees
    assert (mosaic.obsm["rna"].ravel() == mod.isin(["paired", "rna"]).to_numpy()).all()
    assert (mosaic.mod["atac"].obs["modality"] != "rna").all()
    # the hidden counts are kept as ground truth, in mdata.obs_names order
    truth = mosaic.uns["simulation"]
    assert truth["rna_counts"].shape == (400, 200) and truth["atac_counts"].shape == (400, 400)
    rows = mosaic.obs_names.get_indexer(mosaic.mod["atac"].obs_names)
    assert (truth["atac_counts"][rows] != mosaic.mod["atac"].X).nnz == 0


def obs_names_of(modality: pd.Series, *values: str) -> list[str]:
    return modality.index[modality.isin(values)].tolist()


def test_simulator_is_deterministic():
    a = celltx.datasets.simulate_multiome(n_cells=120, mosaic=(0.5, 0.25, 0.25), seed=7)
    b = celltx.datasets.simulate_multiome(n_cells=120, mosaic=(0.5, 0.25, 0.25), seed=7)
    c = celltx.datasets.simulate_multiome(n_cells=120, mosaic=(0.5, 0.25, 0.25), seed=8)
    for mod in ("rna", "atac"):
        assert (a.mod[mod].obs_names == b.mod[mod].obs_names).all()
        assert (a.mod[mod].X != b.mod[mod].X).nnz == 0
    assert (a.obs["cell_type"] == b.obs["cell_type"]).all()
    assert (a.mod["atac"].var_names == c.mod["atac"].var_names).all()
    assert (a.uns["simulation"]["rna_counts"] != c.uns["simulation"]["rna_counts"]).nnz > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_peaks": 2.5}, "n_peaks"),
        ({"mosaic": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"mosaic": "yes"}, "mosaic"),
        ({"atac_specific": 2.0}, "atac_specific"),
        ({"rna_depth": 0}, "rna_depth"),
    ],
)
def test_simulator_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        celltx.datasets.simulate_multiome(**kwargs)


# --------------------------------------------------------------------------------------
# peak coordinates and the 10x reader
# --------------------------------------------------------------------------------------
def test_peak_coordinates():
    names = ["chr1:100-600", "chrX-5-20", "chrUn_KI270742v1:1000-1500", "GL000194.1_7_9"]
    df = peak_coordinates(names)
    assert df.index.tolist() == names
    assert df["chrom"].tolist() == ["chr1", "chrX", "chrUn_KI270742v1", "GL000194.1"]
    assert df["start"].tolist() == [100, 5, 1000, 7]
    assert df["end"].tolist() == [600, 20, 1500, 9]
    assert df["start"].dtype == np.int64
    with pytest.raises(ValueError, match="chrom:start-end"):
        peak_coordinates(["chr1:100-600", "CD3E", "chr2:5"])
    with pytest.raises(ValueError, match="start > end"):
        peak_coordinates(["chr1:600-100"])


def _write_10x_h5(path, n_cells=6, peak_names=None, intervals=None, with_peaks=True, seed=0):
    """A tiny Cell Ranger ARC-style HDF5 (v3 layout): cells × (genes + peaks), CSR by cell."""
    rng = np.random.default_rng(seed)
    genes = ["CD3E", "MS4A1", "LYZ", "LYZ"]  # a duplicate name, as in real files
    peaks = (
        peak_names
        if peak_names is not None
        else ["chr1:100-600", "chr2:1000-1800", "chr2:5000-5400"]
    )
    names = genes + (peaks if with_peaks else [])
    types = ["Gene Expression"] * len(genes) + (["Peaks"] * len(peaks) if with_peaks else [])
    if intervals is None:
        intervals = ["chr1:1-50", "chr11:60-90", "chr12:1-2", "chr12:3-4"] + (
            peaks if with_peaks else []
        )
    dense = rng.poisson(2.0, size=(n_cells, len(names))).astype(np.int32)
    dense[0, 0] = 7
    m = sparse.csr_matrix(dense)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset(
            "barcodes", data=np.array([f"AAAC{i:04d}-1" for i in range(n_cells)], dtype="S")
        )
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([len(names), n_cells], dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array(["genome", "interval"], dtype="S"))
        feat.create_dataset("id", data=np.array([f"ID{i}" for i in range(len(names))], dtype="S"))
        feat.create_dataset("name", data=np.array(names, dtype="S"))
        feat.create_dataset("feature_type", data=np.array(types, dtype="S"))
        feat.create_dataset("genome", data=np.array(["GRCh38"] * len(names), dtype="S"))
        feat.create_dataset("interval", data=np.array(intervals, dtype="S"))
    return dense, len(genes)


def test_read_10x_multiome(tmp_path):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    dense, n_genes = _write_10x_h5(path)
    mdata = celltx.datasets.read_10x_multiome(path)
    assert set(mdata.mod) == {"rna", "atac"}
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert rna.shape == (6, 4) and atac.shape == (6, 3)
    assert rna.var_names.is_unique and mdata.var_names.is_unique
    assert rna.obs_names[0] == "AAAC0000-1"
    np.testing.assert_array_equal(rna.X.toarray(), dense[:, :n_genes])  # raw counts kept
    np.testing.assert_array_equal(atac.X.toarray(), dense[:, n_genes:])
    assert atac.var["chrom"].astype(str).tolist() == ["chr1", "chr2", "chr2"]
    assert atac.var["start"].tolist() == [100, 1000, 5000]
    assert atac.var["end"].tolist() == [600, 1800, 5400]
    # the bench's baselines run on what the reader returns
    assert celltx.bench.atac_lsi_embedding(atac, n_comps=1).shape == (6, 1)


def test_read_10x_multiome_coordinates_from_interval(tmp_path):
    path = tmp_path / "m.h5"
    peaks = ["peak_a", "peak_b", "peak_c"]
    _write_10x_h5(
        path, peak_names=peaks, intervals=["NA"] * 4 + ["chr3:10-20", "chr3:30-40", "chr4:5-9"]
    )
    atac = celltx.datasets.read_10x_multiome(path).mod["atac"]
    assert atac.var["chrom"].astype(str).tolist() == ["chr3", "chr3", "chr4"]
    assert atac.var["end"].tolist() == [20, 40, 9]


def test_read_10x_multiome_errors(tmp_path):
    path = tmp_path / "nocoords.h5"
    _write_10x_h5(path, peak_names=["peak_a", "peak_b", "peak_c"], intervals=["NA"] * 7)
    with pytest.raises(ValueError, match="no genomic coordinates"):
        celltx.datasets.read_10x_multiome(path)
    rna_only = tmp_path / "rna_only.h5"
    _write_10x_h5(rna_only, with_peaks=False)
    with pytest.raises(ValueError, match="Peaks"):
        celltx.datasets.read_10x_multiome(rna_only)
    with pytest.raises(ValueError, match="does not exist"):
        celltx.datasets.read_10x_multiome(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="size"):
        celltx.datasets.pbmc10x_multiome(data_dir=tmp_path, size="1m")


def test_real_pbmc_multiome_subset():
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.read_h5mu(need(DATA / "pbmc10x_multiome_subset.h5mu"))
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert rna.shape == (1000, 45) and atac.shape == (1000, 174)
    assert _is_counts(rna.X) and _is_counts(atac.X)
    coords = peak_coordinates(atac.var_names)
    assert coords["chrom"].str.startswith("chr").all() and (coords["end"] > coords["start"]).all()
    # no labels ship with the file: cluster the RNA, then ask how well each embedding
    # recovers those clusters
    x_rna = celltx.bench.pca_embedding(rna)
    tmp = sc.AnnData(obsm={"e": x_rna})
    sc.pp.neighbors(tmp, use_rep="e", random_state=0)
    sc.tl.leiden(
        tmp, resolution=0.5, flavor="igraph", n_iterations=2, directed=False, random_state=0
    )
    mdata.obs["rna_cluster"] = tmp.obs["leiden"].to_numpy()
    noise = np.random.default_rng(0).normal(size=(1000, 10))
    table = celltx.bench.multiome(
        mdata, "rna_cluster", {"random": noise}, baselines=("rna_pca", "atac_lsi")
    )
    assert table["n_cells"].tolist() == [1000, 1000, 1000]
    assert np.isfinite(table[["leiden_ari", "silhouette_label", "knn_accuracy"]].to_numpy()).all()
    assert table.loc["rna_pca", "leiden_ari"] > 0.5
    # 174 peaks carry a weak but real signal about the RNA clusters
    assert table.loc["atac_lsi", "knn_accuracy"] > table.loc["random", "knn_accuracy"] + 0.05


# --------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------
def test_bench_baselines_beat_random(paired):
    noise = np.random.default_rng(0).normal(size=(paired.n_obs, 10))
    table = celltx.bench.multiome(
        paired, "cell_type", {"random": noise}, baselines=("rna_pca", "atac_lsi")
    )
    assert table.index.tolist() == ["random", "rna_pca", "atac_lsi"]
    assert (table["n_cells"] == 600).all()
    assert abs(table.loc["random", "leiden_ari"]) < 0.05
    for name in ("rna_pca", "atac_lsi"):
        assert table.loc[name, "leiden_ari"] > 0.4
        for col in ("leiden_nmi", "silhouette_label", "knn_accuracy"):
            assert table.loc[name, col] > table.loc["random", col]
    assert 0 <= table["silhouette_label"].min() and table["silhouette_label"].max() <= 1


def test_atac_lsi_embedding(paired):
    atac = paired.mod["atac"]
    x = celltx.bench.atac_lsi_embedding(atac, n_comps=12)
    assert x.shape == (600, 12) and x.dtype == np.float32
    norms = np.linalg.norm(x, axis=0)  # U·Σ: column norms are the singular values
    assert (np.diff(norms) <= 1e-3 * norms[0]).all()
    scaled = celltx.bench.atac_lsi_embedding(atac, n_comps=12, scale=True)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, rtol=1e-3)
    # the depth component is dropped: no kept component follows the cell's total counts
    depth = np.log1p(np.asarray(atac.X.sum(axis=1)).ravel())
    corr = np.abs([np.corrcoef(depth, x[:, i])[0, 1] for i in range(12)])
    assert corr.max() < 0.5
    binary = celltx.bench.atac_lsi_embedding(atac, n_comps=5, binarize=True)
    assert binary.shape == (600, 5)
    bad = atac.copy()
    bad.X = -bad.X
    with pytest.raises(ValueError, match="non-negative"):
        celltx.bench.atac_lsi_embedding(bad)


def test_bench_mosaic_mixing(mosaic):
    truth = mosaic.uns["simulation"]
    z = np.concatenate([truth["latent"], truth["latent_atac"]], axis=1)
    separated = z.copy()
    separated[(mosaic.obs["modality"] == "atac").to_numpy()] += 50.0
    rna_only = np.where((mosaic.obs["modality"] == "atac").to_numpy()[:, None], np.nan, z)
    table = celltx.bench.multiome(
        mosaic,
        "cell_type",
        {"mixed": z, "separated": separated, "rna_cells": rna_only},
        baselines=("rna_pca", "atac_lsi"),
        modality_key="modality",
        leiden_resolution=(0.5, 1.0),
    )
    assert set(table["leiden_resolution"]) <= {0.5, 1.0}
    assert table.loc["mixed", "n_cells"] == 400
    assert table.loc["rna_cells", "n_cells"] == 280  # NaN rows are left out
    assert table.loc["rna_pca", "n_cells"] == 280 and table.loc["atac_lsi", "n_cells"] == 280
    assert table.loc["mixed", "modality_mixing"] > 0.7
    assert table.loc["separated", "modality_mixing"] < 0.05
    assert (
        table.loc["mixed", "cross_modality_label_agreement"]
        > table.loc["separated", "cross_modality_label_agreement"] + 0.3
    )
    # a single-modality embedding has no cells of the other modality to mix with
    assert np.isnan(table.loc["rna_pca", "modality_mixing"])
    assert np.isnan(table.loc["rna_cells", "cross_modality_label_agreement"])


def test_multivi_paired_and_mosaic():
    small = {"n_cells": 240, "n_genes": 60, "n_peaks": 120}
    train = {"max_epochs": 3, "accelerator": "cpu", "batch_size": 64}
    p = celltx.datasets.simulate_multiome(**small, n_batches=2, seed=3)
    z = celltx.bench.multivi_embedding(p, batch_key="batch", n_latent=5, **train)
    assert z.shape == (240, 5) and np.isfinite(z).all()
    m = celltx.datasets.simulate_multiome(**small, mosaic=True, seed=3)
    before = (m.mod["rna"].n_obs, m.mod["atac"].n_obs)
    table, embs = celltx.bench.multiome(
        m,
        "cell_type",
        baselines=("multivi",),
        modality_key="modality",
        knn=False,
        multivi_kwargs={"n_latent": 4, **train},
        return_embeddings=True,
    )
    assert embs["multivi"].shape == (240, 4) and np.isfinite(embs["multivi"]).all()
    assert table.loc["multivi", "n_cells"] == 240  # every cell, whatever it was measured in
    assert np.isfinite(table.loc["multivi", "modality_mixing"])
    assert (m.mod["rna"].n_obs, m.mod["atac"].n_obs) == before  # input left alone


def test_bench_bad_input(paired, mosaic):
    with pytest.raises(ValueError, match="Unknown baselines"):
        celltx.bench.multiome(paired, "cell_type", baselines=("rna_pca", "scbasset"))
    with pytest.raises(ValueError, match="labels_key"):
        celltx.bench.multiome(paired, "celltype", baselines=("rna_pca",))
    with pytest.raises(ValueError, match=r"expected \(600, d\)"):
        celltx.bench.multiome(paired, "cell_type", {"short": np.zeros((10, 3))}, baselines=())
    with pytest.raises(ValueError, match="modality_key"):
        celltx.bench.multiome(paired, "cell_type", baselines=("rna_pca",), modality_key="modality")
    with pytest.raises(ValueError, match="leiden_resolution"):
        celltx.bench.multiome(paired, "cell_type", baselines=("rna_pca",), leiden_resolution=[])
    with pytest.raises(ValueError, match="Nothing to score"):
        celltx.bench.multiome(paired, "cell_type", baselines=())
    with pytest.raises(ValueError, match="rna_mod"):
        celltx.bench.multiome(paired, "cell_type", baselines=("rna_pca",), rna_mod="gex")
    with mudata.set_options(pull_on_update=False):
        odd, lognorm = mosaic.copy(), paired.copy()
    odd.obs["modality"] = odd.obs["modality"].astype(str).replace("atac", "protein")
    with pytest.raises(ValueError, match="not recognised"):
        celltx.bench.multiome(odd, "cell_type", baselines=("rna_pca",), modality_key="modality")
    lognorm.mod["rna"].X = lognorm.mod["rna"].X * 0.5
    with pytest.raises(ValueError, match="raw RNA counts"):
        celltx.bench.multivi_embedding(lognorm, max_epochs=1)
    with pytest.raises(ValueError, match="batch_key"):
        celltx.bench.multivi_embedding(paired, batch_key="donor", max_epochs=1)
