"""The cross-modal part through CellLM's divide-and-conquer step (issue 27, ``chunk_size``)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import celltx
from celltx.module import ATAC_KEY, cross_modal_loss
from celltx.nn import preset
from celltx.train import divide_and_conquer_step
from celltx.train._contrastive import _chunks, _rng_state, _set_rng_state

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)

CPU = dict(accelerator="cpu", enable_progress_bar=False)


def _model(dropout: float = 0.0, n: int = 60):
    """A small multiome model on a simulated mosaic (paired, RNA-only and ATAC-only cells)."""
    mdata = celltx.datasets.simulate_multiome(
        n_cells=n, n_genes=60, n_peaks=120, mosaic=True, seed=3
    )
    padded = celltx.data.pad_mosaic(mdata)
    celltx.model.ScGPT.setup_mudata(padded)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(
        padded,
        **preset("tiny", n_layers=2, max_seq_len=33, max_peaks=16, peak_selection="idf"),
        dropout=dropout,
    )
    return model, padded


def _batch(model, padded, n: int) -> dict[str, torch.Tensor]:
    x = padded.mod["rna"].X[:n]
    xa = padded.mod["atac"].X[:n]
    dense = lambda a: torch.as_tensor(a.toarray() if hasattr(a, "toarray") else a).float()  # noqa: E731
    return {
        REGISTRY_KEYS.X_KEY: dense(x),
        ATAC_KEY: dense(xa),
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(n, 1),
    }


def _close(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    """Equal up to float32 rounding: entries near zero against the gradients' ``scale``.

    (Some gradients are zero but for rounding, e.g. of biases that the centred loss
    cancels: about 1e-7, against gradients of order 1.)
    """
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def _grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_divide_and_conquer_equals_the_plain_step_on_the_whole_batch():
    # no randomness (no dropout, no augmentation, reproducible token choice in eval mode):
    # one divide-and-conquer step in chunks of 7 has the gradients of one plain step on
    # all 24 cells (the cross-modal loss compares every cell with every other)
    model, padded = _model()
    m = model.module
    m.set_objective(cross_modal=1.0)
    part = m.parts["cross_modal"]
    part.thinning, part.dropout = 0.0, 0.0
    m.eval()
    tensors = _batch(model, padded, 24)
    has = (tensors[REGISTRY_KEYS.X_KEY] > 0).any(1), (tensors[ATAC_KEY] > 0).any(1)
    assert (~has[0]).any() and (~has[1]).any() and (has[0] & has[1]).any()  # a mosaic
    with model._panel(padded):
        m.zero_grad()
        _, _, plain = m(tensors)
        plain.loss.backward()
        ref = _grads(m)
        m.zero_grad()
        out = divide_and_conquer_step(m, tensors, chunk_size=7)
        dc = _grads(m)
    assert len(dc) == len(ref) > 10
    scale = max(float(b.abs().max()) for b in ref)
    for a, b in zip(dc, ref, strict=True):
        assert _close(a, b, scale)
    torch.testing.assert_close(out.loss, plain.loss.detach(), rtol=1e-5, atol=1e-6)
    for key in ("cross_modal_loss", "cross_modal_nce"):
        torch.testing.assert_close(out.extra_metrics[key], plain.extra_metrics[key])


def test_divide_and_conquer_with_augmentation_and_generation_equals_one_graph():
    # random views (thinning, dropout of genes / peaks, model dropout, the generative
    # split): each chunk is encoded again under the random state recorded for it, so the
    # gradients are those of one graph over the whole batch under the same draws
    model, padded = _model(dropout=0.1)
    m = model.module
    m.set_objective(cross_modal=1.0, gep=1.0)
    part = m.parts["cross_modal"]
    m.train()
    tensors = _batch(model, padded, 20)
    with model._panel(padded):
        torch.manual_seed(1)
        m.zero_grad()
        out = divide_and_conquer_step(m, tensors, chunk_size=6)
        dc = _grads(m)

        torch.manual_seed(1)
        chunks = _chunks(tensors, 6)
        states = []
        with torch.no_grad():
            for c in chunks:
                states.append(_rng_state(torch.device("cpu")))
                inf = m.inference(**m._get_inference_input(c))
                part.embed(m, c, inf)
        m.zero_grad()
        embs: dict[str, list[torch.Tensor]] = {}
        gen = 0.0
        for c, s in zip(chunks, states, strict=True):
            _set_rng_state(s, torch.device("cpu"))
            inf = m.inference(**m._get_inference_input(c))
            for k, v in part.embed(m, c, inf).items():
                embs.setdefault(k, []).append(v)
            g = m.generative(**m._get_generative_input(c, inf))
            lo = m.loss(c, inf, g, skip=("cross_modal",))
            gen = gen + lo.loss * len(c[REGISTRY_KEYS.X_KEY]) / 20
        z = {k: torch.cat(v) for k, v in embs.items()}
        cm, _ = cross_modal_loss(
            z["joint"], z["rna"], z["atac"], z["has_rna"], z["has_atac"], part.temperature, part.gap
        )
        (cm + gen).backward()
        ref = _grads(m)
    assert len(dc) == len(ref) > 10
    scale = max(float(b.abs().max()) for b in ref)
    for a, b in zip(dc, ref, strict=True):
        assert _close(a, b, scale)
    torch.testing.assert_close(out.loss, (cm + gen).detach(), rtol=1e-5, atol=1e-6)


def test_train_multiome_with_chunk_size(monkeypatch):
    from celltx.train import _contrastive

    steps, real = [], _contrastive.divide_and_conquer_step

    def spy(module, tensors, chunk_size, backward):
        steps.append((len(tensors[REGISTRY_KEYS.X_KEY]), chunk_size))
        return real(module, tensors, chunk_size, backward)

    monkeypatch.setattr(_contrastive, "divide_and_conquer_step", spy)
    model, padded = _model(n=48)
    model.train(max_epochs=2, task="multiome", batch_size=32, chunk_size=16, lr=1e-2, **CPU)
    assert steps and all(chunk == 16 for _, chunk in steps) and max(b for b, _ in steps) > 16
    loss = model.history["cross_modal_loss_train"].to_numpy(dtype=float)
    assert len(loss) == 2 and np.isfinite(loss).all() and loss[-1] > 0
    assert model._training_plan_cls.__name__ == "PretrainingPlan"  # not kept after train()
    assert float(model.module.cell_offset.abs().sum()) > 0  # the part's "after" step ran
    emb = model.get_latent_representation(padded)
    assert emb.shape == (padded.n_obs, model.config.d_model) and np.isfinite(emb).all()


def test_chunk_size_needs_a_chunked_part():
    model, _ = _model(n=24)
    with pytest.raises(ValueError, match="task='multiome'"):
        model.train(max_epochs=1, task="generative", chunk_size=8, **CPU)
