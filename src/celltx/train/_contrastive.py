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


def _gather(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """:func:`gather_rows` of an embedding or a mask (booleans travel as bytes)."""
    if v.dtype == torch.bool:
        rows, start = gather_rows(v.to(torch.uint8))
        return rows.bool(), start
    return gather_rows(v)


def divide_and_conquer_step(
    module,
    tensors: dict,
    chunk_size: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> LossOutput:
    """Gradients of a contrastive objective over the whole batch, ``chunk_size`` cells at a time.

    CellLM's divide-and-conquer: a contrastive loss compares every cell of the batch with
    every other, so its batch size would normally be bounded by activation memory. The
    objective's chunked part (:attr:`celltx.module.Part.chunked`: the RNA contrastive part
    ``contrast``, or the multiome ``cross_modal``) splits its loss into
    :meth:`~celltx.module.Part.embed` (a chunk's embeddings: the two views' ``<cls>``; the
    joint, RNA-view and ATAC-view ``<cls>`` with the masks of measured modalities) and
    :meth:`~celltx.module.Part.batch_loss` (the loss over the whole batch's rows). Here

    1. every chunk is encoded and embedded **without** gradients (recording the random
       state first) and only its embeddings kept — a few ``batch × d_model`` numbers;
    2. the part's loss over the whole batch gives d(loss) / d(embedding) for every row;
    3. each chunk is encoded and embedded again, **with** gradients, under the recorded
       random state (the same gene choice, known / unknown split, augmentations and
       dropout), and its embeddings are backpropagated with the cached gradients, together
       with the chunk's share of the other parts' losses (generation, …).

    The parameter gradients equal those of one pass over the whole batch; peak activation
    memory is that of one chunk. Under data parallelism (a ``torch.distributed`` process
    group, as Lightning's DDP sets up) the embeddings of every process are gathered
    (:func:`gather_rows`), so the contrastive batch is the global batch: each process takes
    the gradients of its own rows, scaled by the number of processes because DDP averages
    the parameter gradients. ``module`` must be in training mode with a chunked part in
    its objective; a batch of :class:`~celltx.data.NeighbourBatchSampler` carries each
    row's neighbour partner (:data:`~celltx.data.PARTNER_KEY`), a positive over the whole
    (gathered) batch, passed to the part's ``batch_loss``; ``backward`` is how a loss is
    backpropagated (Lightning's ``manual_backward`` in a plan). Returns a
    :class:`~scvi.module.base.LossOutput` of the batch (detached; for logging).
    """
    name = next((n for n in module.objective if module.parts[n].chunked), None)
    if name is None:
        chunked = sorted(n for n, p in module.parts.items() if p.chunked)
        raise ValueError(
            "A divide-and-conquer step needs a chunked part in the objective "
            f"({', '.join(chunked)}): task='contrastive' or task='multiome'."
        )
    part = module.parts[name]
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
    device = next(module.parameters()).device
    # on the module's device: the parts read the minibatch beside the encoder's outputs
    tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}
    partner = tensors.pop(PARTNER_KEY, None)  # rows of the whole batch: not chunked
    chunks = _chunks(tensors, chunk_size)
    n = sum(len(c[REGISTRY_KEYS.X_KEY]) for c in chunks)
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            inf = module.inference(**module._get_inference_input(chunk))
            cached.append(part.embed(module, chunk, inf))
    _, world = _world()
    rows, start = {}, 0
    for key in cached[0]:
        rows[key], start = _gather(torch.cat([c[key] for c in cached]))
    del cached
    diff = [k for k, v in rows.items() if v.is_floating_point()]
    for key in diff:
        rows[key] = rows[key].requires_grad_(True)
    if partner is not None:  # this process's partner rows, as rows of the gathered batch
        partner = partner.long()
        partner, _ = gather_rows(torch.where(partner >= 0, partner + start, -1))
    global_out = part.batch_loss(rows, partner)
    grads = torch.autograd.grad(
        global_out.loss, [rows[k] for k in diff], allow_unused=True, materialize_grads=True
    )
    # this process's rows; DDP divides the summed parameter gradients by the world size
    cached_grads = {k: g[start : start + n] * world for k, g in zip(diff, grads, strict=True)}
    weight = part.weight
    total = weight * global_out.loss.detach()
    per_cell, metrics = [], {}
    lo = 0
    for chunk, state in zip(chunks, states, strict=True):
        c = len(chunk[REGISTRY_KEYS.X_KEY])
        _set_rng_state(state, device)
        inf = module.inference(**module._get_inference_input(chunk))
        emb = part.embed(module, chunk, inf)
        surrogate = sum((emb[k] * g[lo : lo + c]).sum() for k, g in cached_grads.items())
        # the chunk's share of the other parts' losses; this part's is the whole batch's
        gen = module.generative(**module._get_generative_input(chunk, inf))
        out = module.loss(chunk, inf, gen, skip=(name,))
        backward(out.loss * (c / n) + weight * surrogate)
        total = total + out.loss.detach() * (c / n)
        rec: Any = out.reconstruction_loss  # LossOutput keeps it as a dict of named terms
        rec = sum(rec.values()) if isinstance(rec, dict) else rec
        per_cell.append(rec.detach())
        metrics = {k: v for k, v in out.extra_metrics.items()}
        lo += c
    metrics.update({k: v for k, v in global_out.metrics.items() if v is not None})
    rec = torch.cat(per_cell)
    return LossOutput(
        loss=total, reconstruction_loss=rec, kl_local=torch.zeros_like(rec), extra_metrics=metrics
    )
