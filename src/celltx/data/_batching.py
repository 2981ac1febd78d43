"""Token-budget batching: cells grouped by sequence length, batches sized by total tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from ._types import Matrix


#: rows read at a time from disk-backed matrices
_CHUNK = 10_000

#: Padded tokens per forward pass of inference by default (``batch_tokens="auto"``).
#: Measured with a scGPT_human-sized model on 100 whole-transcriptome PBMCs, whole process on
#: 2 CPU cores: 38.2 s and 1.64 GB peak RSS, against 78.3 s and 2.86 GB with 128-cell
#: batches (``benchmarks/embed_whole_process.py``; the table in docs/large_data.md).
DEFAULT_BATCH_TOKENS = 16_384


def expressed_counts(
    x: Matrix,
    columns: np.ndarray | None = None,
    chunk: int = _CHUNK,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Number of non-zero values per row of ``x``, over ``columns`` (a boolean mask).

    ``x`` may be dense, scipy-sparse or disk-backed (rows are read ``chunk`` at a time, so a
    backed matrix is never loaded whole). ``rows``: count only these rows (any order,
    repeats allowed; each distinct row is read once), in their order.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import expressed_counts
    >>> expressed_counts(np.array([[0, 1, 2], [3, 0, 0]]), np.array([True, True, False]))
    array([1, 1])
    >>> expressed_counts(np.array([[0, 1, 2], [3, 0, 0]]), rows=np.array([1, 0, 1]))
    array([1, 2, 1])
    """
    if rows is None:
        uniq, inv, n = None, None, x.shape[0]
    else:
        uniq, inv = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        n = len(uniq)
    out = np.zeros(n, dtype=np.int64)
    for lo in range(0, n, chunk):
        block: Any = x[lo : lo + chunk] if uniq is None else x[uniq[lo : lo + chunk]]
        if columns is not None:
            block = block[:, columns]
        if sp.issparse(block):
            block = block.tocsr()
            block.eliminate_zeros()
            out[lo : lo + chunk] = np.diff(block.indptr)
        else:
            out[lo : lo + chunk] = np.count_nonzero(np.asarray(block), axis=1)
    return out if inv is None else out[inv]


def sequence_lengths(
    expressed: np.ndarray, n_known: int, max_seq_len: int, zero_fraction: float = 0.0
) -> np.ndarray:
    """Tokens of each cell as :class:`~celltx.data.Tokenizer` makes them (``<cls>`` included).

    ``expressed``: expressed vocabulary genes per cell; ``n_known``: vocabulary genes of the
    panel; ``zero_fraction``: the tokenizer's share of slots for non-expressed genes.
    """
    budget = max_seq_len - 1
    zero_slots = int(np.floor(zero_fraction * budget)) if zero_fraction else 0
    e = np.asarray(expressed, dtype=np.int64)
    return np.minimum(e, budget - zero_slots) + np.minimum(n_known - e, zero_slots) + 1


def token_budget_batches(
    lengths: np.ndarray, batch_tokens: int, max_cells: int | None = None
) -> list[np.ndarray]:
    """Positions of cells grouped into batches of at most ``batch_tokens`` padded tokens.

    Cells are sorted by length (stably), so a batch holds cells of similar length and is
    padded only to its longest; a batch grows while ``n_cells × longest length`` stays within
    ``batch_tokens`` (and ``n_cells <= max_cells``). A cell longer than the budget gets a
    batch of its own.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import token_budget_batches
    >>> [b.tolist() for b in token_budget_batches(np.array([5, 100, 6, 90]), 200)]
    [[0, 2], [3, 1]]
    """
    if int(batch_tokens) < 1:
        raise ValueError(f"batch_tokens={batch_tokens} must be >= 1.")
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for i in range(1, len(order) + 1):
        # the batch order[start:i] padded to its longest (the last, lengths are sorted)
        if i < len(order):
            n_next = i + 1 - start
            too_many = max_cells is not None and n_next > max_cells
            if not too_many and n_next * lengths[order[i]] <= batch_tokens:
                continue
        batches.append(order[start:i])
        start = i
    return batches


