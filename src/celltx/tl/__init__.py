"""Tools on model results, in scanpy's style (``key_added``, ``copy``)."""

from ._embed import embed

__all__ = ["embed"]
