"""Datasets: real data that ships with the dependencies, and simulators with ground truth."""

from celltx.data import pbmc68k

from ._gears import (
    PERTPY_CONTROL_VALUES,
    PERTPY_PERTURBATION_KEYS,
    adamson2016,
    from_pertpy,
    norman2019,
    read_gears,
    replogle2022_k562_essential,
)
from ._multiome import peak_coordinates, simulate_multiome
from ._multiome_10x import pbmc10x_multiome, read_10x_multiome
from ._perturbseq import simulate_perturbseq

__all__ = ["pbmc68k"]
__all__ += ["simulate_multiome", "read_10x_multiome", "pbmc10x_multiome", "peak_coordinates"]
__all__ += [
    "simulate_perturbseq",
    "read_gears",
    "norman2019",
    "adamson2016",
    "replogle2022_k562_essential",
    "from_pertpy",
    "PERTPY_PERTURBATION_KEYS",
    "PERTPY_CONTROL_VALUES",
]
