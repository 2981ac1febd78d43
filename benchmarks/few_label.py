"""Few-label annotation: which use of a pretrained celltx model beats logistic regression?

celltx is pretrained once per seed and recipe on every cell (no label is read), then each
head below is trained on a stratified ``--label-fraction`` of each fold's training labels
(the same cells as ``celltx.bench.annotation(..., label_fraction=f)`` gives every method)
and scored on the held-out fold (macro-F1). Baselines get the same labelled cells; the
semi-supervised baselines (``spread_pca``, ``logreg+spread_pca``) also get the same
unlabelled cells as the celltx heads.

Pretraining recipes (``--recipes``):

``generative``   the annotation benchmark's pretraining (``celltx.bench.CELLTX_DEFAULTS``)
``contrastive``  the representation recipe (``celltx.bench.EMBED_CELLTX_DEFAULTS``)
``knn``          the representation recipe with neighbour positives (``contrast_positives="knn"``)

Heads on the embedding (``emb``) and log-normalised genes: ``probe`` (logistic regression
on the embedding), ``probe_genes`` (on [embedding, genes]), ``spread`` (label spreading over
the embedding's kNN graph), ``stack`` (logreg-on-genes + probe probabilities averaged),
``stack_spread`` (logreg-on-genes probabilities + spread label distributions), ``selftrain``
(``probe_genes`` refitted once with its confident pseudo-labels). ``--finetune`` adds the
benchmark's fine-tuning of the whole transformer (expensive).

Data: ``pbmc68k`` (700 cells, ``cell_type``) or ``kang`` (Kang 2018 from ``--data-dir``,
``--n-cells`` cells drawn at random with ``--data-seed``, label ``condition``: ctrl / stim).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/few_label.py --data pbmc68k --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/few_label.py --data kang --n-cells 2100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import celltx
from celltx.bench._annotation import _few_labels
from celltx.bench._annotation_methods import FEW_LABEL_HEADS, _logreg_proba, _spread
from celltx.bench._baselines import dense, fitted_pca, knn_classify
from celltx.bench._fit import fit_celltx
from celltx.bench._inputs import expression_kind, log_normalized

RECIPES = {
    "generative": (
        {
            "model": dict(celltx.bench.CELLTX_DEFAULTS["model"]),
            "task": "generative",
            "epochs": celltx.bench.CELLTX_DEFAULTS["pretrain_epochs"],
            "lr": celltx.bench.CELLTX_DEFAULTS["pretrain_lr"],
            "batch_size": 32,
            "accelerator": "cpu",
        }
    ),
    "contrastive": {**celltx.bench.EMBED_CELLTX_DEFAULTS, "accelerator": "cpu"},
    "knn": {
        **celltx.bench.EMBED_CELLTX_DEFAULTS,
        "model": {**celltx.bench.EMBED_CELLTX_DEFAULTS["model"], "contrast_positives": "knn"},
        "accelerator": "cpu",
    },
}


def load(name: str, data_dir: str, n_cells: int, data_seed: int) -> tuple[AnnData, str]:
    if name == "pbmc68k":
        return celltx.datasets.pbmc68k(), "cell_type"
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(Path(data_dir) / "kang2018_ifnb.h5ad")
    rng = np.random.default_rng(data_seed)
    a = a[np.sort(rng.choice(a.n_obs, n_cells, replace=False))].copy()
    sc.pp.filter_genes(a, min_cells=10)
    return a, "condition"


def baselines(genes, y, train, test, seed) -> dict[str, np.ndarray]:
    g = dense(genes, np.float64)
    clf, pg = _logreg_proba(g, y, train, seed)
    pca = fitted_pca(50, g[train], seed).fit(g[train])
    z_all = fitted_pca(50, g, seed).fit_transform(g)  # label-free, all cells
    classes, d = _spread(z_all, y, train)
    return {
        "logreg": clf.classes_[pg[test].argmax(1)],
        "knn_pca": knn_classify(pca.transform(g[train]), y[train], pca.transform(g[test])),
        "spread_pca": classes[d[test].argmax(1)],
        "logreg+spread_pca": classes[(pg + d)[test].argmax(1)],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["pbmc68k", "kang"], default="pbmc68k")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-cells", type=int, default=2100)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--label-fraction", type=float, default=0.1)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--heads", nargs="+", default=list(FEW_LABEL_HEADS))
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (all recipes)")
    p.add_argument("--finetune", action="store_true")
    p.add_argument("--out", help="CSV of the per-fold rows")
    p.add_argument("--emb-dir", help="keep (and reuse) each pretraining's embedding here")
    a = p.parse_args(argv)
    for name in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    adata, key = load(a.data, a.data_dir, a.n_cells, a.data_seed)
    y = adata.obs[key].astype(str).to_numpy()
    classes = np.unique(y)
    genes = log_normalized(adata.X, expression_kind(adata.X, "X"))
    given = AnnData(X=adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    rows = []

    def add(seed, fold, method, pred, seconds, n_lab):
        f1 = f1_score(y[folds[fold][1]], pred, average="macro", labels=classes, zero_division=0)
        rows.append(
            {"seed": seed, "fold": fold, "method": method, "macro_f1": f1, "seconds": seconds}
        )
        print(
            f"seed {seed} fold {fold} {method}: macro-F1 {f1:.3f} ({seconds:.1f} s, {n_lab} labels)",
            flush=True,
        )

    for seed in a.seeds:
        full = list(StratifiedKFold(n_splits=a.splits, shuffle=True, random_state=seed).split(y, y))
        folds = _few_labels(full, y, classes, a.label_fraction, seed)
        embs, pre_s = {}, {}
        for r in a.recipes:
            t = time.perf_counter()
            settings = {} if a.epochs is None else {"epochs": a.epochs}
            tag = f"{a.data}_{adata.n_obs}_{r}_e{a.epochs}_s{seed}"
            saved = None if a.emb_dir is None else Path(a.emb_dir) / f"{tag}.npz"
            if saved is not None and saved.exists():  # an earlier run's pretraining
                with np.load(saved) as f:
                    embs[r], pre_s[r] = f["emb"], float(f["seconds"])
                continue
            model = fit_celltx(given, RECIPES[r], settings, seed)
            embs[r] = model.get_latent_representation()
            pre_s[r] = time.perf_counter() - t
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                np.savez(saved, emb=embs[r], seconds=pre_s[r])
            print(f"seed {seed}: pretrained {r} in {pre_s[r]:.0f} s", flush=True)
        for fold, (train, test) in enumerate(folds):
            t = time.perf_counter()
            for m, pred in baselines(genes, y, train, test, seed).items():
                add(seed, fold, m, pred, (time.perf_counter() - t) / 4, len(train))
            for r in a.recipes:
                for h in a.heads:
                    t = time.perf_counter()
                    pred = FEW_LABEL_HEADS[h](embs[r], genes, y, train, test, seed)
                    # seconds: the head plus a fifth of the (shared) pretraining
                    add(
                        seed,
                        fold,
                        f"{r}/{h}",
                        pred,
                        time.perf_counter() - t + pre_s[r] / a.splits,
                        len(train),
                    )
        if a.finetune:
            df = celltx.bench.annotation(
                adata,
                key,
                methods=["celltx"],
                n_splits=a.splits,
                seed=seed,
                label_fraction=a.label_fraction,
                method_kwargs={"celltx": {"accelerator": "cpu"}},
            )
            for _, row in df.iterrows():
                rows.append(
                    {
                        "seed": seed,
                        "fold": row["fold"],
                        "method": "generative/finetune",
                        "macro_f1": row["macro_f1"],
                        "seconds": row["seconds"],
                    }
                )
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    per_seed = df.groupby(["method", "seed"])[["macro_f1", "seconds"]].mean()
    g = per_seed.groupby("method")
    table = pd.DataFrame(
        {
            "macro_f1 mean": g["macro_f1"].mean(),
            "sd (seeds)": g["macro_f1"].std(),
            "sd (folds)": df.groupby("method")["macro_f1"].std(),
            "seconds/fold": g["seconds"].mean(),
        }
    ).sort_values("macro_f1 mean", ascending=False)
    print(
        f"\n{a.data}: {adata.n_obs} cells, {len(classes)} labels, label fraction "
        f"{a.label_fraction:g}, {a.splits} folds, seeds {a.seeds}"
    )
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
