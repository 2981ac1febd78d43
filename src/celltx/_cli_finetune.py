"""``celltx finetune``: fine-tune a scGPT-format checkpoint for cell-type annotation."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from celltx._cli_io import (
    Output,
    atomic_output,
    check_devices,
    check_h5ad_input,
    check_outputs,
    check_positive,
    keep_user_fields,
)
from celltx._cli_train import (
    TrainArgsError,
    add_trainer_arguments,
    common_kwargs,
    finish_training,
    report_errors,
    trainer_kwargs,
)

#: what ``celltx finetune`` writes into ``--out``
FINETUNE_WRITES = ("model", "history.csv", "summary.json")


def finetune(
    checkpoint: str | os.PathLike,
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels_key: str,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    freeze_layers: int = 0,
    class_weight: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    gene_symbols: str | None = None,
    predict: str | os.PathLike | None = None,
    predict_out: str | os.PathLike | None = None,
    accelerator: str = "auto",
    devices: str = "auto",
    strategy: str | None = None,
    precision: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune a scGPT-format checkpoint for cell-type annotation.

    Loads ``checkpoint`` (a published scGPT directory, or the ``scgpt/`` folder that
    ``celltx pretrain`` writes) with :meth:`~celltx.model.ScGPT.load_pretrained` on the
    labelled cells of ``input_path``, trains ``task="annotation"`` and writes ``model/``,
    ``history.csv`` and ``summary.json`` to ``out``. With ``predict`` (an ``.h5ad`` of
    cells to annotate) and ``predict_out``, writes that file with ``obs["celltx_prediction"]``
    and ``obs["celltx_confidence"]``.

    Parameters
    ----------
    checkpoint
        scGPT-format model directory (``args.json``, ``vocab.json``, weights).
    input_path
        Labelled cells (``.h5ad``).
    out
        Output folder.
    labels_key
        ``obs`` column with the labels (NaN: unlabelled).
    epochs, batch_size, lr, freeze_layers, class_weight
        As in :meth:`~celltx.model.ScGPT.train`.
    layer, batch_key, gene_symbols
        As in :meth:`~celltx.model.ScGPT.setup_anndata`.
    predict, predict_out
        Cells to annotate and where to write them.
    accelerator, devices, strategy, precision, seed, overwrite, progress
        As for :func:`pretrain`.

    Returns
    -------
    dict
        What ``summary.json`` holds.
    """
    import anndata as ad
    import numpy as np
    import scvi

    from celltx.model import ScGPT

    ckpt = Path(checkpoint)
    if not (ckpt / "args.json").is_file() or not (ckpt / "vocab.json").is_file():
        hint = (
            f" ({ckpt / 'scgpt'} is the scGPT-format copy celltx pretrain writes)"
            if (ckpt / "scgpt" / "args.json").is_file()
            else ""
        )
        raise TrainArgsError(
            f"checkpoint {ckpt} is not a scGPT-format model directory (args.json, vocab.json, "
            f"weights){hint}."
        )
    src = Path(input_path)
    if (predict is None) != (predict_out is None):
        raise TrainArgsError("--predict and --predict-out go together.")
    if epochs < 1 or batch_size < 1:
        raise TrainArgsError("--epochs and --batch-size must be >= 1.")
    check_positive(lr, "--lr", TrainArgsError)
    check_devices(devices, TrainArgsError)
    outputs = [Output(out, "--out", kind="dir", writes=FINETUNE_WRITES)]
    if predict_out is not None:
        outputs.append(Output(predict_out, "--predict-out", suffixes=(".h5ad",)))
    reads = [ckpt, src] + ([] if predict is None else [predict])
    check_outputs(outputs, reads, overwrite, TrainArgsError)
    out = Path(out)
    check_h5ad_input(src, "input", TrainArgsError)
    if predict is not None:
        check_h5ad_input(predict, "--predict", TrainArgsError)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(src)
    if labels_key not in adata.obs.columns:
        raise TrainArgsError(
            f"--labels-key {labels_key!r} is not a column of {src}; its columns: "
            f"{list(adata.obs.columns)}."
        )
    scvi.settings.seed = seed
    ScGPT.setup_anndata(
        adata, layer=layer, batch_key=batch_key, labels_key=labels_key, gene_symbols=gene_symbols
    )
    model = ScGPT.load_pretrained(ckpt, adata, gene_symbols=gene_symbols, accelerator=accelerator)
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        task="annotation",
        freeze_layers=freeze_layers,
        class_weight=class_weight,
        enable_progress_bar=progress,
        **trainer_kwargs(accelerator, devices, strategy, precision),
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "model"), overwrite=True)
    summary = finish_training(model, adata.n_obs, adata.n_vars, out, t0, "finetune")
    if predict is not None and predict_out is not None:  # (checked above: both or neither)
        query = ad.read_h5ad(predict)
        with keep_user_fields(query):  # the query's obs and uns as they were
            proba = model.predict(query, soft=True)
        query.obs["celltx_prediction"] = proba.columns.to_numpy()[proba.to_numpy().argmax(1)]
        query.obs["celltx_confidence"] = np.asarray(proba.max(axis=1), dtype=np.float32)
        with atomic_output(predict_out) as partial:  # a failed write keeps an earlier file
            query.write_h5ad(partial)
        print(f"Wrote predictions for {query.n_obs} cells to {predict_out}", flush=True)
    return summary


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``finetune`` sub-command to ``sub`` (``argparse`` sub-parsers)."""
    f = sub.add_parser(
        "finetune",
        help="fine-tune a scGPT-format checkpoint for cell-type annotation",
        description="Fine-tune a scGPT-format checkpoint (published, or the scgpt/ folder of "
        "celltx pretrain) for cell-type annotation on labelled cells; optionally annotate "
        "another .h5ad.",
    )
    f.add_argument("checkpoint", metavar="CHECKPOINT", help="scGPT-format model directory")
    f.add_argument("input", metavar="INPUT", help="labelled cells (.h5ad)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--labels-key", required=True, help="obs column with the labels")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--freeze-layers", type=int, default=0)
    f.add_argument("--class-weight", choices=["balanced"], default=None)
    f.add_argument("--layer", default=None)
    f.add_argument("--batch-key", default=None)
    f.add_argument("--gene-symbols", default=None)
    f.add_argument("--predict", default=None, metavar="QUERY", help=".h5ad to annotate")
    f.add_argument("--predict-out", default=None, metavar="OUTPUT", help="where to write it")
    add_trainer_arguments(f)
    return f


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run ``celltx finetune``; bad arguments exit 2, data problems 1."""
    with report_errors(parser, "finetune"):
        finetune(
            args.checkpoint,
            args.input,
            args.out,
            labels_key=args.labels_key,
            freeze_layers=args.freeze_layers,
            class_weight=args.class_weight,
            predict=args.predict,
            predict_out=args.predict_out,
            **common_kwargs(args),
        )
