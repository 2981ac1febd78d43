"""Predictions and observations in the layout of Arc Institute's cell-eval, and its metrics.

cell-eval (``pip install cell-eval``, or ``celltx[cell-eval]``; Python >= 3.11) scores a
predicted AnnData against an observed one, per perturbation: DE-gene overlap, Pearson
of the deltas, MAE, discrimination scores and more. Its ``cell-eval run`` command (and its
``MetricsEvaluator``) needs, as read in cell-eval 0.8.2:

- the same ``var_names`` in the same order in both files
  (``cell_eval/_types/_anndata.py``, ``PerturbationAnndataPair.__post_init__``);
- an ``obs`` column with the perturbation of each cell (``--pert-col``, default
  ``"target_gene"``) holding the same set of perturbations in both files, the control
  label (``--control-pert``, default ``"non-targeting"``) included in both
  (``cell_eval/_cli/_const.py``; same file as above);
- log-normalised expression: integer matrices are taken for counts and normalised, and
  non-integer values must lie in ``[0, 15)`` (``cell_eval/utils.py``, ``guess_is_lognorm``).

:func:`write_cell_eval` writes such a pair; :func:`run_cell_eval` runs cell-eval's public
``MetricsEvaluator`` on it when cell-eval is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from celltx.bench._baselines import dense
from celltx.bench._inputs import lognorm_expression
from celltx.data import parse_conditions

from ._split import _conditions_of

# the task's logger, ``celltx.bench._perturbation``
logger = logging.getLogger(__package__)

#: cell-eval's default perturbation column (``cell-eval run --pert-col``)
CELL_EVAL_PERT_COL = "target_gene"
#: cell-eval's default control label (``cell-eval run --control-pert``)
CELL_EVAL_CONTROL = "non-targeting"
#: cell-eval metric profiles (``cell-eval run --profile``)
CELL_EVAL_PROFILES = ("full", "minimal", "vcc", "de", "anndata", "pds")


def cell_eval_installed() -> bool:
    """Whether the ``cell_eval`` package can be imported (without importing it).

    Returns
    -------
    bool
        ``True`` when ``pip install cell-eval`` has been run in this environment.

    Examples
    --------
    >>> from celltx.bench import cell_eval_installed
    >>> isinstance(cell_eval_installed(), bool)
    True
    """
    try:
        return importlib.util.find_spec("cell_eval") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def cell_eval_command(
    path_pred: str | os.PathLike,
    path_real: str | os.PathLike,
    outdir: str | os.PathLike | None = None,
    pert_col: str = CELL_EVAL_PERT_COL,
    control_label: str = CELL_EVAL_CONTROL,
    profile: str = "minimal",
) -> str:
    """The ``cell-eval run`` command line that scores a pair written by :func:`write_cell_eval`.

    Parameters
    ----------
    path_pred, path_real
        The predicted and observed ``.h5ad`` files.
    outdir
        Where cell-eval writes ``results.csv`` / ``agg_results.csv`` (default: its own,
        ``./cell-eval-outdir``).
    pert_col, control_label
        As given to :func:`write_cell_eval`.
    profile
        cell-eval's metric profile (``"full"``, ``"minimal"``, ``"vcc"``, ...).

    Returns
    -------
    str
        A shell command.

    Examples
    --------
    >>> from celltx.bench import cell_eval_command
    >>> cell_eval_command("pred.h5ad", "real.h5ad", "out")
    'cell-eval run -ap pred.h5ad -ar real.h5ad --pert-col target_gene --control-pert non-targeting --profile minimal -o out'
    """
    args = [
        "cell-eval",
        "run",
        "-ap",
        str(path_pred),
        "-ar",
        str(path_real),
        "--pert-col",
        pert_col,
        "--control-pert",
        control_label,
        "--profile",
        profile,
    ]
    if outdir is not None:
        args += ["-o", str(outdir)]
    return " ".join(shlex.quote(a) for a in args)


def _canonical(values, control_value: str) -> np.ndarray:
    """Canonical GEARS names of ``values`` (any count of genes)."""
    return parse_conditions(
        pd.Series(np.asarray(values, dtype=object)).astype(str),
        control_value=control_value,
        max_genes=10**6,
    )[1].to_numpy(dtype=object)


def _prediction_table(
    pred, conditions, var_names: pd.Index, pred_key: str, control_value: str, predict_kwargs
) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Labels (canonical), values and genes of the rows of a prediction."""
    if not isinstance(pred, AnnData | pd.DataFrame | np.ndarray) and hasattr(
        pred, "predict_perturbation"
    ):
        if conditions is None:
            raise ValueError("Pass conditions= (the conditions to predict) when pred is a model.")
        pred = pred.predict_perturbation(
            list(conditions), **{"return_type": "cells", **dict(predict_kwargs or {})}
        )
    if isinstance(pred, AnnData):
        labels = pred.obs[pred_key] if pred_key in pred.obs else pd.Series(pred.obs_names)
        return (
            _canonical(labels, control_value),
            dense(pred.X, np.float64),
            pd.Index(pred.var_names),
        )
    if isinstance(pred, pd.DataFrame):
        return (
            _canonical(pred.index, control_value),
            pred.to_numpy(dtype=np.float64),
            pd.Index(pred.columns.astype(str)),
        )
    if isinstance(pred, np.ndarray):
        arr = np.atleast_2d(np.asarray(pred, dtype=np.float64))
        if conditions is None or len(conditions) != arr.shape[0]:
            raise ValueError(
                "An array prediction needs conditions= naming its rows (one per row); got "
                f"{arr.shape[0]} rows and {None if conditions is None else len(conditions)} "
                "conditions."
            )
        if arr.shape[1] != len(var_names):
            raise ValueError(
                f"The prediction has {arr.shape[1]} columns; the observed data has "
                f"{len(var_names)} genes."
            )
        return _canonical(conditions, control_value), arr, var_names
    raise ValueError(
        "pred must be an AnnData (e.g. model.predict_perturbation(...)), a DataFrame "
        "(conditions × genes), an array with conditions=, or a model with "
        f"predict_perturbation; got {type(pred).__name__}."
    )


