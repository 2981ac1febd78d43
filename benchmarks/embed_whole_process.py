"""Whole-process embedding with a scGPT_human-sized checkpoint: wall time and peak memory.

Writes a model directory in the published scGPT layout with scGPT_human's shape (51.9 M
parameters, a 60,697-token vocabulary that contains the data's genes, ``args.json`` 512 /
12 / 8, random weights) and ``--cells`` real PBMCs from Kang 2018 (raw counts, whole
transcriptome: about 700 expressed genes a cell, so most cells fill many of the 1,200
tokens). Then runs ``celltx embed CHECKPOINT INPUT OUTPUT`` in a fresh process per row under
``/usr/bin/time`` — import, checkpoint loading, embedding and writing included — and prints
wall time, cells/s and peak RSS.

The original scGPT's ``embed_data`` on the same kind of input (100 PBMCs, scGPT_human
size, defaults, this machine type) took 266 s and 8.0 GB peak RSS, as measured when issue 15
was filed; the original package cannot be installed beside celltx here (it needs
``torchtext``, which pins torch ≤ 2.3), so that row is quoted, not re-run.

Run from the repository root, on an otherwise idle machine::

    python benchmarks/embed_whole_process.py [--cells 100]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad

sys.path.insert(0, str(Path(__file__).parent))
from load_checkpoint import write_human_sized_checkpoint  # noqa: E402

KANG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kang2018_ifnb.h5ad"
REFERENCE = {"seconds": 266.0, "peak_gb": 8.0, "cells": 100}
VARIANTS = {
    "defaults (--batch-tokens auto = 16384)": [],
    "--batch-tokens none (128-cell batches)": ["--batch-tokens", "none"],
    "--batch-tokens none --batch-size 16": ["--batch-tokens", "none", "--batch-size", "16"],
    "--batch-tokens 32768": ["--batch-tokens", "32768"],
    "--precision bf16": ["--precision", "bf16"],
}


def run(ckpt: Path, data: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    celltx = Path(sys.executable).with_name("celltx")
    cmd = ["/usr/bin/time", "-f", "%e %M", str(celltx), "embed", str(ckpt), str(data)]
    cmd += [str(out), "--overwrite", "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    seconds, kb = re.findall(r"^([\d.]+) (\d+)$", proc.stderr, re.M)[-1]
    return float(seconds), int(kb) / 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    if not KANG.exists():
        sys.exit(f"{KANG} is absent (the shared data live beside the project, in ../shared)")
    tmp = Path(tempfile.mkdtemp(prefix="celltx_embed_"))
    try:
        adata = ad.read_h5ad(KANG, backed="r")
        cells = adata[: args.cells].to_memory()
        cells.write_h5ad(tmp / "cells.h5ad")
        n = write_human_sized_checkpoint(tmp / "ckpt", genes=list(adata.var_names))
        tokens = int(((cells.X > 0).sum(1).A1.clip(max=1199) + 1).sum())
        print(f"{args.cells} Kang PBMCs, {tokens} tokens in all; checkpoint {n / 1e6:.1f} M params")
        print(
            "| run | seconds | cells/s | peak RSS (GB) | vs original: speed | vs original: memory |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        ref_rate = REFERENCE["cells"] / REFERENCE["seconds"]
        print(
            f"| original scGPT embed_data (quoted, issue 15) | {REFERENCE['seconds']:.0f} | "
            f"{ref_rate:.2f} | {REFERENCE['peak_gb']:.2f} | 1.0× | 1.00 |"
        )
        for name in args.variants:
            s, gb = run(tmp / "ckpt", tmp / "cells.h5ad", tmp / "out.h5ad", VARIANTS[name])
            rate = args.cells / s
            print(
                f"| celltx embed {name} | {s:.1f} | {rate:.2f} | {gb:.2f} | "
                f"{rate / ref_rate:.1f}× | {gb / REFERENCE['peak_gb']:.2f} |"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
