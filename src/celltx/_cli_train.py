"""``celltx pretrain`` and what it shares with ``celltx finetune`` (trainer arguments, the summary)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celltx._cli_io import (
    Output,
    UsageError,
    check_checkpoint_file,
    check_devices,
    check_h5ad_input,
    check_outputs,
    check_positive,
)
from celltx.nn import PRESETS

#: model sizes of ``celltx pretrain --size``: the shared table of named shapes
SIZES = PRESETS


#: what ``celltx pretrain`` writes into ``--out``
PRETRAIN_WRITES = ("model", "scgpt", "history.csv", "summary.json", "checkpoints")


class TrainArgsError(UsageError):
    """A bad argument of ``celltx pretrain`` / ``finetune``, found before any training."""


def _check_h5ad_inputs(paths: Sequence[str | os.PathLike]) -> None:
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise TrainArgsError(f"input files do not exist: {missing}.")
    for p in paths:
        check_h5ad_input(p, "input", TrainArgsError)


def _soma_uri(inputs: Sequence[str | os.PathLike]) -> str | None:
    """The SOMA experiment URI among ``inputs``, or ``None`` when they are ``.h5ad`` files."""
    looks_soma = [
        str(p) for p in inputs if Path(p).is_dir() or "://" in str(p) or str(p).startswith("soma:")
    ]
    if not looks_soma:
        return None
    try:
        import tiledbsoma
    except ImportError:
        raise TrainArgsError(
            f"{looks_soma[0]} is not an .h5ad file; reading a SOMA experiment needs tiledbsoma "
            "(pip install 'celltx[soma]')."
        ) from None
    uri = looks_soma[0].removeprefix("soma:")
    if not tiledbsoma.Experiment.exists(uri):
        raise TrainArgsError(f"{looks_soma[0]} is neither an .h5ad file nor a SOMA experiment.")
    if len(inputs) > 1:
        raise TrainArgsError(
            "A SOMA experiment is read on its own: pass one experiment URI (select cells "
            "with --obs-filter), or .h5ad files."
        )
    return uri


def _read_inputs(paths: Sequence[str | os.PathLike], backed: bool = False):
    """The cells of one or several ``.h5ad`` files (several: concatenated, genes unioned)."""
    import anndata as ad

    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise TrainArgsError(f"input files do not exist: {missing}.")
    if backed and len(files) > 1:
        raise TrainArgsError(
            "--backed streams one .h5ad file from disk; concatenate the files first (e.g. "
            "anndata.experimental.concat_on_disk) or drop --backed."
        )
    if len(files) == 1:
        return ad.read_h5ad(files[0], backed="r" if backed else None)
    parts = [ad.read_h5ad(p) for p in files]
    for p, a in zip(files, parts, strict=True):
        a.obs["source_file"] = p.name
    return ad.concat(parts, join="outer", fill_value=0, index_unique="-")


def _soma_datamodule(
    experiment,
    *,
    measurement: str,
    layer: str | None,
    batch_key: str | None,
    obs_filter: str | None,
    batch_size: int,
    seed: int,
    accelerator: str,
    devices: str,
):
    """scvi-tools' ``TileDBDataModule`` over the cells of ``experiment`` (90 / 10 split)."""
    import tiledbsoma
    from scvi.dataloaders import TileDBDataModule

    if measurement not in experiment.ms:
        raise TrainArgsError(
            f"--measurement {measurement!r} is not in the experiment; its measurements: "
            f"{sorted(experiment.ms.keys())}."
        )
    layers = sorted(experiment.ms[measurement].X.keys())
    if layer is None:
        if len(layers) != 1:
            raise TrainArgsError(
                f"measurement {measurement!r} has the X layers {layers}; name one with --layer "
                "(raw counts or normalised values, as for an .h5ad)."
            )
        layer = layers[0]
    columns = [c for c in experiment.obs.schema.names if c != "soma_joinid"]
    if batch_key is None or batch_key not in columns:
        what = "needs" if batch_key is None else f"--batch-key {batch_key!r} is not one of"
        raise TrainArgsError(
            f"A SOMA input {what} an obs column for --batch-key (scvi-tools' TileDBDataModule "
            f"labels each cell's batch from obs columns, e.g. dataset_id for CELLxGENE "
            f"Census); the experiment's obs columns: {columns}."
        )
    obs_query = None if obs_filter is None else tiledbsoma.AxisQuery(value_filter=obs_filter)
    query = experiment.axis_query(measurement, obs_query=obs_query)
    return TileDBDataModule(
        query,
        layer_name=layer,
        batch_size=batch_size,
        batch_column_names=[batch_key],
        shuffle=True,
        seed=seed,
        train_size=0.9,
        split_seed=seed,
        accelerator=accelerator,
        device=_devices(devices),
        dataloader_kwargs={"num_workers": 0},
    )


