"""Divide-and-conquer contrastive step over 2 processes (gloo) against one process.

Run by ``tests/test_contrastive.py``: ``python tests/dc_gather_worker.py OUT_DIR``. The
parent computes the step on 40 cells in one process (chunks of 20), then starts two
processes that each hold 20 of the cells, gather the embeddings of both and run the step
on their half under the random state the single process had for that chunk. DDP averages
parameter gradients, so the mean of the two processes' gradients must equal the single
process's. Writes ``result.json`` with the largest relative difference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def build():
    import celltx
    from celltx.nn import preset

    adata = celltx.datasets.pbmc68k()[:96].copy()
    celltx.model.ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(adata, **preset("tiny", n_layers=2, max_seq_len=48))
    model.module.set_objective(contrast=1.0, gep=1.0, mvc=0.5)
    model.module.train()
    from scvi import REGISTRY_KEYS

    x = torch.as_tensor(adata.X[:40].toarray())
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: torch.zeros(40, 1)}
    return model, adata, tensors


def grads(module) -> dict:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def worker(rank: int, out: str, states: list) -> None:
    from safetensors.torch import save_file

    from celltx.train import divide_and_conquer_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["DC_PORT"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model, adata, tensors = build()
    half = {k: v[20 * rank : 20 * (rank + 1)] for k, v in tensors.items()}
    with model._panel(adata):
        torch.set_rng_state(states[rank])
        model.module.zero_grad()
        divide_and_conquer_step(model.module, half, chunk_size=20)
    save_file(grads(model.module), str(Path(out, f"rank{rank}.safetensors")))
    torch.distributed.destroy_process_group()


def main(out: str) -> None:
    import socket

    from safetensors.torch import load_file

    from celltx.train import divide_and_conquer_step

    model, adata, tensors = build()
    m = model.module
    with model._panel(adata):
        torch.manual_seed(1)
        s0 = torch.get_rng_state()
        m.zero_grad()
        divide_and_conquer_step(m, tensors, chunk_size=20)
        ref = grads(m)
        # the random state the single process had when it reached its second chunk
        torch.set_rng_state(s0)
        with torch.no_grad():
            first = {k: v[:20] for k, v in tensors.items()}
            m.inference(**m._get_inference_input(first))
        s1 = torch.get_rng_state()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["DC_PORT"] = str(s.getsockname()[1])
    torch.multiprocessing.spawn(worker, args=(out, [s0, s1]), nprocs=2, join=True)
    g = [load_file(str(Path(out, f"rank{r}.safetensors"))) for r in range(2)]
    worst = max(
        float(((g[0][k] + g[1][k]) / 2 - v).abs().max() / (v.abs().max() + 1e-12))
        for k, v in ref.items()
    )
    Path(out, "result.json").write_text(
        json.dumps({"max_relative_difference": worst, "n_tensors": len(ref)})
    )


if __name__ == "__main__":
    main(sys.argv[1])
