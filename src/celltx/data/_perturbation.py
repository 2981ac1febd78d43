"""Perturbation conditions in GEARS notation.

GEARS (Roohani et al. 2024) writes the perturbation of a cell as a ``+``-joined string:
``"ctrl"`` for control cells, ``"A+ctrl"`` (or ``"ctrl+A"``) for a single-gene
perturbation of gene ``A`` and ``"A+B"`` for a two-gene combination. The helpers here turn
such strings into tuples of target genes and back into one canonical spelling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["parse_condition", "condition_name", "parse_conditions"]


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def parse_condition(
    condition: str, control_value: str = "ctrl", sep: str = "+", strict: bool = False
) -> tuple[str, ...]:
    """Split one GEARS-style condition string into its target genes.

    Parameters
    ----------
    condition
        The condition, e.g. ``"ctrl"``, ``"A+ctrl"``, ``"ctrl+A"``, ``"A+B"`` or a bare
        gene symbol ``"A"``.
    control_value
        The token that marks control (no perturbation).
    sep
        The separator between tokens.
    strict
        Refuse spellings that only a rewrite makes valid: a gene named twice (``"A+A"``),
        the control token more than once (``"ctrl+ctrl"``, ``"A+ctrl+ctrl"``) or next to
        several genes (``"A+B+ctrl"``). Used for conditions a user asks a model to predict,
        where a silent rewrite would answer another question.

    Returns
    -------
    tuple of str
        The perturbed genes in the order given, duplicates removed; ``()`` for control.

    Raises
    ------
    ValueError
        If ``condition`` is missing, empty or has an empty token (``"A++B"``, ``"+A"``).

    Examples
    --------
    >>> from celltx.data._perturbation import parse_condition
    >>> parse_condition("ctrl")
    ()
    >>> parse_condition("ctrl+KLF1")
    ('KLF1',)
    >>> parse_condition("CEBPA+KLF1")
    ('CEBPA', 'KLF1')
    """
    if _is_missing(condition):
        raise ValueError(
            "A perturbation condition is missing (None/NaN); give every cell a condition, "
            f"using {control_value!r} for control cells."
        )
    if not isinstance(condition, str):
        raise ValueError(
            f"A perturbation condition must be a string, got {condition!r} "
            f"({type(condition).__name__}); convert the column with .astype(str)."
        )
    text = condition.strip()
    if not text:
        raise ValueError(
            f"A perturbation condition is an empty string; use {control_value!r} for control cells."
        )
    tokens = [t.strip() for t in text.split(sep)]
    if any(not t for t in tokens):
        raise ValueError(
            f"Condition {condition!r} has an empty token; write conditions as "
            f"{control_value!r}, 'GENE{sep}{control_value}' or 'GENE1{sep}GENE2'."
        )
    genes = [t for t in tokens if t != control_value]
    if strict:
        n_ctrl = len(tokens) - len(genes)
        repeated = sorted({g for g in genes if genes.count(g) > 1})
        if repeated or n_ctrl > 1 or (n_ctrl and len(genes) > 1):
            why = (
                f"names {repeated} more than once"
                if repeated
                else f"has the control token {control_value!r} {n_ctrl} times"
                if n_ctrl > 1
                else f"mixes the control token {control_value!r} with several genes"
            )
            raise ValueError(
                f"Condition {condition!r} {why}. Write {control_value!r} for control, "
                f"'GENE{sep}{control_value}' for one gene or 'GENE1{sep}GENE2' for two different genes."
            )
    return tuple(dict.fromkeys(genes))


def condition_name(genes: Sequence[str], control_value: str = "ctrl", sep: str = "+") -> str:
    """The canonical GEARS spelling of a set of perturbed genes.

    Parameters
    ----------
    genes
        The perturbed genes (empty for control).
    control_value
        The token that marks control.
    sep
        The separator between tokens.

    Returns
    -------
    str
        ``control_value`` for no gene, ``"A+ctrl"`` for one gene, ``"A+B"`` (order kept)
        for two or more.

    Raises
    ------
    ValueError
        If ``genes`` is a plain string, or a gene is empty or contains ``sep``.

    Examples
    --------
    >>> from celltx.data._perturbation import condition_name
    >>> condition_name(())
    'ctrl'
    >>> condition_name(("KLF1",))
    'KLF1+ctrl'
    >>> condition_name(("CEBPA", "KLF1"))
    'CEBPA+KLF1'
    """
    if isinstance(genes, str):
        raise ValueError(
            f"condition_name expects a sequence of genes, got the string {genes!r}; "
            f"pass ({genes!r},) or use parse_condition first."
        )
    genes = tuple(dict.fromkeys(genes))
    for g in genes:
        if not isinstance(g, str) or not g or sep in g or g == control_value:
            raise ValueError(
                f"Invalid gene {g!r} in {genes!r}: genes must be non-empty strings without "
                f"{sep!r} and different from the control token {control_value!r}."
            )
    if not genes:
        return control_value
    if len(genes) == 1:
        return f"{genes[0]}{sep}{control_value}"
    return sep.join(genes)


def parse_conditions(
    conditions: Sequence[str] | pd.Series,
    control_value: str = "ctrl",
    max_genes: int = 2,
    sep: str = "+",
) -> tuple[pd.Series, pd.Series]:
    """Parse a per-cell condition column (each distinct value is parsed once).

    Parameters
    ----------
    conditions
        One condition per cell, e.g. ``adata.obs["condition"]``.
    control_value
        The token that marks control.
    max_genes
        The most genes one condition may perturb.
    sep
        The separator between tokens.

    Returns
    -------
    genes : pandas.Series
        Per cell, the tuple of perturbed genes (``()`` for control), same index as the input.
    names : pandas.Series
        Per cell, the canonical condition name (see :func:`condition_name`).

    Raises
    ------
    ValueError
        If a condition cannot be parsed (see :func:`parse_condition`) or perturbs more than
        ``max_genes`` genes.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.data._perturbation import parse_conditions
    >>> genes, names = parse_conditions(pd.Series(["ctrl", "ctrl+A", "A+B", "ctrl"]))
    >>> list(names)
    ['ctrl', 'A+ctrl', 'A+B', 'ctrl']
    >>> genes.iloc[2]
    ('A', 'B')
    """
    if max_genes < 1:
        raise ValueError(f"max_genes must be at least 1, got {max_genes}.")
    series = conditions if isinstance(conditions, pd.Series) else pd.Series(list(conditions))
    if len(series) == 0:
        raise ValueError("No conditions given (the condition column is empty).")
    if series.isna().any():
        n = int(series.isna().sum())
        raise ValueError(
            f"{n} cell(s) have no perturbation condition (NaN); give every cell a condition, "
            f"using {control_value!r} for control cells."
        )
    codes, uniques = pd.factorize(series, sort=False)
    parsed = [parse_condition(u, control_value=control_value, sep=sep) for u in uniques]
    too_many = [u for u, p in zip(uniques, parsed, strict=True) if len(p) > max_genes]
    if too_many:
        raise ValueError(
            f"{len(too_many)} condition(s) perturb more than max_genes={max_genes} genes, "
            f"e.g. {too_many[:5]}; raise max_genes or remove these cells."
        )
    names = np.array(
        [condition_name(p, control_value=control_value, sep=sep) for p in parsed], dtype=object
    )
    tuples = np.empty(len(parsed), dtype=object)
    tuples[:] = parsed
    return (
        pd.Series(tuples[codes], index=series.index, name="genes"),
        pd.Series(names[codes], index=series.index, name="condition_name"),
    )
