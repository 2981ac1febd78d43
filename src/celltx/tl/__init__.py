"""Tools on model results, in scanpy's style (``key_added``, ``copy``)."""

from ._embed import embed

__all__ = ["embed"]

from ._gene_programs import gene_programs  # noqa: E402

__all__ += ["gene_programs"]

from ._interactions import interaction_changes  # noqa: E402

__all__ += ["interaction_changes"]
