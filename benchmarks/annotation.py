"""Cell-type annotation benchmark: celltx next to the baselines, on the same stratified folds.

Logistic regression, kNN on PCA, logistic regression + label spreading, scANVI and
celltypist (:func:`celltx.bench.annotation`).

Default data: scanpy's ``pbmc68k_reduced`` (700 PBMCs, log-normalized ``.raw``, 765
genes, ``bulk_labels``: 10 FACS-sorted types), 5 folds, seed 0. celltx settings are
:data:`celltx.bench.CELLTX_DEFAULTS` (a new d_model-64 / 2-layer model, generative
pretraining on the fold's cells with held-out labels hidden, then classification
fine-tuning with balanced class weights and label smoothing 0.1); ``--pretrained DIR``
fine-tunes a scGPT checkpoint instead.

Run from the repository root::

    python benchmarks/annotation.py                                   # all methods, pbmc68k
    python benchmarks/annotation.py --methods celltx logreg --splits 2
    python benchmarks/annotation.py --h5ad my.h5ad --labels cell_type --layer lognorm
    python benchmarks/annotation.py --h5ad counts.h5ad --labels cell_type    # raw counts in X
    python benchmarks/annotation.py --celltx '{"finetune_epochs": 50}'
    python benchmarks/annotation.py --label-fraction 0.1 --methods celltx logreg knn_pca

``--label-fraction F`` keeps a stratified fraction F of each fold's training labels (the
same cells for every method; celltx, logreg_spread and scANVI still see all cells,
unlabelled). With F below 1 celltx uses :data:`celltx.bench.FEW_LABEL_CELLTX_DEFAULTS`
(representation-recipe pretraining and a head on its embedding instead of fine-tuning;
``--celltx '{"head": "finetune"}'`` fine-tunes). ``benchmarks/few_label.py`` compares the
heads and pretraining recipes.

The data may hold raw counts or log-normalised values: each method gets what it needs
(celltypist, logreg, kNN: log1p-CP10k; scANVI: counts, from ``--counts-layer`` when X is
log-normalised, else it is skipped). A method that fails keeps its row with the exception in
``error``; the other methods' results are kept. Prints the per-fold table and mean ± sd per
method; ``--out FILE.csv`` writes the folds.
"""

from __future__ import annotations

import argparse
import json
import logging

import anndata as ad

import celltx


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--h5ad", help="AnnData with raw counts or log-normalized expression (default: pbmc68k)"
    )
    p.add_argument("--labels", default="cell_type")
    p.add_argument("--layer", default=None)
    p.add_argument("--counts-layer", default=None, help="layer with raw counts for scANVI")
    p.add_argument("--methods", nargs="+", default=list(celltx.bench.ANNOTATION_METHODS))
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", help="scGPT model directory to fine-tune")
    p.add_argument("--celltx", default="{}", help="JSON overrides of CELLTX_DEFAULTS")
    p.add_argument("--accelerator", default="auto")
    p.add_argument(
        "--label-fraction", type=float, default=None, help="fraction of training labels kept"
    )
    p.add_argument("--out", help="write the per-fold table as CSV")
    a = p.parse_args(argv)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    progress = logging.getLogger("celltx.bench")  # one line per finished method and fold
    progress.setLevel(logging.INFO)
    progress.addHandler(logging.StreamHandler())
    adata = celltx.datasets.pbmc68k() if a.h5ad is None else ad.read_h5ad(a.h5ad)
    cx = {**json.loads(a.celltx), "accelerator": a.accelerator}
    if a.pretrained:
        cx.setdefault("pretrained", a.pretrained)
        cx.setdefault("pretrain_epochs", 0)
    kwargs = {"celltx": cx, "scanvi": {"accelerator": a.accelerator}}
    df = celltx.bench.annotation(
        adata,
        a.labels,
        methods=a.methods,
        n_splits=a.splits,
        seed=a.seed,
        layer=a.layer,
        method_kwargs=kwargs,
        counts_layer=a.counts_layer,
        label_fraction=a.label_fraction,
    )
    print(df.round(3).to_string(index=False))
    print(
        f"\n{adata.n_obs} cells, {adata.obs[a.labels].nunique()} labels, {a.splits} folds, seed {a.seed}"
        + ("" if a.label_fraction is None else f", label fraction {a.label_fraction:g}")
    )
    few = {} if a.label_fraction in (None, 1) else celltx.bench.FEW_LABEL_CELLTX_DEFAULTS
    print("celltx settings:", {**celltx.bench.CELLTX_DEFAULTS, **few, **cx})
    print()
    print(
        celltx.bench.summarize(df).to_markdown() if _has_tabulate() else celltx.bench.summarize(df)
    )
    if a.out:
        df.to_csv(a.out, index=False)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
