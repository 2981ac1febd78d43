"""Cross-modal contrastive alignment (issue 27): the ``cross_modal`` part and ``task='multiome'``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import celltx
from celltx.module import PARTS, cross_modal_loss


def _views(n: int = 16, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_cross_modal_loss_prefers_matched_views():
    z = _views()
    both = torch.ones(len(z), dtype=torch.bool)
    matched, _ = cross_modal_loss(z, z, z, both, both, 0.1)
    crossed, _ = cross_modal_loss(z, z, z.roll(1, 0), both, both, 0.1)
    assert matched < crossed


def test_cross_modal_loss_pulls_an_offset_modality_in():
    # a constant offset between the RNA and ATAC views (the mosaic's RNA-only and ATAC-only
    # cells apart) costs the gap term, relative to the spread of the embeddings
    z = _views()
    both = torch.ones(len(z), dtype=torch.bool)
    loss_same, nce_same = cross_modal_loss(z, z, z, both, both, 0.1)
    loss_off, nce_off = cross_modal_loss(z, z, z + 5.0, both, both, 0.1)
    assert float(loss_same - nce_same) == pytest.approx(0.0, abs=1e-6)
    assert float(loss_off - nce_off) > 1.0
    no_gap, _ = cross_modal_loss(z, z, z + 5.0, both, both, 0.1, gap=0.0)
    assert float(no_gap) == pytest.approx(float(nce_off))


def test_cross_modal_loss_uses_only_measured_views():
    z = _views()
    has_rna = torch.ones(len(z), dtype=torch.bool)
    no_atac = torch.zeros(len(z), dtype=torch.bool)
    garbage = torch.full_like(z, float("nan"))  # rows of an unmeasured modality are ignored
    loss, nce = cross_modal_loss(z, z, garbage, has_rna, no_atac, 0.1)
    assert torch.isfinite(loss) and torch.isfinite(nce)
    none = torch.zeros(len(z), dtype=torch.bool)
    loss, _ = cross_modal_loss(z, garbage, garbage, none, none, 0.1)
    assert float(loss) == 0.0


def test_cross_modal_part_is_registered():
    part = PARTS["cross_modal"]
    assert part.temperature > 0 and part.gap > 0
    assert celltx.model.TASKS["multiome"] == {"cross_modal": 1.0}


@pytest.fixture(scope="module")
def mosaic_model():
    mdata = celltx.datasets.simulate_multiome(n_cells=80, n_genes=60, n_peaks=120, mosaic=True)
    padded = celltx.data.pad_mosaic(mdata)
    celltx.model.ScGPT.setup_mudata(padded)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(
        padded,
        **celltx.nn.preset("tiny", max_seq_len=33, max_peaks=16, peak_selection="idf"),
    )
    model.train(
        max_epochs=1,
        task="multiome",
        lr=1e-2,
        batch_size=32,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    return model, padded


def test_multiome_task_trains_the_cross_modal_part(mosaic_model):
    model, padded = mosaic_model
    assert model.module.objective == {"cross_modal": 1.0}
    loss = model.history["cross_modal_loss_train"].to_numpy(dtype=float)
    assert np.isfinite(loss).all() and loss[-1] > 0
    # the centred objective leaves a constant offset, stored after training
    assert float(model.module.cell_offset.abs().sum()) > 0
    emb = model.get_latent_representation(padded)
    assert emb.shape == (padded.n_obs, model.config.d_model)
    assert np.isfinite(emb).all()  # RNA-only and ATAC-only cells embedded in the same space


def test_multiome_task_trains_beside_generation():
    # cross-modal generation (predict_rna_from_atac) needs the gene prompt: both together
    mdata = celltx.datasets.simulate_multiome(n_cells=40, n_genes=40, n_peaks=60, mosaic=True)
    padded = celltx.data.pad_mosaic(mdata)
    celltx.model.ScGPT.setup_mudata(padded)
    model = celltx.model.ScGPT(padded, **celltx.nn.preset("tiny", max_seq_len=17, max_peaks=8))
    model.train(
        max_epochs=1,
        task="multiome",
        loss_weights={"gep": 1.0},
        batch_size=20,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    assert model.module.objective == {"gep": 1.0, "cross_modal": 1.0}
    for key in ("cross_modal_loss_train", "gep_mse_train"):
        assert np.isfinite(model.history[key].to_numpy(dtype=float)).all()


def test_multiome_task_needs_two_modalities():
    adata = celltx.datasets.simulate_multiome(n_cells=40, n_genes=40, n_peaks=40).mod["rna"]
    adata = adata.copy()
    celltx.model.ScGPT.setup_anndata(adata)
    model = celltx.model.ScGPT(adata, **celltx.nn.preset("tiny"))
    with pytest.raises(ValueError, match="setup_mudata"):
        model.train(max_epochs=1, task="multiome", accelerator="cpu")


@pytest.mark.slow
def test_cross_modal_training_matches_a_cells_rna_to_its_atac():
    # trained a few epochs, a cell's RNA-alone embedding is nearer its own ATAC-alone
    # embedding than most cells' (FOSCTTM well under 0.5, the value of unrelated embeddings)
    mdata = celltx.datasets.simulate_multiome(n_cells=150)
    celltx.model.ScGPT.setup_mudata(mdata)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(
        mdata,
        **celltx.nn.preset(
            "small",
            n_layers=1,
            max_seq_len=33,
            max_peaks=32,
            dropout=0.0,
            gene_selection="rank",
            peak_selection="idf",
            atac_zero_fraction=0.0,
        ),
    )
    model.train(
        max_epochs=10,
        task="multiome",
        lr=1e-2,
        batch_size=32,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    emb = celltx.bench.celltx_multiome_embeddings(model, mdata)
    score = celltx.bench.foscttm(emb["celltx_rna"], emb["celltx_atac"])
    assert score < 0.25, score
