"""Embedding and training from a disk-backed h5ad: peak memory does not grow with the cells.

Writes simulated sparse counts (``--genes`` genes, ~``--density`` non-zero) as two h5ad
files of ``--small`` and ``--cells`` cells, saves a small celltx model (d_model 64, 2 layers,
256 tokens; random weights: memory and speed do not depend on them) and runs
``celltx embed CHECKPOINT INPUT OUTPUT --backed`` on each in a fresh process: with the
defaults, without the default's periodic ``trim_heap`` (for comparison) and with
``--low-memory``, printing cells/s and the process's peak resident memory (``ru_maxrss``).

``--train-steps N`` measures training instead: in a fresh process per file, the backed file
is registered (``ScGPT.setup_anndata`` on ``backed="r"`` data), the same small model is built
and trained for ``N`` steps of 64 cells (scvi-tools' loader reads each batch from disk), so
the work is the same for both files and only the number of cells differs.

Run from the repository root, on an otherwise idle machine::

    python benchmarks/streaming.py [--cells 300000] [--small 10000] [--dir /tmp/stream]
    python benchmarks/streaming.py --train-steps 200
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
extra = sys.argv[4:]
if "--no-trim" in extra:  # the run without trim_heap's give-back (for comparison)
    import celltx.model._embedding as E
    E.TRIM_EVERY = 10**12
    extra.remove("--no-trim")
from celltx.cli import main
t = time.perf_counter()
main(["embed", sys.argv[1], sys.argv[2], sys.argv[3], "--backed", "--no-progress",
      "--device", "cpu", "--batch-size", "256", "--overwrite", *extra])
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


TRAIN_CHILD = """
import json, resource, sys, time
import anndata as ad
from celltx.model import ScGPT
from celltx.nn import preset
t = time.perf_counter()
adata = ad.read_h5ad(sys.argv[1], backed="r")
ScGPT.setup_anndata(adata)
model = ScGPT(adata, **preset("small"))
t_setup = time.perf_counter() - t
model.train(max_epochs=1, max_steps=int(sys.argv[2]), batch_size=64, accelerator="cpu",
            enable_progress_bar=False, check_val_every_n_epoch=None)
print(json.dumps({"seconds": time.perf_counter() - t, "setup_seconds": t_setup,
                  "steps": int(model.trainer.global_step),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def train_rows(d: Path, files: list[tuple[int, Path]], steps: int) -> None:
    import pandas as pd

    rows = []
    for n, f in files:
        out = subprocess.run(
            [sys.executable, "-c", TRAIN_CHILD, str(f), str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "cells in file": n,
                "steps × 64 cells": res["steps"],
                "setup (s)": round(res["setup_seconds"], 1),
                "seconds": round(res["seconds"], 1),
                "cells/s (training)": round(
                    res["steps"] * 64 / (res["seconds"] - res["setup_seconds"])
                ),
                "peak RSS (GB)": round(res["peak_rss_gb"], 2),
            }
        )
        print(pd.DataFrame(rows).to_string(index=False), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=300_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dir", default=None)
    p.add_argument("--train-steps", type=int, default=None, help="measure training instead")
    args = p.parse_args()
    import anndata as ad
    import scvi

    from celltx.model import ScGPT
    from celltx.nn import preset

    d = Path(args.dir or tempfile.mkdtemp(prefix="celltx-stream-"))
    d.mkdir(parents=True, exist_ok=True)
    if args.train_steps:
        files = []
        for n in (args.small, args.cells):
            f = d / f"cells_{n}.h5ad"
            if not f.exists():
                write_h5ad(f, n, args.genes, args.density)
            files.append((n, f))
        train_rows(d, files, args.train_steps)
        return
    rows = []
    for n, extra in (
        (args.small, []),
        (args.cells, []),
        (args.small, ["--no-trim"]),
        (args.cells, ["--no-trim"]),
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
            m = ScGPT(a, **preset("small"))
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
                "run": extra[0].lstrip("-") if extra else "defaults",
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
