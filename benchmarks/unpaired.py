"""Unpaired RNA -> ATAC label transfer: Kang 2018 PBMC RNA -> Granja 2019 bone-marrow scATAC.

The two experiments share no cells; they are linked by gene activity (each ATAC cell's peaks
summed onto nearby genes by distance to the TSS, ``celltx.data.gene_activity`` with the hg19
table). Kang has no labels: it is labelled with a marker-gene rule on Leiden clusters
(``label_kang``, below). Labels are transferred RNA -> ATAC on the types both sets share
(B, CD14 monocytes, CD4 T, CD8 T, NK) and scored against Granja's own labels.

The ATAC side (``--bridges``): ``raw``, each ATAC cell's own gene activity; ``smoothed``,
its gene activity averaged over its 50 nearest ATAC cells in the LSI of its peaks
(``smooth_bridge``: the peaks give the ATAC cells' structure, gene activity only the link to
RNA). ``--vote K`` also scores every method after a majority vote of its labels over the
ATAC cells' K nearest peak-LSI neighbours (``peak_vote``), the same for every method.

Methods (every one a kNN vote, k = 15, from the labelled RNA cells to the ATAC cells):

- ``pca_joint``: log-normalised RNA and gene activity on the shared genes (RNA's 2,000 most
  variable), each scaled within its dataset, one PCA (30 PCs) over both: the baseline
  (with ``--bridges raw``).
- ``pca_project``: the same, PCA fitted on RNA and the ATAC cells projected into it.
- ``pca_harmony``: the joint PCA corrected by Harmony (harmonypy), the dataset as the batch.
- ``celltx``: an ScGPT trained from scratch on both sets' shared genes (the integration task:
  contrastive ``<cls>`` with mutual-nearest-neighbour positives across the two modalities,
  ``modality`` as the batch), then both embedded and the kNN vote taken in its space;
  ``--task annotation``: the RNA cells labelled, the classifier's prediction.
- ``celltx_mosaic``: celltx's multiome recipe on a mosaic (Kang RNA-only; Granja with its
  gene activity as the RNA view and its peaks as ATAC), kNN in the joint embedding.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/unpaired.py [--seeds 0 1 2] [--cells N]

Needs the shared data (../shared/data) and the TSS table
(``pip install --no-deps celloracle==0.20.0``).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_TYPES = ("B", "CD14 Mono", "CD4 T", "CD8 T", "NK")
#: Granja 2019's clusters -> the shared types (others, e.g. progenitors, are not scored)
GRANJA_TYPES = {
    "17_B": "B",
    "11_CD14.Mono.1": "CD14 Mono",
    "12_CD14.Mono.2": "CD14 Mono",
    "20_CD4.N1": "CD4 T",
    "21_CD4.N2": "CD4 T",
    "22_CD4.M": "CD4 T",
    "19_CD8.N": "CD8 T",
    "23_CD8.EM": "CD8 T",
    "24_CD8.CM": "CD8 T",
    "25_NK": "NK",
}
#: marker sets of the labelling rule (z-scored log expression, averaged per Leiden cluster)
MARKERS = {
    "B": ["MS4A1", "CD79A", "CD79B"],
    "CD14 Mono": ["CD14", "LYZ", "S100A9"],
    "FCGR3A Mono": ["FCGR3A", "MS4A7"],
    "T": ["CD3D", "CD3E"],
    "NK": ["GNLY", "NKG7", "KLRD1"],
    "DC": ["FCER1A", "CLEC10A"],
    "Megakaryocyte": ["PPBP", "PF4"],
    "pDC": ["LILRA4", "IL3RA"],
}
CD8 = ["CD8A", "CD8B"]

#: the celltx recipe of this benchmark (the representation recipe's model, integration task)
UNPAIRED_CELLTX_DEFAULTS = {
    "model": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "max_seq_len": 256,
        "dropout": 0.0,
        "gene_selection": "rank",
    },
    "task": "integration",
    "inputs": "scaled",  # or "counts"
    "epochs": 10,
    "lr": 1e-2,
    "batch_size": 32,
    "accelerator": "cpu",
}


def label_kang(rna: ad.AnnData, seed: int = 0) -> tuple[pd.Series, pd.DataFrame]:
    """Marker-gene labels for Kang 2018: Leiden clusters, each named by its best marker set.

    Log-normalised counts, 2,000 HVGs, 30 PCs, Leiden (resolution 1); each cluster takes the
    marker set with the highest mean z-scored expression (``MARKERS``), but T whenever the T
    score (CD3D/CD3E) is above 0.5 (cytotoxic T cells also score high on NK markers), and none
    ("unassigned") when no set reaches 0.3; a T cluster is CD8 T when its mean z-score of
    CD8A/CD8B is above 0.5, else CD4 T. Returns the labels and the
    per-cluster scores (for the docs).
    """
    a = rna.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    log = a.copy()
    sc.pp.highly_variable_genes(a, n_top_genes=2000)
    a = a[:, a.var["highly_variable"]].copy()
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=30, random_state=seed)
    sc.pp.neighbors(a, random_state=seed, transformer="sklearn")
    sc.tl.leiden(
        a, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2, directed=False
    )
    genes = sorted({g for m in [*MARKERS.values(), CD8] for g in m} & set(log.var_names))
    x = np.asarray(log[:, genes].X.toarray() if hasattr(log.X, "toarray") else log[:, genes].X)
    z = pd.DataFrame((x - x.mean(0)) / (x.std(0) + 1e-8), columns=genes, index=log.obs_names)
    means = z.groupby(a.obs["leiden"].to_numpy()).mean()
    scores = pd.DataFrame(
        {k: means[[g for g in m if g in genes]].mean(1) for k, m in MARKERS.items()}
    )
    scores["CD8"] = means[[g for g in CD8 if g in genes]].mean(1)
    best = scores[list(MARKERS)].idxmax(1)
    best[scores["T"] > 0.5] = "T"  # CD3+ cytotoxic cells (NKG7+, GNLY+) are T cells, not NK
    best[scores[list(MARKERS)].max(1) < 0.3] = "unassigned"  # no marker set stands out
    best[(best == "T") & (scores["CD8"] > 0.5)] = "CD8 T"
    best[best == "T"] = "CD4 T"
    scores["label"] = best
    scores["cells"] = a.obs["leiden"].value_counts().reindex(scores.index)
    return pd.Series(
        best.reindex(a.obs["leiden"].to_numpy()).to_numpy(), index=rna.obs_names
    ), scores


def prepare(n_cells: int | None, seed: int, cache: Path | None = None):
    """Labelled Kang RNA and Granja gene activity on their shared genes (log-normalised)."""
    from celltx.data import gene_activity

    if cache is not None and (cache / "ga.h5ad").exists():
        rna = ad.read_h5ad(cache / "rna.h5ad")
        ga = ad.read_h5ad(cache / "ga.h5ad")
        scores = pd.read_csv(cache / "scores.csv", index_col=0)
        ga_seconds = float(ga.uns["seconds"])
    else:
        rna = ad.read_h5ad(DATA / "kang2018_ifnb.h5ad")
        labels, scores = label_kang(rna, seed=0)
        rna.obs["cell_type"] = labels.to_numpy()
        rna = rna[rna.obs["cell_type"].isin(SHARED_TYPES)].copy()
        atac = ad.read_h5ad(DATA / "granja2019_bmmc_scatac.h5ad")
        atac.obs["shared_type"] = atac.obs["cell_type"].map(GRANJA_TYPES)
        atac = atac[atac.obs["shared_type"].notna()].copy()
        t0 = time.perf_counter()
        ga = gene_activity(atac, genome="hg19")
        ga_seconds = time.perf_counter() - t0
        ga.uns["seconds"] = ga_seconds
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            rna.write_h5ad(cache / "rna.h5ad")
            ga.write_h5ad(cache / "ga.h5ad")
            scores.to_csv(cache / "scores.csv")
    rng = np.random.default_rng(seed)
    if n_cells is not None:
        rna = rna[np.sort(rng.choice(rna.n_obs, min(n_cells, rna.n_obs), replace=False))].copy()
        ga = ga[np.sort(rng.choice(ga.n_obs, min(n_cells, ga.n_obs), replace=False))].copy()
    ga.obsm["X_peaks_lsi"] = peak_lsi(ga.obs_names, seed)
    shared = rna.var_names.intersection(ga.var_names)
    rna, ga = rna[:, shared].copy(), ga[:, shared].copy()
    for a in (rna, ga):
        a.layers["counts"] = a.X.copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    return rna, ga, scores, ga_seconds


def peak_lsi(cells, seed: int = 0) -> np.ndarray:
    """LSI of the ATAC cells' own peaks (binarised TF-IDF + SVD, 30 components), those cells only.

    The ATAC side's structure: computed on the scored cells alone (the subsample when
    ``--cells`` is given), never from labels; ``celltx.bench.atac_lsi_embedding``.
    """
    from celltx.bench import atac_lsi_embedding

    atac = ad.read_h5ad(DATA / "granja2019_bmmc_scatac.h5ad")
    return atac_lsi_embedding(atac[cells], n_comps=30, binarize=True, seed=seed)


def smooth_bridge(ga: ad.AnnData, k: int = 50) -> ad.AnnData:
    """Gene activity averaged over each ATAC cell's ``k`` nearest neighbours in its peak LSI.

    A cell's gene activity rests on the ~136 of 10,000 stored peaks open in it, so it is
    noisy (a kNN within Granja on gene activity alone: 0.63; on the peaks' LSI: 0.88). The
    peaks say which cells are alike (cosine distance in the LSI); averaging the log-normalised gene activity over those
    cells (the cell itself included, uniform weights) keeps the peaks' structure and gives
    each cell the activity of its neighbourhood, as ArchR's MAGIC-smoothed gene scores do.
    Unsupervised (no labels), on the scored ATAC cells only. Returns a copy.
    """
    from celltx.data import smooth_gene_activity

    return smooth_gene_activity(ga, emb=ga.obsm["X_peaks_lsi"], k=k)


def peak_vote(pred: np.ndarray, ga: ad.AnnData, k: int = 15) -> np.ndarray:
    """Each ATAC cell's label replaced by the majority among its ``k`` peak-LSI neighbours.

    Label smoothing over the ATAC cells' own peak graph (cosine kNN in ``X_peaks_lsi``, the
    cell itself included; ties go to the first label in sorted order). Applied to every
    method's predictions alike, so that a comparison with it stays fair.
    """
    from sklearn.neighbors import NearestNeighbors

    emb = ga.obsm["X_peaks_lsi"]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    idx = NearestNeighbors(n_neighbors=min(int(k), ga.n_obs)).fit(emb).kneighbors(emb)[1]
    classes, codes = np.unique(np.asarray(pred, dtype=object).astype(str), return_inverse=True)
    counts = np.zeros((len(codes), len(classes)))
    np.add.at(counts, (np.repeat(np.arange(len(codes)), idx.shape[1]), codes[idx].ravel()), 1)
    return classes[counts.argmax(1)]


def _knn(ref, y, query, k=15):
    return KNeighborsClassifier(n_neighbors=k).fit(ref, y).predict(query)


def _scaled(a, genes):
    x = a[:, genes].X
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    return np.clip((x - x.mean(0)) / (x.std(0) + 1e-8), -10, 10)


def run_pca(rna, ga, seed, project=False, harmony=False):
    """kNN transfer in a PCA of both sets (``project``: fitted on RNA; ``harmony``: the joint
    PCA corrected by Harmony with the dataset as the batch, harmonypy's defaults)."""
    hvg = sc.pp.highly_variable_genes(rna, n_top_genes=2000, inplace=False)
    genes = rna.var_names[hvg["highly_variable"].to_numpy()]
    xr, xa = _scaled(rna, genes), _scaled(ga, genes)
    pca = PCA(30, random_state=seed).fit(xr if project else np.vstack([xr, xa]))
    zr, za = pca.transform(xr), pca.transform(xa)
    if harmony:
        import harmonypy

        meta = pd.DataFrame({"dataset": ["rna"] * len(zr) + ["atac"] * len(za)})
        z = harmonypy.run_harmony(np.vstack([zr, za]), meta, "dataset", random_state=seed)
        z = np.asarray(z.Z_corr)
        z = z.T if z.shape[0] != len(meta) else z
        zr, za = z[: len(zr)], z[len(zr) :]
    return _knn(zr, rna.obs["cell_type"].to_numpy(), za)


def scaled_inputs(rna, ga, n_genes=2000):
    """Each dataset's log-normalised values z-scored per gene within it, clipped to [0, 10].

    Gene activity and expression differ gene by gene (a gene with many peaks nearby has high
    activity in every cell); after scaling within each dataset a cell's tokens are the genes
    that are *above their dataset's mean* in it, which the two modalities share. On RNA's
    ``n_genes`` most variable genes, as the PCA baseline.
    """
    hvg = sc.pp.highly_variable_genes(rna, n_top_genes=n_genes, inplace=False)
    genes = rna.var_names[hvg["highly_variable"].to_numpy()]
    out = []
    for a in (rna, ga):
        b = ad.AnnData(np.clip(_scaled(a, genes), 0, 10).astype(np.float32), obs=a.obs.copy())
        b.var_names = genes
        out.append(b)
    return out


def run_celltx(rna, ga, seed, settings):
    import scvi

    from celltx.model import ScGPT

    cfg = {**UNPAIRED_CELLTX_DEFAULTS, **settings}
    if cfg["inputs"] == "scaled":
        rna, ga = scaled_inputs(rna, ga)
    else:
        rna, ga = rna.copy(), ga.copy()
        rna.X, ga.X = rna.layers["counts"], ga.layers["counts"]
    both = ad.concat({"rna": rna, "atac": ga}, label="modality", index_unique="-")
    both.obs = both.obs[["modality"]].copy()
    supervised = cfg["task"] == "annotation"
    if supervised:  # RNA cells labelled, ATAC cells not (NaN)
        both.obs["label"] = pd.Categorical(
            np.concatenate(
                [
                    rna.obs["cell_type"].astype(object).to_numpy(),
                    np.full(ga.n_obs, np.nan, dtype=object),
                ]
            )
        )
    scvi.settings.seed = seed
    ScGPT.setup_anndata(both, batch_key="modality", labels_key="label" if supervised else None)
    model = ScGPT(both, **cfg["model"])
    model.train(
        max_epochs=cfg["epochs"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        accelerator=cfg["accelerator"],
        task=cfg["task"],
        enable_progress_bar=False,
    )
    is_rna = (both.obs["modality"] == "rna").to_numpy()
    if supervised:
        return np.asarray(model.predict(both, indices=np.flatnonzero(~is_rna)))
    z = model.get_latent_representation()
    return _knn(z[is_rna], rna.obs["cell_type"].to_numpy(), z[~is_rna])


def run_mosaic(rna, ga, seed, settings):
    """celltx's multiome recipe on a mosaic: Kang RNA-only; Granja paired (gene activity + peaks).

    The RNA modality holds both sets' scaled values (:func:`scaled_inputs`: Kang's expression,
    Granja's gene activity); the ATAC modality Granja's peak counts (Kang's rows not measured,
    :func:`celltx.data.pad_mosaic`). The cross-modal contrastive part pulls each Granja cell's
    peaks and its gene activity together, so the peaks shape the RNA-side space; the kNN vote
    is taken in the joint embedding (every cell from all it has).
    """
    import mudata as md
    import scvi
    import torch

    from celltx.bench import MULTIOME_CELLTX_DEFAULTS, multiome_recipe_epochs
    from celltx.data import pad_mosaic
    from celltx.model import ScGPT

    rna_s, ga_s = scaled_inputs(rna, ga)
    atac = ad.read_h5ad(DATA / "granja2019_bmmc_scatac.h5ad")[ga.obs_names]
    names_r = [f"rna-{c}" for c in rna.obs_names]
    names_a = [f"atac-{c}" for c in ga.obs_names]
    both = ad.concat([rna_s, ga_s])
    both.obs_names = names_r + names_a
    both.obs = both.obs.iloc[:, :0]
    peaks = ad.AnnData(atac.X.astype(np.float32), var=atac.var.iloc[:, :0].copy())
    peaks.obs_names = names_a
    padded = pad_mosaic(md.MuData({"rna": both, "atac": peaks}))
    ScGPT.setup_mudata(padded, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    cfg = {
        **MULTIOME_CELLTX_DEFAULTS,
        **{k: settings[k] for k in ("epochs", "lr") if k in settings},
    }
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = ScGPT(padded, **cfg["model"])
    model.train(
        max_epochs=multiome_recipe_epochs(padded.n_obs, cfg),
        task="multiome",
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        accelerator="cpu",
        enable_progress_bar=False,
    )
    z = model.get_latent_representation(padded)
    pos = pd.Index(padded.obs_names)
    zr, za = z[pos.get_indexer(names_r)], z[pos.get_indexer(names_a)]
    return _knn(zr, rna.obs["cell_type"].to_numpy(), za)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cells", type=int, default=2000, help="cells per dataset (0: all)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["pca_joint", "pca_project", "pca_harmony", "celltx"],
        choices=["pca_joint", "pca_project", "pca_harmony", "celltx", "celltx_mosaic"],
    )
    parser.add_argument(
        "--bridges",
        nargs="+",
        default=["raw", "smoothed"],
        choices=["raw", "smoothed"],
        help="ATAC side: gene activity as it is, or averaged over peak-LSI neighbours",
    )
    parser.add_argument("--smooth-k", type=int, default=50, help="neighbours of 'smoothed'")
    parser.add_argument(
        "--vote",
        type=int,
        default=0,
        help="also score every method's labels after a majority vote over this many peak-LSI "
        "neighbours (0: no)",
    )
    parser.add_argument(
        "--save", type=Path, default=None, help="folder to write each run's predictions to"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--task", default=None, help="celltx task (default: integration)")
    parser.add_argument("--inputs", default=None, choices=["scaled", "counts"])
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder to keep the prepared data in"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    settings = {} if args.epochs is None else {"epochs": args.epochs}
    if args.task is not None:
        settings["task"] = args.task
    if args.inputs is not None:
        settings["inputs"] = args.inputs
    rows = []
    for seed in args.seeds:
        rna, ga, scores, ga_seconds = prepare(args.cells or None, seed, args.cache)
        if seed == args.seeds[0]:
            print(scores.round(2).to_string())
            print(f"RNA {rna.shape}, gene activity {ga.shape} ({ga_seconds:.1f} s)")
            print(rna.obs["cell_type"].value_counts().to_string())
        truth = ga.obs["shared_type"].to_numpy()
        for bridge, method in itertools.product(args.bridges, args.methods):
            t0 = time.perf_counter()
            atac = smooth_bridge(ga, args.smooth_k) if bridge == "smoothed" else ga
            if method == "celltx":
                pred = run_celltx(rna, atac, seed, settings)
            elif method == "celltx_mosaic":
                pred = run_mosaic(rna, atac, seed, settings)
            else:
                pred = run_pca(
                    rna,
                    atac,
                    seed,
                    project=method == "pca_project",
                    harmony=method == "pca_harmony",
                )
            seconds = time.perf_counter() - t0
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"truth": truth, "pred": pred}, index=ga.obs_names).to_csv(
                    args.save / f"{method}_{bridge}_{seed}.csv"
                )
            voted = {method: pred}
            if args.vote:
                voted[f"{method}+vote{args.vote}"] = peak_vote(pred, atac, args.vote)
            for name, p in voted.items():
                rows.append(
                    {
                        "method": name,
                        "bridge": bridge,
                        "seed": seed,
                        "accuracy": float((p == truth).mean()),
                        "balanced_accuracy": float(balanced_accuracy_score(truth, p)),
                        "seconds": seconds,
                    }
                )
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(
        table.groupby(["bridge", "method"])[["accuracy", "balanced_accuracy", "seconds"]]
        .agg(["mean", "std"])
        .round(3)
        .to_string()
    )


if __name__ == "__main__":
    main()
