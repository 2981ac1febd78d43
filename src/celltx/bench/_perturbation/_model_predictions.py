"""A perturbation model's predictions of the held-out conditions, as arrays (means, cells)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from celltx.data import condition_name, parse_condition

from ._baselines import _group_means


def _model_predictions(
    obj, conditions: list[str], var_names: pd.Index, control_value: str
) -> np.ndarray:
    """A model's mean prediction of ``conditions`` as an array, conditions × ``var_names``."""
    res = obj.predict_perturbation(conditions, return_type="mean")
    if isinstance(res, AnnData):
        names = [
            condition_name(parse_condition(str(c), control_value=control_value), control_value)
            for c in res.obs_names
        ]
        missing = [g for g in var_names if g not in set(res.var_names)]
        if missing:
            raise ValueError(
                f"The model's prediction lacks {len(missing)} gene(s) of the panel (e.g. {missing[:5]}); "
                "predict_perturbation must return every gene of the data."
            )
        frame = pd.DataFrame(
            res[:, var_names].X.toarray()
            if sparse.issparse(res.X)
            else np.asarray(res[:, var_names].X),
            index=names,
            columns=var_names,
        )
        absent = [c for c in conditions if c not in frame.index]
        if absent:
            raise ValueError(
                f"The model's prediction has no row for {absent[:5]}; predict_perturbation must "
                "return one row per requested condition (obs_names = condition names)."
            )
        frame = frame[~frame.index.duplicated()]
        return frame.loc[conditions].to_numpy(dtype=np.float64)
    arr = np.asarray(res, dtype=np.float64)
    if arr.shape != (len(conditions), len(var_names)):
        raise ValueError(
            f"predict_perturbation returned shape {arr.shape}; expected an AnnData or an array "
            f"of shape {(len(conditions), len(var_names))} (conditions × genes)."
        )
    return arr


def _model_cell_predictions(
    obj, conditions: list[str], var_names: pd.Index, control_value: str
) -> tuple[np.ndarray, AnnData]:
    """A model's per-cell predictions of ``conditions`` and their means per condition.

    ``predict_perturbation(conditions, return_type="cells")`` must return an AnnData with
    the condition of each row in ``obs["condition"]``; the means are what
    ``return_type="mean"`` returns (the same sampled control cells).
    """
    res = obj.predict_perturbation(conditions, return_type="cells")
    if not isinstance(res, AnnData) or "condition" not in res.obs:
        raise TypeError("predict_perturbation(return_type='cells') gave no per-cell AnnData.")
    missing = [g for g in var_names if g not in set(res.var_names)]
    if missing:
        raise ValueError(
            f"The model's prediction lacks {len(missing)} gene(s) of the panel (e.g. {missing[:5]}); "
            "predict_perturbation must return every gene of the data."
        )
    res = res[:, var_names].copy()
    names = pd.Series(
        [
            condition_name(parse_condition(str(c), control_value=control_value), control_value)
            for c in res.obs["condition"]
        ]
    )
    res.obs["condition"] = names.to_numpy()
    lookup = {c: i for i, c in enumerate(conditions)}
    absent = [c for c in conditions if c not in set(names)]
    if absent:
        raise ValueError(
            f"The model's prediction has no row for {absent[:5]}; predict_perturbation must "
            "predict every requested condition."
        )
    codes = names.map(lookup).fillna(-1).to_numpy(dtype=np.int64)
    means, _ = _group_means(res.X, codes, len(conditions))
    return np.asarray(means, dtype=np.float64), res
