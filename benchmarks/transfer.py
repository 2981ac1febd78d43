"""Transfer: pretrain on Kang 2018 PBMCs, then embed and annotate pbmc68k without training on it.

The foundation-model claim at the scale this project can reach. One model is pretrained
with the embedding recipe (:data:`celltx.bench.EMBED_CELLTX_DEFAULTS`: rank-value tokens,
contrastive objective) on all 13,999 Kang 2018 PBMCs (raw counts, 14,053 genes, two
conditions). Then, on scanpy's pbmc68k (700 cells, 765 genes, log-normalised, 10 cell
types, never seen in pretraining):

``transfer, Kang medians``
    the pretrained model embeds pbmc68k as it is (genes matched by name; rank-value
    selection with the gene medians learned on Kang);
``transfer, pbmc68k medians``
    the same weights through the published-checkpoint path
    (:meth:`~celltx.model.ScGPT.export_scgpt` then
    :meth:`~celltx.model.ScGPT.load_pretrained` on pbmc68k). That path computes the rank
    medians on the new cells, which use no labels, since pbmc68k holds log-normalised values
    where Kang held counts;
``from scratch``
    the recipe trained on pbmc68k itself (:func:`celltx.bench.embedding`);
``PCA``
    50 PCs of pbmc68k itself.

Each embedding is scored with :func:`celltx.bench.embedding_scores` (5-fold kNN accuracy,
Leiden ARI / NMI). ``--annotation`` adds :func:`celltx.bench.annotation` (5-fold macro-F1):
fine-tuning from the Kang checkpoint against logistic regression.

Run from the repository root (the pretrained model is kept in ``--out`` and reused)::

    python benchmarks/transfer.py [--epochs 10] [--out /tmp/celltx_transfer] [--annotation]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import pandas as pd
import scvi

import celltx
from celltx.bench import EMBED_CELLTX_DEFAULTS, embedding, embedding_scores
from celltx.model import ScGPT

KANG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kang2018_ifnb.h5ad"


def pretrain(out: Path, epochs: int, seed: int) -> ScGPT:
    scvi.settings.seed = seed
    kang = ad.read_h5ad(KANG)
    ScGPT.setup_anndata(kang)
    if (out / "kang_model" / "model.json").exists() and (out / "kang_scgpt").exists():
        print(f"reusing the model pretrained in {out}")
        return ScGPT.load(str(out / "kang_model"), adata=kang)
    model = ScGPT(kang, **EMBED_CELLTX_DEFAULTS["model"], seed=seed)
    t = time.perf_counter()
    model.train(
        max_epochs=epochs,
        task=EMBED_CELLTX_DEFAULTS["task"],
        lr=EMBED_CELLTX_DEFAULTS["lr"],
        batch_size=EMBED_CELLTX_DEFAULTS["batch_size"],
        enable_progress_bar=False,
    )
    print(
        f"pretrained on {kang.n_obs} Kang cells, {epochs} epochs: {time.perf_counter() - t:.0f} s"
    )
    model.save(str(out / "kang_model"), overwrite=True, save_anndata=False)
    model.export_scgpt(str(out / "kang_scgpt"), overwrite=True)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/celltx_transfer")
    p.add_argument("--annotation", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kang_model = pretrain(out, args.epochs, args.seed)

    pbmc = celltx.datasets.pbmc68k()
    ScGPT.setup_anndata(pbmc)
    embs = {"transfer, Kang medians": kang_model.get_latent_representation(pbmc)}
    loaded = ScGPT.load_pretrained(str(out / "kang_scgpt"), pbmc)
    embs["transfer, pbmc68k medians"] = loaded.get_latent_representation(pbmc)
    scores = embedding_scores(pbmc, "cell_type", embs, seed=args.seed)
    scratch = embedding(
        celltx.datasets.pbmc68k(), "cell_type", methods=("celltx", "pca"), seed=args.seed
    )
    scores = scores.rename_axis("method").reset_index()
    table = pd.concat([scores, scratch], ignore_index=True)
    cols = [c for c in ("method", "knn_accuracy", "leiden_ari", "leiden_nmi") if c in table]
    print(table[cols].to_string(index=False))
    if args.annotation:
        ann = celltx.bench.annotation(
            celltx.datasets.pbmc68k(),
            "cell_type",
            methods=("celltx", "logreg"),
            seed=args.seed,
            method_kwargs={"celltx": {"pretrained": str(out / "kang_scgpt")}},
        )
        print(ann.to_string())


if __name__ == "__main__":
    main()
