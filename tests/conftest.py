from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs as `pytest -n 2` (README): one process per core. Each worker must use one
    # thread, or two multi-threaded torch / BLAS / numba processes fight over the two cores and
    # run many times slower. Set before torch, numpy or numba are imported by this process.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import matplotlib
import pytest
import torch

from _helpers import SMALL

matplotlib.use("Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # numpy may already be loaded (by a pytest plugin) with its BLAS pool sized to every core
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
