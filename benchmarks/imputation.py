"""Imputation benchmark: hide 10 % of the non-zero values, recover them (:func:`celltx.bench.imputation`).

Two data sets, as in ``docs/genes.md``:

``pbmc68k``
    scanpy's bundled 700 PBMCs (log-normalised values); methods mean, kNN, celltx.
``kang``
    Kang et al. 2018 (``../shared/data/kang2018_ifnb.h5ad``, raw counts): every 7th cell,
    genes in at least 20 of them, 2,000 seurat_v3 HVGs; methods mean, kNN, scVI, celltx.

Run from the repository root (on an otherwise idle machine)::

    python benchmarks/imputation.py pbmc68k
    python benchmarks/imputation.py kang

Prints one row per method: Pearson and MSE on the hidden values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import scanpy as sc

import celltx

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2018_ifnb.h5ad"


def main() -> None:
    """Run the benchmark on one data set and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", choices=["pbmc68k", "kang"])
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = {
        "celltx": {"accelerator": args.accelerator},
        "scvi": {"accelerator": args.accelerator},
    }
    if args.data == "pbmc68k":
        adata, methods = celltx.datasets.pbmc68k(), ["mean", "knn", "celltx"]
    else:
        adata = ad.read_h5ad(KANG)[::7].copy()
        sc.pp.filter_genes(adata, min_cells=20)
        sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3")
        adata = adata[:, adata.var["highly_variable"]].copy()
        methods = ["mean", "knn", "scvi", "celltx"]
    df = celltx.bench.imputation(adata, methods=methods, method_kwargs=settings, seed=args.seed)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
