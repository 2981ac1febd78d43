"""Augmented views and neighbour positives of the contrastive part (CLAIRE / NNCLR), and
``train(task="integration")`` with them."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scvi
import torch

import celltx
from celltx.data import (
    PARTNER_KEY,
    NeighbourBatchSampler,
    augment_views,
    drop_genes,
    neighbour_pairs,
    partner_rows,
    thin_counts,
)
from celltx.model import ScGPT
from celltx.module import contrastive_loss
from celltx.nn import preset

from _helpers import SMALL

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


def _counts(n_cells=60, n_genes=80, seed=0, n_batches=2):
    """Two cell types × ``n_batches`` batches of Poisson counts; a batch scales every gene."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n_cells) % 2
    batch = (np.arange(n_cells) // 2) % n_batches
    mean = np.ones((2, n_genes))
    mean[0, : n_genes // 2] = 8.0
    mean[1, n_genes // 2 :] = 8.0
    lam = mean[kind] * (1.0 + batch)[:, None]
    a = ad.AnnData(rng.poisson(lam).astype(np.float32))
    a.var_names = [f"g{i}" for i in range(n_genes)]
    a.obs["type"] = np.array(["A", "B"])[kind]
    a.obs["batch"] = np.array([f"b{i}" for i in range(n_batches)])[batch]
    return a


# --- augmentations -------------------------------------------------------------------------
def test_thinning_keeps_the_expected_depth_ratio():
    torch.manual_seed(0)
    x = torch.poisson(torch.full((4, 5000), 3.0))
    keep = torch.tensor([0.2, 0.5, 0.8, 1.0])
    y = thin_counts(x, keep)
    ratio = y.sum(1) / x.sum(1)
    np.testing.assert_allclose(ratio.numpy(), keep.numpy(), atol=0.02)
    assert torch.equal(y, y.round()) and bool((y <= x).all())  # counts stay counts, thinner
    assert torch.equal(y[3], x[3])
    # non-integer values: expectation keep × value
    z = thin_counts(torch.full((1, 20000), 2.5), 0.4)
    assert abs(float(z.mean()) - 1.0) < 0.03


def test_gene_dropout_removes_genes_before_token_choice():
    torch.manual_seed(0)
    x = torch.ones(2, 1000)
    y = drop_genes(x, 0.3)
    assert 0.25 < float((y == 0).float().mean()) < 0.35
    assert torch.equal(drop_genes(x, 0.0), x)
    # a view of the module is tokenized after dropout: its tokens are genes the view kept
    a = _counts(n_cells=8, n_genes=60)
    ScGPT.setup_anndata(a)
    model = ScGPT(a, **{**SMALL, "max_seq_len": 128}, contrast_gene_dropout=0.5)
    m = model.module
    m.set_objective(contrast=1.0)
    m.train()
    x = torch.as_tensor(a.X[:4])
    inf = m.inference(x)
    tok = inf["tokens"]
    panel = m.panel_gene_ids
    ids = [set(tok.gene_ids[r][~tok.padding_mask[r]][1:].tolist()) for r in range(8)]
    for c in range(4):  # both views of cell c: fewer genes than the cell has, and different
        n_expr = int((x[c] > 0).sum())
        assert len(ids[c]) < n_expr and len(ids[c + 4]) < n_expr
        assert ids[c] != ids[c + 4]
        assert ids[c] <= set(panel[x[c] > 0].tolist())
    # off (the default): both views hold the same genes, as before
    model0 = ScGPT(a, **{**SMALL, "max_seq_len": 128})
    m0 = model0.module
    m0.set_objective(contrast=1.0)
    m0.train()
    t0 = m0.inference(x)["tokens"]
    assert torch.equal(t0.gene_ids[:4], t0.gene_ids[4:])


def test_augment_views_never_empties_a_row():
    torch.manual_seed(0)
    x = torch.zeros(3, 50)
    x[:, 0] = 1.0  # one count per cell
    y = augment_views(x, thinning=0.9, gene_dropout=0.9)
    assert bool((y > 0).any(1).all())


# --- positive pairs ------------------------------------------------------------------------
def test_knn_and_mnn_pairs_on_a_known_case():
    # batch 0: cells 0, 1 (type X), 2 (type Y); batch 1: cells 3 (X), 4 (Y), 5 (Y)
    emb = np.array(
        [[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [1, 0, 0.2], [0, 1, 0.2], [0.1, 1, 0.3]],
        dtype=np.float32,
    )
    batch = np.array([0, 0, 0, 1, 1, 1])
    knn = neighbour_pairs(emb, k=1, batch=batch, mode="knn")
    assert [p.tolist() for p in knn] == [[1], [0], [1], [5], [5], [4]]
    both = neighbour_pairs(emb, k=1, batch=batch, mode="knn+mnn")
    # mutual nearest across batches: 0 ↔ 3 (X) and 2 ↔ 4 (Y); 1's nearest in batch 1 is 3,
    # whose nearest in batch 0 is 0, so 1 gets none (not mutual)
    assert [p.tolist() for p in both] == [[1, 3], [0], [1, 4], [0, 5], [2, 5], [4]]
    # "mnn": the cross-batch partners, within-batch ones only for cells without any
    mnn = neighbour_pairs(emb, k=1, batch=batch, mode="mnn")
    assert [p.tolist() for p in mnn] == [[3], [0], [4], [0], [2], [4]]
    # without batches: kNN over all cells
    assert neighbour_pairs(emb, k=1)[0].tolist() == [1]
    with pytest.raises(ValueError, match="mode="):
        neighbour_pairs(emb, mode="umap")


def test_small_batch_gives_fewer_positives_and_says_so(caplog):
    emb = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    batch = np.array([0] * 10 + [1] * 2)
    with caplog.at_level(logging.WARNING, logger="celltx.data._augment"):
        pairs = neighbour_pairs(emb, k=5, batch=batch)
    assert "fewer within-batch positives" in caplog.text
    assert [len(p) for p in pairs] == [5] * 10 + [1, 1]


def test_sampler_puts_each_anchor_with_a_neighbour():
    pairs = [np.array([(i + 1) % 10]) for i in range(10)]
    pairs[3] = np.zeros(0, dtype=np.int64)  # no candidates: paired with itself
    s = NeighbourBatchSampler(pairs, batch_size=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 3 and sum(len(b) for b in batches) == 12
    for b in batches:
        m = len(b) // 2
        for a, p in zip(b[:m], b[m:], strict=True):
            assert p == (a if a == 3 else (a + 1) % 10)
    assert partner_rows(4).tolist() == [2, 3, 0, 1]
    assert partner_rows(3).tolist() == [1, 0, -1]


def test_loss_with_positives_reduces_to_the_old_loss():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    old = contrastive_loss(z1, z2, 0.1)
    none = torch.full((8,), -1)
    torch.testing.assert_close(contrastive_loss(z1, z2, 0.1, partner=none), old)
    # a cell's positive is its own second view: the same loss
    torch.testing.assert_close(contrastive_loss(z1, z2, 0.1, partner=torch.arange(8)), old)
    # rows 4..7 are near-copies of cells 0..3: true partners cost less than false ones, and
    # the filter drops the false pairs (lowest similarity first)
    z = torch.randn(4, 5)
    a1 = torch.cat([z, z + 0.01 * torch.randn(4, 5)])
    a2 = a1 + 0.01 * torch.randn(8, 5)
    true = partner_rows(8)
    far = torch.tensor([5, 6, 7, 4, 3, 0, 1, 2])
    assert contrastive_loss(a1, a2, 0.1, partner=true) < contrastive_loss(a1, a2, 0.1, far)
    kept = contrastive_loss(a1, a2, 0.1, partner=far)
    filtered = contrastive_loss(a1, a2, 0.1, partner=far, filter_fraction=0.99)
    assert filtered < kept
    mixed = torch.tensor([4, 6, 7, 4, 0, 0, 1, 2])  # 0 ↔ 4 true, the others false
    torch.testing.assert_close(
        contrastive_loss(a1, a2, 0.1, partner=mixed, filter_fraction=0.75),
        contrastive_loss(a1, a2, 0.1, partner=torch.tensor([4, -1, -1, -1, 0, -1, -1, -1])),
    )


# --- bad input ------------------------------------------------------------------------------
def test_integration_needs_batches_and_positives_check_settings():
    a = _counts()
    ScGPT.setup_anndata(a)
    model = ScGPT(a, **SMALL)
    with pytest.raises(ValueError, match="task='integration' needs batches"):
        model.train(max_epochs=1, task="integration", **CPU)
    with pytest.raises(ValueError, match="contrast_positives='mnn' pairs cells across batches"):
        ScGPT(a, **SMALL, contrast_positives="mnn").train(max_epochs=1, task="contrastive", **CPU)
    with pytest.raises(ValueError, match="contrast_positives="):
        ScGPT(a, **SMALL, contrast_positives="nn")
    with pytest.raises(ValueError, match="contrast_thinning="):
        ScGPT(a, **SMALL, contrast_thinning=1.5)
    b = _counts()
    ScGPT.setup_anndata(b, batch_key="batch")
    with pytest.raises(ValueError, match="leave out batch_tokens"):
        ScGPT(b, **SMALL).train(max_epochs=1, task="integration", batch_tokens=512, **CPU)


# --- training ------------------------------------------------------------------------------
@pytest.mark.slow
def test_integration_task_trains_with_neighbour_positives(caplog):
    a = _counts(n_cells=64, n_batches=2)
    scvi.settings.seed = 0
    ScGPT.setup_anndata(a, batch_key="batch")
    model = ScGPT(a, **SMALL, gene_selection="rank", contrast_k=40, contrast_refresh=1)
    seen = []
    real = model._refresh_callback

    def spy(state, mode):
        cb = real(state, mode)
        fn = cb.fn
        cb.fn = lambda: (fn(), seen.append(len(state["splitter"].sampler.pairs)))
        return cb

    model._refresh_callback = spy
    with caplog.at_level(logging.WARNING, logger="celltx.data._augment"):
        model.train(max_epochs=2, task="integration", batch_size=16, **CPU)
    assert "fewer within-batch positives" in caplog.text  # k=40 > the ~29 cells of a batch
    assert seen == [len(model.train_indices)]  # refreshed once, after epoch 1 of 2
    assert np.isfinite(model.history["contrast_loss_train"].to_numpy(dtype=float)).all()
    emb = model.get_latent_representation()
    assert emb.shape == (a.n_obs, SMALL["d_model"]) and np.isfinite(emb).all()


@pytest.mark.slow
def test_chunked_step_with_partners_and_augmentation():
    a = _counts(n_cells=32)
    scvi.settings.seed = 0
    ScGPT.setup_anndata(a, batch_key="batch")
    model = ScGPT(a, **SMALL, contrast_thinning=0.5, contrast_gene_dropout=0.2)
    model.train(max_epochs=1, task="integration", batch_size=16, chunk_size=4, **CPU)
    assert np.isfinite(model.history["contrast_loss_train"].to_numpy(dtype=float)).all()
    batch = {k: torch.as_tensor(v) for k, v in {"X": a.X[:8]}.items()}
    batch[PARTNER_KEY] = partner_rows(8)
    from celltx.train import divide_and_conquer_step

    model.module.train()
    out = divide_and_conquer_step(model.module, batch, 3)
    assert torch.isfinite(out.loss)


@pytest.mark.slow
def test_bench_integration_trains_the_celltx_recipe():
    a = _counts(n_cells=60)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    table = celltx.bench.integration(
        a,
        "batch",
        "type",
        methods=("celltx", "pca"),
        method_kwargs={"celltx": {"epochs": 1, "model": {"d_model": 32, "max_seq_len": 64}}},
        fast=True,
    )
    assert {"celltx", "PCA (unintegrated)"} <= set(table.index)
    assert np.isfinite(float(table.loc["celltx", "Total"]))
    assert float(table.loc["celltx", "seconds"]) > 0


def test_divide_and_conquer_with_augmented_views_and_partners_equals_one_graph():
    from scvi import REGISTRY_KEYS

    from celltx.train import divide_and_conquer_step
    from celltx.train._contrastive import _chunks, _rng_state, _set_rng_state

    adata = celltx.datasets.pbmc68k()[:40].copy()
    ScGPT.setup_anndata(adata)
    model = ScGPT(
        adata,
        **preset("tiny", max_seq_len=48),
        dropout=0.1,
        contrast_thinning=0.5,
        contrast_gene_dropout=0.2,
        contrast_filter=0.25,
    )
    m = model.module
    m.set_objective(contrast=1.0, gep=1.0)
    m.train()
    x = torch.as_tensor(adata.X[:16].toarray())
    tensors = {REGISTRY_KEYS.X_KEY: x, PARTNER_KEY: partner_rows(16)}
    grads = lambda: [p.grad.clone() for p in m.parameters() if p.grad is not None]  # noqa: E731
    with model._panel(adata):
        torch.manual_seed(1)
        m.zero_grad()
        out = divide_and_conquer_step(m, tensors, chunk_size=5)
        dc = grads()
        # the same in one graph, chunk by chunk under the recorded random states
        torch.manual_seed(1)
        plain = {REGISTRY_KEYS.X_KEY: x}
        chunks = _chunks(plain, 5)
        states = []
        with torch.no_grad():
            for c in chunks:
                states.append(_rng_state(torch.device("cpu")))
                m.inference(**m._get_inference_input(c))
        m.zero_grad()
        m.skip_parts = {"contrast"}
        z1, z2, gen = [], [], 0.0
        for c, s in zip(chunks, states, strict=True):
            _set_rng_state(s, torch.device("cpu"))
            inf, _, lo = m(c)
            k = len(c[REGISTRY_KEYS.X_KEY])
            z1.append(inf["cell_emb"][:k])
            z2.append(inf["cell_emb"][k:])
            gen = gen + lo.loss * k / 16
        m.skip_parts = set()
        con = contrastive_loss(
            torch.cat(z1), torch.cat(z2), 0.1, partner=partner_rows(16), filter_fraction=0.25
        )
        (con + gen).backward()
        ref = grads()
    assert len(dc) == len(ref) > 5
    for a, b in zip(dc, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss, (con + gen).detach(), rtol=1e-5, atol=1e-6)
