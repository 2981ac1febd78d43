"""Perturbation-prediction benchmark: celltx next to no-change, training-mean, additive and
a linear model on gene embeddings (:func:`celltx.bench.perturbation`).

Default data: ``celltx.datasets.simulate_perturbseq`` (known gene-regulatory network,
knock-downs propagating through it, negative-binomial counts, some pairs interacting
non-additively). GEARS-style split: held-out single perturbations, pairs with 0 / 1 / 2
genes seen as singles in training. Any GEARS-format file works with ``--h5ad``.

Run from the repository root::

    python benchmarks/perturbation.py                          # simulated screen
    python benchmarks/perturbation.py --epochs 5 --quick       # a quick look
    python benchmarks/perturbation.py --h5ad norman/perturb_processed.h5ad

Prints mean ± sd per method and subgroup of: top-20-DE delta-Pearson, all-gene
delta-Pearson, DE MSE, DE direction accuracy, and the spread of predicted deltas across
conditions next to the truth's (a model collapsing to one average response has spread ~0).
"""

from __future__ import annotations

import argparse
import logging
import time

import anndata as ad

import celltx


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--h5ad", help="GEARS-format h5ad (default: simulated screen)")
    p.add_argument("--key", default="condition")
    p.add_argument("--control", default="ctrl")
    p.add_argument("--split", default="simulation", choices=["simulation", "single"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller simulated screen")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--n-cells", type=int, default=100)
    p.add_argument(
        "--freeze", type=int, default=0, help="freeze embeddings + k layers in fine-tuning"
    )
    p.add_argument("--no-celltx", action="store_true")
    p.add_argument("--accelerator", default="auto")
    a = p.parse_args(argv)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    if a.h5ad:
        adata = (
            celltx.datasets.read_gears(a.h5ad) if a.h5ad.endswith(".h5ad") else ad.read_h5ad(a.h5ad)
        )
    else:
        kw = (
            {"n_genes": 100, "n_perturbations": 20, "n_combos": 12, "n_cells_per_condition": 40}
            if a.quick
            else {}
        )
        adata = celltx.datasets.simulate_perturbseq(seed=a.sim_seed, **kw)
    model = None
    if not a.no_celltx:
        model = celltx.bench.celltx_perturbation_model(
            model={"d_model": a.d_model, "n_layers": a.layers},
            epochs=a.epochs,
            pretrain_epochs=a.pretrain_epochs,
            lr=a.lr,
            pretrain_lr=a.lr,
            n_cells=a.n_cells,
            accelerator=a.accelerator,
            freeze_layers=a.freeze,
            perturbation_key=a.key,
            control_value=a.control,
        )
    t0 = time.perf_counter()
    df = celltx.bench.perturbation(
        adata,
        model=model,
        split=a.split,
        seed=a.seed,
        perturbation_key=a.key,
        control_value=a.control,
    )
    print(
        f"\n{adata.n_obs} cells × {adata.n_vars} genes, {adata.obs[a.key].nunique()} conditions, "
        f"split {a.split!r} seed {a.seed}; celltx d{a.d_model}/{a.layers} layers, "
        f"{a.pretrain_epochs} generative + {a.epochs} perturbation epochs, lr {a.lr}, "
        f"freeze {a.freeze}; "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    print(celltx.bench.summarize_perturbation(df).to_string())
    sub = df.groupby(["method", "subgroup"])[["spread_de", "spread_de_true"]].mean()
    print("\nspread of DE deltas across conditions (prediction | truth):")
    print(sub.round(3).to_string())


if __name__ == "__main__":
    main()
