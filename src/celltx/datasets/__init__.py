"""Datasets: real data that ships with the dependencies, and simulators with ground truth."""

from celltx.data._datasets import pbmc68k

__all__ = ["pbmc68k"]
