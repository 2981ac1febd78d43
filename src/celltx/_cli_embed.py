"""``celltx embed``: embed the cells of an ``.h5ad`` file with a scGPT or celltx checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from celltx._cli_io import (
    Output,
    UsageError,
    atomic_output,
    check_h5ad_input,
    check_outputs,
    keep_user_fields,
)

#: files that mark a checkpoint directory: a published scGPT model, a celltx ``model.save``
SCGPT_FILES = ("args.json", "vocab.json", "best_model.pt")
CELLTX_FILES = ("model.json", "model.safetensors")
#: ``--device`` choices and the ``accelerator`` each means
DEVICES = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}


#: the output formats of ``celltx embed``
EMBED_SUFFIXES = (".h5ad", ".npy")


class EmbedError(UsageError):
    """A problem with the arguments of ``celltx embed`` found before any work is done."""


def checkpoint_kind(path: str | os.PathLike) -> str:
    """Which kind of checkpoint directory ``path`` is.

    Parameters
    ----------
    path
        A directory.

    Returns
    -------
    str
        ``"celltx"`` for a directory written by ``model.save`` (``model.json``; a pickled
        ``model.pt`` of scvi-tools or older celltx also counts, and
        :meth:`~celltx.model.ScGPT.load` explains why it refuses it), ``"scgpt"`` for a
        published scGPT model directory (``args.json`` + ``vocab.json``).

    Raises
    ------
    EmbedError
        When ``path`` is not a directory or holds neither kind of checkpoint.
    """
    d = Path(path)
    expected = (
        f"a published scGPT model directory ({', '.join(SCGPT_FILES)}) or a directory "
        f"written by celltx's model.save ({', '.join(CELLTX_FILES)})"
    )
    if not d.is_dir():
        raise EmbedError(f"checkpoint {d} is not a directory; expected {expected}.")
    if (d / "model.json").is_file() or (d / "model.pt").is_file():
        return "celltx"
    if (d / "args.json").is_file() and (d / "vocab.json").is_file():
        return "scgpt"
    found = sorted(p.name for p in d.iterdir())[:10]
    raise EmbedError(f"checkpoint {d} holds no model: expected {expected}; found {found}.")


def _prepare_for_saved_model(adata, ckpt: Path, gene_symbols: str | None) -> None:
    """Check ``adata`` against a celltx save's setup arguments before loading.

    A ``labels_key`` column the data lacks is filled with one of the model's labels (labels
    do not enter the embedding); a ``gene_symbols`` other than the saved one is refused.
    """
    from celltx.model import ScGPT

    registry = ScGPT.load_registry(ckpt)
    setup = dict(registry.get("setup_args") or {})
    saved = setup.get("gene_symbols")
    if gene_symbols is not None and gene_symbols != saved:
        raise ValueError(
            f"--gene-symbols {gene_symbols} differs from the model's setup (gene_symbols="
            f"{saved!r}): a model saved by celltx matches genes as it was set up. Drop "
            "--gene-symbols, or give the input the names the model was trained on."
        )
    labels_key = setup.get("labels_key")
    if labels_key is not None and labels_key not in adata.obs.columns:
        mapping = registry["field_registries"]["labels"]["state_registry"]["categorical_mapping"]
        adata.obs[labels_key] = str(mapping[0])
        print(
            f"note: the model was set up with labels_key={labels_key!r}, which the input "
            "lacks; labels do not enter the embedding, so a placeholder is used (not written "
            "to the output).",
            file=sys.stderr,
        )


def _batch_tokens(text: str) -> int | str | None:
    """``--batch-tokens``: an integer, ``auto`` or ``none``."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer, 'auto' or 'none'") from None


