"""Inference in bf16 vs float32: speed and deviation of the cell embeddings.

``model.inference_precision = "bf16"`` (``celltx embed --precision bf16``) runs every query
under bf16 autocast, on CPUs too. This script embeds scanpy's bundled 700 PBMCs with two
models in both precisions and prints cells/s, tokens/s, the speed-up and the cosine between
each cell's bf16 and float32 embedding (as 1 − cosine: median and 99th percentile) and the overlap of their
15-nearest-neighbour sets.

``small``
    d_model 64, 2 layers, trained 5 epochs on the cells (the tutorials' size).
``scgpt_human``
    scGPT_human's shape (d_model 512, 12 layers, 8 heads, max_seq_len 1,200), random
    weights (speed does not depend on the weights; the deviation of a trained model may
    differ).

Run from the repository root, on an otherwise idle machine::

    python benchmarks/inference_precision.py [--threads N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scvi
import torch
from sklearn.neighbors import NearestNeighbors

import celltx
from celltx.model import ScGPT

SIZES = {name: celltx.nn.preset(name) for name in ("small", "scgpt_human")}


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 15) -> float:
    ia = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a, return_distance=False)[:, 1:]
    ib = NearestNeighbors(n_neighbors=k + 1).fit(b).kneighbors(b, return_distance=False)[:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ia, ib, strict=True)]))


def timed(model, adata, batch_size: int, repeats: int) -> tuple[np.ndarray, float]:
    model.get_latent_representation(adata, indices=np.arange(32), batch_size=batch_size)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        emb = model.get_latent_representation(adata, batch_size=batch_size)
        best = min(best, time.perf_counter() - t)
    return emb, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adata = celltx.datasets.pbmc68k()
    rows = []
    for name in args.sizes:
        scvi.settings.seed = 0
        a = adata.copy()
        ScGPT.setup_anndata(a)
        model = ScGPT(a, **SIZES[name])
        if name == "small":
            model.train(max_epochs=5, batch_size=32, accelerator="cpu", enable_progress_bar=False)
        else:
            model.is_trained_ = True  # random weights on purpose (speed only)
        # tokens per cell: <cls> + its expressed genes, at most max_seq_len
        expressed = np.asarray((a.X > 0).sum(1)).ravel()
        tokens = int((np.minimum(expressed, SIZES[name]["max_seq_len"] - 1) + 1).sum())
        out = {}
        for precision in ("fp32", "bf16"):
            model.inference_precision = precision
            out[precision] = timed(model, a, args.batch_size, args.repeats)
        (e32, t32), (e16, _) = out["fp32"], out["bf16"]
        cos = (e32 * e16).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e16, axis=1)
        for precision, (_, t) in out.items():
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "seconds": round(t, 2),
                    "cells/s": round(a.n_obs / t, 1),
                    "tokens/s": round(tokens / t),
                    "speed-up": round(t32 / t, 2),
                    "median 1 - cosine": "0"
                    if precision == "fp32"
                    else (f"{np.median(1 - cos):.1e}"),
                    "99th pct 1 - cosine": "0"
                    if precision == "fp32"
                    else (f"{np.percentile(1 - cos, 99):.1e}"),
                    "15-NN overlap": 1.0
                    if precision == "fp32"
                    else round(knn_overlap(e32, e16), 3),
                }
            )
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
    print(
        f"\n{adata.n_obs} cells, batch {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}, bf16 CPU kernels: "
        f"{torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    )


if __name__ == "__main__":
    main()
