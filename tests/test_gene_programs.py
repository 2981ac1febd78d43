"""Gene programs: celltx.tl.gene_programs, celltx.pl.gene_programs, bench.gene_program_scores."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import celltx
from celltx.bench import gene_program_scores
from celltx.nn import preset


def planted(n_groups: int = 3, size: int = 20, d: int = 16, noise: float = 0.3, seed: int = 0):
    """Gene embeddings around ``n_groups`` random directions, and the true groups."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d))
    x = np.repeat(centres, size, axis=0) + rng.normal(scale=noise, size=(n_groups * size, d))
    genes = [f"G{i:03d}" for i in range(n_groups * size)]
    truth = {g: f"m{i // size}" for i, g in enumerate(genes)}
    return pd.DataFrame(x, index=genes), truth


@pytest.fixture(scope="module")
def pbmc_programs(_pbmc):
    """pbmc68k with programs clustered from its genes' PCA loadings (co-expression)."""
    import scanpy as sc

    adata = _pbmc.copy()
    sc.pp.pca(adata, n_comps=20, random_state=0)
    loadings = pd.DataFrame(adata.varm["PCs"], index=adata.var_names)
    keep = np.linalg.norm(loadings.to_numpy(), axis=1) > 0
    programs = celltx.tl.gene_programs(loadings[keep], n_neighbors=10, resolution=1.0, adata=adata)
    return adata, programs


def test_recovers_planted_programs():
    emb, truth = planted()
    programs = celltx.tl.gene_programs(emb, n_neighbors=10)
    assert list(programs.columns) == ["gene", "program"]
    assert len(programs) == len(emb)
    assert programs["program"].is_monotonic_increasing  # sorted by program
    scores = gene_program_scores(programs, truth=truth)
    assert scores.loc["all", "ari"] > 0.9
    assert scores.loc["all", "nmi"] > 0.9
    assert set(scores.index) == {"0", "1", "2", "all"}
    assert (scores.loc[["0", "1", "2"], "purity"] > 0.9).all()
    # same seed, same programs; the input DataFrame is not changed
    again = celltx.tl.gene_programs(emb.copy(), n_neighbors=10)
    pd.testing.assert_frame_equal(programs, again)


def test_min_size_and_genes_subset():
    emb, truth = planted(size=12)
    genes = list(emb.index[:24])  # two groups
    programs = celltx.tl.gene_programs(emb, genes, n_neighbors=6, min_size=13)
    assert set(programs["gene"]) == set(genes)
    assert (programs["program"] == "unassigned").all()
    assert list(programs["program"].cat.categories) == ["unassigned"]


def test_writes_var_and_uns():
    emb, _ = planted()
    genes = list(emb.index[:40]) + ["OTHER1", "OTHER2"]  # two genes without an embedding
    adata = AnnData(X=np.zeros((3, len(genes)), dtype=np.float32))
    adata.var_names = genes
    programs = celltx.tl.gene_programs(emb, n_neighbors=10, adata=adata, key_added="gp")
    col = adata.var["gp"]
    assert isinstance(col.dtype, pd.CategoricalDtype)
    assert col[["OTHER1", "OTHER2"]].isna().all()
    assert col.iloc[:40].notna().all()
    expected = programs.set_index("gene")["program"]
    assert (col.iloc[:40].astype(str) == expected[genes[:40]].astype(str).to_numpy()).all()
    uns = adata.uns["gp"]
    json.dumps(uns)  # plain strings and lists
    assert "unassigned" not in uns
    assigned = programs[programs["program"] != "unassigned"]
    assert sum(len(v) for v in uns.values()) == len(assigned)  # all embedded genes
    for p, g in uns.items():
        assert set(g) == set(assigned.loc[assigned["program"] == p, "gene"])


