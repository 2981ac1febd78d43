"""Rank-value gene selection (representation issue, item 1) and the token-retention check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import sparse

import celltx
from celltx.data import Tokenizer, highly_variable, nonzero_medians
from celltx.nn import ScGPTConfig, preset


def test_rank_keeps_the_genes_most_above_their_median():
    tok = Tokenizer(max_seq_len=3, pad_id=0, cls_id=1, n_bins=5)
    x = torch.tensor([[10.0, 1.0, 3.0, 0.0, 2.0]])
    ids = torch.arange(2, 7)
    # gene 0 is always high (median 10), genes 1 and 4 are usually low (median 0.5)
    scale = 1.0 / torch.tensor([10.0, 0.5, 3.0, 1.0, 0.5])
    t = tok(x, ids, sample="rank", scale=scale)
    assert sorted(t.gene_ids[0, 1:].tolist()) == [3, 6]  # relative 2.0 and 4.0, not 10 → 1.0
    plain = tok(x, ids, sample="rank", scale=torch.ones(5))  # no medians: expression rank
    assert sorted(plain.gene_ids[0, 1:].tolist()) == [2, 4]
    with pytest.raises(ValueError, match="needs scale"):
        tok(x, ids, sample="rank")


def test_rank_ties_are_reproducible_and_zero_slots_filled():
    tok = Tokenizer(max_seq_len=5, pad_id=0, cls_id=1, n_bins=5, zero_fraction=0.5)
    x = torch.tensor([[1.0] * 6 + [0.0] * 6])
    ids = torch.arange(2, 14)
    a = tok(x, ids, sample="rank", scale=torch.ones(12))
    b = tok(x, ids, sample="rank", scale=torch.ones(12))
    assert torch.equal(a.gene_ids, b.gene_ids)
    vals = a.values[0, 1:]
    assert (vals > 0).sum() == 2 and (vals == 0).sum() == 2  # 2 expressed + 2 zero slots


def test_nonzero_medians_dense_sparse_and_subsampled():
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, (300, 20)).astype(float)
    x[:, 3] = 0
    want = np.array([np.median(c[c > 0]) if (c > 0).any() else 1.0 for c in x.T])
    np.testing.assert_allclose(nonzero_medians(x), want)
    np.testing.assert_allclose(nonzero_medians(sparse.csr_matrix(x)), want)
    sub = nonzero_medians(x, max_cells=100)
    assert sub.shape == (20,) and sub[3] == 1.0


def test_config_refuses_unknown_selection():
    with pytest.raises(ValueError, match="gene_selection"):
        ScGPTConfig(gene_selection="top")


def test_rank_model_is_deterministic_and_saves_its_medians(tmp_path):
    adata = celltx.datasets.pbmc68k()
    celltx.model.ScGPT.setup_anndata(adata)
    model = celltx.model.ScGPT(adata, **preset("tiny", max_seq_len=24), gene_selection="rank")
    x = adata.X[:40].toarray()
    want = nonzero_medians(adata.X, linear=True)  # of depth-normalised linear values
    got = model.module.gene_medians[torch.as_tensor(model._gene_ids(adata))].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    model.module.train()
    with model._panel(adata):
        xt = torch.as_tensor(x)
        t1, t2 = model.module.tokenize(xt), model.module.tokenize(xt)
    assert torch.equal(t1.gene_ids, t2.gene_ids)  # the same genes in training, every time
    model.module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e1 = model.get_latent_representation(indices=range(30))
        model.save(tmp_path / "m", overwrite=True)
        loaded = celltx.model.ScGPT.load(tmp_path / "m", adata=adata)
        e2 = loaded.get_latent_representation(indices=range(30))
    assert torch.equal(loaded.module.gene_medians, model.module.gene_medians)
    np.testing.assert_allclose(e1, e2, atol=1e-6)
    # the default (random) model keeps no medians in its weights: old saves stay compatible
    plain = celltx.model.ScGPT(adata, **preset("tiny", max_seq_len=24))
    assert "gene_medians" not in plain.module.state_dict()


def test_token_retention_rank_beats_random_at_small_budgets(pbmc):
    df = celltx.bench.token_retention(pbmc, "cell_type", max_seq_len=[48]).set_index("selection")
    assert df.loc["all", "retention"] == 1.0
    assert df.loc["rank", "knn_accuracy"] > df.loc["random", "knn_accuracy"] + 0.05
    assert df.loc["rank", "mean_tokens"] <= 47
    assert df.loc["hvg", "mean_tokens"] <= 47 and 0 < df.loc["hvg", "knn_accuracy"] <= 1
    with pytest.raises(ValueError, match="not a column"):
        celltx.bench.token_retention(pbmc, "nope")
    with pytest.raises(ValueError, match="Unknown selections"):
        celltx.bench.token_retention(pbmc, "cell_type", selections=["top"])


def test_priority_genes_come_first_then_rank_order():
    tok = Tokenizer(max_seq_len=4, pad_id=0, cls_id=1, n_bins=5)
    x = torch.tensor([[9.0, 1.0, 3.0, 0.0, 2.0, 5.0], [9.0, 0.0, 0.0, 0.0, 2.0, 5.0]])
    ids = torch.arange(2, 8)
    scale = torch.ones(6)
    priority = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # genes 1, 2, 3 are "HVGs"
    t = tok(x, ids, sample="rank", scale=scale, priority=priority)
    # cell 0: its expressed priority genes (2, 1) first, then the best other gene (0)
    assert t.gene_ids[0, 1:].tolist() == [4, 3, 2]
    # cell 1 expresses no priority gene: plain rank order
    assert t.gene_ids[1, 1:].tolist() == [2, 7, 6]
    assert torch.equal(
        t.gene_ids, tok(x, ids, sample="rank", scale=scale, priority=priority).gene_ids
    )
    # without priority the order is rank order (unchanged behaviour)
    assert tok(x, ids, sample="rank", scale=scale).gene_ids[0, 1:].tolist() == [2, 7, 4]


def test_random_fraction_mixes_random_choices_into_rank_selection():
    tok = Tokenizer(max_seq_len=4, pad_id=0, cls_id=1, n_bins=None)
    x = torch.arange(1.0, 21.0).repeat(400, 1)  # every cell: gene j has value j + 1
    ids = torch.arange(2, 22)
    ranked = tok(x, ids, sample="rank", scale=torch.ones(20)).gene_ids[:, 1:]
    assert (ranked.sort(1).values == torch.tensor([19, 20, 21])).all()  # the top 3 genes
    torch.manual_seed(0)
    mixed = tok(x, ids, sample="rank", scale=torch.ones(20), random_fraction=0.5).gene_ids[:, 1:]
    is_top = (mixed.sort(1).values == torch.tensor([19, 20, 21])).all(1)
    # about half of the cells drew their genes at random (top 3 by chance: 1 / 1140)
    assert 0.4 < 1 - is_top.float().mean() < 0.6
    torch.manual_seed(0)
    hvg = torch.zeros(20)
    hvg[:5] = 1  # with priority: random cells still draw among the priority genes first
    drawn = tok(x, ids, sample="rank", scale=torch.ones(20), priority=hvg, random_fraction=1.0)
    assert (drawn.gene_ids[:, 1:] < 7).all()


def test_highly_variable_finds_genes_that_separate_groups():
    rng = np.random.default_rng(0)
    lam = rng.gamma(2.0, 1.0, 600)
    x = rng.poisson(lam, (400, 600)).astype(float)
    # 20 genes with the usual means, but expressed in half of the cells only (twice as high)
    x[:200, :20] = rng.poisson(2 * lam[:20], (200, 20))
    x[200:, :20] = 0
    mask = highly_variable(x, n_top=50)
    assert mask.sum() == 50 and mask[:20].mean() >= 0.9
    np.testing.assert_array_equal(highly_variable(sparse.csr_matrix(x), n_top=50), mask)
    lognorm = np.log1p(x / x.sum(1, keepdims=True) * 1e4)  # taken as it is
    assert highly_variable(lognorm, n_top=50)[:20].mean() >= 0.9
    assert highly_variable(x, n_top=600).all()


def test_hvg_model_stores_its_genes_and_mixed_training_is_configurable(tmp_path):
    adata = celltx.datasets.pbmc68k()
    celltx.model.ScGPT.setup_anndata(adata)
    kw = preset("tiny", max_seq_len=24)
    model = celltx.model.ScGPT(adata, gene_selection="hvg", n_hvg=100, **kw)
    flags = model.module.gene_hvg[torch.as_tensor(model._gene_ids(adata))].numpy()
    np.testing.assert_array_equal(flags.astype(bool), highly_variable(adata.X, n_top=100))
    model.module.eval()
    with model._panel(adata):
        t = model.module.tokenize(torch.as_tensor(adata.X[:50].toarray()))
        hv = model.module.hvg_priority()
    # each cell's first tokens are its expressed HVGs (as many as fit)
    cols = {int(g): j for j, g in enumerate(model._gene_ids(adata))}
    for row, x in zip(t.gene_ids[:, 1:], adata.X[:50].toarray(), strict=True):
        n_hv = int(((x > 0) & (hv.numpy() > 0)).sum())
        chosen = [hv[cols[int(g)]].item() for g in row if int(g) in cols]
        assert chosen[: min(n_hv, 23)] == [1.0] * min(n_hv, 23)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "m", overwrite=True)
        loaded = celltx.model.ScGPT.load(tmp_path / "m", adata=adata)
    assert torch.equal(loaded.module.gene_hvg, model.module.gene_hvg)
    assert "gene_hvg" not in celltx.model.ScGPT(adata, **kw).module.state_dict()
    mixed = celltx.model.ScGPT(adata, gene_selection="rank", random_token_fraction=1.0, **kw)
    mixed.module.train()
    with mixed._panel(adata):
        xt = torch.as_tensor(adata.X[:40].toarray())
        assert not torch.equal(
            mixed.module.tokenize(xt).gene_ids, mixed.module.tokenize(xt).gene_ids
        )
        mixed.module.eval()  # inference stays deterministic
        assert torch.equal(mixed.module.tokenize(xt).gene_ids, mixed.module.tokenize(xt).gene_ids)
    with pytest.raises(ValueError, match="random_token_fraction"):
        ScGPTConfig(random_token_fraction=0.5)  # with gene_selection="random"
    with pytest.raises(ValueError, match="n_hvg"):
        ScGPTConfig(gene_selection="hvg", n_hvg=0)
