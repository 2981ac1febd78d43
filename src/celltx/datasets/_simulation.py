"""Helpers shared by the simulators: argument checks and negative-binomial counts."""

from __future__ import annotations

import numpy as np


def _check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is an integer ``>= minimum`` (not a bool), else an error."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _check_fraction(name: str, value) -> float:
    """``value`` as a ``float`` when it is a number in [0, 1], else an error."""
    if not isinstance(value, int | float | np.floating) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}.")
    return float(value)


def _nb_counts(rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative-binomial counts as a Gamma-Poisson mixture (mean, inverse dispersion)."""
    lam = rng.gamma(shape=theta, scale=mean / theta)
    return rng.poisson(lam)
