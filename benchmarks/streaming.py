"""Embedding a disk-backed h5ad: peak memory does not grow with the number of cells.

Writes simulated sparse counts (``--genes`` genes, ~``--density`` non-zero) as two h5ad
files of ``--small`` and ``--cells`` cells, saves a small celltx model (d_model 64, 2 layers,
256 tokens; random weights: memory and speed do not depend on them) and runs
``celltx embed CHECKPOINT INPUT OUTPUT --backed`` on each in a fresh process, without and
with ``--low-memory``, printing cells/s and the process's peak resident memory
(``ru_maxrss``).

Run from the repository root, on an otherwise idle machine::

    python benchmarks/streaming.py [--cells 300000] [--small 10000] [--dir /tmp/stream]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

CHILD = """
import json, resource, sys, time
from celltx.cli import main
t = time.perf_counter()
main(["embed", sys.argv[1], sys.argv[2], sys.argv[3], "--backed", "--no-progress",
      "--device", "cpu", "--batch-size", "256", "--overwrite", *sys.argv[4:]])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_h5ad(path: Path, n_cells: int, n_genes: int, density: float, seed: int = 0) -> None:
    """Simulated counts written block by block (the whole matrix is never dense)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    blocks = []
    for lo in range(0, n_cells, 50_000):
        n = min(50_000, n_cells - lo)
        m = sp.random(
            n,
            n_genes,
            density=density,
            format="csr",
            random_state=rng,
            data_rvs=lambda k: rng.poisson(2.0, k) + 1,
        )
        blocks.append(m.astype(np.float32))
    x = sp.vstack(blocks, format="csr")
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(x, obs=obs, var=var).write_h5ad(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=300_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    import anndata as ad
    import scvi

    from celltx.model import ScGPT

    d = Path(args.dir or tempfile.mkdtemp(prefix="celltx-stream-"))
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, extra in (
        (args.small, []),
        (args.cells, []),
        (args.small, ["--low-memory"]),
        (args.cells, ["--low-memory"]),
    ):
        f = d / f"cells_{n}.h5ad"
        if not f.exists():
            t = time.perf_counter()
            write_h5ad(f, n, args.genes, args.density)
            print(
                f"wrote {f} ({f.stat().st_size / 2**30:.2f} GB) in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        if not (d / "ckpt" / "model.json").exists():
            a = ad.read_h5ad(f)[:1000].copy()
            scvi.settings.seed = 0
            ScGPT.setup_anndata(a)
            m = ScGPT(a, d_model=64, n_layers=2, n_heads=4, max_seq_len=256)
            m.is_trained_ = True
            m.save(str(d / "ckpt"), overwrite=True)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(d / "ckpt"),
                str(f),
                str(d / f"out_{n}.h5ad"),
                *extra,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        emb = ad.read_h5ad(d / f"out_{n}.h5ad", backed="r").obsm["X_scgpt"]
        rows.append(
            {
                "cells": n,
                "--low-memory": bool(extra),
                "input (GB on disk)": round(f.stat().st_size / 2**30, 2),
                "seconds": round(res["seconds"], 1),
                "cells/s": round(n / res["seconds"]),
                "peak RSS (GB)": round(res["peak_rss_gb"], 2),
                "embedding": f"{emb.shape[0]} × {emb.shape[1]}",
            }
        )
        import pandas as pd

        print(pd.DataFrame(rows).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
