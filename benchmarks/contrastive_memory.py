"""Divide-and-conquer contrastive training: peak memory against the contrastive batch size.

CellLM's point: the contrastive loss compares every pair of cells in a batch, so a larger
batch gives more negatives, but one forward/backward pass over the batch needs activation
memory proportional to it. ``celltx.train.divide_and_conquer_step`` encodes the batch in
chunks and keeps only the ``<cls>`` embeddings between passes, so memory should follow the
chunk size, not the batch.

For each contrastive batch size, a fresh process builds the same small model (d_model 64,
2 layers, 256 tokens) on real Kang 2018 PBMCs (raw counts) and runs one training step:
divide-and-conquer with ``--chunk`` cells per pass, and, for comparison, one pass over the
whole batch (``chunk_size = batch``). It prints the step's seconds and the process's peak
RSS above what it held before the step (CPU) or the peak CUDA memory (GPU).

Run from the repository root, on an otherwise idle machine::

    python benchmarks/contrastive_memory.py [--batches 64 256 1024 4096] [--chunk 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KANG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kang2018_ifnb.h5ad"

CHILD = """
import json, resource, sys, time
import anndata as ad, numpy as np, torch
from scvi import REGISTRY_KEYS
import celltx
from celltx.train import divide_and_conquer_step
path, batch, chunk, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
adata = ad.read_h5ad(path, backed="r")
adata = adata[np.random.default_rng(0).choice(adata.n_obs, batch, replace=False)].to_memory()
celltx.model.ScGPT.setup_anndata(adata)
torch.manual_seed(0)
model = celltx.model.ScGPT(adata, **celltx.nn.preset("small", dropout=0.0, gene_selection="rank"))
m = model.module.to(device)
m.set_objective(contrast=1.0)
m.train()
x = torch.as_tensor(adata.X.toarray(), device=device)
tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: torch.zeros(batch, 1, device=device)}
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
before = rss()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
t = time.perf_counter()
with model._panel(adata):
    out = divide_and_conquer_step(m, tensors, chunk)
if device == "cuda":
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
else:
    peak = rss() - before
print(json.dumps({"seconds": time.perf_counter() - t, "peak_gb": peak,
                  "loss": float(out.loss)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--one-pass-max", type=int, default=1024, help="largest one-pass batch")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if not KANG.exists():
        sys.exit(f"{KANG} is absent (the shared data live beside the project, in ../shared)")
    unit = "peak CUDA memory above the model" if args.device == "cuda" else "peak RSS growth"
    print(f"| contrastive batch | way | seconds | {unit} (GB) |")
    print("|---:|---|---:|---:|")
    for b in args.batches:
        ways = [(f"chunks of {args.chunk}", args.chunk)]
        if b <= args.one_pass_max and b > args.chunk:
            ways.append(("one pass", b))
        for name, chunk in ways:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(KANG), str(b), str(chunk), args.device],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {b:,} | {name} | {r['seconds']:.1f} | {r['peak_gb']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
