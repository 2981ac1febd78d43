"""Downloads of the public datasets: one cache folder, fetched once with pooch."""

from __future__ import annotations

import os
from pathlib import Path


def _cache_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, or pooch's cache folder for ``celltx`` when it is ``None``."""
    if data_dir is not None:
        return Path(data_dir)
    import pooch

    return Path(pooch.os_cache("celltx"))


def _download(
    url: str, fname: str, data_dir: str | os.PathLike | None, progressbar: bool = False
) -> Path:
    """Download ``url`` as ``fname`` into :func:`_cache_dir` (once) and return its path."""
    import pooch

    return Path(
        pooch.retrieve(
            url, known_hash=None, fname=fname, path=_cache_dir(data_dir), progressbar=progressbar
        )
    )