def shuffled_token_budget_batches(
    lengths: np.ndarray, batch_tokens: int, max_cells: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """:func:`token_budget_batches` for training: random within equal lengths, random order.

    Cells of equal length are grouped in a random order (a random permutation before the
    stable sort by length) and the batches come in a random order, so each epoch sees other
    batches while every batch stays within the budget.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import shuffled_token_budget_batches
    >>> b = shuffled_token_budget_batches(np.array([5, 100, 6, 90]), 200, None,
    ...                                   np.random.default_rng(0))
    >>> sorted(sorted(x.tolist()) for x in b)
    [[0, 2], [1, 3]]
    """
    perm = rng.permutation(len(lengths))
    batches = [
        perm[b] for b in token_budget_batches(np.asarray(lengths)[perm], batch_tokens, max_cells)
    ]
    return [batches[i] for i in rng.permutation(len(batches))]


class TokenBudgetSampler(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches (:func:`token_budget_batches`).

    Pass it as ``sampler=`` to scvi-tools' ``AnnDataLoader``: each item is the list of
    dataset positions of one batch.
    """

    def __init__(self, batches: list[np.ndarray]):
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches)


class ShuffledTokenBudgetSampler(torch.utils.data.Sampler):
    """Training batches of at most ``batch_tokens`` padded tokens, regrouped every epoch.

    Each pass (epoch) draws new batches with :func:`shuffled_token_budget_batches` from
    ``seed`` and the epoch number; every cell appears once per epoch. ``len`` is that of the
    first epoch's grouping (the number of batches varies little between epochs).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import ShuffledTokenBudgetSampler
    >>> sampler = ShuffledTokenBudgetSampler(np.array([5, 100, 6, 90]), 200)
    >>> sorted(i for batch in sampler for i in batch)  # every cell once an epoch
    [0, 1, 2, 3]
    """

    def __init__(
        self, lengths: np.ndarray, batch_tokens: int, max_cells: int | None = None, seed: int = 0
    ):
        if int(batch_tokens) < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be >= 1.")
        self.lengths = np.asarray(lengths)
        self.batch_tokens, self.max_cells, self.seed = int(batch_tokens), max_cells, seed
        self.epoch = 0
        self._n = len(self._batches(0))

    def _batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        return shuffled_token_budget_batches(self.lengths, self.batch_tokens, self.max_cells, rng)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        for b in batches:
            yield b.tolist()

    def __len__(self) -> int:
        return self._n


class RowsInOrder(torch.utils.data.Dataset):
    """The rows of ``dataset`` that ``rows`` names, in exactly the order asked for.

    Item ``positions`` (a list of positions into ``rows``) is the batch
    ``dataset[rows[positions]]``: each distinct row is read once, in increasing order, and
    the result is put back in the order of ``positions``, repeats included. scvi-tools'
    ``AnnTorchDataset`` reads the rows of a disk-backed AnnData sorted (HDF5 needs increasing
    positions) and returns them in that sorted order; through this class a batch of
    unsorted or repeated cells still comes back row for row. Pass it to a
    :class:`torch.utils.data.DataLoader` with ``batch_size=None`` and a sampler yielding
    lists of positions (:class:`TokenBudgetSampler`).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import RowsInOrder
    >>> class Sorted(torch.utils.data.Dataset):  # reads rows sorted, as backed data is read
    ...     def __getitem__(self, rows):
    ...         return {"x": np.sort(np.asarray(rows)) * 10}
    >>> RowsInOrder(Sorted(), np.array([5, 3, 1, 3]))[[0, 1, 2, 3]]["x"].tolist()
    [50, 30, 10, 30]
    """

    def __init__(self, dataset: Any, rows: np.ndarray):
        self.dataset = dataset
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: int | list[int] | np.ndarray) -> dict[str, Any]:
        rows = self.rows[np.atleast_1d(np.asarray(positions, dtype=np.int64))]
        uniq, inv = np.unique(rows, return_inverse=True)
        data = self.dataset[uniq]
        if len(uniq) == len(rows) and (uniq == rows).all():
            out: dict[str, Any] = data
            return out  # already increasing and distinct: the rows as read
        return {k: v[inv] for k, v in data.items()}


def first_item(items: list[Any]) -> dict[str, Any]:
    """Collate of a loader whose sampler yields whole batches: the one item, as tensors.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.data import first_item
    >>> first_item([{"X": np.zeros((3, 2))}])["X"].shape
    torch.Size([3, 2])
    """
    return {k: torch.as_tensor(np.asarray(v)) for k, v in items[0].items()}