def _devices(devices: str) -> int | str:
    """``--devices`` as Lightning takes it: a count, or a word such as ``auto``."""
    return int(devices) if devices.isdigit() else devices


def trainer_kwargs(accelerator: str, devices: str, strategy: str | None, precision: str | None):
    """Lightning's trainer arguments from the CLI's ``--accelerator`` ... ``--precision``."""
    kw = {"accelerator": accelerator, "devices": _devices(devices)}
    if strategy:
        kw["strategy"] = strategy
    if precision:
        kw["precision"] = precision
    return kw


def pretrain(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    size: str = "small",
    task: str = "generative",
    epochs: int = 20,
    batch_size: int = 32,
    lr: float | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    gene_symbols: str | None = None,
    gene_selection: str = "random",
    max_seq_len: int | None = None,
    accelerator: str = "auto",
    devices: str = "auto",
    strategy: str | None = None,
    precision: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    accumulate_grad_batches: int = 1,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike | None = None,
    backed: bool = False,
    measurement: str = "RNA",
    obs_filter: str | None = None,
) -> dict:
    """Pretrain a :class:`~celltx.model.ScGPT` from scratch on ``.h5ad`` files or SOMA.

    Writes to ``out``: ``model/`` (``model.save``: safetensors + JSON), ``scgpt/`` (the
    same weights in scGPT's directory format, :meth:`~celltx.model.ScGPT.export_scgpt`, for
    ``celltx finetune`` and the original package), ``history.csv`` and ``summary.json``.

    Parameters
    ----------
    inputs
        One or several ``.h5ad`` files (several are concatenated; genes unioned, missing
        ones 0; ``obs["source_file"]`` names each cell's file), or one TileDB-SOMA
        experiment URI (a local folder, ``s3://...``, ``tiledb://...``; ``soma:`` may prefix
        it). A SOMA experiment is streamed through scvi-tools' ``TileDBDataModule``
        (90 / 10 split; ``task="generative"``, ``gene_selection="random"``): ``layer`` names
        its ``X`` layer (needed when there are several), ``batch_key`` an ``obs`` column
        (required) and ``gene_symbols`` the ``var`` column of gene names (default
        ``"var_id"``, what ``tiledbsoma.io.from_h5ad`` writes; ``"feature_name"`` for
        CELLxGENE Census).
    out
        Output folder.
    size
        ``"tiny"``, ``"small"``, ``"base"`` or ``"scgpt_human"`` (:data:`celltx.nn.PRESETS`).
    task
        ``"generative"`` or ``"contrastive"`` (see :meth:`~celltx.model.ScGPT.train`).
    epochs, batch_size, lr
        Training length, cells per step and per device, peak learning rate.
    layer, batch_key, gene_symbols
        As in :meth:`~celltx.model.ScGPT.setup_anndata`.
    gene_selection, max_seq_len
        :class:`~celltx.nn.ScGPTConfig` settings (``max_seq_len`` overrides the size's).
    accelerator, devices, strategy, precision
        Lightning's arguments (``devices=2 strategy=ddp`` for two GPUs).
    seed
        Seed of scvi-tools / Lightning.
    overwrite
        Write into a non-empty ``out``.
    progress
        Show Lightning's progress bar.
    accumulate_grad_batches
        Optimizer step every this many batches (Lightning's gradient accumulation).
    gradient_checkpointing, compile
        As in :meth:`~celltx.model.ScGPT.train`.
    checkpoint_every
        Write a resumable checkpoint every this many optimizer steps to
        ``out/checkpoints/`` (the latest is kept).
    resume
        A ``.ckpt`` of ``checkpoint_every`` to continue from (same inputs and settings).
    backed
        Read the (single) ``.h5ad`` file with ``backed="r"``: training streams its rows, so
        memory does not grow with the number of cells.
    measurement, obs_filter
        For a SOMA input: the measurement (default ``"RNA"``) and a ``value_filter`` on
        ``obs`` selecting the cells (e.g. ``"tissue_general == 'blood'"``).

    Returns
    -------
    dict
        What ``summary.json`` holds: cells, genes, parameters, epochs, seconds, final losses
        (empty on DDP ranks other than 0, which write nothing).
    """
    import scvi
    from lightning.pytorch.utilities import rank_zero_only

    from celltx.model import ScGPT

    if size not in SIZES:
        raise TrainArgsError(f"--size {size}; use one of {list(SIZES)}.")
    if task not in ("generative", "contrastive"):
        raise TrainArgsError(f"--task {task}; use generative or contrastive.")
    if epochs < 1 or batch_size < 1 or accumulate_grad_batches < 1:
        raise TrainArgsError("--epochs, --batch-size and --accumulate-grad-batches must be >= 1.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise TrainArgsError("--checkpoint-every must be >= 1.")
    check_positive(lr, "--lr", TrainArgsError)
    check_devices(devices, TrainArgsError)
    if resume is not None:
        check_checkpoint_file(resume, "--resume", TrainArgsError)
    soma = _soma_uri(inputs)  # which kind of input (a SOMA experiment: opens no data)
    check_outputs(
        [Output(out, "--out", kind="dir", writes=PRETRAIN_WRITES)],
        inputs,
        overwrite or resume is not None,
        TrainArgsError,
    )
    out = Path(out)
    if soma is not None:
        if backed:
            raise TrainArgsError("--backed is for .h5ad files; a SOMA experiment is streamed.")
        if task != "generative" or gene_selection != "random":
            raise TrainArgsError(
                "From a SOMA experiment celltx pretrains --task generative with "
                "--gene-selection random (the datamodule path has no contrastive views or "
                "rank-value medians); export the cells to .h5ad for the others."
            )
    elif measurement != "RNA" or obs_filter is not None:
        raise TrainArgsError("--measurement and --obs-filter are for a SOMA experiment input.")
    else:
        _check_h5ad_inputs(inputs)
    t0 = time.perf_counter()
    scvi.settings.seed = seed
    settings = {**SIZES[size], "gene_selection": gene_selection, "seed": seed}
    if max_seq_len is not None:
        settings["max_seq_len"] = max_seq_len
    extra: dict[str, Any] = {}
    if checkpoint_every is not None:
        extra = {"checkpoint_every": checkpoint_every, "checkpoint_dir": out / "checkpoints"}
    if resume is not None:
        extra["ckpt_path"] = str(resume)
    with ExitStack() as stack:
        if soma is None:
            adata = _read_inputs(inputs, backed)
            if backed:
                stack.callback(adata.file.close)
            ScGPT.setup_anndata(adata, layer=layer, batch_key=batch_key, gene_symbols=gene_symbols)
            model = ScGPT(adata, **settings)
            n_cells, n_genes = adata.n_obs, adata.n_vars
        else:
            import tiledbsoma

            experiment = stack.enter_context(tiledbsoma.Experiment.open(soma))
            datamodule = _soma_datamodule(
                experiment,
                measurement=measurement,
                layer=layer,
                batch_key=batch_key,
                obs_filter=obs_filter,
                batch_size=batch_size,
                seed=seed,
                accelerator=accelerator,
                devices=devices,
            )
            model = ScGPT(datamodule=datamodule, gene_column=gene_symbols or "var_id", **settings)
            extra["datamodule"] = datamodule
            n_cells, n_genes = datamodule.query.n_obs, datamodule.query.n_vars
        print(model._model_summary_string, flush=True)
        model.train(
            max_epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            task=task,
            enable_progress_bar=progress,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_checkpointing=gradient_checkpointing,
            compile=compile,
            **extra,
            **trainer_kwargs(accelerator, devices, strategy, precision),
        )
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # set by Lightning
            return {}  # DDP: the other ranks hold the same weights; rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        model.save(str(out / "model"), overwrite=True)
        model.export_scgpt(str(out / "scgpt"), overwrite=True)
    return finish_training(model, n_cells, n_genes, out, t0, "pretrain")


def finish_training(model, n_cells: int, n_genes: int, out: Path, t0: float, verb: str) -> dict:
    """Write ``history.csv`` and ``summary.json`` to ``out``, print a summary, return it."""
    import pandas as pd

    hist = pd.concat([v for v in model.history.values()], axis=1)
    hist.to_csv(out / "history.csv")
    last = {k: float(v) for k, v in hist.iloc[-1].items() if pd.notna(v)}
    summary = {
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "epochs": int(len(hist)),
        "seconds": round(time.perf_counter() - t0, 1),
        "final": last,
        "out": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    shown = ", ".join(
        f"{k} {v:.4g}"
        for k, v in last.items()
        if k == "train_loss"
        or (k.endswith("_train") and not k.startswith(("elbo", "kl_", "reconstruction")))
    )
    print(
        f"celltx {verb}: {summary['n_cells']} cells × {summary['n_genes']} genes, "
        f"{summary['n_parameters']:,} parameters, {summary['epochs']} epochs in "
        f"{summary['seconds']} s; last epoch: {shown}\nWrote {out}",
        flush=True,
    )
    return summary


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """The Lightning and output arguments ``pretrain`` and ``finetune`` share."""
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    parser.add_argument("--devices", default="auto", help="Lightning devices (e.g. 2)")
    parser.add_argument("--strategy", default=None, help="Lightning strategy (e.g. ddp)")
    parser.add_argument("--precision", default=None, help="Lightning precision (bf16-mixed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def common_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments ``pretrain`` and ``finetune`` share, from parsed arguments."""
    return {
        "accelerator": args.accelerator,
        "devices": args.devices,
        "strategy": args.strategy,
        "precision": args.precision,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "layer": args.layer,
        "batch_key": args.batch_key,
        "gene_symbols": args.gene_symbols,
    }


@contextlib.contextmanager
def report_errors(parser: argparse.ArgumentParser, command: str) -> Iterator[None]:
    """Bad arguments exit 2 (usage and message), data problems 1; stdout is flushed."""
    try:
        yield
    except TrainArgsError as err:
        parser.error(str(err))
    except (ValueError, OSError) as err:
        parser.exit(1, f"celltx {command}: error: {err}\n")
    if sys.stdout:
        sys.stdout.flush()


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``pretrain`` sub-command to ``sub`` (``argparse`` sub-parsers)."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a ScGPT from scratch on .h5ad files or a SOMA experiment",
        description="Pretrain a ScGPT from scratch on one or several .h5ad files or a "
        "TileDB-SOMA experiment (streamed; needs --batch-key); write the "
        "model (celltx save and scGPT format), its history and a summary to --out.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".h5ad files with the cells, or one TileDB-SOMA experiment URI",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", choices=list(SIZES), default="small", help="model size")
    p.add_argument("--task", choices=["generative", "contrastive"], default="generative")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument(
        "--layer", default=None, help="layer with the expression (default X; SOMA: an X layer)"
    )
    p.add_argument("--batch-key", default=None, help="obs column with batches (SOMA: required)")
    p.add_argument(
        "--gene-symbols",
        default=None,
        help="var column with gene symbols (SOMA: default var_id; feature_name for Census)",
    )
    p.add_argument("--gene-selection", choices=["random", "rank", "hvg"], default="random")
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument(
        "--backed",
        action="store_true",
        help="stream the (single) .h5ad from disk instead of loading it",
    )
    p.add_argument("--measurement", default="RNA", help="SOMA input: the measurement")
    p.add_argument(
        "--obs-filter",
        default=None,
        metavar="FILTER",
        help="SOMA input: value_filter on obs selecting the cells",
    )
    p.add_argument(
        "--accumulate-grad-batches",
        type=int,
        default=1,
        metavar="N",
        help="optimizer step every N batches",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory on long sequences)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="write a resumable checkpoint to OUT/checkpoints every STEPS optimizer steps",
    )
    p.add_argument(
        "--resume", default=None, metavar="CKPT", help="continue from a .ckpt of --checkpoint-every"
    )
    add_trainer_arguments(p)
    return p


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run ``celltx pretrain``; bad arguments exit 2, data problems 1."""
    with report_errors(parser, "pretrain"):
        pretrain(
            args.inputs,
            args.out,
            size=args.size,
            task=args.task,
            gene_selection=args.gene_selection,
            max_seq_len=args.max_seq_len,
            accumulate_grad_batches=args.accumulate_grad_batches,
            gradient_checkpointing=args.gradient_checkpointing,
            compile=args.compile,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            backed=args.backed,
            measurement=args.measurement,
            obs_filter=args.obs_filter,
            **common_kwargs(args),
        )
