"""Data-parallel training on CPU processes (Lightning DDP, gloo) against one process.

Trains the same small model on the same cells twice, once with ``--devices 1`` and once
with ``--devices 2 --strategy ddp``, and writes each run's history, weights and timing to
``--out``. ``compare`` prints the table: the loss curve and the weights of the two runs
(which must agree to float tolerance when the runs see the same global batches), and the
throughput.

What makes the two runs see the same global batches: every epoch is one step over all
training cells (``--cells`` training cells, ``batch_size`` = cells per process), so the
global batch of DDP (each rank's shard, gradients averaged) is the single process's batch.
The objective must not draw random numbers for the comparison to be exact: the default is
cell-type annotation with dropout 0 and rank-value tokens (deterministic gene choice and
bins).
``--task generative`` shows the masked objective running under DDP (its random masks
differ between runs, so its curve matches only in trend).

Lightning's ``ddp`` strategy starts the other ranks by running this script again, so it
must be run as a file (``python benchmarks/ddp.py ...``), not from a notebook.

Examples
--------
::

    python benchmarks/ddp.py train --devices 1 --out /tmp/ddp/one
    python benchmarks/ddp.py train --devices 2 --out /tmp/ddp/two
    python benchmarks/ddp.py compare /tmp/ddp/one /tmp/ddp/two
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def train(args) -> None:
    import numpy as np
    import scvi
    import torch

    import celltx

    scvi.settings.seed = args.seed
    adata = celltx.datasets.pbmc68k()
    n = args.cells + args.validation_cells
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, n, replace=False)].copy()
    celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(args.seed)  # same initial weights in every process and run
    model = celltx.model.ScGPT(
        adata,
        **celltx.nn.preset(
            "small",
            d_model=args.d_model,
            max_seq_len=args.max_seq_len,
            dropout=0.0,
            gene_selection="rank",  # deterministic tokens and bins: no random numbers in a step
        ),
    )
    kwargs = {}
    if args.devices > 1:
        kwargs["strategy"] = args.strategy
    if args.chunk_size:
        kwargs["chunk_size"] = args.chunk_size
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        task=args.task,
        batch_size=(args.batch_size or args.cells) // args.devices,
        train_size=args.cells / n,
        validation_size=args.validation_cells / n,
        lr=args.lr,
        plan_kwargs={"lr_schedule": "constant"},
        accelerator="cpu",
        devices=args.devices,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    model.save(args.out, overwrite=True)  # a no-op on ranks other than 0
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    history = {
        k: [float(x) for x in v.iloc[:, 0].to_numpy()]
        for k, v in model.history.items()
        if "loss" in k
    }
    result = {
        "devices": args.devices,
        "strategy": kwargs.get("strategy", "single process"),
        "task": args.task,
        "cells": args.cells,
        "batch_size": args.batch_size or args.cells,
        "epochs": args.epochs,
        "seconds": seconds,
        "cells_per_s": args.cells * args.epochs / seconds,
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
    Path(args.out, "result.json").write_text(json.dumps(result, indent=1))


def compare(args) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    runs = [json.loads(Path(d, "result.json").read_text()) for d in args.runs]
    print("| run | devices | cells/s | seconds | threads/process | train loss, first → last |")
    print("|---|---:|---:|---:|---:|---|")
    for d, r in zip(args.runs, runs, strict=True):
        h = r["history"]["train_loss"]
        print(
            f"| {Path(d).name} | {r['devices']} | {r['cells_per_s']:.1f} | {r['seconds']:.1f} | "
            f"{r['torch_threads']} | {h[0]:.5f} → {h[-1]:.5f} |"
        )
    if any(r.get("batch_size") != r["cells"] for r in runs):
        print("(several steps per epoch: the runs' batches differ, so no equality check)")
        return
    for key in ("train_loss", "validation_loss", "cls_loss_validation"):
        a = np.asarray(runs[0]["history"].get(key, []))
        b = np.asarray(runs[1]["history"].get(key, []))
        if len(a) and len(a) == len(b):
            print(f"max |Δ {key}| over {len(a)} epochs: {np.abs(a - b).max():.2e}")
    ref, other = (load_file(str(Path(d, "model.safetensors"))) for d in args.runs)
    rows = []
    for k, a in ref.items():
        if a.dtype.kind == "f" and a.size:
            d = np.abs(a - other[k])
            if k.endswith("self_attn.Wqkv.bias"):  # key bias: zero gradient, Adam-scaled noise
                n = len(a) // 3
                rows.append((float(d[n : 2 * n].max()), k + " (key part)"))
                d = np.delete(d, np.s_[n : 2 * n])
            rows.append((float(d.max() / (np.abs(a).max() + 1e-12)), k))
    worst = max(r for r in rows if not r[1].endswith("(key part)"))
    keys = max((r for r in rows if r[1].endswith("(key part)")), default=(0.0, "none"))
    print(f"max relative weight difference: {worst[0]:.2e} ({worst[1]})")
    print(f"attention key bias (zero gradient, Adam-normalised noise): max |Δ| {keys[0]:.2e}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one training run")
    t.add_argument("--out", required=True)
    t.add_argument("--devices", type=int, default=1)
    t.add_argument("--strategy", default="ddp")
    t.add_argument(
        "--task", default="annotation", choices=["annotation", "generative", "contrastive"]
    )
    t.add_argument("--chunk-size", type=int, default=None, help="divide-and-conquer chunk")
    t.add_argument("--cells", type=int, default=64, help="training cells (one global batch)")
    t.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch (all processes together); default --cells, one step per epoch",
    )
    t.add_argument("--validation-cells", type=int, default=16)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--d-model", type=int, default=32)
    t.add_argument("--max-seq-len", type=int, default=800)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="print the table of two runs")
    c.add_argument("runs", nargs=2)
    args = p.parse_args(argv)
    if args.command == "train":
        if (args.batch_size or args.cells) % args.devices or args.cells % args.devices:
            p.error("--cells and --batch-size must be divisible by --devices (equal shards)")
        os.makedirs(args.out, exist_ok=True)
        train(args)
    else:
        compare(args)


if __name__ == "__main__":
    main(sys.argv[1:])
