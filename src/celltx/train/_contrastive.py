"""CellLM's divide-and-conquer contrastive step: a contrastive batch larger than memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput

from celltx.data import PARTNER_KEY


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(tensors: dict, chunk_size: int) -> list[dict]:
    n = len(next(iter(tensors.values())))
    return [
        {k: v[lo : lo + chunk_size] for k, v in tensors.items()} for lo in range(0, n, chunk_size)
    ]


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``z`` stacked in rank order, and where this process's start.

    Without a process group (or with one process) ``z`` itself and 0. Ranks may hold
    different numbers of rows. No gradient flows through the gathered rows.

    Examples
    --------
    >>> import torch
    >>> from celltx.train import gather_rows
    >>> z, start = gather_rows(torch.ones(3, 2))
    >>> z.shape, start
    (torch.Size([3, 2]), 0)
    """
    rank, world = _world()
    if world == 1:
        return z, 0
    dist = torch.distributed
    n = torch.tensor([z.shape[0]], device=z.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = z.new_zeros((max(counts), *z.shape[1:]))
    padded[: z.shape[0]] = z
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    rows = torch.cat([p[:k] for p, k in zip(parts, counts, strict=True)])
    return rows, sum(counts[:rank])


def divide_and_conquer_step(
    module,
    tensors: dict,
    chunk_size: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> LossOutput:
    """Gradients of the contrastive objective over the whole batch, ``chunk_size`` cells at a time.

    CellLM's divide-and-conquer: the contrastive loss compares every cell of the batch with
    every other, so its batch size would normally be bounded by activation memory. Here

    1. every chunk's two views are encoded **without** gradients (recording the random
       state first) and only their ``<cls>`` embeddings kept — ``2 · batch × d_model``
       numbers;
    2. the contrastive loss over the whole batch gives d(loss) / d(embedding) for every row;
    3. each chunk is encoded again, **with** gradients, under the recorded random state (the
       same gene choice, known / unknown split and dropout), and its embeddings are
       backpropagated with the cached gradients, together with the chunk's share of the
       other parts' losses (generation, …).

    The parameter gradients equal those of one pass over the whole batch; peak activation
    memory is that of one chunk. Under data parallelism (a ``torch.distributed`` process
    group, as Lightning's DDP sets up) the embeddings of every process are gathered
    (:func:`gather_rows`), so the contrastive batch is the global batch: each process takes
    the gradients of its own rows, scaled by the number of processes because DDP averages
    the parameter gradients. ``module`` must be in training mode with a chunked part
    (:attr:`celltx.module.Part.chunked`: the contrastive one) in its objective; a batch of :class:`~celltx.data.NeighbourBatchSampler` carries each row's
    neighbour partner (:data:`~celltx.data.PARTNER_KEY`), a positive over the whole
    (gathered) batch; ``backward`` is how a loss is backpropagated (Lightning's
    ``manual_backward`` in a plan). Returns a :class:`~scvi.module.base.LossOutput` of the
    batch (detached; for logging).
    """
    name = next((n for n in module.objective if module.parts[n].chunked), None)
    if name is None:
        raise ValueError("A divide-and-conquer step needs the contrastive part in the objective.")
    part = module.parts[name]
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
    tensors = dict(tensors)
    partner = tensors.pop(PARTNER_KEY, None)  # rows of the whole batch: not chunked
    chunks = _chunks(tensors, chunk_size)
    n = sum(len(c[REGISTRY_KEYS.X_KEY]) for c in chunks)
    device = next(module.parameters()).device
    states, views1, views2 = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            inf = module.inference(**module._get_inference_input(chunk))
            emb = inf["cell_emb"].float()
            half = emb.shape[0] // 2
            views1.append(emb[:half])
            views2.append(emb[half:])
    z1, z2 = torch.cat(views1), torch.cat(views2)
    _, world = _world()
    (a1, start), (a2, _) = gather_rows(z1), gather_rows(z2)
    a1, a2 = a1.requires_grad_(True), a2.requires_grad_(True)
    if partner is not None:  # this process's partner rows, as rows of the gathered batch
        partner = partner.to(z1.device).long()
        partner, _ = gather_rows(torch.where(partner >= 0, partner + start, -1))
    global_loss = part.pair_loss(a1, a2, partner)
    g1, g2 = torch.autograd.grad(global_loss, (a1, a2))
    # this process's rows; DDP divides the summed parameter gradients by the world size
    g1 = g1[start : start + n] * world
    g2 = g2[start : start + n] * world
    weight = part.weight
    total = weight * global_loss.detach()
    per_cell, metrics = [], {}
    start = 0
    for chunk, state in zip(chunks, states, strict=True):
        c = len(chunk[REGISTRY_KEYS.X_KEY])
        _set_rng_state(state, device)
        # the chunk's share of the other parts' losses; this part's is the whole batch's
        inf, gen, out = module(chunk, loss_kwargs={"skip": (name,)})
        emb = inf["cell_emb"].float()
        surrogate = (emb[:c] * g1[start : start + c]).sum() + (
            emb[c:] * g2[start : start + c]
        ).sum()
        backward(out.loss * (c / n) + weight * surrogate)
        total = total + out.loss.detach() * (c / n)
        rec: Any = out.reconstruction_loss  # LossOutput keeps it as a dict of named terms
        rec = sum(rec.values()) if isinstance(rec, dict) else rec
        per_cell.append(rec.detach())
        metrics = {k: v for k, v in out.extra_metrics.items()}
        start += c
    metrics[part.metrics[0]] = global_loss.detach()
    rec = torch.cat(per_cell)
    return LossOutput(
        loss=total, reconstruction_loss=rec, kl_local=torch.zeros_like(rec), extra_metrics=metrics
    )
