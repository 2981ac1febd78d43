"""Perturbation-prediction benchmark: celltx next to the baselines that published evaluations
found hard to beat (:func:`celltx.bench.perturbation`), on calibrated metrics.

Default data: ``celltx.datasets.simulate_perturbseq`` at the size of a real CRISPR screen
(``--size screen``: ~20,000 cells × 300 genes, 25 targets, 25 pairs; ``--size small``: the
simulator's default, 200 genes / 40 targets / 30 pairs / 4,439 cells). GEARS-style split:
held-out single perturbations, pairs with 0 / 1 / 2 genes seen as singles in training;
each split is saved as a JSON list (``--split-dir``) and reused when it exists, so runs
score the same conditions. Any GEARS-format file works with ``--h5ad``.

Run from the repository root (one thread, as on the 2-core CPU)::

    OMP_NUM_THREADS=1 python benchmarks/perturbation.py                 # one sim, one split
    OMP_NUM_THREADS=1 python benchmarks/perturbation.py --sim-seeds 0 1 2 --split-seeds 0 1 2
    python benchmarks/perturbation.py --h5ad norman/perturb_processed.h5ad

Prints, per method and subgroup, mean ± sd over conditions (pooled over the runs) of:
top-20-DE delta-Pearson, the Systema-style delta-Pearson against the perturbed mean, the
delta-Pearson against disjoint controls, the true DE genes' rank in the prediction (lower is
better, 0.5 = chance), DE MSE; and the seconds of every method and of each whole run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import anndata as ad
import pandas as pd

import celltx

SIZES = {
    "screen": {
        "n_genes": 300,
        "n_perturbations": 25,
        "n_combos": 25,
        "n_cells_per_condition": 300,
        "n_control_cells": 5000,
    },
    "small": {},
}
BASELINES = ("no_change", "train_mean", "additive", "linear", "own_knockdown", "linear_celltx")
METRICS = [
    "pearson_delta_de",
    "pearson_delta_pert",
    "pearson_delta_disjoint",
    "de_rank",
    "mse_de",
    "seconds",
]


class _Variant:
    """A celltx residual variant as a benchmark predictor (fit / predict)."""

    def __init__(self, **kw):
        self.kw = kw

    def fit(self, train):
        self.model = celltx.bench.celltx_perturbation_model(**self.kw)(train)
        self.pretrain_seconds_ = self.model.pretrain_seconds_
        return self

    def predict(self, conditions):
        return self.model.predict(conditions)


def _variant_settings(spec: str) -> dict:
    """``"embedding,coexpression,prior=linear"`` -> features and the single-gene prior."""
    parts = [f for f in spec.split(",") if f]
    prior = [f.split("=", 1)[1] for f in parts if f.startswith("prior=")]
    out = {"features": tuple(f for f in parts if not f.startswith("prior="))}
    if prior:
        out["single_prior"] = prior[0]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--h5ad", help="GEARS-format h5ad (default: simulated screen)")
    p.add_argument("--key", default="condition")
    p.add_argument("--control", default="ctrl")
    p.add_argument("--split", default="simulation", choices=["simulation", "single"])
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sim-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", default="screen", choices=sorted(SIZES))
    p.add_argument(
        "--unmeasured",
        type=int,
        default=0,
        help="targets left out of the measured panel (a CRISPR-KO screen's shape: most)",
    )
    p.add_argument("--split-dir", default="benchmarks/perturbation_splits")
    p.add_argument("--mode", default="residual", choices=["residual", "cells"])
    p.add_argument("--features", default=None, help="celltx's features (default: its own)")
    p.add_argument(
        "--single-prior", default=None, help="celltx's single-gene prior (default: auto)"
    )
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-cells", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=20, help="perturbation epochs (mode cells)")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES))
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="more celltx residual variants, each a comma-separated feature list "
        "(embedding, attention, insilico, coexpression) and optionally prior=<single-gene "
        "prior>; they share the pretraining",
    )
    p.add_argument("--no-celltx", action="store_true")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", help="CSV of every row")
    a = p.parse_args(argv)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    frames = []
    for sim_seed in [None] if a.h5ad else a.sim_seeds:
        if a.h5ad:
            adata = (
                celltx.datasets.read_gears(a.h5ad)
                if a.h5ad.endswith(".h5ad")
                else ad.read_h5ad(a.h5ad)
            )
            tag = Path(a.h5ad).stem
        else:
            adata = celltx.datasets.simulate_perturbseq(
                seed=sim_seed, n_unmeasured_targets=a.unmeasured, **SIZES[a.size]
            )
            tag = f"sim-{a.size}-seed{sim_seed}" + (f"-off{a.unmeasured}" if a.unmeasured else "")
        for split_seed in a.split_seeds:
            path = Path(a.split_dir) / f"{tag}_{a.split}_split{split_seed}.json"
            if not path.exists():
                s = celltx.bench.perturbation_split(
                    adata,
                    perturbation_key=a.key,
                    control_value=a.control,
                    split=a.split,
                    seed=split_seed,
                )
                celltx.bench.save_perturbation_split(
                    s, path, control_value=a.control, data=tag, kind=a.split, seed=split_seed
                )
            model = None
            if not a.no_celltx:
                chosen = {}
                if a.features is not None:
                    chosen["features"] = tuple(f for f in a.features.split(",") if f)
                if a.single_prior is not None:
                    chosen["single_prior"] = a.single_prior
                model = celltx.bench.celltx_perturbation_model(
                    mode=a.mode,
                    **chosen,
                    pretrain_epochs=a.pretrain_epochs,
                    pretrain_cells=a.pretrain_cells,
                    epochs=a.epochs,
                    accelerator=a.accelerator,
                    perturbation_key=a.key,
                    control_value=a.control,
                )
            variants = {
                f"celltx[{v.replace(',', ' + ')}]": _Variant(
                    **_variant_settings(v),
                    pretrain_epochs=a.pretrain_epochs,
                    pretrain_cells=a.pretrain_cells,
                    accelerator=a.accelerator,
                )
                for v in a.variants
            }
            t0 = time.perf_counter()
            df = celltx.bench.perturbation(
                adata,
                model=model,
                split=path,
                seed=split_seed,
                perturbation_key=a.key,
                control_value=a.control,
                baselines=tuple(a.baselines),
                predictors=variants,
                ceiling=True,
            )
            total = time.perf_counter() - t0
            secs = df.groupby("method", sort=False)["seconds"].first()
            print(
                f"\n{tag}, split {path.name}: {adata.n_obs} cells × {adata.n_vars} genes, "
                f"{df['condition'].nunique()} held-out conditions; whole benchmark {total:.0f} s; "
                "seconds per method: " + ", ".join(f"{m} {v:.1f}" for m, v in secs.items()),
                flush=True,
            )
            frames.append(df.assign(data=tag, split_seed=split_seed, total_seconds=total))
            if a.out:  # after every run, so that a cut-short series keeps its runs
                pd.concat(frames, ignore_index=True).to_csv(a.out, index=False)
    df = pd.concat(frames, ignore_index=True)
    pd.set_option("display.width", 250)
    print(f"\n{len(frames)} run(s); mean ± sd over all held-out conditions of all runs:")
    print(celltx.bench.summarize_perturbation(df, metrics=METRICS).to_string())


if __name__ == "__main__":
    main()