def write_cell_eval(
    pred,
    real: AnnData,
    path_pred: str | os.PathLike | None = None,
    path_real: str | os.PathLike | None = None,
    *,
    conditions: Sequence[str] | None = None,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    pred_key: str = "condition",
    pert_col: str = CELL_EVAL_PERT_COL,
    control_label: str = CELL_EVAL_CONTROL,
    layer: str | None = None,
    max_control_cells: int | None = None,
    seed: int = 0,
    predict_kwargs: Mapping | None = None,
) -> tuple[AnnData, AnnData]:
    """Write predicted and observed cells as the AnnData pair that ``cell-eval run`` scores.

    Both files get the genes of ``real`` in its order, log-normalised expression in
    ``.X`` (float32; ``real``'s raw counts are normalised to 10,000 per cell and
    ``log1p``-transformed) and one ``obs`` column, ``pert_col``, holding each cell's
    condition in canonical GEARS notation (``"A+ctrl"``, ``"A+B"``) or ``control_label``.

    - The **observed** file holds the cells of ``real`` of every exported condition and
      its control cells.
    - The **predicted** file holds the predicted cells of every exported condition and the
      same control cells (cell-eval measures predicted changes against them). A condition
      predicted by one row (a mean profile, e.g. ``return_type="mean"`` or a baseline) gets
      that row repeated once per observed cell of the condition, as cell-eval's own
      mean baseline does; several rows (``return_type="cells"``) are written as they are.
      Negative predicted values are clipped to 0 (cell-eval refuses negative expression).

    The conditions exported are ``conditions`` or, by default, every perturbed condition
    of ``pred``; predicted control rows are dropped (control cells come from ``real``).
    Conditions are matched after canonicalisation (``"ctrl+A"`` is ``"A+ctrl"``).

    Parameters
    ----------
    pred
        The predictions: an AnnData from ``ScGPT.predict_perturbation`` (conditions in
        ``obs[pred_key]``, else in ``obs_names``; mean or per-cell), a DataFrame
        (conditions × genes), an array with ``conditions`` naming its rows, or a model with
        ``predict_perturbation`` (then ``conditions`` is required and it is called with
        ``return_type="cells"`` and ``predict_kwargs``).
    real
        Observed cells, control cells included, conditions in ``obs[perturbation_key]``.
    path_pred, path_real
        Where to write the two ``.h5ad`` files (folders are created); ``None`` writes
        nothing.
    conditions
        Conditions to export (default: those of ``pred``).
    perturbation_key
        The obs column of ``real`` with the GEARS-style conditions.
    control_value
        The condition of control cells in ``real`` and ``pred``.
    pred_key
        The obs column of an AnnData ``pred`` with its conditions.
    pert_col
        The obs column written (cell-eval's ``--pert-col``).
    control_label
        The label of control cells written (cell-eval's ``--control-pert``).
    layer
        Layer of ``real`` to read instead of ``.X``.
    max_control_cells
        Keep at most this many control cells (a random subset), in both files.
    seed
        Seed of that subset.
    predict_kwargs
        More arguments of ``predict_perturbation`` when ``pred`` is a model (``n_cells``,
        ``seed``, ...).

    Returns
    -------
    tuple of anndata.AnnData
        ``(pred_adata, real_adata)`` as written.

    Raises
    ------
    ValueError
        If an exported condition has no observed cells in ``real`` or no prediction (the
        message names them: cell-eval needs the same conditions in both files, so none is
        skipped silently), ``real`` has no control cells, ``pred`` lacks genes of ``real``
        or has non-finite values, or a condition cannot be parsed.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.bench import NoChange, write_cell_eval
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=30, n_perturbations=4, n_combos=1)
    >>> conds = ["G003+ctrl", "G004+ctrl"]
    >>> means = pd.DataFrame(NoChange().fit(adata).predict(conds), index=conds,
    ...                      columns=adata.var_names)
    >>> p, r = write_cell_eval(means, adata)  # or with "pred.h5ad", "real.h5ad"
    >>> sorted(set(r.obs["target_gene"])) == sorted(set(p.obs["target_gene"]))
    True
    """
    col = _conditions_of(real, perturbation_key)
    names = _canonical(col, control_value)
    var_names = pd.Index(real.var_names.astype(str))
    is_control = names == control_value
    if not is_control.any():
        raise ValueError(
            f"real has no control cells (no condition {control_value!r} in "
            f"obs[{perturbation_key!r}]); cell-eval measures every change against them. "
            "Pass control_value= the condition of your control cells."
        )
    labels, values, genes = _prediction_table(
        pred, conditions, var_names, pred_key, control_value, predict_kwargs
    )
    missing_genes = [g for g in var_names if g not in set(genes)]
    if missing_genes:
        raise ValueError(
            f"The prediction lacks {len(missing_genes)} gene(s) of real (e.g. "
            f"{missing_genes[:5]}); cell-eval needs the same genes in both files. Subset real "
            "to the predicted genes (real[:, pred.var_names]) or predict every gene."
        )
    if genes.has_duplicates:
        raise ValueError("The prediction has duplicated gene names; make them unique.")
    values = values[:, genes.get_indexer(var_names)]
    if not np.isfinite(values).all():
        raise ValueError("The prediction has NaN or infinite values; cell-eval needs finite ones.")

    keep = labels != control_value
    labels, values = labels[keep], values[keep]
    wanted = (
        list(dict.fromkeys(_canonical(conditions, control_value)))
        if conditions is not None
        else list(dict.fromkeys(labels))
    )
    wanted = [c for c in wanted if c != control_value]
    if not wanted:
        raise ValueError("No perturbed condition to export (only control, or nothing, predicted).")
    no_pred = [c for c in wanted if c not in set(labels)]
    if no_pred:
        raise ValueError(
            f"{len(no_pred)} condition(s) have no prediction: {no_pred[:10]}. Predict them, or "
            "leave them out of conditions=."
        )
    observed = pd.Series(names).value_counts()
    no_cells = [c for c in wanted if c not in observed.index]
    if no_cells:
        raise ValueError(
            f"{len(no_cells)} predicted condition(s) have no observed cells in real: "
            f"{no_cells[:10]}. cell-eval compares each prediction with the observed cells of "
            "the same condition; pass conditions= the conditions real has, or add their cells."
        )
    if control_label in set(wanted):
        raise ValueError(f"A condition is named like the control label {control_label!r}.")

    x = lognorm_expression(real, layer)
    x = x.tocsr() if sparse.issparse(x) else np.asarray(x)
    ctrl_idx = np.flatnonzero(is_control)
    if max_control_cells is not None and len(ctrl_idx) > int(max_control_cells):
        if int(max_control_cells) < 1:
            raise ValueError(f"max_control_cells must be at least 1, got {max_control_cells}.")
        rng = np.random.default_rng(seed)
        ctrl_idx = np.sort(rng.choice(ctrl_idx, int(max_control_cells), replace=False))

    real_idx = np.concatenate([np.flatnonzero(names == c) for c in wanted] + [ctrl_idx])
    real_labels = np.concatenate(
        [np.full(int(observed[c]), c, dtype=object) for c in wanted]
        + [np.full(len(ctrl_idx), control_label, dtype=object)]
    )
    blocks, pred_labels = [], []
    for c in wanted:
        rows = values[labels == c]
        if rows.shape[0] == 1:
            rows = np.repeat(rows, int(observed[c]), axis=0)
        blocks.append(rows)
        pred_labels.append(np.full(rows.shape[0], c, dtype=object))
    pred_x = np.clip(np.vstack(blocks), 0.0, None).astype(np.float32)
    ctrl_x = x[ctrl_idx]
    if sparse.issparse(x):
        real_x = sparse.csr_matrix(x[real_idx], dtype=np.float32)
        pred_all = sparse.vstack(
            [sparse.csr_matrix(pred_x), sparse.csr_matrix(ctrl_x, dtype=np.float32)], format="csr"
        )
    else:
        real_x = np.asarray(x[real_idx], dtype=np.float32)
        pred_all = np.vstack([pred_x, np.asarray(ctrl_x, dtype=np.float32)])
    pred_labels.append(np.full(len(ctrl_idx), control_label, dtype=object))
    cell_names = pd.Index(real.obs_names.astype(str))

    def _adata(X, obs_labels, obs_names) -> AnnData:
        obs = pd.DataFrame(
            {pert_col: pd.Categorical(np.asarray(obs_labels, dtype=str))},
            index=pd.Index(obs_names, dtype=str),
        )
        out = AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names.copy()))
        out.obs_names_make_unique()
        return out

    real_out = _adata(real_x, real_labels, cell_names[real_idx])
    n_pred = pred_x.shape[0]
    pred_out = _adata(
        pred_all,
        np.concatenate(pred_labels),
        [f"pred-{i}" for i in range(n_pred)] + list(cell_names[ctrl_idx]),
    )
    for out, path in ((pred_out, path_pred), (real_out, path_real)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            out.write_h5ad(path)
    return pred_out, real_out


def run_cell_eval(
    pred: AnnData | str | os.PathLike,
    real: AnnData | str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    pert_col: str = CELL_EVAL_PERT_COL,
    control_label: str = CELL_EVAL_CONTROL,
    profile: str = "minimal",
    num_threads: int = 1,
    de_real: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Score a pair written by :func:`write_cell_eval` with cell-eval's ``MetricsEvaluator``.

    Runs cell-eval's public Python API (what ``cell-eval run`` runs): differential
    expression of each condition against control with pdex in both files, then the metrics
    of ``profile``. ``outdir`` receives cell-eval's ``results.csv``, ``agg_results.csv``
    and the DE tables (``real_de.csv``, ``pred_de.csv``).

    Parameters
    ----------
    pred, real
        The predicted and observed AnnData, or their ``.h5ad`` paths.
    outdir
        cell-eval's output folder.
    pert_col, control_label
        As given to :func:`write_cell_eval`.
    profile
        cell-eval's metric set: ``"minimal"`` (``pearson_delta``, ``mse``, ``mae``,
        ``discrimination_score_l1``, ``overlap_at_N``, ``precision_at_N``,
        ``de_nsig_counts``), ``"full"``, ``"vcc"``, ``"de"``, ``"anndata"`` or ``"pds"``.
    num_threads
        Threads of the DE computation.
    de_real
        A ``real_de.csv`` from an earlier run on the same observed file, to skip its DE.

    Returns
    -------
    pandas.DataFrame
        One row per perturbed condition (index ``condition``), one column per cell-eval
        metric.

    Raises
    ------
    ImportError
        If cell-eval is not installed (the message gives the command line to run instead).
    ValueError
        If ``profile`` is unknown.

    Examples
    --------
    >>> from celltx.bench import run_cell_eval
    >>> table = run_cell_eval("pred.h5ad", "real.h5ad", "cell_eval_out")  # doctest: +SKIP
    """
    if profile not in CELL_EVAL_PROFILES:
        raise ValueError(f"profile must be one of {CELL_EVAL_PROFILES}, got {profile!r}.")
    if not cell_eval_installed():
        paths = [p if isinstance(p, str | os.PathLike) else "<file>.h5ad" for p in (pred, real)]
        raise ImportError(
            "cell-eval is not installed: pip install cell-eval (Python >= 3.11), or "
            "pip install 'celltx[cell-eval]'. Without it, run on the exported files: "
            + cell_eval_command(paths[0], paths[1], outdir, pert_col, control_label, profile)
        )
    from cell_eval import MetricsEvaluator

    evaluator = MetricsEvaluator(
        adata_pred=str(pred) if isinstance(pred, str | os.PathLike) else pred,
        adata_real=str(real) if isinstance(real, str | os.PathLike) else real,
        de_real=None if de_real is None else str(de_real),
        control_pert=control_label,
        pert_col=pert_col,
        num_threads=int(num_threads),
        outdir=str(outdir),
        skip_de=profile == "pds",
    )
    results, _ = evaluator.compute(profile=profile, write_csv=True)
    table = pd.DataFrame(results.to_dict(as_series=False))
    table = table.rename(columns={"perturbation": "condition"}).set_index("condition")
    table.index = table.index.astype(str)
    return table
