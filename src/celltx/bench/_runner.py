"""The one loop of every benchmark: seeds (or folds) × methods, each guarded and timed.

:func:`run_methods` runs each method once per seed, in order, and yields a
:class:`MethodRun` as each finishes: its result, the seconds it took and, when it raised
(an :class:`Exception`, not an interrupt), the error text with a warning
(:func:`~celltx.bench._inputs.guarded`), so that one failing baseline keeps the other
methods' results. A method that cannot run at all (no raw counts for scVI, …) is named in
``skipped`` and gets its reason as the error without being called. :func:`method_rows`
turns the runs into table rows (``method``, the seed column, the task's columns, ``seconds``,
``error``) for the tasks whose table has one row per method and seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import guarded


@dataclass
class MethodRun:
    """One method run on one seed (or fold).

    ``value`` is what the method returned (``None`` when it failed or was skipped),
    ``seconds`` how long it ran (NaN when skipped), ``error`` ``None`` or why it failed
    (``"ExceptionType: message"``) or was skipped.
    """

    method: str
    seed: Any
    value: Any
    seconds: float
    error: str | None


def run_methods(
    methods: Sequence[str],
    run: Callable[[str, Any], Any],
    seeds: Sequence[Any] = (None,),
    *,
    skipped: Mapping[str, str] | None = None,
    label: Callable[[str, Any], str] | None = None,
    score: Callable[[str, Any, Any], Any] | None = None,
) -> Iterator[MethodRun]:
    """Run ``run(method, seed)`` for every seed and method; yield each run as it finishes.

    Parameters
    ----------
    methods
        The methods, in order (the inner loop).
    run
        ``run(method, seed)`` computes one method's result; it is timed, and an exception
        it raises becomes the run's ``error`` (with a warning) instead of stopping the
        loop.
    seeds
        The outer loop: seeds, folds or ``(None,)`` for a single run.
    skipped
        ``{method: error}`` for methods left out before anything runs (not called).
    label
        ``label(method, seed)`` names the run in warnings (default: the method).
    score
        ``score(method, seed, value)`` turns a result into what is yielded; not timed,
        guarded as ``run`` is.

    Yields
    ------
    MethodRun
        One per seed and method.

    Examples
    --------
    >>> import warnings
    >>> from celltx.bench._runner import run_methods
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     runs = list(run_methods(["one", "bad"], lambda m, s: 1 / (m == "one"), seeds=[0, 1]))
    >>> [(r.method, r.seed, r.value, r.error) for r in runs][:2]
    [('one', 0, 1.0, None), ('bad', 0, None, 'ZeroDivisionError: division by zero')]
    """
    skipped = dict(skipped or {})
    for seed in seeds:
        for method in methods:
            if method in skipped:
                yield MethodRun(method, seed, None, np.nan, skipped[method])
                continue
            name = method if label is None else label(method, seed)
            start = time.perf_counter()
            value, error = guarded(name, run, method, seed)
            seconds = time.perf_counter() - start
            if error is None and score is not None:
                value, error = guarded(name, score, method, seed, value)
            yield MethodRun(method, seed, value, seconds, error)


def method_rows(
    methods: Sequence[str],
    run: Callable[[str, Any], Mapping[str, Any] | None],
    seeds: Sequence[Any] = (None,),
    *,
    seed_column: str | None = None,
    columns: Mapping[str, Any] | None = None,
    **kwargs,
) -> Iterator[dict[str, Any]]:
    """Rows of a benchmark table, one per seed and method, as each method finishes.

    ``run(method, seed)`` (or ``score``, see :func:`run_methods`, which takes the other
    keyword arguments) returns the method's columns as a mapping; its ``"error"`` entry,
    if any, is the row's error when the method itself did not fail (e.g. a score that
    could not be computed). A row is ``{"method", seed_column (when given), **columns,
    **result, "seconds", "error"}``: ``columns`` holds each column's value for a failed or
    skipped method (NaN scores, constants such as the number of cells).

    Examples
    --------
    >>> import warnings
    >>> from celltx.bench._runner import method_rows
    >>> def run(method, seed):
    ...     if method == "bad":
    ...         raise RuntimeError("no")
    ...     return {"score": seed / 10}
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     rows = list(method_rows(["good", "bad"], run, [1, 2], seed_column="seed",
    ...                             columns={"score": float("nan")}))
    >>> [(r["method"], r["seed"], r["score"], r["error"]) for r in rows][:2]
    [('good', 1, 0.1, None), ('bad', 1, nan, 'RuntimeError: no')]
    """
    for r in run_methods(methods, run, seeds, **kwargs):
        row: dict[str, Any] = {"method": r.method}
        if seed_column is not None:
            row[seed_column] = r.seed
        row.update(columns or {})
        result = dict(r.value or {})
        error = r.error or result.pop("error", None)
        result.pop("error", None)
        yield {**row, **result, "seconds": r.seconds, "error": error}
