"""Token-budget batching (issue 15 item 1): grouping, exact sequence lengths, equal results."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import celltx
from celltx.cli import main
from celltx.data import (
    Tokenizer,
    expressed_counts,
    sequence_lengths,
    token_budget_batches,
)
from celltx.model import ScGPT

from _helpers import SMALL


def test_batches_cover_every_cell_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = token_budget_batches(lengths, 2000, max_cells=40)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 40
        assert len(b) == 1 or len(b) * lengths[b].max() <= 2000
    # grouped by length: batches follow the sorted order
    assert np.all(np.diff(lengths[flat]) >= 0)
    # fewer padded tokens than fixed batches of the same mean size, in random order
    padded = sum(len(b) * lengths[b].max() for b in batches)
    size = int(np.ceil(500 / len(batches)))
    fixed = sum(len(c) * c.max() for c in np.array_split(lengths, range(size, 500, size)))
    assert padded < fixed


def test_cell_longer_than_budget_gets_its_own_batch_and_bad_budget():
    assert [b.tolist() for b in token_budget_batches(np.array([10, 500, 12]), 100)] == [
        [0, 2],
        [1],
    ]
    with pytest.raises(ValueError, match="batch_tokens"):
        token_budget_batches(np.array([3]), 0)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3])
def test_sequence_lengths_match_the_tokenizer(zero_fraction):
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(64, 50, generator=g) * 2) * (torch.rand(64, 50, generator=g) > 0.4)
    gene_ids = torch.arange(50)
    gene_ids[[3, 7]] = -1  # two genes outside the vocabulary
    tok = Tokenizer(max_seq_len=20, pad_id=0, cls_id=1, zero_fraction=zero_fraction)
    for i in range(0, 64, 8):  # several small batches, each trimmed to its own longest
        out = tok(x[i : i + 8], gene_ids, sample="hash")
        real = (~out.padding_mask).sum(1).numpy()
        known = (gene_ids >= 0).numpy()
        e = expressed_counts(x[i : i + 8].numpy(), known)
        np.testing.assert_array_equal(
            real, sequence_lengths(e, int(known.sum()), 20, zero_fraction)
        )


def test_expressed_counts_dense_sparse_backed(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.poisson(0.5, size=(25, 12)).astype(np.float32)
    cols = rng.random(12) > 0.3
    want = (x[:, cols] > 0).sum(1)
    np.testing.assert_array_equal(expressed_counts(x, cols), want)
    np.testing.assert_array_equal(expressed_counts(sp.csr_matrix(x), cols, chunk=7), want)
    ad.AnnData(sp.csr_matrix(x)).write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    np.testing.assert_array_equal(expressed_counts(backed.X, cols, chunk=4), want)
    rows = np.array([20, 3, 3, 0, 24])  # unsorted, repeated
    np.testing.assert_array_equal(expressed_counts(backed.X, cols, chunk=2, rows=rows), want[rows])
    np.testing.assert_array_equal(expressed_counts(x, cols, rows=rows), want[rows])


@pytest.fixture(scope="module")
def model():
    adata = celltx.datasets.pbmc68k()
    ScGPT.setup_anndata(adata)
    m = ScGPT(adata, **{**SMALL, "max_seq_len": 512})
    m.is_trained_ = True  # random weights: the equality of batchings is what is tested
    return m


def test_embeddings_equal_plain_batches_in_cell_order(model):
    plain = model.get_latent_representation(batch_size=64, batch_tokens=None)
    budget = model.get_latent_representation(batch_tokens=6000)
    np.testing.assert_allclose(budget, plain, atol=1e-5)
    # the default is a token budget ("auto"), with the same results
    np.testing.assert_allclose(model.get_latent_representation(), plain, atol=1e-5)
    with pytest.raises(ValueError, match="use 'auto', an integer"):
        model.get_latent_representation(batch_tokens="fast")
    idx = np.array([699, 5, 300, 5, 0])  # any order, duplicates included
    np.testing.assert_allclose(
        model.get_latent_representation(indices=idx, batch_tokens=900, batch_size=2),
        plain[idx],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="batch_tokens=1 must be"):
        model.get_latent_representation(batch_tokens=1)


def test_cli_batch_tokens_matches(model, tmp_path, capsys):
    model.save(str(tmp_path / "ckpt"))
    src = tmp_path / "in.h5ad"
    celltx.datasets.pbmc68k().write_h5ad(src)
    out = tmp_path / "out.h5ad"
    argv = ["embed", str(tmp_path / "ckpt"), str(src), str(out), "--device", "cpu"]
    assert main([*argv, "--no-progress", "--batch-tokens", "4096"]) == 0
    emb = ad.read_h5ad(out).obsm["X_scgpt"]
    np.testing.assert_allclose(emb, model.get_latent_representation(), atol=1e-5)
    capsys.readouterr()
    bad = ["embed", str(tmp_path / "ckpt"), str(src), str(tmp_path / "o2.h5ad")]
    with pytest.raises(SystemExit):
        main([*bad, "--device", "cpu", "--batch-tokens", "1"])
    assert "batch tokens 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*bad, "--device", "cpu", "--batch-tokens", "lots"])
    assert "'lots' is not an integer, 'auto' or 'none'" in capsys.readouterr().err
    assert not (tmp_path / "o2.h5ad").exists()
    # plain batches on request
    assert main([*argv, "--no-progress", "--batch-tokens", "none", "--overwrite"]) == 0
    emb = ad.read_h5ad(out).obsm["X_scgpt"]
    np.testing.assert_allclose(emb, model.get_latent_representation(), atol=1e-5)


def test_fix_mmap_threshold_on_glibc():
    import sys

    from celltx.data import fix_mmap_threshold

    ok = fix_mmap_threshold()
    assert isinstance(ok, bool)
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert ok


def test_training_batches_regrouped_every_epoch_within_budget():
    from celltx.data import ShuffledTokenBudgetSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, size=500)
    sampler = ShuffledTokenBudgetSampler(lengths, 4096, max_cells=64, seed=0)
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        cells = np.concatenate(batches)
        assert np.array_equal(np.sort(cells), np.arange(500))  # every cell once an epoch
        assert max(len(b) * lengths[b].max() for b in batches) <= 4096
        assert max(len(b) for b in batches) <= 64
    assert epochs[0] != epochs[1]  # regrouped and reordered
    again = ShuffledTokenBudgetSampler(lengths, 4096, max_cells=64, seed=0)
    assert list(again) == epochs[0]  # reproducible from the seed


def test_train_with_token_budget(model):
    adata = model.adata
    model.train(max_epochs=1, batch_tokens=8192, batch_size=64, accelerator="cpu")
    loader = model.trainer.train_dataloader
    lengths = model._sequence_lengths(adata)
    sizes = []
    for batch in loader:
        x = batch["X"]
        assert x.ndim == 2 and x.shape[1] == adata.n_vars  # whole batches, not wrapped
        sizes.append(len(x))
    assert sum(sizes) == len(model.train_indices) and max(sizes) <= 64
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    train_lengths = lengths[model.train_indices]
    batches = list(loader.sampler)  # the positions (in the training cells) of each batch
    assert max(len(b) * train_lengths[b].max() for b in batches) <= 8192
    with pytest.raises(ValueError, match="batch_tokens is for training on an AnnData in one"):
        model.train(max_epochs=1, batch_tokens=8192, strategy="ddp", devices=2)
    with pytest.raises(ValueError, match="batch_tokens=1 must be"):
        model.train(max_epochs=1, batch_tokens=1)
