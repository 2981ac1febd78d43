"""Rank-value gene selection (representation issue, item 1) and the token-retention check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import sparse

import celltx
from celltx.data import Tokenizer, nonzero_medians
from celltx.nn import ScGPTConfig


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
    model = celltx.model.ScGPT(
        adata, d_model=16, n_layers=1, n_heads=2, max_seq_len=24, gene_selection="rank"
    )
    x = adata.X[:40].toarray()
    want = nonzero_medians(adata.X)
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
    plain = celltx.model.ScGPT(adata, d_model=16, n_layers=1, n_heads=2, max_seq_len=24)
    assert "gene_medians" not in plain.module.state_dict()


def test_token_retention_rank_beats_random_at_small_budgets(pbmc):
    df = celltx.bench.token_retention(pbmc, "cell_type", max_seq_len=[48]).set_index("selection")
    assert df.loc["all", "retention"] == 1.0
    assert df.loc["rank", "knn_accuracy"] > df.loc["random", "knn_accuracy"] + 0.05
    assert df.loc["rank", "mean_tokens"] <= 47
    with pytest.raises(ValueError, match="not a column"):
        celltx.bench.token_retention(pbmc, "nope")
    with pytest.raises(ValueError, match="Unknown selections"):
        celltx.bench.token_retention(pbmc, "cell_type", selections=["hvg"])
