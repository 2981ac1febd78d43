"""Per-cell value binning and the reproducible hashes behind gene choice and tie breaking.

The arithmetic of :class:`~celltx.data.Tokenizer`: numpy-exact quantile edges, binning with
tie rules, the splitmix64 hash (the same numbers on every device) and rank-value scores.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK53 = (1 << 53) - 1
_TIE_SALT = 0x5BD1E9955BD1E995  # decorrelates the tie hash from the gene-choice hash

#: relative resolution of linear rank-value scores (``Tokenizer(..., linear=True)``): genes
#: whose ``value / median`` differ by less are tied (ordered by the reproducible hash)
RANK_RESOLUTION = 1e-3


def _linear_rank_score(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``value · scale`` on the linear scale, relative to the cell's top, in ``[0, 1]``.

    A cell of whole numbers (counts) is taken as it is, any other cell as ``log1p`` values
    (``expm1``-ed). Computed in log space (no overflow) and rounded to
    :data:`RANK_RESOLUTION`: genes within float32 rounding of log values count as tied, so
    a cell's counts and its log values order them alike (ties: the reproducible hash).
    """
    whole = (v == torch.round(v)).all(1, keepdim=True)
    log_v = torch.where(whole, torch.log(v), v + torch.log(-torch.expm1(-v)))
    log_score = log_v + torch.log(scale)  # -inf where the gene is not expressed
    top = log_score.amax(1, keepdim=True).clamp(min=torch.finfo(torch.float64).min)
    steps = torch.round((log_score - top) / RANK_RESOLUTION)
    return torch.where(v > 0, torch.exp(steps * RANK_RESOLUTION), 0.0)


def _mix64(h: torch.Tensor) -> torch.Tensor:
    """Splitmix64 finalizer on int64 tensors (wrap-around arithmetic).

    Deterministic on every device.
    """
    h = h ^ ((h >> 30) & ((1 << 34) - 1))
    h = h * -4658895280553007687  # 0xbf58476d1ce4e5b9 as signed int64
    h = h ^ ((h >> 27) & ((1 << 37) - 1))
    h = h * -7723592293110705685  # 0x94d049bb133111eb
    h = h ^ ((h >> 31) & ((1 << 33) - 1))
    return h


def _uniform(h: torch.Tensor) -> torch.Tensor:
    """int64 hashes -> float64 uniform numbers in [0, 1) (53 random bits)."""
    return (h & _MASK53).to(torch.float64) / float(1 << 53)


def quantile_edges(x_sorted: torch.Tensor, n_nonzero: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-row bin edges over the non-zero values, exactly as ``numpy.quantile``.

    Parameters
    ----------
    x_sorted
        ``(B, G)`` rows sorted ascending (non-negative, so zeros come first).
    n_nonzero
        ``(B,)`` number of non-zero values per row.
    n_bins
        Number of bins including bin 0 (not expressed); ``n_bins - 1`` edges are returned.

    Returns
    -------
    torch.Tensor
        ``(B, n_bins - 1)`` float64 edges: the ``linspace(0, 1, n_bins - 1)`` quantiles of
        each row's non-zero values (linear interpolation, numpy's rounding).
    """
    B, G = x_sorted.shape
    device = x_sorted.device
    q = torch.from_numpy(np.linspace(0.0, 1.0, n_bins - 1)).to(device)  # exact numpy grid
    last = (n_nonzero - 1).clamp(min=0).to(torch.float64)
    h = last[:, None] * q[None, :]  # virtual index into the non-zero values
    lo = torch.floor(h)
    gamma = h - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, (n_nonzero - 1).clamp(min=0)[:, None])
    offset = (G - n_nonzero)[:, None]
    a = x_sorted.gather(1, (offset + lo).clamp(max=G - 1))
    b = x_sorted.gather(1, (offset + hi).clamp(max=G - 1))
    diff = (b - a).double()  # numpy subtracts in the input dtype, then promotes
    a, b = a.double(), b.double()
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def digitize(
    values: torch.Tensor, edges: torch.Tensor, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Bin index of each value: the number of edges at or below it, ties broken by ``u``.

    ``values`` ``(B, K)``, ``edges`` ``(B, E)``. A value equal to ``d > 1`` edges (a tie)
    could fall in any bin of ``n_below + 1 … n_below + d``. With ``u`` ``(B, K)`` (uniform
    numbers in ``[0, 1)``) it gets ``n_below + d - floor(u·d)``: a uniform choice, which is
    scGPT's rule when ``u`` is random. Without ``u`` it gets the middle bin (rounded down).
    A value equal to at most one edge, the case of tie-free data, has one possible bin
    and every rule agrees.
    """
    v = values.double()[:, :, None]
    e = edges[:, None, :]
    n_le = (e <= v).sum(-1)
    n_lt = (e < v).sum(-1)
    if u is None:
        return torch.div(n_le + n_lt + 1, 2, rounding_mode="floor")
    d = n_le - n_lt
    return n_le - torch.floor(u.double() * d).long().clamp(max=(d - 1).clamp(min=0))
