"""Cell representations trained from scratch: celltx next to PCA (and scVI on counts).

:func:`celltx.bench.embedding` on a data set, over several seeds; prints every seed's
row and the mean and standard deviation per method.

``pbmc68k``
    scanpy's bundled 700 PBMCs (765 genes, log-normalised), label = cell type (10).
``cellbench``
    CellBench (``../shared/data/cellbench_5batches.h5ad``): the 1,021 singlets, **all**
    28,517 genes as given (raw counts), label = cell line (5).

Run from the repository root (on an otherwise idle machine)::

    python benchmarks/embedding.py pbmc68k --seeds 0 1 2
    python benchmarks/embedding.py cellbench --seeds 0 1 2 --methods celltx pca scvi
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import pandas as pd

import celltx

CELLBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_5batches.h5ad"


def load(name: str) -> tuple[ad.AnnData, str]:
    """The data set and its label column."""
    if name == "pbmc68k":
        return celltx.datasets.pbmc68k(), "cell_type"
    adata = ad.read_h5ad(CELLBENCH)
    return adata[adata.obs["demuxlet_cls"] != "DBL"].copy(), "cell_line"


def main() -> None:
    """Run the seeds and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", choices=["pbmc68k", "cellbench"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["celltx", "pca"])
    p.add_argument("--accelerator", default="cpu")
    p.add_argument(
        "--celltx",
        default="{}",
        help="JSON overrides of EMBED_CELLTX_DEFAULTS, e.g. '{\"epochs\": 40}'",
    )
    args = p.parse_args()
    adata, key = load(args.data)
    settings = {"accelerator": args.accelerator, **json.loads(args.celltx)}
    rows = []
    for seed in args.seeds:
        df = celltx.bench.embedding(
            adata,
            key,
            methods=args.methods,
            seed=seed,
            method_kwargs={"celltx": settings, "scvi": {"accelerator": args.accelerator}},
        )
        df.insert(1, "seed", seed)
        print(df.to_string(index=False, float_format="%.3f"), flush=True)
        rows.append(df)
    table = pd.concat(rows)
    cols = ["knn_accuracy", "leiden_nmi", "leiden_ari", "seconds"]
    summary = table.groupby("method", sort=False)[cols].agg(["mean", "std"])
    print(f"\n{args.data}: mean and sd over seeds {args.seeds}")
    print(summary.to_string(float_format="%.3f"))


if __name__ == "__main__":
    main()
