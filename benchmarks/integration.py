"""Batch-integration benchmark: celltx (scGPT's integration recipe) next to unintegrated
PCA, Harmony, scVI and scANVI (given the labels), scored with scib-metrics
(:func:`celltx.bench.integration`).

Default data: CellBench (``../shared/data/cellbench_5batches.h5ad``: 5 lung-adenocarcinoma
cell lines in 5 batches, 2 technologies; doublets dropped), raw counts, 2,000 highly
variable genes (seurat_v3, per batch). Two celltx models are trained from scratch on it:

``celltx (generative)``
    generative pretraining only (no batch terms): what the transformer learns unaided;
``celltx (integration)``
    ``dsbn=True, dab=True, batch_token=True`` and ``train(task="integration_scgpt")``:
    generation + elastic cell similarity + adversarial batch discriminator.

``--models recipe`` adds (or, alone, runs only) ``celltx (representation recipe)``: the
representation recipe of :data:`celltx.bench.EMBED_CELLTX_DEFAULTS` (contrastive,
rank-value tokens, dropout 0; no batch terms), with ``--epochs`` / ``--lr`` of the recipe
unless given.

``--variants JSON`` trains celltx's integration recipe
(:data:`celltx.bench.INTEGRATION_CELLTX_DEFAULTS`, ``task="integration"``: contrastive with
within-batch kNN + cross-batch MNN positives) once per entry of ``{name: overrides}`` (as
``method_kwargs["celltx"]`` of :func:`celltx.bench.integration`), all scored in one pass::

    python benchmarks/integration.py --models --baselines pca harmony --variants \
        '{"recipe": {"task": "contrastive"}, "mnn": {}}'

Run from the repository root::

    python benchmarks/integration.py                       # CellBench, all baselines
    python benchmarks/integration.py --epochs 10 --fast    # quick look
    python benchmarks/integration.py --h5ad my.h5ad --batch donor --labels cell_type
    python benchmarks/integration.py --plot-dir results/   # scib-metrics' table figure
    python benchmarks/integration.py --parts dab,batch_token --loss-weights '{"ecs": 0}'  # ablations
    python benchmarks/integration.py --models recipe --scvi-epochs 100   # the new representation

Prints scib-metrics' table (rows: embeddings; bio conservation, batch correction, total).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scvi

import celltx

CELLBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_5batches.h5ad"


def train_celltx(
    adata,
    batch_key,
    integrate: bool,
    epochs: int,
    lr: float,
    seed: int,
    accelerator: str,
    parts=("dsbn", "dab", "batch_token"),
    loss_weights=None,
    **model_kw,
):
    a = adata.copy()
    scvi.settings.seed = seed
    celltx.model.ScGPT.setup_anndata(a, batch_key=batch_key)
    flags = {p: True for p in parts} if integrate else {}
    model = celltx.model.ScGPT(a, **{**model_kw, **flags})
    model.train(
        max_epochs=epochs,
        lr=lr,
        task="integration_scgpt" if integrate else "generative",
        batch_size=32,
        accelerator=accelerator,
        enable_progress_bar=False,
        loss_weights=loss_weights if integrate else None,
    )
    return model.get_latent_representation(), model


def train_recipe(adata, a):
    """The representation recipe (EMBED_CELLTX_DEFAULTS) on the benchmark's cells."""
    recipe = celltx.bench.EMBED_CELLTX_DEFAULTS
    x = adata.copy()
    scvi.settings.seed = a.seed
    celltx.model.ScGPT.setup_anndata(x)
    model = celltx.model.ScGPT(x, **recipe["model"])
    model.train(
        max_epochs=a.epochs or recipe["epochs"],
        lr=a.lr or recipe["lr"],
        task=recipe["task"],
        batch_size=recipe["batch_size"],
        accelerator=a.accelerator,
        enable_progress_bar=False,
    )
    return model.get_latent_representation()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--h5ad", default=str(CELLBENCH))
    p.add_argument("--batch", default="batch")
    p.add_argument("--labels", default="cell_line")
    p.add_argument(
        "--models",
        nargs="*",
        choices=["generative", "integration", "recipe"],
        default=["generative", "integration"],
        help="celltx models to train and score",
    )
    p.add_argument("--save-dir", help="write each --variants embedding there as NAME.npy")
    p.add_argument("--score-dir", help="also score every NAME.npy embedding found there")
    p.add_argument(
        "--variants",
        default="{}",
        help="JSON {name: overrides of INTEGRATION_CELLTX_DEFAULTS}: celltx integration recipes",
    )
    p.add_argument("--epochs", type=int, default=None, help="default 30 (recipe: its own)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (recipe: its own)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--baselines", nargs="*", default=list(celltx.bench.INTEGRATION_BASELINES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="skip kBET and isolated labels")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--plot-dir")
    p.add_argument(
        "--parts",
        default="dsbn,dab,batch_token",
        help="architecture parts of the integration model (comma-separated; '' for none)",
    )
    p.add_argument("--loss-weights", default="{}", help="JSON overrides, e.g. '{\"ecs\": 0}'")
    a = p.parse_args(argv)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    adata = ad.read_h5ad(a.h5ad)
    if "demuxlet_cls" in adata.obs:
        adata = adata[adata.obs["demuxlet_cls"] != "DBL"].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=2000, flavor="seurat_v3", batch_key=a.batch, subset=True
    )
    kw = celltx.nn.preset(
        "small", d_model=a.d_model, n_layers=a.layers, max_seq_len=a.max_seq_len, dropout=0.1
    )
    emb, timing = {}, {}
    if "recipe" in a.models:
        t0 = time.perf_counter()
        emb["celltx (representation recipe)"] = train_recipe(adata, a)
        timing["celltx (representation recipe)"] = time.perf_counter() - t0
    for name, overrides in json.loads(a.variants).items():
        t0 = time.perf_counter()
        emb[name] = celltx.bench.celltx_integration_embedding(
            adata, a.batch, seed=a.seed, settings={"accelerator": a.accelerator, **overrides}
        )
        timing[name] = time.perf_counter() - t0
        print(f"{name}: {timing[name]:.0f} s", flush=True)
        if a.save_dir:
            Path(a.save_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(a.save_dir) / f"{name}.npy", emb[name])
            (Path(a.save_dir) / f"{name}.seconds").write_text(f"{timing[name]:.1f}")
    if a.score_dir:
        for f in sorted(Path(a.score_dir).glob("*.npy")):
            emb[f.stem] = np.load(f)
            sec = f.with_suffix(".seconds")
            if sec.exists():
                timing[f.stem] = float(sec.read_text())
    if (a.save_dir and not a.score_dir or not emb) and not a.baselines:
        return  # embeddings saved for a later --score-dir run
    for name, integrate in (("celltx (generative)", False), ("celltx (integration)", True)):
        if name.split("(")[1].rstrip(")") not in a.models:
            continue
        t0 = time.perf_counter()
        emb[name], _ = train_celltx(
            adata,
            a.batch,
            integrate,
            a.epochs or 30,
            a.lr or 1e-3,
            a.seed,
            a.accelerator,
            parts=[x for x in a.parts.split(",") if x],
            loss_weights=json.loads(a.loss_weights),
            **kw,
        )
        timing[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = celltx.bench.integration(
        adata,
        a.batch,
        a.labels,
        emb,
        baselines=a.baselines,
        seed=a.seed,
        fast=a.fast,
        scvi_kwargs={"max_epochs": a.scvi_epochs, "accelerator": a.accelerator},
        plot_dir=a.plot_dir,
    )
    models = (f"{kw}, {a.epochs or 30} epochs; " if set(a.models) - {"recipe"} else "") + (
        "recipe: EMBED_CELLTX_DEFAULTS; " if "recipe" in a.models else ""
    )
    print(
        f"\n{adata.n_obs} cells × {adata.n_vars} HVGs, {adata.obs[a.batch].nunique()} batches, "
        f"{adata.obs[a.labels].nunique()} labels; celltx: {models}"
        f"training s: { {k: round(v) for k, v in timing.items()} }; baselines + metrics "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    cols = ["Bio conservation", "Batch correction", "Total"]
    print(table.drop(index="Metric Type")[cols].astype(float).round(3).to_string())
    print()
    print(table.T.to_string())


if __name__ == "__main__":
    main()
