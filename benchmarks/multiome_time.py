"""CPU time (one thread) of celltx's multiome recipe and the baselines at sci-CAR size.

Simulated paired data of 2,600 cells x 2,000 genes x 50,000 peaks (``atac_depth=0.25``:
about 4,100 open peaks per cell). Prints, per step, the process CPU time (an estimate of
the time on an idle machine with one thread) and the wall time with the load average. The
argument is a JSON ``{label: celltx settings}`` (overriding
``celltx.bench.MULTIOME_CELLTX_DEFAULTS``; ``"panel": 1`` first keeps the 20,000 peaks of
:func:`celltx.data.peak_panel`); each variant trains one epoch. From the repository root::

    OMP_NUM_THREADS=1 python benchmarks/multiome_time.py '{"recipe": {}, "short": {"panel": 1,
        "model": {"max_seq_len": 101, "max_peaks": 100}}}'
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


def fit(mdata, settings: dict):
    cfg = {**celltx.bench.MULTIOME_CELLTX_DEFAULTS, **settings}
    model_kw = {**celltx.bench.MULTIOME_CELLTX_DEFAULTS["model"], **settings.get("model", {})}
    padded = celltx.data.pad_mosaic(mdata)
    celltx.model.ScGPT.setup_mudata(padded)
    model = celltx.model.ScGPT(padded, **model_kw)
    model.train(
        max_epochs=1,
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
    steps = (
        ("rna_pca", lambda: celltx.bench.pca_embedding(m.mod["rna"], n_comps=50)),
        ("atac_lsi", lambda: celltx.bench.atac_lsi_embedding(m.mod["atac"])),
        ("wnn (first call: numba compile)", lambda: celltx.bench.wnn_graph(m)),
        ("wnn (second call)", lambda: celltx.bench.wnn_graph(m)),
    )
    for name, step in steps:
        c = clock()
        step()
        print(f"{name}:", took(c), flush=True)
    for label, settings in variants.items():
        data = m
        if settings.pop("panel", None):
            keep = celltx.data.peak_panel(m.mod["atac"], n_top=20_000)
            data = m.copy()
            data.mod["atac"] = m.mod["atac"][:, keep].copy()
            data.update()
        c = clock()
        model, padded = fit(data, settings)
        print(f"celltx {label}: 1 epoch train", took(c), flush=True)
        c = clock()
        celltx.bench.celltx_multiome_embeddings(model, padded)
        print(f"celltx {label}: 3 embeddings", took(c), flush=True)


if __name__ == "__main__":
    main()
