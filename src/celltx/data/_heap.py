"""Keep the C heap from growing over long inference runs (glibc's malloc)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: glibc's mallopt parameter number of M_MMAP_THRESHOLD
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None


_LIBC = _libc()


def fix_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Serve allocations above ``nbytes`` with their own memory maps, for the whole process.

    glibc raises its mmap threshold each time a large block is freed, and then serves the
    next large tensors from the heap; with batches of varying sequence length the heap's
    freed pages stay mapped and resident memory grows with the number of batches (embedding
    300,000 cells: 3.9 GB instead of 1.0 GB). A fixed threshold (glibc's
    ``MALLOC_MMAP_THRESHOLD_`` environment variable does the same) returns each batch's
    memory when it is freed, at the cost of mapping it again for the next batch (slower:
    see ``benchmarks/streaming.py``). ``celltx embed --low-memory`` calls this; in Python,
    set the environment variable before starting the process. Returns False where glibc is
    not the allocator.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``).

    Called every few batches of a long inference run (embedding calls it every 16), this
    undoes the growth that :func:`fix_mmap_threshold` prevents, without mapping every
    batch's memory anew: the heap's freed pages leave the resident set instead of
    accumulating (``benchmarks/streaming.py``: 300,000 cells peak at 1.34 GB instead of
    3.87 GB, 9% slower).
    Returns False where glibc is not the allocator (nothing is done).
    """
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim"):
        return False
    _LIBC.malloc_trim(0)
    return True
