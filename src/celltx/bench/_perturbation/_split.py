"""GEARS-style split of perturbation conditions into training and held-out subgroups."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.data import condition_name, parse_condition, parse_conditions

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


#: subgroups a saved split list may name (besides GEARS' ``"test"``)
_LIST_GROUPS = ("train", "val", *TEST_SUBGROUPS, "excluded")
_SPLIT_FORMAT = "celltx.perturbation_split/1"


def save_perturbation_split(
    split: pd.Series, path: str | os.PathLike, control_value: str = "ctrl", **meta
) -> Path:
    """Write a split (from :func:`perturbation_split`) as a JSON list of conditions.

    The file has one list of canonical condition names per subgroup (``"train"``,
    ``"val"``, ``"unseen_single"``, ``"combo_seen0"`` ... ``"excluded"``), GEARS' ``"test"``
    (every held-out condition) and ``meta`` (e.g. ``seed=0``) under ``"meta"``.
    :func:`read_perturbation_split` reads it back; the benchmark takes it as ``split=path``,
    so that every run scores the same conditions.

    Parameters
    ----------
    split
        Subgroup of each condition, indexed by condition.
    path
        The JSON file to write.
    control_value
        The condition of control cells.
    **meta
        JSON-serialisable notes stored with the lists.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If a subgroup is not one of the split's subgroups.

    Examples
    --------
    >>> import tempfile, os
    >>> from celltx.bench import perturbation_split, save_perturbation_split
    >>> s = perturbation_split(["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "A+B"], seed=0)
    >>> path = save_perturbation_split(s, os.path.join(tempfile.mkdtemp(), "split.json"))
    >>> path.suffix
    '.json'
    """
    bad = sorted(set(split.astype(str)) - set(_LIST_GROUPS))
    if bad:
        raise ValueError(f"Unknown subgroup(s) {bad}; a split uses {list(_LIST_GROUPS)}.")
    names = [
        condition_name(parse_condition(str(c), control_value=control_value), control_value)
        for c in split.index
    ]
    canon = pd.Series(split.astype(str).to_numpy(), index=names)
    canon = canon[~canon.index.duplicated()]
    out: dict = {"format": _SPLIT_FORMAT, "meta": meta}
    for g in _LIST_GROUPS:
        out[g] = sorted(canon.index[canon == g])
    out["test"] = sorted(canon.index[canon.isin(TEST_SUBGROUPS)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def read_perturbation_split(
    source: str | os.PathLike | Mapping[str, Sequence[str]],
    adata: AnnData | Sequence[str] | pd.Series,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
) -> pd.Series:
    """A saved split list applied to the conditions of ``adata``.

    ``source`` is a JSON file (or its dict) with lists of conditions: celltx's layout
    (:func:`save_perturbation_split`: ``"train"``, ``"val"``, ``"unseen_single"``,
    ``"combo_seen0/1/2"``, ``"excluded"``) or GEARS' (``"train"``, ``"val"``, ``"test"``;
    a held-out condition's subgroup is then ``"unseen_single"`` for one gene and
    ``"combo_seen<k>"`` for a pair, ``k`` of whose genes have a training single). When both
    are given the subgroup lists win. Spellings are compared canonically (``"ctrl+A"`` =
    ``"A+ctrl"``). Control cells are always ``"train"``; conditions of the data that no
    list names are ``"excluded"`` (not trained on, not scored).

    Parameters
    ----------
    source
        Path of the JSON file, or the mapping itself.
    adata
        AnnData with conditions in ``obs[perturbation_key]``, or the conditions.
    perturbation_key
        The obs column with the conditions.
    control_value
        The condition of control cells.

    Returns
    -------
    pandas.Series
        As :func:`perturbation_split`: subgroup per condition (as spelled in the data).

    Raises
    ------
    ValueError
        If the file is not a mapping of lists, names an unknown subgroup, names a condition
        twice in different lists, or names conditions that do not exist in the data (they
        are listed).

    Examples
    --------
    >>> from celltx.bench import read_perturbation_split
    >>> conds = ["ctrl", "A+ctrl", "B+ctrl", "A+B"]
    >>> s = read_perturbation_split({"train": ["A+ctrl"], "test": ["B+ctrl", "A+B"]}, conds)
    >>> s.to_dict()
    {'A+B': 'combo_seen1', 'A+ctrl': 'train', 'B+ctrl': 'unseen_single', 'ctrl': 'train'}
    """
    if isinstance(source, Mapping):
        lists = dict(source)
    else:
        try:
            lists = json.loads(Path(source).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{source} is not a JSON split list ({err}).") from err
    if not isinstance(lists, Mapping):
        raise ValueError("A split list is a mapping subgroup → list of conditions.")
    lists = {k: v for k, v in lists.items() if k not in ("format", "meta")}
    unknown = sorted(set(lists) - {*_LIST_GROUPS, "test"})
    if unknown:
        raise ValueError(f"Unknown list(s) {unknown} in the split; use {[*_LIST_GROUPS, 'test']}.")
    col = _conditions_of(adata, perturbation_key)
    raw = pd.unique(col)
    genes_of, canon_of = parse_conditions(pd.Series(raw), control_value=control_value, max_genes=2)
    present = set(canon_of)

    def canon(c: str) -> str:
        return condition_name(parse_condition(str(c), control_value=control_value), control_value)

    group: dict[str, str] = {}
    for g in (*_LIST_GROUPS, "test"):  # subgroup lists before GEARS' "test"
        items = lists.get(g, [])
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise ValueError(f"Split list {g!r} must be a list of conditions, got {type(items)}.")
        for c in items:
            name = canon(c)
            prev = group.get(name)
            if prev is not None and g != "test" and prev != g:
                raise ValueError(f"Condition {name!r} is in both {prev!r} and {g!r}.")
            if prev is None:
                group[name] = g
    absent = sorted(c for c in group if c not in present and c != control_value)
    if absent:
        raise ValueError(
            f"The split list names {len(absent)} condition(s) that are not in the data: "
            f"{absent[:10]}. Use the split list made for this data (or the same conditions)."
        )
    canon_genes = dict(zip(canon_of, genes_of, strict=True))
    seen = {
        canon_genes[c][0]
        for c, g in group.items()
        if g == "train" and len(canon_genes.get(c, ())) == 1
    }
    for c, g in list(group.items()):
        if g == "test":
            genes = canon_genes[c]
            group[c] = (
                "unseen_single" if len(genes) == 1 else f"combo_seen{sum(x in seen for x in genes)}"
            )
    group[control_value] = "train"
    out = pd.Series(
        [group.get(c, "excluded") for c in canon_of],
        index=pd.Index(raw, name="condition"),
        name="subgroup",
    )
    return out.sort_index()
