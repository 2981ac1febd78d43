"""``celltx quickstart``: train a small ScGPT on bundled real PBMCs and compare it with PCA."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from celltx._cli_io import Output, UsageError, check_outputs

#: what ``celltx quickstart`` writes into ``--out`` (replaced only with ``--overwrite``)
QUICKSTART_FILES = ("pbmc68k_scgpt.h5ad", "umap_cell_type.png", "model", "scores.csv")


def quickstart(
    out: str | os.PathLike = "celltx_quickstart",
    epochs: int | None = None,
    accelerator: str = "auto",
    batch_size: int = 32,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Train a small ScGPT on real PBMCs and compare its embedding with PCA.

    Uses :func:`celltx.datasets.pbmc68k` (700 cells, 10 FACS-sorted types) and the
    representation recipe :data:`celltx.bench.EMBED_CELLTX_DEFAULTS` (contrastive ``<cls>``,
    rank-value tokens; ``epochs`` and ``lr`` default to the recipe's). Messages of other
    libraries a user cannot act on are hidden (:func:`quiet_third_party`). Writes to
    ``out``: ``pbmc68k_scgpt.h5ad`` (with ``obsm["X_scgpt"]``), ``umap_cell_type.png``, the
    saved model (``model/``) and ``scores.csv``; returns the score table and the training
    seconds. ``out`` may hold other files; when it holds any of the files quickstart
    writes (:data:`QUICKSTART_FILES`), they are replaced only with ``overwrite=True``
    (otherwise a ``ValueError``, before any work).
    """
    out = Path(out)
    check_outputs(
        [Output(out, "--out", kind="dir", writes=QUICKSTART_FILES, only_writes=True)],
        [],
        overwrite,
    )
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    import scvi

    import celltx

    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = seed
    recipe: dict[str, Any] = celltx.bench.EMBED_CELLTX_DEFAULTS
    epochs = recipe["epochs"] if epochs is None else epochs
    lr = recipe["lr"] if lr is None else lr
    with quiet_third_party():
        t0 = time.perf_counter()
        adata = celltx.datasets.pbmc68k()
        celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
        model = celltx.model.ScGPT(adata, seed=seed, **recipe["model"])
        print(model._model_summary_string, flush=True)
        model.train(  # the representation recipe (docs/representation.md, tutorial 01)
            max_epochs=epochs,
            task=recipe["task"],
            batch_size=batch_size,
            lr=lr,
            accelerator=accelerator,
            enable_progress_bar=progress,
        )
        t_train = time.perf_counter() - t0

        adata.obsm["X_scgpt"] = model.get_latent_representation()
        # PCA baseline on the same cells and the same (log-normalized) values
        sc.pp.pca(adata, n_comps=50, random_state=seed, key_added="X_pca_50")
        scores = celltx.bench.embedding_scores(
            adata, "cell_type", {"celltx ScGPT": "X_scgpt", "PCA (50 PCs)": "X_pca_50"}, seed=seed
        )

        sc.pp.neighbors(adata, use_rep="X_scgpt", random_state=seed)
        sc.tl.umap(adata, random_state=seed)
        fig = sc.pl.umap(adata, color="cell_type", show=False, return_fig=True)
        fig.savefig(out / "umap_cell_type.png", dpi=120, bbox_inches="tight")

        adata.write_h5ad(out / "pbmc68k_scgpt.h5ad")
        model.save(str(out / "model"), overwrite=True)
        scores.to_csv(out / "scores.csv")

    print(
        f"\ncelltx quickstart — pbmc68k (700 cells, 10 types); representation recipe "
        f"(contrastive <cls>, rank-value tokens): {epochs} epochs, lr {lr:g}, batch "
        f"{batch_size}, trained in {t_train:.0f} s on {model.device}"
    )
    print("\nCell-type recovery (kNN: 15 neighbours, 5-fold stratified; Leiden res. 1.0):")
    table = scores.copy()
    table["knn_accuracy"] = [
        f"{m:.3f} ± {s:.3f}"
        for m, s in zip(scores.knn_accuracy, scores.knn_accuracy_sd, strict=True)
    ]
    table = table.drop(columns=["knn_accuracy_sd", "error"], errors="ignore")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(
        f"\nWrote {out}/pbmc68k_scgpt.h5ad, {out}/umap_cell_type.png, {out}/model/, "
        f"{out}/scores.csv"
    )
    return {"scores": scores, "seconds": t_train}


#: messages of third-party libraries that :func:`quickstart` hides: Lightning's adverts for
#: its cloud services and its notes on internal steps (logged at INFO by
#: ``lightning.*.rank_zero``), and the data-loader worker hint (a 700-cell in-memory AnnData
#: needs no workers)
QUIET_LOG_MESSAGES = (
    "💡 Tip:",
    "Loading `train_dataloader` to estimate",
    "TPU available:",
    "HPU available:",
)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(QUIET_LOG_MESSAGES)


@contextlib.contextmanager
def quiet_third_party():
    """Hide, for the duration, the messages of other libraries a user cannot act on.

    Lightning's advertising tips and internal notes (:data:`QUIET_LOG_MESSAGES`), the
    "does not have many workers" hint and deprecation / future warnings raised outside
    celltx (also pending ones). Progress bars, celltx's own warnings and everything else stay; the warning
    filters and log filters are restored on exit.
    """
    drop = _DropMessages()
    loggers = [
        logging.getLogger(name)
        for name in (
            "lightning.pytorch.utilities.rank_zero",
            "lightning.fabric.utilities.rank_zero",
        )
    ]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!celltx)")
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        for lg in loggers:
            lg.addFilter(drop)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(drop)


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``quickstart`` sub-command to ``sub`` (``argparse`` sub-parsers)."""
    q = sub.add_parser(
        "quickstart",
        help="train a small ScGPT on bundled real PBMCs, embed, plot a UMAP, compare with PCA",
    )
    q.add_argument("--out", default="celltx_quickstart", help="output folder")
    q.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the recipe's 20)"
    )
    q.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: the recipe's 1e-2)"
    )
    q.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier quickstart in --out (other files are kept)",
    )
    return q


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run ``celltx quickstart``; bad arguments exit 2 (usage and message)."""
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    try:
        quickstart(
            out=args.out,
            epochs=args.epochs,
            accelerator=args.accelerator,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except UsageError as err:
        parser.error(str(err))  # usage and message, exit status 2
