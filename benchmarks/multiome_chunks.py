"""Divide-and-conquer cross-modal training: peak memory and time of one multiome epoch.

``train(task="multiome", chunk_size=...)`` runs the cross-modal part through CellLM's
divide-and-conquer step (:func:`celltx.train.divide_and_conquer_step`): the contrastive
batch is the whole minibatch, encoded ``chunk_size`` cells at a time (three encodes per
cell: joint, RNA view, ATAC view), so activation memory should follow the chunk, not the
batch, for the price of encoding each cell twice (once without gradients).

For each way (one pass per minibatch, chunks of ``--chunk``) a fresh process simulates the
same paired data (``simulate_multiome``), builds the multiome recipe's model
(``celltx.bench.MULTIOME_CELLTX_DEFAULTS``: d_model 64, 2 layers, 100 genes + 128 peaks
per cell) and trains one epoch at ``--batch`` cells per minibatch (every cell trains:
``train_size=1``). It prints the epoch's process CPU time (one thread: an estimate of the
time on an idle machine), its wall time with the load average, and the growth of the
process's peak RSS during the epoch. From the repository root::

    OMP_NUM_THREADS=1 python benchmarks/multiome_chunks.py [--cells 600] [--batch 256] [--chunk 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, logging, os, resource, sys, time, warnings
import torch
import celltx
warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
torch.set_num_threads(1)
cells, batch, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mdata = celltx.datasets.simulate_multiome(n_cells=cells, seed=0)
celltx.model.ScGPT.setup_mudata(mdata)
torch.manual_seed(0)
model = celltx.model.ScGPT(mdata, **celltx.bench.MULTIOME_CELLTX_DEFAULTS["model"])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
before = rss()
cpu, wall = time.process_time(), time.perf_counter()
model.train(
    max_epochs=1, task="multiome", lr=1e-2, batch_size=batch, train_size=1.0,
    chunk_size=chunk or None, accelerator="cpu", enable_progress_bar=False,
)
print(json.dumps({
    "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
    "load": os.getloadavg()[0], "peak_gb": rss() - before,
    "loss": float(model.history["cross_modal_loss_train"].iloc[-1, 0]),
}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=600)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunk", type=int, default=32)
    args = p.parse_args()
    print(
        "| way | CPU s (1 thread) | wall s | load | peak RSS growth (GB) | cross_modal_loss |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for name, chunk in (("one pass", 0), (f"chunks of {args.chunk}", args.chunk)):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.cells), str(args.batch), str(chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['cpu']:.1f} | {r['wall']:.1f} | {r['load']:.1f} | "
            f"{r['peak_gb']:.2f} | {r['loss']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
