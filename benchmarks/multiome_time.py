"""CPU time (one thread) of celltx's multiome recipe and the baselines at sci-CAR size.

Simulated paired data of 2,600 cells x 2,000 genes x 50,000 peaks (``atac_depth=0.25``:
about 4,100 open peaks per cell). Prints, per step, the process CPU time (an estimate of
the time on an idle machine with one thread) and the wall time with the load average. The
argument is a JSON ``{label: celltx settings}`` (overriding
``celltx.bench.MULTIOME_CELLTX_DEFAULTS``: the cross-modal task on its 20,000-peak panel);
each variant trains one epoch (the recipe trains :func:`celltx.bench.multiome_recipe_epochs`,
printed). ``CELLTX_SKIP_BASELINES=1`` leaves out the baselines. From the repository root::

    OMP_NUM_THREADS=1 python benchmarks/multiome_time.py '{"recipe": {}}'
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings

import torch

import celltx


def clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def took(start: tuple[float, float]) -> str:
    cpu, wall = clock()
    return (
        f"cpu {cpu - start[0]:.1f} s, wall {wall - start[1]:.1f} s, load {os.getloadavg()[0]:.1f}"
    )


def fit(mdata, settings: dict, max_epochs: int = 1):
    """The recipe of :func:`celltx.bench.multiome` (task, peak panel), ``max_epochs`` epochs."""
    cfg = {**celltx.bench.MULTIOME_CELLTX_DEFAULTS, **settings}
    model_kw = {**celltx.bench.MULTIOME_CELLTX_DEFAULTS["model"], **settings.get("model", {})}
    padded = celltx.data.pad_mosaic(mdata)
    n_top = cfg.get("peak_panel")
    if n_top is not None and padded.mod["atac"].n_vars > n_top:
        keep = celltx.data.peak_panel(padded.mod["atac"], n_top=n_top)
        padded.mod["atac"] = padded.mod["atac"][:, keep].copy()
        padded.update()
    celltx.model.ScGPT.setup_mudata(padded)
    model = celltx.model.ScGPT(padded, **model_kw)
    model.train(
        max_epochs=max_epochs,
        task=cfg.get("task"),
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        accelerator="cpu",
        enable_progress_bar=False,
    )
    return model, padded


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    variants = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"recipe": {}}
    c = clock()
    m = celltx.datasets.simulate_multiome(
        n_cells=2600, n_genes=2000, n_peaks=50_000, atac_depth=0.25, seed=0
    )
    print("simulate:", took(c), flush=True)
    print("recipe epochs at this size:", celltx.bench.multiome_recipe_epochs(m.n_obs), flush=True)
    steps = (
        ()
        if os.environ.get("CELLTX_SKIP_BASELINES")
        else (
            ("rna_pca", lambda: celltx.bench.pca_embedding(m.mod["rna"], n_comps=50)),
            ("atac_lsi", lambda: celltx.bench.atac_lsi_embedding(m.mod["atac"])),
            ("wnn (first call: numba compile)", lambda: celltx.bench.wnn_graph(m)),
            ("wnn (second call)", lambda: celltx.bench.wnn_graph(m)),
        )
    )
    for name, step in steps:
        c = clock()
        step()
        print(f"{name}:", took(c), flush=True)
    for label, settings in variants.items():
        c = clock()
        model, padded = fit(m, settings)
        print(f"celltx {label}: 1 epoch train", took(c), flush=True)
        c = clock()
        celltx.bench.celltx_multiome_embeddings(model, padded)
        print(f"celltx {label}: 3 embeddings", took(c), flush=True)


if __name__ == "__main__":
    main()
