"""Contrastive learning between two views of a cell, and CellLM's divide-and-conquer step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import celltx
from celltx.module import contrastive_loss
from celltx.nn import preset
from celltx.train import divide_and_conquer_step
from celltx.train._contrastive import _chunks, _rng_state, _set_rng_state


def test_contrastive_loss_prefers_matching_views_and_ignores_offsets():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    noisy = z + 0.05 * torch.randn(16, 8, generator=g)
    good = contrastive_loss(z, noisy, 0.1)
    bad = contrastive_loss(z, noisy.roll(3, 0), 0.1)
    assert good < 0.1 < np.log(16) < bad
    # a constant offset shared by all cells (the <cls> bias early in training) is removed
    torch.testing.assert_close(contrastive_loss(z + 50, noisy + 50, 0.1), good)
    assert contrastive_loss(z[:1], z[:1], 0.1) == 0


@pytest.fixture(scope="module")
def setup():
    adata = celltx.datasets.pbmc68k()[:96].copy()
    celltx.model.ScGPT.setup_anndata(adata)
    model = celltx.model.ScGPT(adata, **preset("tiny", n_layers=2, max_seq_len=48), dropout=0.1)
    model.module.set_objective(contrast=1.0, gep=1.0, mvc=0.5)
    x = torch.as_tensor(adata.X[:40].toarray())
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: torch.zeros(40, 1)}
    return model, adata, tensors


def _grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_divide_and_conquer_gradients_equal_end_to_end(setup):
    model, adata, tensors = setup
    m = model.module
    m.train()
    with model._panel(adata):
        torch.manual_seed(1)
        m.zero_grad()
        out = divide_and_conquer_step(m, tensors, chunk_size=7)
        dc = _grads(m)

        # the same computation in one graph: every chunk under the random state the
        # divide-and-conquer step recorded for it, one backward over the whole batch
        torch.manual_seed(1)
        chunks = _chunks(tensors, 7)
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
            gen = gen + lo.loss * k / 40
        m.skip_parts = set()
        total = contrastive_loss(torch.cat(z1), torch.cat(z2), m.contrast_temperature) + gen
        total.backward()
        ref = _grads(m)
    assert len(dc) == len(ref) > 10
    for a, b in zip(dc, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss, total.detach(), rtol=1e-5, atol=1e-6)
    assert out.reconstruction_loss["reconstruction_loss"].shape == (40,)


def test_two_views_per_cell_in_the_split_pass(setup):
    model, adata, tensors = setup
    m = model.module
    m.train()
    with model._panel(adata):
        inf, _, out = m(tensors)
    assert inf["cell_emb"].shape[0] == 80 and torch.equal(inf["rows"], torch.arange(40).repeat(2))
    # the two views differ in their known / unknown split
    assert not torch.equal(inf["known"][:40], inf["known"][40:])
    assert torch.isfinite(out.extra_metrics["contrast_loss"])
    assert out.reconstruction_loss["reconstruction_loss"].shape == (40,)


def test_train_with_chunks_and_bad_input(tmp_path):
    adata = celltx.datasets.pbmc68k()[:120].copy()
    celltx.model.ScGPT.setup_anndata(adata)
    model = celltx.model.ScGPT(adata, **preset("tiny", max_seq_len=32))
    with pytest.raises(ValueError, match="task='contrastive'"):
        model.train(max_epochs=1, chunk_size=8)
    model.train(
        max_epochs=2,
        batch_size=64,
        chunk_size=16,
        task="contrastive",
        accelerator="cpu",
        enable_progress_bar=False,
        gradient_clip_val=1.0,
    )
    hist = model.history["train_loss"].to_numpy(dtype=float)
    assert len(hist) == 2 and np.isfinite(hist).all()
    assert np.isfinite(model.history["contrast_loss_train"].to_numpy(dtype=float)).all()
    assert type(model)._training_plan_cls.__name__ == "PretrainingPlan"
    assert model._training_plan_cls.__name__ == "PretrainingPlan"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = model.get_latent_representation()
    assert emb.shape == (120, 16) and np.isfinite(emb).all()
    # the training cells' mean output is removed: embeddings are centred, not collapsed
    assert model.module.cell_offset.abs().sum() > 0
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert (unit @ unit.T).mean() < 0.5
    np.testing.assert_allclose(emb[model.train_indices].mean(0), 0, atol=1e-4)


@pytest.mark.slow  # three fresh processes importing celltx (a launcher, 2 gloo ranks): ~17 s idle
def test_divide_and_conquer_gathers_across_processes(tmp_path):
    """Two gloo processes, 20 cells each, give the gradients of one process with 40 cells.

    Without the gather each process would compare only its own 20 cells (6% off in this
    setting); see ``tests/dc_gather_worker.py``.
    """
    import json
    import os
    import sys

    from _helpers import ROOT, run_checked

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    script = ROOT / "tests" / "dc_gather_worker.py"
    run_checked([sys.executable, script, tmp_path], env=env)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["n_tensors"] > 10
    assert res["max_relative_difference"] < 1e-5


def test_gather_rows_is_identity_without_a_process_group():
    from celltx.train import gather_rows

    z = torch.randn(5, 3)
    rows, start = gather_rows(z)
    assert rows is z and start == 0
