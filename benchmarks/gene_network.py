"""Gene-level scores on simulated data with a known network and known gene modules.

On :func:`celltx.datasets.simulate_perturbseq` (200 genes; its ``uns["simulation"]`` holds
the regulatory network and the gene modules of its latent cell-state programs) a celltx
model is trained (:data:`celltx.bench.NETWORK_CELLTX_DEFAULTS`) and scored twice:

1. network recovery (:func:`celltx.bench.gene_network`): attention and gene-embedding
   similarity against co-expression (|Pearson|) and random scores, on unordered pairs and
   on directed edges;
2. gene programs (:func:`celltx.tl.gene_programs` + :func:`celltx.bench.gene_program_scores`)
   against the known modules: programs from celltx's gene embeddings next to programs from
   a co-expression embedding (each gene's loadings on the data's 20 principal components)
   and a random relabelling of celltx's programs.

Run from the repository root (on an otherwise idle machine)::

    python benchmarks/gene_network.py [--seed 0] [--epochs 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scanpy as sc

import celltx
from celltx.bench._fit import fit_celltx


def _program_row(name: str, programs: pd.DataFrame, adata, modules) -> dict:
    s = celltx.bench.gene_program_scores(programs, adata, modules, n_random=10).loc["all"]
    return {
        "programs": name,
        "n_programs": programs.loc[programs["program"] != "unassigned", "program"].nunique(),
        "ari": s["ari"],
        "nmi": s["nmi"],
        "coherence": s["coherence"],
        "random_coherence": s["random_coherence"],
    }


def main() -> None:
    """Simulate, train, print both tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--accelerator", default="cpu")
    args = p.parse_args()
    adata = celltx.datasets.simulate_perturbseq(seed=args.seed)
    modules = adata.uns["simulation"]["gene_modules"]
    settings = {"epochs": args.epochs, "accelerator": args.accelerator}
    model = fit_celltx(adata, celltx.bench.NETWORK_CELLTX_DEFAULTS, settings, args.seed)

    rows = []
    for directed in (False, True):
        df = celltx.bench.gene_network(adata, adata, model=model, directed=directed, seed=args.seed)
        df.insert(1, "pairs", "directed" if directed else "unordered")
        rows.append(df)
    cols = [
        "method",
        "pairs",
        "auprc",
        "auprc_ratio",
        "early_precision",
        "early_precision_ratio",
        "n_edges",
    ]
    print(f"Network recovery ({adata.n_obs} cells, {adata.n_vars} genes, seed {args.seed}):")
    print(pd.concat(rows)[cols].to_string(index=False, float_format="%.3f"))

    genes = list(adata.var_names)
    ours = celltx.tl.gene_programs(model, genes=genes, seed=args.seed)
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=20, random_state=args.seed)
    pcs = pd.DataFrame(lognorm.varm["PCs"], index=lognorm.var_names)
    coexp = celltx.tl.gene_programs(pcs, genes=genes, seed=args.seed)
    shuffled = ours.copy()
    shuffled["program"] = np.random.default_rng(args.seed).permutation(ours["program"].to_numpy())
    table = pd.DataFrame(
        [
            _program_row("celltx gene embeddings", ours, adata, modules),
            _program_row("co-expression (PCA loadings)", coexp, adata, modules),
            _program_row("random (celltx's, shuffled)", shuffled, adata, modules),
        ]
    )
    print("\nGene programs vs the simulator's modules:")
    print(table.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
