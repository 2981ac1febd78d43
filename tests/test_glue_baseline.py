"""GLUE (scglue) as a baseline of celltx.bench.multiome: guidance graph, refusals, the run."""

import importlib.util
import sys

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import celltx
from celltx.bench._multiome._glue import _gene_coordinates, _glue_guidance, _glue_links

HAS_SCGLUE = importlib.util.find_spec("scglue") is not None
HAS_TSS = importlib.util.find_spec("celloracle") is not None


def _pair(rna_var: pd.DataFrame, peaks: list[str], n: int = 30) -> md.MuData:
    """A paired MuData of random counts with the given gene table and peak names."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    rna = ad.AnnData(
        sparse.csr_matrix(rng.poisson(2.0, (n, len(rna_var))).astype(np.float32)),
        obs=obs.copy(),
        var=rna_var,
    )
    atac = ad.AnnData(
        sparse.csr_matrix(rng.poisson(0.5, (n, len(peaks))).astype(np.float32)),
        obs=obs.copy(),
        var=pd.DataFrame(index=peaks),
    )
    return md.MuData({"rna": rna, "atac": atac})


GENES = pd.DataFrame(
    {
        "chrom": ["chr1", "chr1", "chr2"],
        "start": [100_000, 500_000, 100_000],
        "end": [120_000, 520_000, 110_000],
        "strand": ["+", "-", "+"],
    },
    index=["A", "B", "C"],
)


def test_guidance_links_a_peak_to_the_gene_whose_start_is_near():
    peaks = [
        "chr1:99000-99500",  # A's promoter (+ strand: upstream of its start)
        "chr1:85000-85500",  # 14.5 kb upstream of A's promoter: within the 20 kb window
        "chr1:300000-300500",  # 180 kb from A and B: no gene
        "chr1:520500-521000",  # B's promoter (- strand: past its end)
        "chr2:100200-100700",  # in C's body
        "chr3:100000-100500",  # no gene on chr3
    ]
    rna = ad.AnnData(np.zeros((2, 3), np.float32), var=GENES.copy())
    atac = ad.AnnData(np.zeros((2, len(peaks)), np.float32), var=pd.DataFrame(index=peaks))
    graph, n_links = _glue_guidance(rna, atac)
    links = {(u, v) for u, v, t in graph.edges(data="type") if t == "fwd"}
    assert links == {
        ("A", "chr1:99000-99500"),
        ("A", "chr1:85000-85500"),
        ("B", "chr1:520500-521000"),
        ("C", "chr2:100200-100700"),
    }
    assert n_links == 4
    # overlap: weight 1; farther: scglue's power decay, lower
    w = {(u, v): d["weight"] for u, v, d in graph.edges(data=True) if d["type"] == "fwd"}
    assert w[("A", "chr1:99000-99500")] == 1.0
    assert 0 < w[("A", "chr1:85000-85500")] < 0.2
    # symmetric, with a self-loop on every feature (what scglue's check_graph asks for)
    assert {(v, u) for u, v, t in graph.edges(data="type") if t == "rev"} == links
    loops = {u for u, v, t in graph.edges(data="type") if t == "loop"}
    assert loops == {*GENES.index, *peaks}
    # the peaks linked to a highly variable gene are the highly variable peaks
    assert atac.var["highly_variable"].tolist() == [True, True, False, True, True, False]
    # a narrower window drops the far peak
    g, p, _ = _glue_links(rna, atac, extend_range=1_000)
    assert "chr1:85000-85500" not in set(atac.var_names[p])


@pytest.mark.skipif(not HAS_TSS, reason="celloracle's TSS table is not installed (docs/genes.md)")
def test_genes_placed_by_their_start_site_in_the_tss_table():
    tss = celltx.data.tss_table("hg38")
    row = tss[tss["symbol"] == "CD14"].iloc[0]
    rna = ad.AnnData(np.zeros((2, 2), np.float32), var=pd.DataFrame(index=["CD14", "NOTAGENE"]))
    coords = _gene_coordinates(rna, genome="hg38")
    assert coords.loc["CD14", "chrom"] == row["chrom"]
    assert coords.loc["CD14", "chromStart"] == row["tss"]
    assert pd.isna(coords.loc["NOTAGENE", "chrom"])
    peak = f"{row['chrom']}:{row['tss'] - 300}-{row['tss'] + 300}"
    atac = ad.AnnData(np.zeros((2, 1), np.float32), var=pd.DataFrame(index=[peak]))
    graph, _ = _glue_guidance(rna, atac, genome="hg38")
    assert graph.has_edge("CD14", peak)
    assert graph.has_edge("NOTAGENE", "NOTAGENE")  # unplaced: a self-loop only
    assert not graph.has_edge("NOTAGENE", peak)


def test_simulation_graph_comes_from_coordinates_not_ground_truth():
    mdata = celltx.datasets.simulate_multiome(n_cells=20, n_genes=30, n_peaks=80, seed=1)
    rna, atac = mdata.mod["rna"].copy(), mdata.mod["atac"].copy()
    truth = atac.var.pop("linked_gene")  # the graph must not need it
    graph, _ = _glue_guidance(rna, atac)
    found = {}
    for u, v, t in graph.edges(data="type"):
        if t == "fwd":
            found.setdefault(v, set()).add(u)
    for peak, gene in truth.items():
        # the simulation places a linked peak 7-10 kb upstream of its gene and genes
        # 200 kb apart: the window graph recovers exactly the simulated links
        assert found.get(peak, set()) == ({gene} if isinstance(gene, str) else set())


def test_refuses_data_without_coordinates():
    genes = pd.DataFrame(index=["A", "B", "C"])
    mdata = _pair(genes, ["chr1:100-600", "chr1:900-1400"])
    with pytest.raises(ValueError, match="genome"):
        celltx.bench.multiome(mdata, None, methods=("glue",))
    mdata = _pair(GENES.copy(), ["peak0", "peak1"])
    with pytest.raises(ValueError, match="chr:start-end"):
        celltx.bench.multiome(mdata, None, methods=("glue",))
    # coordinates, but no peak near any gene (a genome build mismatch)
    mdata = _pair(GENES.copy(), ["chr9:100-600", "chr9:900-1400"])
    with pytest.raises(ValueError, match="links no peak"):
        celltx.bench.multiome(mdata, None, methods=("glue",))


def test_glue_kwargs_checked():
    mdata = _pair(GENES.copy(), ["chr1:99000-99500", "chr2:100200-100700"])
    with pytest.raises(ValueError, match="Unknown glue_kwargs"):
        celltx.bench.multiome(mdata, None, methods=("glue",), glue_kwargs={"epochs": 3})
    with pytest.raises(ValueError, match="glue_kwargs"):
        celltx.bench.multiome(mdata, None, methods=("rna_pca",), glue_kwargs={})


def test_without_scglue_the_row_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scglue", None)  # find_spec then reports it absent
    mdata = _pair(GENES.copy(), ["chr1:99000-99500", "chr2:100200-100700"])
    with pytest.warns(UserWarning, match="glue"):
        table = celltx.bench.multiome(mdata, None, methods=("rna_pca", "glue"), knn=False)
    assert "pip install 'celltx[glue]'" in table.loc["glue", "error"]
    assert table.loc["rna_pca", "error"] is None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SCGLUE, reason="scglue is not installed (pip install 'celltx[glue]')")
def test_glue_rows_on_a_tiny_mosaic_with_budget():
    mdata = celltx.datasets.simulate_multiome(
        n_cells=150, n_genes=60, n_peaks=120, mosaic=True, seed=3
    )
    table, emb = celltx.bench.multiome(
        mdata,
        "cell_type",
        methods=("glue",),
        modality_key="modality",
        glue_kwargs={"max_seconds": 2, "max_epochs": 10_000},
        return_embeddings=True,
        knn=False,
    )
    assert table.index.tolist() == ["glue"]
    row = table.loc["glue"]
    assert row["error"] is None, row["error"]
    assert 0.0 <= row["foscttm"] <= 1.0
    assert row["n_cells"] == 150  # every cell: RNA-only and ATAC-only ones too
    # the budget stopped both stages long before their 10,000 epochs; epochs reported
    assert 2 <= row["epochs"] < 10_000
    assert 0 < row["seconds"] < 120
    paired = (mdata.obs["modality"] == "paired").to_numpy()
    assert np.isfinite(emb["glue_rna"][paired]).all()
    assert np.isnan(emb["glue_rna"][(mdata.obs["modality"] == "atac").to_numpy()]).all()
    both = (emb["glue_rna"][paired] + emb["glue_atac"][paired]) / 2
    np.testing.assert_allclose(emb["glue"][paired], both, rtol=1e-5, atol=1e-6)
