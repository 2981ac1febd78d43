from __future__ import annotations

import os

import matplotlib
import pytest
import torch

from _helpers import SMALL

matplotlib.use("Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def _pbmc():
    import celltx

    return celltx.datasets.pbmc68k()


@pytest.fixture
def pbmc(_pbmc):
    """A fresh copy of the bundled pbmc68k AnnData."""
    return _pbmc.copy()


@pytest.fixture(scope="session")
def trained(_pbmc):
    """A small ScGPT trained for 2 epochs on pbmc68k (shared by read-only tests)."""
    import scvi

    import celltx

    scvi.settings.seed = 0
    adata = _pbmc.copy()
    celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = celltx.model.ScGPT(adata, **SMALL)
    model.train(max_epochs=2, batch_size=64, accelerator="cpu", enable_progress_bar=False)
    return model, adata


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
