"""The perturbation benchmark: every method trained on a split and scored per condition."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from celltx.bench._inputs import lognorm_expression
from celltx.bench._runner import run_methods
from celltx.data import parse_conditions

from ._baselines import PERTURBATION_BASELINES, PerturbationBaseline, _group_means
from ._cell_eval import CELL_EVAL_PROFILES, cell_eval_installed
from ._cell_eval_export import _CellEvalExport
from ._celltx import celltx_perturbation_model
from ._de_genes import _de_indices
from ._metrics import PERTURBATION_METRICS, perturbation_metrics
from ._model_predictions import _model_cell_predictions, _model_predictions
from ._split import TEST_SUBGROUPS, _conditions_of, perturbation_split, read_perturbation_split

# the task's logger, ``celltx.bench._perturbation``
logger = logging.getLogger(__package__)


def perturbation(
    adata: AnnData,
    model=None,
    split: str | os.PathLike | Mapping = "simulation",
    seed: int = 0,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    layer: str | None = None,
    baselines: Sequence[str] = ("no_change", "train_mean", "additive", "linear"),
    predictors: Mapping[str, PerturbationBaseline] | None = None,
    n_de: int = 20,
    min_cells: int = 5,
    train_fraction: float = 0.75,
    model_name: str = "celltx",
    cell_eval_dir: str | os.PathLike | None = None,
    cell_eval: bool | None = None,
    cell_eval_profile: str = "minimal",
    ceiling: bool = False,
    disjoint_controls: bool = True,
) -> pd.DataFrame:
    """Benchmark perturbation-response prediction on a GEARS-style split.

    The conditions are split with :func:`perturbation_split` (same ``split``, ``seed`` and
    ``train_fraction``), or by a saved split list (``split`` a JSON path or mapping, see
    :func:`read_perturbation_split`) so that runs score the same conditions. With
    ``disjoint_controls`` (default) a random half of the control cells (by ``seed``) is
    kept from every method: it is only used for ``pearson_delta_disjoint``; the other
    half is the training controls, and the control mean of every other metric is theirs. Every method is trained on the ``"train"`` cells (control cells
    included) and predicts the mean expression of each held-out condition
    (``"unseen_single"``, ``"combo_seen0/1/2"``); predictions are scored against the mean
    of that condition's cells with :func:`perturbation_metrics`, one subgroup at a time
    (so ``spread_de`` compares a condition with the other conditions of its subgroup).
    Expression is compared
    in log-normalised space: when the matrix (``.X`` or ``layer``) holds raw counts
    (non-negative integers) it is normalised to 10,000 counts per cell and
    ``log1p``-transformed first; otherwise it is used as is. DE genes of a condition are
    GEARS' ``uns["top_non_dropout_de_20"]`` entry when the data has one (first ``n_de``),
    else the ``n_de`` genes with the largest absolute change of the mean from control.

    Values that are neither raw counts nor log-normalised (negative, NaN, or non-integers
    above 30) are refused before anything runs. A method that fails (raises, or predicts
    the wrong shape) does not stop the benchmark: its rows (one per held-out condition)
    get NaN metrics and the exception in ``error``, with a warning, and the other methods'
    rows are kept; each method is logged (logger ``celltx.bench._perturbation``, INFO) as
    it finishes. ``adata`` is not modified.

    With ``cell_eval_dir``, every method's predictions are also written in the layout of
    Arc Institute's cell-eval (:func:`write_cell_eval`): ``<cell_eval_dir>/real.h5ad``
    (the observed cells of the scored held-out conditions and all control cells) and
    ``<cell_eval_dir>/<method>/pred.h5ad`` (a baseline's mean profile repeated once per
    observed cell; the per-cell predictions of a model whose ``predict_perturbation``
    supports ``return_type="cells"``, as celltx's does). ``cell_eval_commands.sh`` in
    that folder holds the ``cell-eval run`` command of each method. When cell-eval is
    installed (and ``cell_eval`` is not ``False``) it is run on each pair, its output goes
    to ``<cell_eval_dir>/<method>/``, and its per-condition metrics are added as
    ``cell_eval_<metric>`` columns (e.g. ``cell_eval_pearson_delta``,
    ``cell_eval_overlap_at_N``, ``cell_eval_discrimination_score_l1``); a failure of
    cell-eval leaves them NaN, with a warning and the message in ``cell_eval_error``.
    Without cell-eval the files are written and a warning gives the commands to run.

    Besides the columns of :func:`perturbation_metrics`, ``pearson_delta_pert`` uses the
    mean of all perturbed training cells, and ``seconds`` is each method's wall time
    (training and prediction; celltx's gene-embedding pretraining is counted in each
    method that uses it, even when it is shared). With ``ceiling``, a ``"ceiling"`` row per
    condition scores a random half of the condition's real cells as the prediction of the
    other half (the agreement two replicates of the experiment would reach).

    Parameters
    ----------
    adata
        Cells with GEARS-style conditions in ``obs[perturbation_key]``.
    model
        ``None`` (baselines only), ``"celltx"`` (train celltx with
        :func:`celltx_perturbation_model`'s defaults), an object with
        ``predict_perturbation(conditions, return_type="mean")`` returning an AnnData with
        one row per condition (``obs_names`` the condition names, the genes of ``adata``,
        ``.X`` the predicted mean log-normalised expression) that was trained on the
        training conditions of ``perturbation_split(adata, split=split, seed=seed)``, or a
        callable ``train_fn(train_adata)`` returning such an object; it gets the training
        cells of ``adata`` as they are (raw counts stay raw).
    split
        ``"simulation"`` or ``"single"`` (see :func:`perturbation_split`), or a saved split
        list: a JSON path or mapping (see :func:`read_perturbation_split`; ``seed`` then
        only draws the control halves and the ceiling's halves).
    seed
        Seed of the split.
    perturbation_key
        The obs column with the conditions.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.
    baselines
        Names from ``PERTURBATION_BASELINES`` to run.
    predictors
        More methods, name → object with ``fit(train_adata)`` and ``predict(conditions)``
        like the baselines; they get the log-normalised training cells.
    n_de
        Number of DE genes per condition.
    min_cells
        Held-out conditions with fewer cells are not scored (a warning names them).
    train_fraction
        Fraction of the perturbed genes seen in training.
    model_name
        The ``method`` label of ``model``.
    cell_eval_dir
        Folder for the cell-eval files (see above); ``None`` writes none.
    cell_eval
        Run cell-eval on the files: ``None`` when it is installed, ``True`` always (an
        ``ImportError`` before anything runs when it is not installed), ``False`` never
        (export only).
    cell_eval_profile
        cell-eval's metric set (``"minimal"``, ``"full"``, ``"vcc"``, ...; see
        :func:`run_cell_eval`).
    ceiling
        Add the ``"ceiling"`` rows (each scored condition needs at least 4 cells).
    disjoint_controls
        Keep half of the control cells from every method for ``pearson_delta_disjoint``
        (``False``: train on all controls; that column is then NaN).

    Returns
    -------
    pandas.DataFrame
        One row per method × held-out condition: ``method``, ``condition`` (canonical GEARS
        name), ``subgroup``, ``n_cells``, ``de_source``, the metrics of
        :func:`perturbation_metrics`, ``seconds`` and ``error`` (``None``, or the exception of a method
        that failed: its metrics are then NaN); with cell-eval run, its metrics as
        ``cell_eval_*`` columns and ``cell_eval_error`` before ``error``.

    Raises
    ------
    ValueError
        Before anything is trained: if the condition column is missing or malformed, there
        are fewer than two control cells, no held-out condition has ``min_cells`` cells, a
        baseline name is unknown, the model neither has ``predict_perturbation`` nor is
        callable, a predictor lacks ``fit`` / ``predict``, or the expression is neither
        raw counts nor log-normalised, or ``cell_eval`` is ``True`` without
        ``cell_eval_dir`` or ``cell_eval_profile`` is unknown, a split list names
        conditions that are not in the data, ``ceiling`` is asked for with fewer than 4
        cells in a scored condition, or ``disjoint_controls`` with fewer than 4 control
        cells.
    ImportError
        If ``cell_eval`` is ``True`` and cell-eval is not installed.

    Examples
    --------
    >>> from celltx.bench import perturbation, summarize_perturbation
    >>> from celltx.datasets import simulate_perturbseq
    >>> df = perturbation(simulate_perturbseq(seed=0), baselines=("no_change", "additive"))
    >>> sorted(df["method"].unique())
    ['additive', 'no_change']
    >>> table = summarize_perturbation(df)
    """
    baselines, model = _check_methods(baselines, model, predictors, perturbation_key, control_value)
    run_ce = _cell_eval_run(cell_eval, cell_eval_dir, cell_eval_profile)
    col = _conditions_of(adata, perturbation_key)
    genes, names = parse_conditions(col, control_value=control_value, max_genes=2)
    is_control = (names == control_value).to_numpy()
    if is_control.sum() < 2:
        raise ValueError(
            f"Found {int(is_control.sum())} control cell(s) (condition {control_value!r}); the "
            "benchmark needs at least two. Pass control_value= the condition of your controls."
        )
    if disjoint_controls and is_control.sum() < 4:
        raise ValueError(
            f"disjoint_controls needs at least 4 control cells (two halves of two), found "
            f"{int(is_control.sum())}; pass disjoint_controls=False."
        )
    if isinstance(split, str) and split in ("simulation", "single"):
        subgroups = perturbation_split(
            col,
            perturbation_key=perturbation_key,
            control_value=control_value,
            split=split,
            seed=seed,
            train_fraction=train_fraction,
        )
    else:
        subgroups = read_perturbation_split(
            split, col, perturbation_key=perturbation_key, control_value=control_value
        )
    cell_group = col.map(subgroups).to_numpy()
    rng = np.random.default_rng(seed)
    held_controls = np.zeros(len(col), dtype=bool)
    if disjoint_controls:
        ctrl_idx = np.flatnonzero(is_control)
        held_controls[rng.choice(ctrl_idx, len(ctrl_idx) // 2, replace=False)] = True
    train_mask = (cell_group == "train") & ~held_controls

    x = lognorm_expression(adata, layer)
    x = x.tocsr() if sparse.issparse(x) else np.asarray(x)
    codes, uniques = pd.factorize(names)
    means, counts = _group_means(x, codes, len(uniques))
    group_of = pd.Series(cell_group).groupby(codes).first()
    test = [i for i in range(len(uniques)) if group_of.get(i) in TEST_SUBGROUPS]
    small = [uniques[i] for i in test if counts[i] < min_cells]
    if small:
        logger.warning(
            "Not scoring %d held-out condition(s) with fewer than %d cells: %s",
            len(small),
            min_cells,
            small[:10],
        )
    test = [i for i in test if counts[i] >= min_cells]
    if not test:
        raise ValueError(
            f"No held-out condition has at least min_cells={min_cells} cells; lower min_cells or "
            "use data with more perturbations."
        )
    test_names = [str(uniques[i]) for i in test]
    truth = means[test]
    control_mean = _group_means(x, np.where(is_control & ~held_controls, 0, -1), 1)[0][0]
    control_disjoint = (
        _group_means(x, np.where(held_controls, 0, -1), 1)[0][0] if disjoint_controls else None
    )
    perturbed_train = train_mask & ~is_control
    perturbed_mean = (
        _group_means(x, np.where(perturbed_train, 0, -1), 1)[0][0]
        if perturbed_train.any()
        else None
    )
    if ceiling:
        few = [test_names[k] for k, i in enumerate(test) if counts[i] < 4]
        if few:
            raise ValueError(
                f"ceiling=True needs at least 4 cells in each scored condition (two halves of "
                f"two); {few[:10]} have fewer. Raise min_cells to 4 or pass ceiling=False."
            )
    raw_of_group: dict[str, list[str]] = {}
    for raw, canon in (
        pd.DataFrame({"r": col.to_numpy(), "c": names.to_numpy()})
        .drop_duplicates()
        .itertuples(index=False)
    ):
        raw_of_group.setdefault(canon, []).append(raw)
    de, de_source = _de_indices(
        adata, perturbation_key, test_names, raw_of_group, truth - control_mean, n_de
    )

    train = AnnData(
        X=x[train_mask],
        obs=pd.DataFrame(
            {perturbation_key: col.to_numpy()[train_mask]}, index=adata.obs_names[train_mask]
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    methods: dict[str, Callable[[], np.ndarray]] = {}
    cell_preds: dict[str, AnnData] = {}
    fitted: dict[str, object] = {}  # each method's trained object, for its pretraining time
    for b in baselines:
        cls = PERTURBATION_BASELINES[b]

        def _run_baseline(cls=cls, b=b):
            obj = cls(perturbation_key=perturbation_key, control_value=control_value).fit(train)
            fitted[b] = obj
            return obj.predict(test_names)

        methods[b] = _run_baseline
    for name, obj in (predictors or {}).items():

        def _run_predictor(obj=obj, name=name):
            fitted[name] = obj.fit(train)
            return np.asarray(fitted[name].predict(test_names), dtype=np.float64)

        methods[name] = _run_predictor
    if model is not None:

        def _run_model():
            obj = model
            if not hasattr(obj, "predict_perturbation"):
                obj = obj(adata[train_mask].copy())
                if not hasattr(obj, "predict_perturbation"):
                    raise ValueError(
                        "The model's train_fn returned an object without predict_perturbation."
                    )
                fitted[model_name] = obj
            var_names = pd.Index(adata.var_names)
            if cell_eval_dir is not None:  # per-cell predictions for cell-eval, if it can
                try:
                    means, cells = _model_cell_predictions(
                        obj, test_names, var_names, control_value
                    )
                except Exception as err:  # noqa: BLE001 - e.g. no return_type="cells"
                    logger.info(
                        "%s: no per-cell predictions (%s); cell-eval gets its means.",
                        model_name,
                        err,
                    )
                else:
                    cell_preds[model_name] = cells
                    return means
            return _model_predictions(obj, test_names, var_names, control_value)

        methods[model_name] = _run_model

    sub = np.array([group_of[i] for i in test], dtype=object)
    mean_preds: dict[str, np.ndarray] = {}

    def _score(
        name: str, run: Callable[[], np.ndarray], observed: np.ndarray = truth
    ) -> pd.DataFrame:
        start = time.perf_counter()
        pred = np.asarray(run(), dtype=np.float64)
        seconds = time.perf_counter() - start
        # celltx's pretraining is shared between the methods that use it: a method that
        # reused it (it took less time than the pretraining) is charged for it as well
        pre = float(getattr(fitted.get(name), "pretrain_seconds_", 0.0) or 0.0)
        if seconds < pre:
            seconds += pre
        if pred.shape != truth.shape:
            raise ValueError(
                f"{name} predicted shape {pred.shape}; expected {truth.shape} (conditions × genes)."
            )
        mean_preds[name] = pred
        parts = []
        for sg in TEST_SUBGROUPS:  # spreads are measured within a subgroup
            rows = np.flatnonzero(sub == sg)
            if not rows.size:
                continue
            m = perturbation_metrics(
                pred[rows],
                observed[rows],
                control_mean,
                de_genes=[de[r] for r in rows],
                conditions=[test_names[r] for r in rows],
                perturbed_mean=perturbed_mean,
                control_disjoint=control_disjoint,
            ).reset_index()
            m.insert(0, "method", name)
            m.insert(2, "subgroup", sg)
            m.insert(3, "n_cells", counts[np.asarray(test)[rows]].astype(int))
            m.insert(4, "de_source", [de_source[r] for r in rows])
            m["seconds"] = seconds
            parts.append(m)
        return pd.concat(parts, ignore_index=True)

    order = [
        "method",
        "condition",
        "subgroup",
        "n_cells",
        "de_source",
        *PERTURBATION_METRICS,
        "n_de",
        "seconds",
    ]
    in_subgroup_order = np.argsort([TEST_SUBGROUPS.index(g) for g in sub], kind="stable")
    exporter = (
        _CellEvalExport(
            Path(cell_eval_dir),
            x,
            names.to_numpy(dtype=object),
            test_names,
            control_value,
            pd.Index(adata.var_names),
            pd.Index(adata.obs_names),
            run_ce,
            cell_eval_profile,
        )
        if cell_eval_dir is not None
        else None
    )
    frames = []
    if ceiling:  # half of each condition's cells predicting the other half
        halves = []
        for i in test:
            cells = rng.permutation(np.flatnonzero(codes == i))
            half = len(cells) // 2
            halves.append((cells[:half], cells[half:]))
        first = np.vstack([np.asarray(x[a].mean(axis=0)).ravel() for a, _ in halves])
        second = np.vstack([np.asarray(x[b].mean(axis=0)).ravel() for _, b in halves])
        table = _score("ceiling", lambda: first, second)
        frames.append(table[order].assign(error=None))
    for r in run_methods(list(methods), lambda name, _seed: _score(name, methods[name])):
        name, table, err = r.method, r.value, r.error  # _score times the method itself
        if exporter is not None and err is None:
            table = exporter(name, mean_preds.pop(name), cell_preds.pop(name, None), table)
        if err is None:
            logger.info(
                "%s: mean pearson_delta_de %.3f over %d conditions",
                name,
                float(table["pearson_delta_de"].mean()),
                len(table),
            )
        else:  # one row per held-out condition (as _score orders them), NaN metrics
            table = pd.DataFrame(
                {
                    "method": name,
                    "condition": test_names,
                    "subgroup": sub,
                    "n_cells": counts[np.asarray(test)].astype(int),
                    "de_source": de_source,
                    **dict.fromkeys(PERTURBATION_METRICS, np.nan),
                    "n_de": [len(d) for d in de],
                    "seconds": np.nan,
                }
            ).iloc[in_subgroup_order]
        extra = [c for c in table.columns if c.startswith("cell_eval_")]
        frames.append(table[order + extra].assign(error=err))
    out = pd.concat(frames, ignore_index=True)
    if exporter is not None:
        exporter.finish()
        if run_ce:  # cell-eval columns before ``error``, present for every method
            ce_cols = list(dict.fromkeys(c for c in out.columns if c.startswith("cell_eval_")))
            ce_cols = [c for c in ce_cols if c != "cell_eval_error"]
            out = out.reindex(columns=[*order, *ce_cols, "cell_eval_error", "error"])
    return out


def _check_methods(baselines, model, predictors, perturbation_key: str, control_value: str):
    """The baselines as a sequence and the model (``"celltx"`` built); refuse bad ones."""
    if isinstance(baselines, str):
        baselines = (baselines,)
    unknown = [b for b in baselines if b not in PERTURBATION_BASELINES]
    if unknown:
        raise ValueError(
            f"Unknown baseline(s) {unknown}; choose from {list(PERTURBATION_BASELINES)}."
        )
    if isinstance(model, str):
        if model != "celltx":
            raise ValueError(f"model={model!r}; use 'celltx', a trained model or a train_fn.")
        model = celltx_perturbation_model(
            perturbation_key=perturbation_key, control_value=control_value
        )
    if model is not None and not hasattr(model, "predict_perturbation") and not callable(model):
        raise ValueError(
            "model must have predict_perturbation(conditions, return_type='mean') or be a "
            "callable train_fn(train_adata) that returns such an object."
        )
    for name, obj in (predictors or {}).items():
        if not (hasattr(obj, "fit") and hasattr(obj, "predict")):
            raise ValueError(
                f"Predictor {name!r} needs fit(train_adata) and predict(conditions) methods."
            )
    return baselines, model


def _cell_eval_run(cell_eval: bool | None, cell_eval_dir, cell_eval_profile: str) -> bool:
    """Whether cell-eval scores the exported predictions; refuse impossible settings."""
    if cell_eval and cell_eval_dir is None:
        raise ValueError("cell_eval=True needs cell_eval_dir= (where the files go).")
    if cell_eval_profile not in CELL_EVAL_PROFILES:
        raise ValueError(
            f"cell_eval_profile must be one of {CELL_EVAL_PROFILES}, got {cell_eval_profile!r}."
        )
    run_ce = False
    if cell_eval_dir is not None:
        if cell_eval and not cell_eval_installed():
            raise ImportError(
                "cell_eval=True but cell-eval is not installed: pip install cell-eval (Python "
                ">= 3.11) or pip install 'celltx[cell-eval]'; or pass cell_eval=None/False to "
                "only write the files."
            )
        run_ce = cell_eval_installed() if cell_eval is None else bool(cell_eval)
    return run_ce
