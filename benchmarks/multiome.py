"""Multiome (RNA + ATAC) benchmark: baselines of :func:`celltx.bench.multiome`.

Scores RNA PCA, ATAC LSI and scvi-tools' MULTIVI (Leiden ARI / NMI, label silhouette,
kNN accuracy; modality mixing on mosaic data) on:

``sim``
    :func:`celltx.datasets.simulate_multiome` with its defaults (600 paired cells);
``sim-mosaic``
    the same with ``mosaic=True`` (40 % paired, 30 % RNA-only, 30 % ATAC-only);
``sim-scicar``
    :func:`celltx.datasets.simulate_multiome` at sci-CAR size: 2,600 paired cells, 2,000
    genes, 50,000 peaks (``atac_depth=0.25``: about 8 % of the entries non-zero, 4,100 open
    peaks per cell), for the time budget;
``pbmc10x``
    the 10x Genomics Multiome PBMC subset (``../shared/data/pbmc10x_multiome_subset.h5mu``:
    1,000 paired cells, 45 genes, 174 peaks, raw counts, no labels; the 981 cells with
    counts in both modalities are kept): label-free scores only (FOSCTTM, seconds);
``granja``
    Granja et al. 2019 bone-marrow scATAC (``../shared/data/granja2019_bmmc_scatac.h5ad``,
    ATAC only, so only ``atac_lsi``), labels ``cell_type``;
a path
    any ``.h5mu`` with ``rna`` and ``atac`` modalities (``--labels`` names the label column;
    without one, and no ``cell_type`` column, label-free scores only).

Run from the repository root::

    python benchmarks/multiome.py --data sim
    python benchmarks/multiome.py --data sim-mosaic --multivi-epochs 200
    python benchmarks/multiome.py --data granja --n-cells 3000
    python benchmarks/multiome.py --data sim --resolution 0.25 0.5 1 1.5 2  # scib-style scan
    # the benchmark as users call it: celltx's recipe trained inside, timed (seconds column)
    python benchmarks/multiome.py --data sim-scicar --methods celltx rna_pca atac_lsi wnn
    # no labels: FOSCTTM of celltx vs MULTIVI
    python benchmarks/multiome.py --data pbmc10x --methods celltx multivi --multivi-lr 1e-3
    # GLUE (pip install 'celltx[glue]'), with a wall-clock budget
    python benchmarks/multiome.py --data pbmc10x --methods glue --glue '{"max_seconds": 600}'
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np

import celltx

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str, n_cells: int | None, seed: int):
    import anndata as ad
    import mudata

    if name == "sim":
        return celltx.datasets.simulate_multiome(seed=seed), "cell_type", None
    if name == "sim-scicar":
        mdata = celltx.datasets.simulate_multiome(
            n_cells=2600, n_genes=2000, n_peaks=50_000, atac_depth=0.25, seed=seed
        )
        return mdata, "cell_type", None
    if name == "sim-mosaic":
        return celltx.datasets.simulate_multiome(mosaic=True, seed=seed), "cell_type", "modality"
    if name == "pbmc10x":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mdata = mudata.read_h5mu(DATA / "pbmc10x_multiome_subset.h5mu")
        # 19 cells have no fragment in the 174 peaks: not paired, so celltx's ATAC-alone
        # embedding leaves them out while MULTIVI's would not; FOSCTTM over the same cells
        both = np.ones(mdata.n_obs, dtype=bool)
        for mod in ("rna", "atac"):
            both &= np.asarray(mdata.mod[mod].X.sum(1)).ravel() > 0
        if not both.all():
            print(f"pbmc10x: {int((~both).sum())} cells without counts in a modality left out")
            mdata = mdata[both].copy()
        return mdata, None, None
    if name == "granja":
        adata = ad.read_h5ad(DATA / "granja2019_bmmc_scatac.h5ad")
        if n_cells is not None and n_cells < adata.n_obs:
            keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
            adata = adata[keep].copy()
        with mudata.set_options(pull_on_update=False):
            mdata = mudata.MuData({"atac": adata}, obs=adata.obs[["cell_type"]].copy())
        return mdata, "cell_type", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.read_h5mu(name)
    return mdata, None, None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        default="sim",
        help="sim, sim-mosaic, sim-scicar, pbmc10x, granja or an .h5mu path",
    )
    p.add_argument("--labels", default=None, help="label column (default: cell_type)")
    p.add_argument("--baselines", nargs="+", default=None)
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="run celltx.bench.multiome(methods=...) (celltx trained inside with its "
        "recipe, overridden by --celltx JSON); timed per method",
    )
    p.add_argument("--multivi-epochs", type=int, default=None, help="default: MULTIVI's (500)")
    p.add_argument("--multivi-lr", type=float, default=None, help="default: MULTIVI's (1e-4)")
    p.add_argument("--n-cells", type=int, default=None, help="subsample (granja)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--celltx",
        default=None,
        help='train a celltx multiome model first: JSON {"model": {...}, "steps": 400, "lr": 1e-2}',
    )
    p.add_argument(
        "--glue",
        default=None,
        help='settings of GLUE (--methods glue): JSON {"max_seconds": 600, "genome": "hg38"}; '
        "pbmc10x defaults to genome hg38 (its genes placed by the offline TSS table)",
    )
    p.add_argument(
        "--resolution",
        type=float,
        nargs="+",
        default=[1.0],
        help="Leiden resolution(s); several: the one of best NMI per embedding",
    )
    args = p.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    mdata, labels, modality_key = load(args.data, args.n_cells, args.seed)
    labels = args.labels or labels or ("cell_type" if "cell_type" in mdata.obs else None)
    baselines = args.baselines
    if baselines is None:
        baselines = (
            ["atac_lsi"] if "rna" not in mdata.mod else list(celltx.bench.MULTIOME_BASELINES)
        )
    print(
        f"{args.data}: {mdata.n_obs} cells, modalities "
        f"{ {k: v.shape for k, v in mdata.mod.items()} }, labels {labels!r}"
    )
    t = time.time()
    if args.methods is not None:
        import json
        import os

        glue_kwargs = json.loads(args.glue) if args.glue else {}
        if args.data == "pbmc10x":  # GRCh38, genes without coordinates in the file
            glue_kwargs.setdefault("genome", "hg38")
        print(f"load average before: {os.getloadavg()}")
        table = celltx.bench.multiome(
            mdata,
            labels,
            methods=args.methods,
            modality_key=modality_key,
            seed=args.seed,
            leiden_resolution=args.resolution,
            celltx_kwargs=json.loads(args.celltx)
            if args.celltx
            else None
            if "celltx" in args.methods
            else None,
            multivi_kwargs={
                "max_epochs": args.multivi_epochs,
                "accelerator": args.accelerator,
                **({"lr": args.multivi_lr} if args.multivi_lr else {}),
            },
            glue_kwargs=glue_kwargs if "glue" in args.methods else None,
        )
        print(table.round(3).to_string())
        print(f"({time.time() - t:.0f} s in all; load average after: {os.getloadavg()})")
        return
    embeddings = {}
    if args.celltx is not None:
        import json

        import torch

        recipe = celltx.bench.MULTIOME_CELLTX_DEFAULTS
        cfg = {**recipe, **json.loads(args.celltx)}
        model_kw = {**recipe["model"], **cfg.get("model", {})}
        # scvi-tools registers fully paired data: celltx trains on a padded copy; the
        # baselines are scored on the data as it is (padding would hand PCA / LSI all-zero cells)
        padded = celltx.data.pad_mosaic(mdata, modality_key=modality_key or "modality")
        celltx.model.ScGPT.setup_mudata(padded)
        torch.manual_seed(args.seed)
        model = celltx.model.ScGPT(padded, **model_kw)
        epochs = celltx.bench.multiome_recipe_epochs(padded.n_obs, cfg)
        model.train(
            max_epochs=epochs,
            task=cfg.get("task"),
            lr=cfg["lr"],
            batch_size=cfg["batch_size"],
            accelerator=args.accelerator,
            enable_progress_bar=False,
        )
        print(f"celltx {model_kw}, {epochs} epochs at lr {cfg['lr']}: {time.time() - t:.0f} s")
        embeddings = celltx.bench.celltx_multiome_embeddings(model, padded)
    table = celltx.bench.multiome(
        mdata,
        labels,
        embeddings=embeddings,
        baselines=baselines,
        modality_key=modality_key,
        seed=args.seed,
        leiden_resolution=args.resolution,
        multivi_kwargs={
            "max_epochs": args.multivi_epochs,
            "accelerator": args.accelerator,
            **({"lr": args.multivi_lr} if args.multivi_lr else {}),
        },
    )
    print(table.round(3).to_string())
    print(f"({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