def test_bad_input():
    emb, _ = planted()
    with pytest.raises(ValueError, match=r"not in the embedding.*'NOPE1', 'NOPE2'"):
        celltx.tl.gene_programs(emb, [*emb.index[:20], "NOPE1", "NOPE2"])
    with pytest.raises(ValueError, match="too few"):
        celltx.tl.gene_programs(emb, list(emb.index[:10]), n_neighbors=10)
    bad = emb.copy()
    bad.iloc[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*G003"):
        celltx.tl.gene_programs(bad)
    with pytest.raises(ValueError, match="duplicated"):
        celltx.tl.gene_programs(emb, ["G000", "G000", *emb.index[1:30]])
    with pytest.raises(TypeError, match="DataFrame"):
        celltx.tl.gene_programs(emb.to_numpy())
    other = AnnData(X=np.zeros((2, 2), dtype=np.float32))
    other.var_names = ["ENSG1", "ENSG2"]
    with pytest.raises(ValueError, match="shares no gene"):
        celltx.tl.gene_programs(emb, adata=other)
    with pytest.raises(ValueError, match="truth= .*adata="):
        gene_program_scores({"0": ["a", "b"]})


def test_from_model(pbmc):
    model_cls = celltx.model.ScGPT
    model_cls.setup_anndata(pbmc)
    model = model_cls(pbmc, **preset("tiny"))  # untrained
    genes = list(pbmc.var_names[:60])
    programs = celltx.tl.gene_programs(model, genes, n_neighbors=10, adata=pbmc)
    assert sorted(programs["gene"]) == sorted(genes)
    assert pbmc.var["gene_program"].iloc[60:].isna().all()
    with pytest.raises(ValueError, match=r"not in the model's vocabulary.*'NOT_A_GENE'"):
        celltx.tl.gene_programs(model, [*genes, "NOT_A_GENE"])


def test_coherence_above_random(pbmc_programs):
    adata, programs = pbmc_programs
    scores = gene_program_scores(programs, adata, n_random=10)
    summary = scores.loc["all"]
    assert summary["coherence"] > summary["random_coherence"] + 3 * summary["random_coherence_sd"]
    rows = scores.drop(index="all")
    assert (rows["n_measured"] <= rows["n_genes"]).all()
    assert np.isfinite(rows["coherence"]).all()
    # a random partition of the same genes is not coherent
    shuffled = programs.copy()
    shuffled["gene"] = np.random.default_rng(0).permutation(shuffled["gene"].to_numpy())
    null = gene_program_scores(shuffled, adata, n_random=10).loc["all"]
    assert null["coherence"] < summary["coherence"]


def test_coherence_matches_numpy():
    rng = np.random.default_rng(1)
    x = np.log1p(rng.poisson(2.0, (200, 8)).astype(np.float64))
    adata = AnnData(X=x.astype(np.float32))
    adata.var_names = list("abcdefgh")
    scores = gene_program_scores({"p": ["a", "b", "c"]}, adata, n_random=3)
    c = np.corrcoef(adata.X[:, :3].T.astype(np.float64))
    expected = c[np.triu_indices(3, 1)].mean()
    assert scores.loc["p", "coherence"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kind", ["dotplot", "matrixplot", "heatmap"])
def test_plot(pbmc, kind, tmp_path):
    rng = np.random.default_rng(0)
    emb = pd.DataFrame(rng.normal(size=(pbmc.n_vars, 8)), index=pbmc.var_names)
    celltx.tl.gene_programs(emb, n_neighbors=10, resolution=0.5, adata=pbmc)
    programs = list(pbmc.uns["gene_program"])
    out = tmp_path / f"{kind}.png"
    axes = celltx.pl.gene_programs(pbmc, "cell_type", kind=kind, show=False, save=str(out))
    assert isinstance(axes, dict) and axes
    assert out.stat().st_size > 0
    for p in programs:
        assert np.isfinite(pbmc.obs[f"program_{p}"]).all()
    plt.close("all")


def test_plot_bad_input(pbmc):
    with pytest.raises(ValueError, match="No gene programs"):
        celltx.pl.gene_programs(pbmc, "cell_type", show=False)
    pbmc.uns["gene_program"] = {"0": ["CD79A", "MS4A1"], "1": ["NOT_HERE"]}
    with pytest.raises(ValueError, match="kind"):
        celltx.pl.gene_programs(pbmc, "cell_type", kind="violin", show=False)
    with pytest.raises(ValueError, match="groupby"):
        celltx.pl.gene_programs(pbmc, "nope", show=False)
    with pytest.raises(ValueError, match=r"\['7'\]"):
        celltx.pl.gene_programs(pbmc, "cell_type", programs=["7"], show=False)
    with pytest.warns(UserWarning, match="'1'"):
        celltx.pl.gene_programs(pbmc, "cell_type", kind="matrixplot", show=False)
    assert "program_0" in pbmc.obs and "program_1" not in pbmc.obs
    plt.close("all")


def test_plot_from_var_and_subset(pbmc):
    pbmc.var["gp"] = pd.Categorical(
        [
            "0" if g in {"CD79A", "MS4A1"} else "1" if g in {"NKG7", "GNLY"} else None
            for g in pbmc.var_names
        ],
        categories=["0", "1", "unassigned"],
    )
    axes = celltx.pl.gene_programs(pbmc, "cell_type", key="gp", programs=[1], show=False)
    assert "mainplot_ax" in axes
    assert "program_1" in pbmc.obs and "program_0" not in pbmc.obs
    plt.close("all")


def test_scores_accept_mappings_and_series():
    programs = {"0": ["a", "b", "c"], "1": ["d", "e"]}
    truth = pd.Series({"a": "x", "b": "x", "c": "y", "d": "y", "e": "y", "z": "y"})
    scores = gene_program_scores(programs, truth=truth)
    assert list(scores.index) == ["0", "1", "all"]
    assert scores.loc["0", "purity"] == pytest.approx(2 / 3)
    assert scores.loc["all", "n_shared"] == 5
    by_gene = {g: p for p, genes in programs.items() for g in genes}
    pd.testing.assert_frame_equal(gene_program_scores(by_gene, truth=truth), scores)
