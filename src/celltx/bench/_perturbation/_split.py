"""GEARS-style split of perturbation conditions into training and held-out subgroups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.data import parse_conditions

#: held-out subgroups that the benchmark scores, in the order of its tables
TEST_SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
_SPLITS = ("simulation", "single")


def _conditions_of(data, perturbation_key: str) -> pd.Series:
    """The condition of every cell, as strings (refusing a missing column or value)."""
    if isinstance(data, AnnData):
        if perturbation_key not in data.obs:
            raise ValueError(
                f"obs[{perturbation_key!r}] is missing; pass perturbation_key= the obs column that "
                f"holds the GEARS-style condition of each cell (columns: {list(data.obs.columns)})."
            )
        col = data.obs[perturbation_key]
    else:
        col = data if isinstance(data, pd.Series) else pd.Series(list(data))
    if col.isna().any():
        raise ValueError(
            f"{int(col.isna().sum())} cell(s) have no condition in {perturbation_key!r}; fill them "
            "(control cells get the control value) or drop them."
        )
    return col.astype(str)


def perturbation_split(
    adata: AnnData | Sequence[str] | pd.Series,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    split: str = "simulation",
    seed: int = 0,
    train_fraction: float = 0.75,
    combo_seen2_train_fraction: float = 0.75,
    val_fraction: float = 0.1,
) -> pd.Series:
    """GEARS-style split of perturbation conditions into training and test subgroups.

    The perturbed genes are shuffled (by ``seed``) and ``train_fraction`` of them are
    *seen*: their single-gene conditions go to training, the single-gene conditions of the
    other genes are held out (``"unseen_single"``). With ``split="simulation"`` a pair
    ``A+B`` goes to ``"combo_seen0"``, ``"combo_seen1"`` or, with both genes seen, to
    training (``combo_seen2_train_fraction`` of such pairs) or ``"combo_seen2"``. With
    ``split="single"`` pairs whose genes are all seen go to training and the others are
    left out (``"excluded"``), so no held-out gene is seen through a pair. Finally
    ``val_fraction`` of the training perturbations go to ``"val"`` (for model selection;
    the benchmark neither trains nor scores on them): pairs, and single-gene conditions of
    genes that no held-out pair counts as seen. Control cells are always ``"train"``.
    Conditions that differ only in spelling (``"A+ctrl"`` and ``"ctrl+A"``) share a group.

    Parameters
    ----------
    adata
        AnnData with the conditions in ``obs[perturbation_key]``, or the conditions
        themselves (one per cell or one per condition).
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition (and token) of control cells.
    split
        ``"simulation"`` (singles and pairs) or ``"single"``.
    seed
        Random seed; the same seed gives the same split.
    train_fraction
        Fraction of the perturbed genes that are seen in training.
    combo_seen2_train_fraction
        Fraction of the pairs of two seen genes that go to training.
    val_fraction
        Fraction of the training perturbations set aside as ``"val"`` (0 for none).

    Returns
    -------
    pandas.Series
        Indexed by condition (as spelled in the data), values ``"train"``, ``"val"``,
        ``"unseen_single"``, ``"combo_seen0"``, ``"combo_seen1"``, ``"combo_seen2"`` or
        ``"excluded"``; named ``"subgroup"``.

    Raises
    ------
    ValueError
        If there are no control cells or no perturbed conditions, a condition cannot be
        parsed or perturbs more than two genes, or an argument is out of range.

    Examples
    --------
    >>> from celltx.bench import perturbation_split
    >>> conds = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "A+B", "A+D"]
    >>> s = perturbation_split(conds, seed=0, val_fraction=0)
    >>> s["ctrl"]
    'train'
    >>> set(s) <= {"train", "unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"}
    True
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    for name, value in (
        ("train_fraction", train_fraction),
        ("combo_seen2_train_fraction", combo_seen2_train_fraction),
        ("val_fraction", val_fraction),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    col = _conditions_of(adata, perturbation_key)
    raw = pd.unique(col)
    genes_of, canon_of = parse_conditions(pd.Series(raw), control_value=control_value, max_genes=2)
    canon_genes = dict(zip(canon_of, genes_of, strict=True))
    if control_value not in canon_genes:
        raise ValueError(
            f"No control cells: no condition equals {control_value!r}. Pass control_value= the "
            "condition of your control cells (GEARS uses 'ctrl')."
        )
    singles = sorted(c for c, g in canon_genes.items() if len(g) == 1)
    combos = sorted(c for c, g in canon_genes.items() if len(g) == 2)
    all_genes = sorted({g for c in singles + combos for g in canon_genes[c]})
    if not all_genes:
        raise ValueError("No perturbed conditions: every cell is a control cell.")

    rng = np.random.default_rng(seed)
    n_seen = int(len(all_genes) * train_fraction)
    seen = (
        set(rng.choice(np.array(all_genes, dtype=object), n_seen, replace=False).tolist())
        if n_seen
        else set()
    )
    group: dict[str, str] = {control_value: "train"}
    for c in singles:
        group[c] = "train" if canon_genes[c][0] in seen else "unseen_single"
    seen2 = []
    for c in combos:
        k = sum(g in seen for g in canon_genes[c])
        if split == "single":
            group[c] = "train" if k == 2 else "excluded"
        elif k == 2:
            seen2.append(c)
        else:
            group[c] = f"combo_seen{k}"
    if seen2:
        n_tr = int(len(seen2) * combo_seen2_train_fraction)
        train_pairs = (
            set(rng.choice(np.array(seen2, dtype=object), n_tr, replace=False).tolist())
            if n_tr
            else set()
        )
        for c in seen2:
            group[c] = "train" if c in train_pairs else "combo_seen2"

    train_perts = [c for c in sorted(group) if group[c] == "train" and c != control_value]
    n_val = int(round(len(train_perts) * float(val_fraction)))
    if n_val:
        protected = {
            g
            for c, s in group.items()
            if s in ("combo_seen1", "combo_seen2")
            for g in canon_genes[c]
        }
        candidates = [
            c for c in train_perts if len(canon_genes[c]) == 2 or canon_genes[c][0] not in protected
        ]
        n_val = min(n_val, len(candidates), len(train_perts) - 1)
        if n_val > 0:
            for c in rng.choice(np.array(candidates, dtype=object), n_val, replace=False).tolist():
                group[c] = "val"

    out = pd.Series(
        [group[c] for c in canon_of], index=pd.Index(raw, name="condition"), name="subgroup"
    )
    return out.sort_index()
