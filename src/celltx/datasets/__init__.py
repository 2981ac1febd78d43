"""Datasets: real data that ships with the dependencies, and simulators with ground truth."""

from celltx.data._datasets import pbmc68k

from ._multiome import pbmc10x_multiome, peak_coordinates, read_10x_multiome, simulate_multiome
from ._perturbseq import (
    adamson2016,
    norman2019,
    read_gears,
    replogle2022_k562_essential,
    simulate_perturbseq,
)

__all__ = ["pbmc68k"]
__all__ += ["simulate_multiome", "read_10x_multiome", "pbmc10x_multiome", "peak_coordinates"]
__all__ += ["simulate_perturbseq", "read_gears", "norman2019", "adamson2016", "replogle2022_k562_essential"]
