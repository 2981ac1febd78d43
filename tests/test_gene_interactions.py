"""Attention-based gene interactions and the gene-network benchmark (gene-level issue)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import celltx
from celltx.data import Tokenizer, fixed_gene_tokens
from celltx.nn import SelfAttention, TransformerEncoder, padding_attn_mask, preset


@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_weights_reproduce_sdpa(norm_first):
    torch.manual_seed(0)
    enc = TransformerEncoder(
        2, d_model=16, n_heads=4, d_hid=32, dropout=0.0, norm_first=norm_first
    ).eval()
    x = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    mask = padding_attn_mask(pad)
    # layer 1's attention, recomputed by hand from layer 0's output
    h = enc.layers[0](x, mask)
    attn = enc.layers[1].self_attn
    w = enc.attention_weights(x, mask, layer=-1)
    inp = enc.layers[1].norm1(h) if norm_first else h
    v = attn.Wqkv(inp).view(3, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)[2]
    y = attn.out_proj((w @ v).transpose(1, 2).reshape(3, 7, 16))
    torch.testing.assert_close(y, attn(inp, mask), atol=1e-5, rtol=1e-5)
    assert torch.all(w[1, :, :, 5:] == 0)  # padded keys get no attention
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 7))
    with pytest.raises(ValueError, match="has 2 layers"):
        enc.attention_weights(x, mask, layer=2)


def test_self_attention_weights_shape():
    att = SelfAttention(8, 2)
    assert att.attention_weights(torch.randn(2, 5, 8)).shape == (2, 2, 5, 5)


def test_fixed_gene_tokens_bins_like_the_tokenizer():
    tok = Tokenizer(max_seq_len=64, pad_id=0, cls_id=1, n_bins=11)
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(4, 30, generator=g) * 3)
    ids = torch.arange(2, 32)
    ids[5] = -1  # not in the vocabulary: ignored for binning too
    plain = tok(x, ids, sample="first")  # every expressed gene fits: same bins
    cols = torch.tensor([0, 3, 7, 29])
    fixed = fixed_gene_tokens(tok, x, ids, cols)
    assert fixed.gene_ids.shape == (4, 5)
    assert torch.equal(fixed.gene_ids[:, 1:], ids[cols].expand(4, -1))
    for c in range(4):
        got = dict(zip(plain.gene_ids[c].tolist(), plain.values[c].tolist(), strict=True))
        for j, col in enumerate(cols.tolist()):
            want = got.get(int(ids[col]), 0.0)  # unexpressed genes: value 0
            assert fixed.values[c, j + 1] == want
    with pytest.raises(ValueError, match="vocabulary"):
        fixed_gene_tokens(tok, x, ids, torch.tensor([5]))


@pytest.fixture(scope="module")
def untrained():
    adata = celltx.datasets.pbmc68k()[:120].copy()
    celltx.model.ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(adata, **preset("tiny", n_layers=2, max_seq_len=32))
    return model, adata


def test_interactions_aggregate_per_group(untrained):
    model, adata = untrained
    genes = list(adata.var_names[[0, 5, 9, 40, 100, 200]])
    with pytest.warns(UserWarning, match="neither trained nor loaded"):
        per = model.get_gene_interactions(genes=genes, groupby="cell_type", batch_size=7)
    with pytest.warns(UserWarning):
        overall = model.get_gene_interactions(genes=genes, batch_size=50)
    counts = adata.obs["cell_type"].value_counts()
    assert set(per) == set(counts[counts > 0].index)
    assert list(overall.index) == genes and overall.index.name == "source"
    # the overall mean is the cell-weighted mean of the group means
    mix = sum(per[g] * counts[g] for g in per) / counts.sum()
    np.testing.assert_allclose(overall.to_numpy(), mix.to_numpy(), atol=1e-6)
    # a target's attention over the gene tokens sums to at most 1 (<cls> takes the rest)
    col_sums = overall.sum(0)
    assert ((col_sums > 0) & (col_sums <= 1 + 1e-6)).all()


def test_interactions_without_zeros_average_over_expressing_cells(untrained):
    model, adata = untrained
    genes = list(adata.var_names[:8])
    rows = [3, 4, 10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = model.get_gene_interactions(genes=genes, indices=rows, include_zeros=False)
    x = torch.as_tensor(adata.X[rows].toarray())
    cols = torch.arange(8)
    with model._panel(adata):
        attn, present = model.module.gene_attention(x, cols, include_zeros=False)
    pair = (present[:, :, None] & present[:, None, :]).double()
    with np.errstate(invalid="ignore"):
        want = ((attn.double() * pair).sum(0) / pair.sum(0)).numpy().T
    np.testing.assert_allclose(got.to_numpy(), want, atol=1e-6, equal_nan=True)
    assert np.isnan(want).any() == bool((pair.sum(0) == 0).any())


def test_interactions_default_genes_and_bad_input(untrained, caplog):
    model, adata = untrained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = model.get_gene_interactions(indices=range(10))
        assert scores.shape == (31, 31)  # max_seq_len - 1 genes
        with pytest.raises(ValueError, match="not a column of adata.obs"):
            model.get_gene_interactions(genes=list(adata.var_names[:3]), groupby="nope")
        with pytest.raises(ValueError, match="not genes of the data"):
            model.get_gene_interactions(genes=["CD3E", "NOT_A_GENE"])
        with pytest.raises(ValueError, match="duplicated"):
            model.get_gene_interactions(genes=["CD3E", "CD3E"])
        with pytest.raises(TypeError, match="list of gene names"):
            model.get_gene_interactions(genes="CD3E")
        with pytest.raises(ValueError, match="layers"):
            model.get_gene_interactions(genes=list(adata.var_names[:3]), layer=5)
        other = adata[:20].copy()
        other.var_names = [f"{g}_X" if i == 0 else g for i, g in enumerate(other.var_names)]
        with pytest.raises(ValueError, match="not in the model's vocabulary"):
            model.get_gene_interactions(other, genes=[other.var_names[0], other.var_names[1]])


def test_interaction_changes():
    genes = ["A", "B", "C", "D"]
    ctrl = pd.DataFrame(np.full((4, 4), 0.25), index=genes, columns=genes)
    stim = ctrl.copy()
    stim.loc["A", "C"] = 0.05
    stim.loc["A", "D"] = 0.35
    stim.loc["A", "B"] = np.nan
    out = celltx.tl.interaction_changes({"stim": stim, "ctrl": ctrl}, "A", "stim", "ctrl")
    assert out["target"].tolist() == ["C", "D", "B"]  # |-0.2| > |0.1|, NaN last, A left out
    np.testing.assert_allclose(out["change"].to_numpy()[:2], [-0.2, 0.1])
    assert list(out.columns) == ["target", "stim", "ctrl", "change", "fold_change"]
    assert len(celltx.tl.interaction_changes({"s": stim, "c": ctrl}, "A", "s", "c", n_top=1)) == 1
    with pytest.raises(ValueError, match="not a group"):
        celltx.tl.interaction_changes({"stim": stim}, "A", "stim", "ctrl")
    with pytest.raises(ValueError, match="not a source gene"):
        celltx.tl.interaction_changes({"stim": stim, "ctrl": ctrl}, "Z", "stim", "ctrl")
    with pytest.raises(TypeError, match="dict group"):
        celltx.tl.interaction_changes(stim, "A", "stim", "ctrl")


@pytest.fixture(scope="module")
def sim():
    return celltx.datasets.simulate_perturbseq(n_genes=120, n_perturbations=12, n_combos=0, seed=3)


def test_gene_network_coexpression_beats_random(sim):
    df = celltx.bench.gene_network(sim, sim, methods=["pearson", "random"]).set_index("method")
    assert df.loc["pearson", "n_edges"] > 20
    # the simulator's targets co-vary with their regulators: co-expression finds edges
    assert df.loc["pearson", "auprc_ratio"] > 2.0
    assert df.loc["pearson", "early_precision"] > df.loc["random", "early_precision"]
    assert 0.5 < df.loc["random", "auprc_ratio"] < 1.5
    directed = celltx.bench.gene_network(sim, sim, methods=["random"], directed=True)
    assert directed["n_pairs"].iloc[0] == 2 * df.loc["random", "n_pairs"]


def test_gene_network_celltx_methods_and_bad_input(sim):
    adata = sim.copy()
    celltx.model.ScGPT.setup_anndata(adata)
    model = celltx.model.ScGPT(adata, **preset("tiny"))
    model.train(max_epochs=1, batch_size=64, accelerator="cpu", enable_progress_bar=False)
    genes = list(adata.var_names[:40])
    grn = sim.uns["simulation"]["grn"]
    df = celltx.bench.gene_network(
        adata, grn, methods=["attention", "embedding"], model=model, genes=genes
    )
    assert df["error"].isna().all(), df["error"].tolist()
    assert np.isfinite(df[["auprc", "early_precision"]].to_numpy()).all()
    with pytest.raises(ValueError, match="'source' and 'target'"):
        celltx.bench.gene_network(sim, pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="no edge"):
        celltx.bench.gene_network(sim, pd.DataFrame({"source": ["x"], "target": ["y"]}))
    with pytest.raises(ValueError, match="uns\\['simulation'\\]"):
        celltx.bench.gene_network(sim, celltx.datasets.pbmc68k())
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.gene_network(sim, sim, methods=["magic"])


def test_simulator_stores_gene_modules(sim):
    sims = sim.uns["simulation"]
    modules = sims["gene_modules"]["module"]
    loadings = sims["program_loadings"]
    assert list(modules.index) == list(sim.var_names) == list(loadings.index)
    strongest = loadings.abs().to_numpy().max(1)
    assigned = modules.to_numpy() != "unassigned"
    assert assigned.any() and (~assigned).any()
    assert (strongest[assigned] >= 0.25).all() and (strongest[~assigned] < 0.25).all()
    # a gene's module is its program of largest absolute loading
    best = loadings.abs().idxmax(axis=1).to_numpy()
    assert (modules.to_numpy()[assigned] == best[assigned]).all()
