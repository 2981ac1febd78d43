"""celltx: single-cell foundation models as ordinary scvi-tools / scanpy / muon models."""

from importlib.metadata import PackageNotFoundError, version

from . import bench, data, datasets, io, model, module, nn, pl, text, tl, train

try:
    __version__ = version("celltx")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["data", "datasets", "nn", "module", "train", "model", "io", "tl", "pl", "bench", "text"]
