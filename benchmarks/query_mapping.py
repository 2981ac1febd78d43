"""Query mapping benchmark: label transfer to a held-out batch (:func:`celltx.bench.query_mapping`).

Default data: CellBench (``../shared/data/cellbench_5batches.h5ad``: 5 lung-adenocarcinoma
cell lines in 5 batches, 2 technologies; doublets dropped), raw counts, 2,000 highly variable
genes (seurat_v3, per batch). One batch is the query, the other four the reference; labels
are the cell lines. Methods: celltx (reference model with DSBN + batch token, then
``ScGPT.load_query_data`` and a brief query training), PCA fitted on the reference
(projection), scVI with scvi-tools' ``load_query_data``.

Run from the repository root (on an otherwise idle machine)::

    python benchmarks/query_mapping.py                        # every batch in turn as the query
    python benchmarks/query_mapping.py --query Drop-seq       # one query batch
    python benchmarks/query_mapping.py --reference-epochs 5   # quicker
    python benchmarks/query_mapping.py --query CEL-seq2 --methods celltx --celltx-model '{"dsbn": false}'

Prints one row per (query batch, method): accuracy and macro-F1 of the transferred labels.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import anndata as ad
import pandas as pd
import scanpy as sc

import celltx

CELLBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_5batches.h5ad"


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--h5ad", default=str(CELLBENCH))
    p.add_argument("--batch", default="batch")
    p.add_argument("--labels", default="cell_line")
    p.add_argument("--query", action="append", help="query batch (default: each in turn)")
    p.add_argument("--hvg", type=int, default=2000)
    p.add_argument("--methods", default="celltx,pca,scvi")
    p.add_argument("--reference-epochs", type=int, default=10)
    p.add_argument("--query-epochs", type=int, default=5)
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--celltx-model", default="{}", help="JSON overrides, e.g. '{\"dsbn\": false}'")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    adata = ad.read_h5ad(args.h5ad)
    if "demuxlet_cls" in adata.obs:
        adata = adata[adata.obs["demuxlet_cls"] != "DBL"].copy()
    if args.hvg:
        sc.pp.highly_variable_genes(
            adata, n_top_genes=args.hvg, flavor="seurat_v3", batch_key=args.batch
        )
        adata = adata[:, adata.var["highly_variable"]].copy()
    queries = args.query or list(adata.obs[args.batch].astype(str).unique())
    settings = {
        "celltx": {
            "reference_epochs": args.reference_epochs,
            "query_epochs": args.query_epochs,
            "accelerator": args.accelerator,
            "model": json.loads(args.celltx_model),
        },
        "scvi": {
            "reference_epochs": args.scvi_epochs,
            "query_epochs": args.scvi_epochs // 2,
            "accelerator": args.accelerator,
        },
    }
    tables = []
    for q in queries:
        df = celltx.bench.query_mapping(
            adata,
            args.batch,
            args.labels,
            q,
            methods=args.methods.split(","),
            method_kwargs=settings,
            seed=args.seed,
        )
        df.insert(0, "query", q)
        tables.append(df)
        print(df.to_string(index=False), flush=True)
    out = pd.concat(tables, ignore_index=True)
    print("\nmean over query batches")
    print(out.groupby("method")[["accuracy", "macro_f1", "seconds"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
