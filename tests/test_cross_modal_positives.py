"""Neighbour positives for the cross-modal loss (issue 27, second pass): pairs and loss."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import celltx
from celltx.data import PARTNER_KEY, multiome_pairs
from celltx.module import PARTS, cross_modal_loss


def _mosaic(n_cells: int = 120, seed: int = 0):
    mdata = celltx.datasets.simulate_multiome(
        n_cells=n_cells, n_genes=60, n_peaks=120, mosaic=True, seed=seed
    )
    padded = celltx.data.pad_mosaic(mdata)
    celltx.model.ScGPT.setup_mudata(padded)
    return padded


def _model(padded, **kw):
    cfg = celltx.nn.preset("tiny", max_seq_len=17, max_peaks=16, contrast_positives="knn", **kw)
    return celltx.model.ScGPT(padded, **cfg)


def _pairs(model, padded):
    x = model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    return model._multiome_pairs_fn("knn", x)(np.arange(padded.n_obs))


def test_bridge_partners_cross_modalities_on_a_mosaic():
    padded = _mosaic()
    pairs = _pairs(_model(padded), padded)
    mods = np.asarray(padded.obs["modality"])
    for own, other in (("rna", "atac"), ("atac", "rna")):
        cells = np.flatnonzero(mods == own)
        # every single-modality cell's partners are cells of the other modality only,
        # reached through the paired cells (the bridge)
        assert all(len(pairs[c]) and (mods[pairs[c]] == other).all() for c in cells)
    # paired cells pair with paired cells only (neighbours in both modalities)
    for c in np.flatnonzero(mods == "paired"):
        assert (mods[pairs[c]] == "paired").all()


def test_paired_positives_agree_in_both_modalities():
    # cells 0-3: neighbours in RNA are (0, 1), (2, 3); in ATAC (0, 2), (1, 3): no cell has
    # a neighbour that both modalities agree on, except where they coincide
    rna = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.05]], dtype=np.float32)
    atac = np.array([[1, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 0.05]], dtype=np.float32)
    both = np.ones(5, dtype=bool)
    pairs = multiome_pairs(rna, atac, both, both, k=1)
    for c, cand in enumerate(pairs):
        for p in cand:  # each partner is among the 2k nearest in RNA and in ATAC
            for emb in (rna, atac):
                sim = emb @ emb[c] / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb[c])
                sim[c] = -np.inf
                assert p in np.argsort(-sim)[:2]
    assert pairs[0].tolist() == [4] and pairs[4].tolist() == [0]  # close in both
    assert pairs[1].tolist() == [] or 4 not in pairs[1]  # close in RNA only: no partner
    # a neighbour in one modality only is not enough: RNA kNN alone would pair 1 with 0 / 4
    rna_only = multiome_pairs(rna, rna, both, both, k=1)
    assert set(rna_only[1]) != set(pairs[1])


def test_pairs_without_paired_cells_fall_back_to_within_modality(caplog):
    emb = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    has_rna = np.arange(10) < 5
    with caplog.at_level(logging.WARNING):
        pairs = multiome_pairs(emb, emb, has_rna, ~has_rna, k=2)
    assert "no bridge" in caplog.text
    for c, cand in enumerate(pairs):
        assert len(cand) and (has_rna[cand] == has_rna[c]).all()


def test_pairs_reject_mismatched_rows():
    emb = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="one row per cell"):
        multiome_pairs(emb, emb[:3], np.ones(4, bool), np.ones(4, bool))


def test_cross_modal_positives_reject_batch_modes():
    padded = _mosaic(60)
    model = _model(padded)
    x = model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    with pytest.raises(ValueError, match="contrast_positives='knn'"):
        model._multiome_pairs_fn("mnn", x)


def test_loss_with_partners_differs_and_reduces_without():
    g = torch.Generator().manual_seed(0)
    joint, rna, atac = (torch.randn(8, 4, generator=g) for _ in range(3))
    has_rna = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    has_atac = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    old = cross_modal_loss(joint, rna, atac, has_rna, has_atac, 0.1, 2.0)
    none = torch.full((8,), -1)
    same = cross_modal_loss(joint, rna, atac, has_rna, has_atac, 0.1, 2.0, none)
    assert torch.allclose(old[0], same[0]) and torch.allclose(old[1], same[1])
    # an RNA-only cell (4) partnered with an ATAC-only cell (6): only the joint term links them
    partner = torch.tensor([1, 0, -1, -1, 6, -1, 4, -1])
    new = cross_modal_loss(joint, rna, atac, has_rna, has_atac, 0.1, 2.0, partner)
    assert not torch.allclose(old[0], new[0])

    # the joint ↔ joint term (4 terms with partners, 3 without): lower when the partners'
    # joint embeddings coincide
    def joint_term(j):
        args = (j, rna, atac, has_rna, has_atac, 0.1, 2.0)
        return 4 * cross_modal_loss(*args, partner)[1] - 3 * cross_modal_loss(*args)[1]

    close = joint.clone()
    close[6] = close[4]
    assert joint_term(close) < joint_term(joint)


def test_cross_modal_part_reads_the_partner(monkeypatch):
    padded = _mosaic(60)
    model = _model(padded)
    seen = []
    import celltx.module._cross_modal as cm

    real = cm.cross_modal_loss

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("partner"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cm, "cross_modal_loss", spy)
    model.train(
        max_epochs=1,
        task="multiome",
        batch_size=20,
        train_size=1.0,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    assert seen and all(p is not None for p in seen)
    p = seen[0]
    n = len(p)
    assert p[: n // 2].tolist() == list(range(n // 2, 2 * (n // 2)))
    assert PARTS["cross_modal"].name == "cross_modal"
    assert np.isfinite(model.history["cross_modal_loss_train"].to_numpy(dtype=float)).all()
    assert PARTNER_KEY == "contrast_partner"


def test_bridge_pairs_with_within_modality_neighbours():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 4)).astype(np.float32)
    has_rna, has_atac = (
        np.arange(30) < 20,
        np.arange(30) >= 10,
    )  # 10 RNA-only, 10 paired, 10 ATAC-only
    bridge = multiome_pairs(emb, emb, has_rna, has_atac, k=3)
    both = multiome_pairs(emb, emb, has_rna, has_atac, k=3, within=True)
    for c in range(10):  # RNA-only: ATAC-only partners, plus cells with RNA when within
        assert len(bridge[c]) and (~has_rna[bridge[c]]).all()
        assert set(bridge[c]) < set(both[c]) and has_rna[both[c]].any()
    for c in range(20, 30):
        assert len(bridge[c]) and (~has_atac[bridge[c]]).all()
        assert set(bridge[c]) < set(both[c]) and has_atac[both[c]].any()


def test_partner_gap_pulls_partners_together():
    g = torch.Generator().manual_seed(1)
    joint, rna, atac = (torch.randn(6, 4, generator=g) for _ in range(3))
    both = torch.ones(6, dtype=torch.bool)
    partner = torch.tensor([3, -1, -1, 0, -1, -1])
    args = (joint, rna, atac, both, both, 0.1, 2.0, partner)
    plain, nce = cross_modal_loss(*args)
    pulled, nce_pulled = cross_modal_loss(*args, partner_gap=1.0)
    assert torch.allclose(nce, nce_pulled) and pulled > plain
