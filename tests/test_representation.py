"""celltx.bench.embedding: celltx's cell representation next to PCA and scVI."""

from __future__ import annotations

import numpy as np
import pytest

import celltx


def test_embedding_bench_rows_and_skips(pbmc):
    small = pbmc[:200].copy()
    df = celltx.bench.embedding(
        small,
        "cell_type",
        methods=["celltx", "pca", "scvi"],
        method_kwargs={"celltx": {"epochs": 1, "accelerator": "cpu", "model": {"d_model": 16}}},
    ).set_index("method")
    assert list(df.index) == ["celltx", "pca", "scvi"]
    assert df.loc["celltx", "error"] is None, df.loc["celltx", "error"]
    for m in ("celltx", "pca"):
        assert 0 < df.loc[m, "knn_accuracy"] <= 1 and np.isfinite(df.loc[m, "leiden_nmi"])
    # pbmc68k holds log-normalised values: scVI is skipped with the reason, not run
    assert np.isnan(df.loc["scvi", "knn_accuracy"]) and "raw counts" in df.loc["scvi", "error"]
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.embedding(small, "cell_type", methods=["umap"])
    with pytest.raises(ValueError, match="not a column"):
        celltx.bench.embedding(small, "nope")


def test_pooling_choices(trained):
    """Cell embedding choices: <cls>, mean and expression-weighted mean of the token outputs,
    their concatenation; the means checked against the encoder's own outputs."""
    import torch
    from scvi import REGISTRY_KEYS

    model, adata = trained
    idx = np.arange(40)
    emb = {
        p: model.get_latent_representation(indices=idx, pooling=p)
        for p in ("cls", "mean", "weighted", "concat")
    }
    d = model.config.d_model
    assert emb["concat"].shape == (40, 2 * d) and emb["mean"].shape == (40, d)
    np.testing.assert_allclose(emb["concat"][:, :d], emb["cls"], atol=1e-5)
    np.testing.assert_allclose(emb["concat"][:, d:], emb["mean"], atol=1e-5)
    assert not np.allclose(emb["mean"], emb["weighted"], atol=1e-3)
    # the mean by hand from the encoder's outputs
    x = torch.as_tensor(model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)[idx].toarray())
    m = model.module
    with torch.inference_mode(), model._panel(adata):
        out = m.inference(x, generative=False, sample="hash")
    real = ~out["tokens"].padding_mask
    real[:, 0] = False
    h = out["h"].float()
    want = torch.stack([h[i][real[i]].mean(0) for i in range(40)]).numpy()
    np.testing.assert_allclose(emb["mean"], want, atol=1e-5)
    with pytest.raises(ValueError, match="pooling='max'"):
        model.get_latent_representation(indices=idx, pooling="max")


def test_cell_embedding_owns_its_memory(trained):
    """The <cls> embedding is a copy, not a view of the (B, L, D) outputs: a view kept every
    batch's whole output alive while results were collected (peak memory grew with cells)."""
    import torch
    from scvi import REGISTRY_KEYS

    model, adata = trained
    x = torch.as_tensor(model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)[:16].toarray())
    with torch.inference_mode(), model._panel(adata):
        emb, _ = model.module.cell_embedding(x)
    assert emb.untyped_storage().nbytes() == emb.numel() * emb.element_size()