def embed(
    checkpoint: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    key_added: str = "X_scgpt",
    batch_size: int | None = None,
    device: str = "auto",
    gene_symbols: str | None = None,
    max_seq_len: int | None = None,
    backed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "auto",
    batch_tokens: int | str | None = "auto",
    low_memory: bool = False,
) -> dict:
    """Embed the cells of an ``.h5ad`` file with a checkpoint and write them to a new file.

    The model is built with :meth:`celltx.model.ScGPT.load_pretrained` (a published scGPT
    model directory) or :meth:`celltx.model.ScGPT.load` (a directory written by
    ``model.save``), and the embedding is that of
    :meth:`~celltx.model.ScGPT.get_latent_representation`. ``input_path`` is never modified.

    Parameters
    ----------
    checkpoint
        A published scGPT model directory (``args.json``, ``vocab.json``,
        ``best_model.pt``) or a directory written by ``model.save`` (``model.json``,
        ``model.safetensors``).
    input_path
        The cells (``.h5ad``).
    output_path
        The ``.h5ad`` to write: the input with the embedding in ``obsm[key_added]``. With
        ``backed=True`` it holds the input's ``obs``, ``var``, ``obsm`` and ``uns`` but no
        expression matrix. A path ending in ``.npy`` receives only the embedding
        (``float32``, rows in the input's order), written block by block into a
        memory-mapped file as it is computed, so that memory holds one block; the file
        appears under its name only when complete.
    key_added
        ``obsm`` key of the embedding.
    batch_size
        Cells per forward pass (default: scvi-tools' ``settings.batch_size``).
    device
        ``"auto"`` (a GPU when there is one), ``"cpu"`` or ``"cuda"``.
    gene_symbols
        ``var`` column with gene symbols when ``var_names`` are e.g. Ensembl IDs (published
        checkpoints; a model saved by celltx uses the column it was set up with).
    max_seq_len
        Tokens per cell; default: the model's ``max_seq_len``.
    backed
        Read ``input_path`` with ``backed="r"``: the expression matrix stays on disk and is read
        batch by batch.
    overwrite
        Replace an existing ``output_path``.
    progress
        Show a progress bar over the cells.
    batch_tokens
        Token-budget batching (see :meth:`~celltx.model.ScGPT.get_latent_representation`):
        at most this many padded tokens per forward pass, cells grouped by length;
        ``"auto"`` (default): :data:`celltx.data.DEFAULT_BATCH_TOKENS` for RNA models;
        ``None``: plain batches of ``batch_size`` cells.
    low_memory
        Keep resident memory flatter still over many batches
        (:func:`celltx.data.fix_mmap_threshold`; glibc only), at about half the speed. By
        default embedding already gives freed memory back every 16 batches
        (:func:`celltx.data.trim_heap`): measured in ``benchmarks/streaming.py``.
    precision
        ``"auto"``, ``"fp32"`` or ``"bf16"``: the model's
        :attr:`~celltx.model.ScGPT.inference_precision`.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``n_genes_matched``, ``n_dims``, ``seconds``,
        ``checkpoint_kind``, ``output`` and ``precision``.

    Raises
    ------
    ValueError
        For an unusable checkpoint, input or output path (an :class:`EmbedError`, raised
        before anything is read), and for data the model cannot embed (too few genes in the
        vocabulary, a missing ``obs`` column the model was set up with, ...).
    """
    import anndata as ad
    import numpy as np

    from celltx.model import ScGPT

    t0 = time.perf_counter()
    ckpt, src, dst = Path(checkpoint), Path(input_path), Path(output_path)
    kind = checkpoint_kind(ckpt)
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise EmbedError(
            f"--key-added {key_added!r}: an obsm key must be a non-empty name without '/' "
            "(HDF5 reads '/' as a group separator)."
        )
    check_outputs(
        [Output(output_path, "OUTPUT", suffixes=EMBED_SUFFIXES)],
        [ckpt, src],
        overwrite,
        EmbedError,
    )
    check_h5ad_input(src, "input", EmbedError)
    npy = dst.suffix.lower() == ".npy"
    if device not in DEVICES:
        raise EmbedError(f"device={device!r}; use one of {list(DEVICES)}.")
    if precision not in ("auto", "fp32", "bf16"):
        raise EmbedError(f"precision={precision!r}; use auto, fp32 or bf16.")
    if batch_tokens not in (None, "auto") and (
        isinstance(batch_tokens, str | bool) or batch_tokens < 2
    ):
        raise EmbedError(f"batch tokens {batch_tokens!r} must be 'auto', 'none' or >= 2.")
    if batch_size is not None and batch_size < 1:
        raise EmbedError(f"batch size {batch_size} must be >= 1.")
    if max_seq_len is not None and max_seq_len < 2:
        raise EmbedError(f"max_seq_len {max_seq_len} must be >= 2 (<cls> and one gene).")

    if low_memory:
        from celltx.data import fix_mmap_threshold

        fix_mmap_threshold()  # memory stays flat over many batches (see its docstring)
    adata = ad.read_h5ad(src, backed="r" if backed else None)
    with ExitStack() as stack:
        if backed:
            stack.callback(adata.file.close)
        with keep_user_fields(adata):  # the output: the input's obs and uns as they were
            accelerator = DEVICES[device]
            if kind == "scgpt":
                model = ScGPT.load_pretrained(
                    ckpt, adata, gene_symbols=gene_symbols, accelerator=accelerator
                )
            else:
                _prepare_for_saved_model(adata, ckpt, gene_symbols)
                model = ScGPT.load(ckpt, adata=adata, accelerator=accelerator)
            model.inference_precision = precision
            match = model._match(adata)  # None: a model without an RNA gene panel
            n_matched = 0 if match is None else match.n_matched
            t_load = time.perf_counter() - t0

            kw = {
                "batch_size": batch_size,
                "max_seq_len": max_seq_len,
                "batch_tokens": batch_tokens,
            }
            if not progress and not npy:
                emb = model.get_latent_representation(adata, **kw)
            else:  # the same call on consecutive blocks of cells (embeddings do not depend on them)
                import scvi
                from tqdm.auto import tqdm

                bs = batch_size or scvi.settings.batch_size
                step = bs * max(1, -(-adata.n_obs // (100 * bs)))  # at most ~100 updates
                parts, sink = [], None
                # .npy: rows go to a memory-mapped file as they come; memory holds one block, and
                # the file appears under its name only when complete
                partial = stack.enter_context(atomic_output(dst)) if npy else None
                with tqdm(
                    total=adata.n_obs,
                    unit="cell",
                    desc="embedding",
                    file=sys.stderr,
                    disable=not progress,
                ) as bar:
                    for lo in range(0, adata.n_obs, step):
                        idx = np.arange(lo, min(lo + step, adata.n_obs))
                        block = model.get_latent_representation(adata, indices=idx, **kw)
                        if npy:
                            if sink is None:
                                assert partial is not None  # npy: atomic_output gave it
                                shape = (adata.n_obs, block.shape[1])
                                sink = np.lib.format.open_memmap(
                                    partial, mode="w+", dtype=np.float32, shape=shape
                                )
                            sink[lo : lo + len(idx)] = block
                        else:
                            parts.append(block)
                        bar.update(len(idx))
                if sink is not None:  # npy
                    sink.flush()
                    emb = sink
                else:
                    emb = np.concatenate(parts)
        if not npy:
            if backed:  # the output: obs, var, obsm, uns (the matrix stays on disk)
                out = ad.AnnData(
                    obs=adata.obs.copy(),
                    var=adata.var.copy(),
                    obsm=dict(adata.obsm.items()),
                    uns=dict(adata.uns.items()),
                )
            else:
                out = adata
    if not npy:  # written beside OUTPUT and renamed: a failed write leaves OUTPUT as it was
        if key_added in out.obsm:
            print(f"note: replacing obsm[{key_added!r}] of the input.", file=sys.stderr)
        out.obsm[key_added] = emb
        with atomic_output(dst) as partial:
            out.write_h5ad(partial)
    seconds = time.perf_counter() - t0
    summary = {
        "n_cells": int(emb.shape[0]),
        "n_genes": int(adata.n_vars),
        "n_genes_matched": int(n_matched),
        "n_dims": int(emb.shape[1]),
        "seconds": seconds,
        "checkpoint_kind": kind,
        "output": str(dst),
        "precision": precision,
    }
    print(
        f"celltx embed: {summary['n_cells']} cells, {n_matched}/{adata.n_vars} genes matched "
        f"the vocabulary, {summary['n_dims']}-dim embedding on {model.device} ({precision}) "
        f"({'scGPT' if kind == 'scgpt' else 'celltx'} checkpoint {ckpt}), {seconds:.1f} s "
        f"(loading {t_load:.1f} s)\n"
        + (
            f"Wrote the {summary['n_cells']} × {summary['n_dims']} float32 embedding (rows in "
            f"the input's order) to {dst}"
            if npy
            else f"Wrote obsm[{key_added!r}] to {dst}"
            + (
                " (obs, var, obsm, uns; no expression matrix: the input was read backed)"
                if backed
                else ""
            )
        ),
        flush=True,
    )
    return summary


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``embed`` sub-command to ``sub`` (``argparse`` sub-parsers)."""
    e = sub.add_parser(
        "embed",
        help="embed the cells of an .h5ad file with a scGPT or celltx checkpoint",
        description=(
            "Embed the cells of INPUT with CHECKPOINT (ScGPT.get_latent_representation) and "
            "write INPUT with the embedding in .obsm[KEY_ADDED] to OUTPUT. INPUT is never "
            "modified."
        ),
    )
    e.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a published scGPT model directory (args.json, vocab.json, best_model.pt) or a "
        "directory written by celltx's model.save (model.json, model.safetensors)",
    )
    e.add_argument("input", metavar="INPUT", help="the cells: an .h5ad file")
    e.add_argument(
        "output",
        metavar="OUTPUT",
        help="the .h5ad to write (must differ from INPUT), or a .npy: then only the embedding "
        "is written, block by block as it is computed (for inputs whose embedding does not "
        "fit in memory; use with --backed)",
    )
    e.add_argument(
        "--key-added", default="X_scgpt", help="obsm key of the embedding (default X_scgpt)"
    )
    e.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cells per forward pass (default: scvi-tools' settings.batch_size, 128)",
    )
    e.add_argument(
        "--device",
        choices=list(DEVICES),
        default="auto",
        help="where to run the model: auto (a GPU when there is one), cpu or cuda",
    )
    e.add_argument(
        "--gene-symbols",
        metavar="COL",
        default=None,
        help="var column with gene symbols, when var_names are e.g. Ensembl IDs (published "
        "scGPT checkpoints; a model saved by celltx uses the column it was set up with)",
    )
    e.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="tokens per cell (<cls> + genes; default: the model's max_seq_len)",
    )
    e.add_argument(
        "--backed",
        action="store_true",
        help="read INPUT with backed='r' (the matrix stays on disk); OUTPUT then holds "
        "INPUT's obs, var, obsm and uns plus the embedding, without the expression matrix",
    )
    e.add_argument(
        "--batch-tokens",
        type=_batch_tokens,
        default="auto",
        metavar="N|auto|none",
        help="token-budget batching: at most N padded tokens per forward pass, cells grouped "
        "by length (with --batch-size as a cap on cells); auto (default): 16384 for RNA "
        "models; none: plain batches of --batch-size cells",
    )
    e.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 on a GPU that has it, fp32 elsewhere; bf16 also on CPUs "
        "(faster with AVX-512 BF16 / AMX; see benchmarks/inference_precision.py)",
    )
    e.add_argument(
        "--low-memory",
        action="store_true",
        help="keep memory flatter still (fixed glibc mmap threshold), at about half the speed",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return e


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run ``celltx embed``; bad arguments exit 2, data the model cannot embed 1."""
    try:
        embed(
            args.checkpoint,
            args.input,
            args.output,
            key_added=args.key_added,
            batch_size=args.batch_size,
            device=args.device,
            gene_symbols=args.gene_symbols,
            max_seq_len=args.max_seq_len,
            backed=args.backed,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            precision=args.precision,
            batch_tokens=args.batch_tokens,
            low_memory=args.low_memory,
        )
    except EmbedError as err:
        parser.error(str(err))  # usage and message, exit status 2
    except (ValueError, OSError) as err:  # data the model cannot embed, unreadable files
        parser.exit(1, f"celltx embed: error: {err}\n")
