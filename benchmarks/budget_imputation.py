"""Where the imputation recipe's quality saturates, and the benchmark's time, on Kang 2018.

``../shared/data/kang2018_ifnb.h5ad`` (raw counts): 2,900 cells drawn at random (seed 0),
every gene expressed in at least one of them (about 14,000): the size issue 29 names.
For each epoch count, :func:`celltx.bench.imputation` runs celltx with
``IMPUTATION_CELLTX_DEFAULTS`` except ``epochs`` (a fixed count: ``budget_cells=None``); the baselines
(per-gene mean, kNN smoothing, scVI) run once with ``--baselines``.

Run from the repository root::

    python benchmarks/budget_imputation.py --epochs 1 2 4 --baselines
    python benchmarks/budget_imputation.py --recipe   # the recipe as shipped (its budget)

Prints one row per run: method, epochs, Pearson, MSE, seconds (training + inference + scores,
wall clock) and the CPU seconds of the call (all its methods; with one thread, about the
time on an otherwise idle core).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import celltx
from celltx.model import train_budget

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2018_ifnb.h5ad"


def kang_subset(n_cells: int = 2900, seed: int = 0) -> ad.AnnData:
    """``n_cells`` random Kang cells, genes expressed in at least one of them."""
    full = ad.read_h5ad(KANG)
    pick = np.sort(np.random.default_rng(seed).choice(full.n_obs, n_cells, replace=False))
    a = full[pick].copy()
    expressed = np.asarray((a.X > 0).sum(0)).ravel() > 0
    return a[:, expressed].copy()


def main() -> None:
    """Run the curve and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, nargs="*", default=[])
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--recipe", action="store_true")
    p.add_argument("--n-cells", type=int, default=2900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV to append rows to")
    args = p.parse_args()
    adata = kang_subset(args.n_cells)
    print(f"data: {adata.n_obs} cells x {adata.n_vars} genes", flush=True)
    runs: list[tuple[list[str], dict]] = []
    if args.baselines:
        runs.append((["mean", "knn", "scvi"], {"scvi": {"accelerator": "cpu"}}))
    if args.recipe:
        runs.append((["celltx"], {"celltx": {"accelerator": "cpu"}}))
    for e in args.epochs:
        fixed = {"accelerator": "cpu", "epochs": e, "budget_cells": None}
        runs.append((["celltx"], {"celltx": fixed}))
    rows = []
    for methods, settings in runs:
        cpu = time.process_time()
        df = celltx.bench.imputation(adata, methods=methods, method_kwargs=settings, seed=args.seed)
        epochs = settings.get("celltx", {}).get("epochs")
        if "celltx" not in methods:  # baselines: celltx's epochs do not apply
            epochs = float("nan")
        elif epochs is None:  # the recipe: its budgeted epochs
            defaults = celltx.bench.IMPUTATION_CELLTX_DEFAULTS
            epochs = train_budget(
                adata.n_obs,
                defaults["epochs"],
                defaults["budget_cells"],
                exponent=defaults.get("budget_exponent", 0.5),
            )
        df.insert(1, "epochs", epochs)
        # CPU seconds of the whole call (one thread: about its time on an idle core)
        df["cpu_seconds_all_methods"] = time.process_time() - cpu
        print(df.drop(columns=["error"]).to_string(index=False), flush=True)
        rows.append(df)
        if args.out:
            df.assign(n_cells=adata.n_obs, n_genes=adata.n_vars).to_csv(
                args.out, mode="a", header=not Path(args.out).exists(), index=False
            )
    print(pd.concat(rows).to_string(index=False))


if __name__ == "__main__":
    main()
