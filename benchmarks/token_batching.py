"""Token-budget batching vs fixed batches for embedding and training: speed, padding, memory.

Embeds cells whose numbers of expressed genes vary (Kang 2018 PBMCs, raw counts, from
``../shared/data``; scanpy's bundled pbmc68k when that file is absent) with a celltx model of
the default size (d_model 256, 4 layers, max_seq_len 1,200; random weights: speed does not
depend on them). Each configuration runs in a fresh process, so that its peak resident
memory (``ru_maxrss``) is its own. Prints cells/s, real tokens/s, the share of padded
tokens and peak RSS.

``--train`` measures one training epoch instead (generative objective, a smaller model:
d_model 64, 2 layers, max_seq_len 1,200), with fixed batches of 32 cells against
``train(batch_tokens=N)``.

Run from the repository root, on an otherwise idle machine::

    python benchmarks/token_batching.py [--cells 2000] [--threads 1] [--train]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2018_ifnb.h5ad"
CONFIGS = [
    {"batch_size": 32, "batch_tokens": None},
    {"batch_size": 64, "batch_tokens": None},
    {"batch_tokens": 16_384},
    {"batch_tokens": 32_768},
]
TRAIN_CONFIGS = [
    {"batch_size": 32, "batch_tokens": None},
    {"batch_size": 64, "batch_tokens": 8_192},
    {"batch_size": 128, "batch_tokens": 16_384},
]


def child(cells: int, threads: int, cfg: dict, train: bool = False) -> dict:
    import anndata as ad
    import scvi
    import torch

    import celltx
    from celltx.data import expressed_counts, sequence_lengths, token_budget_batches
    from celltx.model import ScGPT

    torch.set_num_threads(threads)
    if KANG.exists():
        adata = ad.read_h5ad(KANG)
        adata = adata[np.random.default_rng(0).choice(adata.n_obs, cells, replace=False)].copy()
        data = f"Kang 2018, {cells} cells"
    else:
        adata, data = celltx.datasets.pbmc68k(), "pbmc68k, 700 cells"
    scvi.settings.seed = 0
    ScGPT.setup_anndata(adata)
    model = ScGPT(adata, **celltx.nn.preset("small" if train else "base", max_seq_len=1200))
    model.is_trained_ = True
    known = model._gene_ids(adata) >= 0
    lengths = sequence_lengths(expressed_counts(adata.X, known), int(known.sum()), 1200)
    if cfg.get("batch_tokens"):
        batches = token_budget_batches(lengths, cfg["batch_tokens"], cfg.get("batch_size"))
    else:
        bs = cfg["batch_size"]
        batches = [np.arange(i, min(i + bs, len(lengths))) for i in range(0, len(lengths), bs)]
    padded = sum(len(b) * lengths[b].max() for b in batches)
    if train:
        t = time.perf_counter()
        model.train(max_epochs=1, train_size=1.0, enable_progress_bar=False, **cfg)
        sec = time.perf_counter() - t
    else:
        model.get_latent_representation(indices=np.arange(16), batch_size=16)  # warm-up
        t = time.perf_counter()
        model.get_latent_representation(**cfg)
        sec = time.perf_counter() - t
    return {
        "data": data,
        "config": ", ".join(f"{k}={v}" for k, v in cfg.items()),
        "passes": len(batches),
        "seconds": round(sec, 1),
        "cells/s": round(adata.n_obs / sec, 1),
        "tokens/s": int(lengths.sum() / sec),
        "padding": f"{1 - lengths.sum() / padded:.1%}",
        "peak RSS (GB)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", action="store_true", help="one training epoch instead")
    p.add_argument("--child", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.cells, args.threads, args.child, args.train)))
        return
    import pandas as pd

    rows = []
    for cfg in TRAIN_CONFIGS if args.train else CONFIGS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--cells",
                str(args.cells),
                "--threads",
                str(args.threads),
                "--child",
                json.dumps(cfg),
                *(["--train"] if args.train else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
    print(f"\ntorch threads per process: {args.threads}")


if __name__ == "__main__":
    main()
