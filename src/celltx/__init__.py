"""celltx: single-cell foundation models as ordinary scvi-tools / scanpy / muon models."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

# The core (data → nn → module → train → model, and io) is imported with the package. The
# task packages above the model are imported on first use (``celltx.bench``, ``celltx.tl``,
# ...), so that a process that only embeds or trains does not pay for scikit-learn, the
# benchmarks' baselines or the sentence encoder.
from . import data, io, model, module, nn, train

_LAZY = ("bench", "datasets", "pl", "text", "tl")

try:
    __version__ = version("celltx")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["data", "datasets", "nn", "module", "train", "model", "io", "tl", "pl", "bench", "text"]


def __getattr__(name: str):
    """Import a task package (``bench``, ``datasets``, ``pl``, ``text``, ``tl``) on first use."""
    if name in _LAZY:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
