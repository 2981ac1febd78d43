"""Genetic-perturbation response prediction: GEARS-style splits, metrics and baselines.

All expression here is log-normalised (counts scaled to 10,000 per cell, then ``log1p``),
and predictions are per-condition mean expression profiles in that space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from celltx.data._perturbation import condition_name, parse_condition, parse_conditions

from ._inputs import expression_kind, get_expression, guarded, is_counts, log1p_cp10k

logger = logging.getLogger(__name__)

TEST_SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
PERTURBATION_METRICS = (
    "mse",
    "mse_de",
    "pearson_delta",
    "pearson_delta_de",
    "direction_de",
    "spread_de",
    "spread_de_true",
)
_SPLITS = ("simulation", "single")
_GEARS_DE_KEY = "top_non_dropout_de_20"


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _expression(adata: AnnData, layer: str | None, normalize: bool | None):
    """Log-normalised expression of ``.X`` or ``layer``: counts become log1p-CP10k (a copy);
    log-normalised values are used as they are."""
    x = get_expression(adata, layer)
    if normalize is None:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        normalize = expression_kind(x, where) == "counts"
    return log1p_cp10k(x) if normalize else x


def _group_means(x, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group column means of ``x`` (cells with code ``-1`` are ignored)."""
    keep = codes >= 0
    rows = codes[keep]
    cols = np.flatnonzero(keep)
    ind = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_groups, x.shape[0]))
    n = np.asarray(ind.sum(axis=1)).ravel()
    sums = ind @ x
    sums = sums.toarray() if sparse.issparse(sums) else np.asarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n[:, None], n


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` (prediction) and ``b`` (truth); 0 when the prediction
    is constant, NaN when the truth is."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
    if nb <= 1e-12 * np.sqrt(b.size):
        return float("nan")
    if na <= 1e-6 * nb:  # constant up to rounding
        return 0.0
    return float(np.clip((a @ b) / (na * nb), -1.0, 1.0))


def _conditions_of(data, perturbation_key: str) -> pd.Series:
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


# ----------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------
def perturbation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    control: np.ndarray,
    de_genes: Sequence[np.ndarray] | None = None,
    n_de: int = 20,
    conditions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-condition accuracy of predicted mean expression profiles.

    All inputs are mean log-normalised expression. With ``d = x - control`` the change from
    control, the metrics of a condition are:

    - ``mse``, ``mse_de``: mean squared error of the profile on all genes / the DE genes.
    - ``pearson_delta``, ``pearson_delta_de``: Pearson correlation of predicted and true
      ``d`` on all genes / the DE genes. A constant prediction (e.g. no change) scores 0.
    - ``direction_de``: fraction of DE genes whose predicted change has the sign of the
      true change (a zero predicted change counts as wrong unless the truth is zero).
    - ``spread_de`` / ``spread_de_true``: how far the condition's predicted (true) change
      lies from the average predicted (true) change over all conditions given, as the root
      mean square over the condition's DE genes of ``d_c - mean_c' d_c'``. A predictor that
      gives every condition the same response has ``spread_de = 0`` while the truth's
      spread is positive; the mean of ``spread_de`` over conditions, divided by that of
      ``spread_de_true``, measures how much of the real diversity of responses is kept.
      NaN when fewer than two conditions are given.

    Parameters
    ----------
    pred
        Predicted mean expression, conditions × genes.
    truth
        True (observed) mean expression, conditions × genes.
    control
        Mean expression of control cells, one value per gene.
    de_genes
        Per condition, the column indices of its DE genes. Default: the ``n_de`` genes with
        the largest ``|truth - control|``.
    n_de
        Number of DE genes when ``de_genes`` is not given.
    conditions
        Row labels of the result.

    Returns
    -------
    pandas.DataFrame
        One row per condition, columns as listed above plus ``n_de``.

    Raises
    ------
    ValueError
        If the shapes disagree, a DE index is out of range, or a value is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench._perturbation import perturbation_metrics
    >>> rng = np.random.default_rng(0)
    >>> control = rng.normal(size=50)
    >>> truth = control + rng.normal(size=(3, 50))
    >>> m = perturbation_metrics(truth, truth, control, n_de=10)
    >>> float(m[["pearson_delta_de", "direction_de"]].to_numpy().min())
    1.0
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    control = np.asarray(control, dtype=np.float64).ravel()
    if pred.shape != truth.shape or truth.shape[1] != control.size:
        raise ValueError(
            f"Shapes disagree: pred {pred.shape}, truth {truth.shape}, control {control.shape}; "
            "pred and truth must be conditions × genes and control one value per gene."
        )
    for name, arr in (("pred", pred), ("truth", truth), ("control", control)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has NaN or infinite values; predictions must be finite.")
    n_cond, n_genes = truth.shape
    dp = pred - control
    dt = truth - control
    if de_genes is None:
        k = min(int(n_de), n_genes)
        if k < 1:
            raise ValueError(f"n_de must be at least 1, got {n_de}.")
        de_genes = list(np.argsort(-np.abs(dt), axis=1, kind="stable")[:, :k])
    if len(de_genes) != n_cond:
        raise ValueError(f"de_genes has {len(de_genes)} entries for {n_cond} conditions.")
    de_genes = [np.asarray(d, dtype=np.int64).ravel() for d in de_genes]
    for d in de_genes:
        if d.size == 0 or d.min() < 0 or d.max() >= n_genes:
            raise ValueError("Every condition needs at least one DE gene index in [0, n_genes).")
    mean_dp = dp.mean(axis=0)
    mean_dt = dt.mean(axis=0)
    rows = []
    for i in range(n_cond):
        de = de_genes[i]
        rows.append(
            {
                "mse": float(np.mean((pred[i] - truth[i]) ** 2)),
                "mse_de": float(np.mean((pred[i, de] - truth[i, de]) ** 2)),
                "pearson_delta": _pearson(dp[i], dt[i]),
                "pearson_delta_de": _pearson(dp[i, de], dt[i, de]),
                "direction_de": float(np.mean(np.sign(dp[i, de]) == np.sign(dt[i, de]))),
                "spread_de": float(np.sqrt(np.mean((dp[i, de] - mean_dp[de]) ** 2)))
                if n_cond > 1
                else np.nan,
                "spread_de_true": float(np.sqrt(np.mean((dt[i, de] - mean_dt[de]) ** 2)))
                if n_cond > 1
                else np.nan,
                "n_de": int(de.size),
            }
        )
    index = pd.Index(list(conditions), name="condition") if conditions is not None else None
    return pd.DataFrame(rows, index=index)


# ----------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------
class PerturbationBaseline:
    """Base class of the perturbation baselines: group means of a training AnnData.

    ``fit`` reads the log-normalised expression (``.X`` or ``layer``; raw counts are
    normalised to 10,000 per cell and ``log1p``-transformed first), the mean of the control
    cells and of every training condition; ``predict`` returns one mean profile per
    requested condition, in the order of the training genes.

    Parameters
    ----------
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import NoChange
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> NoChange().fit(adata).predict(["ctrl", adata.obs["condition"].iloc[-1]]).shape
    (2, 50)
    """

    name = "baseline"

    def __init__(
        self,
        perturbation_key: str = "condition",
        control_value: str = "ctrl",
        layer: str | None = None,
    ):
        self.perturbation_key = perturbation_key
        self.control_value = control_value
        self.layer = layer

    def fit(self, adata: AnnData) -> PerturbationBaseline:
        """Learn from the training cells.

        Parameters
        ----------
        adata
            Training cells (control cells included) with conditions in
            ``obs[perturbation_key]``.

        Returns
        -------
        PerturbationBaseline
            ``self``.

        Raises
        ------
        ValueError
            If there are no control cells or a condition cannot be parsed.

        Examples
        --------
        >>> from celltx.bench import TrainMean
        >>> from celltx.datasets import simulate_perturbseq
        >>> model = TrainMean().fit(simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2))
        >>> model.control_mean_.shape
        (50,)
        """
        col = _conditions_of(adata, self.perturbation_key)
        x = _expression(adata, self.layer, None)
        genes, names = parse_conditions(col, control_value=self.control_value, max_genes=10**6)
        codes, uniques = pd.factorize(names)
        means, counts = _group_means(x, codes, len(uniques))
        lookup = dict(zip(uniques, range(len(uniques)), strict=True))
        if self.control_value not in lookup:
            raise ValueError(
                f"No control cells in the training data (no condition {self.control_value!r}); "
                "the baselines predict changes from control, so include the control cells."
            )
        self.var_names_ = pd.Index(adata.var_names)
        self.control_mean_ = means[lookup[self.control_value]]
        first = pd.Series(genes.to_numpy(), index=names.to_numpy())
        first = first[~first.index.duplicated()]
        self.conditions_ = pd.DataFrame(
            {"genes": [first[u] for u in uniques], "n_cells": counts.astype(int)},
            index=pd.Index(uniques),
        )
        self.means_ = means
        self._fit(x, codes)
        return self

    def _fit(self, x, codes) -> None:  # pragma: no cover - overridden
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "control_mean_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call .fit(train_adata) first.")

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Mean log-normalised expression of each condition.

        Parameters
        ----------
        conditions
            GEARS-style conditions (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``).

        Returns
        -------
        numpy.ndarray
            Conditions × genes (the genes of the training data, in order).

        Raises
        ------
        ValueError
            If the model is not fitted or a condition cannot be parsed.

        Examples
        --------
        >>> from celltx.bench import Additive
        >>> from celltx.datasets import simulate_perturbseq
        >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
        >>> Additive().fit(adata).predict(["ctrl"]).shape
        (1, 50)
        """
        self._check_fitted()
        if isinstance(conditions, str):
            conditions = [conditions]
        parsed = [parse_condition(c, control_value=self.control_value) for c in conditions]
        if not parsed:
            return np.zeros((0, len(self.var_names_)))
        return np.vstack([self._predict_one(g) for g in parsed])

    def _predict_one(self, genes: tuple[str, ...]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class NoChange(PerturbationBaseline):
    """Predict the control mean for every condition (no perturbation effect).

    Parameters
    ----------
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import NoChange
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> m = NoChange().fit(adata)
    >>> bool((m.predict(["G001+ctrl"])[0] == m.control_mean_).all())
    True
    """

    name = "no_change"

    def _predict_one(self, genes):
        return self.control_mean_.copy()


class TrainMean(PerturbationBaseline):
    """Predict the mean of all perturbed training cells for every perturbed condition.

    Control (``"ctrl"``) is predicted as the control mean. The same response for every
    perturbation: a reference for "collapsed" predictors.

    Parameters
    ----------
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import TrainMean
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> p = TrainMean().fit(adata).predict(["G001+ctrl", "G002+G003"])
    >>> bool((p[0] == p[1]).all())
    True
    """

    name = "train_mean"

    def _fit(self, x, codes):
        n = self.conditions_["n_cells"].to_numpy().astype(float)
        perturbed = np.array([len(g) > 0 for g in self.conditions_["genes"]])
        if perturbed.any():
            w = n * perturbed
            self.perturbed_mean_ = (self.means_ * w[:, None]).sum(axis=0) / w.sum()
        else:
            logger.warning("TrainMean: no perturbed training cells; predicting the control mean.")
            self.perturbed_mean_ = self.control_mean_.copy()

    def _predict_one(self, genes):
        return (self.perturbed_mean_ if genes else self.control_mean_).copy()


class Additive(PerturbationBaseline):
    """Control mean plus the sum of the single-gene changes seen in training.

    A gene never seen as a single-gene perturbation in training contributes nothing, so an
    unseen single is predicted as control and a pair with one seen gene as that gene's
    single effect.

    Parameters
    ----------
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import Additive
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> m = Additive().fit(adata)
    >>> a, b = sorted(m.single_deltas_)[:2]
    >>> pair = m.predict([f"{a}+{b}"])[0]
    >>> bool(abs(pair - m.control_mean_ - m.single_deltas_[a] - m.single_deltas_[b]).max() < 1e-9)
    True
    """

    name = "additive"

    def _fit(self, x, codes):
        self.single_deltas_ = {
            g[0]: self.means_[i] - self.control_mean_
            for i, g in enumerate(self.conditions_["genes"])
            if len(g) == 1
        }

    def _predict_one(self, genes):
        out = self.control_mean_.copy()
        for g in genes:
            d = self.single_deltas_.get(g)
            if d is not None:
                out += d
        return out


def _gene_pca(
    x,
    n_components: int,
    max_cells: int,
    seed: int,
    group_means: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """Gene loadings (genes × k, orthonormal columns) of the top principal components of a
    cells × genes matrix, from the gene covariance (accumulated over blocks of cells, so a
    sparse matrix is densified one block at a time). With ``group_means`` and ``codes``,
    each cell is first centred on the mean of its group."""
    n_cells, n_genes = x.shape
    if n_cells > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))
        x = x[idx]
        codes = codes[idx] if codes is not None else None
        n_cells = max_cells
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
    gram = np.zeros((n_genes, n_genes))
    total = np.zeros(n_genes)
    step = max(1, 2_000_000 // max(n_genes, 1))
    for start in range(0, n_cells, step):
        block = x[start : start + step]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        block = block.astype(np.float64, copy=False)
        if group_means is not None:
            block = block - group_means[codes[start : start + step]]
        gram += block.T @ block
        total += block.sum(axis=0)
    mu = total / n_cells
    cov = gram / n_cells - np.outer(mu, mu)
    k = max(1, min(n_components, n_genes - 1, n_cells - 1))
    from scipy.linalg import eigh

    vals, vecs = eigh(cov, subset_by_index=(n_genes - k, n_genes - 1))
    vecs = vecs[:, ::-1]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    return vecs * np.where(signs == 0, 1.0, signs)


class LinearGeneEmbedding(PerturbationBaseline):
    """Linear model on gene embeddings (after Ahlmann-Eltze, Huber & Anders 2025).

    Gene embeddings ``G`` (genes × ``n_components``) are the loadings of the top principal
    components of the training expression (``embedding="cells"``: of the single-cell
    matrix, so genes that co-vary across cells get similar embeddings; ``"within"``: of the
    single-cell matrix centred per condition, i.e. co-variation within conditions only;
    ``"pseudobulk"``: of the per-condition mean profiles, as in the paper). A perturbation is embedded as
    the sum of the rows of ``G`` of its target genes (``P``); a target outside the gene
    panel has a zero embedding (it is predicted as no change). The changes from control of
    the training perturbations, ``Y`` (genes × perturbations), are fitted as
    ``Y ≈ G W Pᵀ`` by ridge regression in closed form,
    ``W = (GᵀG + λI)⁻¹ Gᵀ Y P (PᵀP + λI)⁻¹``, and a condition is predicted as
    ``control + G W pᵀ``. It predicts unseen targets that are in the panel.

    Parameters
    ----------
    n_components
        Dimension of the gene embedding.
    ridge
        Ridge penalty ``λ``.
    embedding
        ``"cells"``, ``"within"`` or ``"pseudobulk"`` (see above).
    max_cells
        Cells used for the PCA (a random subset beyond that).
    seed
        Seed of that subset.
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> from celltx.bench import LinearGeneEmbedding
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> LinearGeneEmbedding(n_components=4).fit(adata).predict(["G001+ctrl"]).shape
    (1, 50)
    """

    name = "linear"

    def __init__(
        self,
        n_components: int = 10,
        ridge: float = 0.1,
        embedding: str = "cells",
        max_cells: int = 20_000,
        seed: int = 0,
        perturbation_key: str = "condition",
        control_value: str = "ctrl",
        layer: str | None = None,
    ):
        super().__init__(perturbation_key, control_value, layer)
        if embedding not in ("cells", "within", "pseudobulk"):
            raise ValueError(
                f"embedding must be 'cells', 'within' or 'pseudobulk', got {embedding!r}."
            )
        if int(n_components) < 1 or ridge < 0:
            raise ValueError("n_components must be >= 1 and ridge >= 0.")
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.embedding = embedding
        self.max_cells = int(max_cells)
        self.seed = seed

    def _embed(self, genes) -> np.ndarray:
        p = np.zeros(self.gene_embedding_.shape[1])
        for g in genes:
            i = self._gene_index.get(g)
            if i is not None:
                p += self.gene_embedding_[i]
        return p

    def _fit(self, x, codes):
        self._gene_index = {g: i for i, g in enumerate(self.var_names_)}
        perturbed = np.array([len(g) > 0 for g in self.conditions_["genes"]])
        deltas = self.means_[perturbed] - self.control_mean_  # perturbations × genes
        if self.embedding == "cells":
            G = _gene_pca(x, self.n_components, self.max_cells, self.seed)
        elif self.embedding == "within":
            G = _gene_pca(x, self.n_components, self.max_cells, self.seed, self.means_, codes)
        else:
            k = max(1, min(self.n_components, perturbed.sum() - 1))
            G = (
                _gene_pca(self.means_[perturbed], k, self.max_cells, self.seed)
                if perturbed.sum() > 1
                else None
            )
            if G is None:
                G = np.zeros((len(self.var_names_), 1))
        self.gene_embedding_ = G
        k = G.shape[1]
        P = (
            np.vstack([self._embed(g) for g in self.conditions_["genes"][perturbed]])
            if perturbed.any()
            else np.zeros((0, k))
        )
        Y = deltas.T  # genes × perturbations
        lam = np.eye(k) * self.ridge
        left = np.linalg.solve(G.T @ G + lam, G.T @ Y @ P)  # k × k
        self.coef_ = (
            np.linalg.solve((P.T @ P + lam).T, left.T).T if P.shape[0] else np.zeros((k, k))
        )
        if not perturbed.any():
            logger.warning(
                "LinearGeneEmbedding: no perturbed training cells; predicting the control mean."
            )

    def _predict_one(self, genes):
        return self.control_mean_ + self.gene_embedding_ @ (self.coef_ @ self._embed(genes))


PERTURBATION_BASELINES: dict[str, type[PerturbationBaseline]] = {
    "no_change": NoChange,
    "train_mean": TrainMean,
    "additive": Additive,
    "linear": LinearGeneEmbedding,
}


# ----------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------
def _de_indices(
    adata: AnnData,
    perturbation_key: str,
    groups: Sequence[str],
    raw_of_group: Mapping[str, list[str]],
    dt: np.ndarray,
    n_de: int,
) -> tuple[list[np.ndarray], list[str]]:
    """DE genes of each condition: GEARS' ``uns["top_non_dropout_de_20"]`` when it has the
    condition, else the ``n_de`` genes with the largest absolute change of the mean."""
    n_genes = dt.shape[1]
    fallback = np.argsort(-np.abs(dt), axis=1, kind="stable")[:, : min(n_de, n_genes)]
    table = adata.uns.get(_GEARS_DE_KEY)
    out, source = [], []
    if not isinstance(table, Mapping) or not table:
        return list(fallback), ["mean_difference"] * len(groups)
    pos = {g: i for i, g in enumerate(adata.var_names.astype(str))}
    if "gene_id" in adata.var:
        for i, g in enumerate(adata.var["gene_id"].astype(str)):
            pos.setdefault(g, i)
    key_of_raw: dict[str, str] = {}
    if "condition_name" in adata.obs:
        pairs = (
            adata.obs[[perturbation_key, "condition_name"]]
            .astype(str)
            .drop_duplicates(perturbation_key)
        )
        key_of_raw = dict(zip(pairs[perturbation_key], pairs["condition_name"], strict=True))
    for i, grp in enumerate(groups):
        genes = None
        for raw in raw_of_group[grp]:
            for key in (key_of_raw.get(raw), raw, grp):
                if key is not None and key in table:
                    genes = table[key]
                    break
            if genes is not None:
                break
        idx = (
            [pos[str(g)] for g in np.asarray(genes).ravel() if str(g) in pos]
            if genes is not None
            else []
        )
        if idx:
            out.append(np.asarray(idx[:n_de], dtype=np.int64))
            source.append(_GEARS_DE_KEY)
        else:
            out.append(fallback[i])
            source.append("mean_difference")
    return out, source


def _model_predictions(
    obj, conditions: list[str], var_names: pd.Index, control_value: str
) -> np.ndarray:
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


#: celltx settings of :func:`celltx_perturbation_model` (override any by keyword)
CELLTX_PERTURBATION_DEFAULTS = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
    "pretrain_epochs": 10,  # generative pretraining on the training cells (gene co-expression)
    "pretrain_lr": 3e-3,
    "epochs": 20,  # perturbation fine-tuning
    "lr": 3e-3,
    "freeze_layers": 0,  # keep embeddings + the first k layers fixed while fine-tuning
    "batch_size": 64,
    "n_cells": 100,  # control cells averaged per predicted condition
    "accelerator": "auto",
}


class _CelltxPredictor:
    """Wraps a trained ScGPT so that the benchmark's ``predict_perturbation`` call uses
    the chosen number of control cells."""

    def __init__(self, model, n_cells: int):
        self.model, self.n_cells = model, n_cells

    def predict_perturbation(self, conditions, return_type: str = "mean"):
        return self.model.predict_perturbation(conditions, n_cells=self.n_cells, return_type=return_type)


def celltx_perturbation_model(**kwargs) -> Callable[[AnnData], object]:
    """A ``train_fn`` for :func:`perturbation` that trains celltx's ScGPT on the split's
    training cells.

    The training cells are log-normalised when they hold counts (as the benchmark scores
    them), registered with ``perturbation_key``, pretrained with the generative objective
    (``pretrain_epochs``: the gene embeddings learn co-expression, which is what lets an
    unseen target's effect be inferred), then fine-tuned with ``task="perturbation"``.

    Parameters
    ----------
    **kwargs
        Overrides of :data:`CELLTX_PERTURBATION_DEFAULTS`: ``model`` (ScGPT arguments),
        ``pretrain_epochs``, ``pretrain_lr``, ``epochs``, ``lr``, ``freeze_layers``, ``batch_size``,
        ``n_cells``, ``accelerator``, and ``perturbation_key`` / ``control_value``.

    Returns
    -------
    Callable
        ``train_fn(train_adata)`` returning an object with ``predict_perturbation``.

    Examples
    --------
    >>> import celltx
    >>> fn = celltx.bench.celltx_perturbation_model(epochs=5, pretrain_epochs=0)
    >>> callable(fn)
    True
    """
    cfg = {**CELLTX_PERTURBATION_DEFAULTS, **kwargs}
    cfg["model"] = {**CELLTX_PERTURBATION_DEFAULTS["model"], **kwargs.get("model", {})}
    unknown = set(cfg) - set(CELLTX_PERTURBATION_DEFAULTS) - {"perturbation_key", "control_value"}
    if unknown:
        raise ValueError(f"Unknown celltx settings {sorted(unknown)}; use {sorted(CELLTX_PERTURBATION_DEFAULTS)}.")

    def train_fn(train: AnnData):
        from celltx.model import ScGPT

        a = train.copy()
        if is_counts(a.X):
            a.X = log1p_cp10k(a.X)
        ScGPT.setup_anndata(
            a,
            perturbation_key=cfg.get("perturbation_key", "condition"),
            control_value=cfg.get("control_value", "ctrl"),
        )
        model = ScGPT(a, **cfg["model"])
        common = {"batch_size": cfg["batch_size"], "accelerator": cfg["accelerator"],
                  "enable_progress_bar": False, "train_size": 1.0, "check_val_every_n_epoch": None}
        if cfg["pretrain_epochs"]:
            model.train(max_epochs=cfg["pretrain_epochs"], task="generative", lr=cfg["pretrain_lr"], **common)
        model.train(max_epochs=cfg["epochs"], task="perturbation", lr=cfg["lr"],
                    freeze_layers=cfg["freeze_layers"], **common)
        return _CelltxPredictor(model, cfg["n_cells"])

    return train_fn


def perturbation(
    adata: AnnData,
    model=None,
    split: str = "simulation",
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
) -> pd.DataFrame:
    """Benchmark perturbation-response prediction on a GEARS-style split.

    The conditions are split with :func:`perturbation_split` (same ``split``, ``seed`` and
    ``train_fraction``). Every method is trained on the ``"train"`` cells (control cells
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
        ``"simulation"`` or ``"single"`` (see :func:`perturbation_split`).
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

    Returns
    -------
    pandas.DataFrame
        One row per method × held-out condition: ``method``, ``condition`` (canonical GEARS
        name), ``subgroup``, ``n_cells``, ``de_source``, the metrics of
        :func:`perturbation_metrics` and ``error`` (``None``, or the exception of a method
        that failed: its metrics are then NaN).

    Raises
    ------
    ValueError
        Before anything is trained: if the condition column is missing or malformed, there
        are fewer than two control cells, no held-out condition has ``min_cells`` cells, a
        baseline name is unknown, the model neither has ``predict_perturbation`` nor is
        callable, a predictor lacks ``fit`` / ``predict``, or the expression is neither
        raw counts nor log-normalised.

    Examples
    --------
    >>> from celltx.bench import perturbation, summarize_perturbation
    >>> from celltx.datasets import simulate_perturbseq
    >>> df = perturbation(simulate_perturbseq(seed=0), baselines=("no_change", "additive"))
    >>> sorted(df["method"].unique())
    ['additive', 'no_change']
    >>> table = summarize_perturbation(df)
    """
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
        model = celltx_perturbation_model(perturbation_key=perturbation_key, control_value=control_value)
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
    col = _conditions_of(adata, perturbation_key)
    genes, names = parse_conditions(col, control_value=control_value, max_genes=2)
    is_control = (names == control_value).to_numpy()
    if is_control.sum() < 2:
        raise ValueError(
            f"Found {int(is_control.sum())} control cell(s) (condition {control_value!r}); the "
            "benchmark needs at least two. Pass control_value= the condition of your controls."
        )
    subgroups = perturbation_split(
        col,
        perturbation_key=perturbation_key,
        control_value=control_value,
        split=split,
        seed=seed,
        train_fraction=train_fraction,
    )
    cell_group = col.map(subgroups).to_numpy()
    train_mask = cell_group == "train"

    x = _expression(adata, layer, None)
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
    control_mean = _group_means(x, np.where(is_control, 0, -1), 1)[0][0]
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
    for b in baselines:
        cls = PERTURBATION_BASELINES[b]
        methods[b] = lambda cls=cls: (
            cls(perturbation_key=perturbation_key, control_value=control_value)
            .fit(train)
            .predict(test_names)
        )
    for name, obj in (predictors or {}).items():
        methods[name] = lambda obj=obj: np.asarray(
            obj.fit(train).predict(test_names), dtype=np.float64
        )
    if model is not None:

        def _run_model():
            obj = model
            if not hasattr(obj, "predict_perturbation"):
                obj = obj(adata[train_mask].copy())
                if not hasattr(obj, "predict_perturbation"):
                    raise ValueError(
                        "The model's train_fn returned an object without predict_perturbation."
                    )
            return _model_predictions(obj, test_names, pd.Index(adata.var_names), control_value)

        methods[model_name] = _run_model

    sub = np.array([group_of[i] for i in test], dtype=object)

    def _score(name: str, run: Callable[[], np.ndarray]) -> pd.DataFrame:
        pred = np.asarray(run(), dtype=np.float64)
        if pred.shape != truth.shape:
            raise ValueError(
                f"{name} predicted shape {pred.shape}; expected {truth.shape} (conditions × genes)."
            )
        parts = []
        for sg in TEST_SUBGROUPS:  # spreads are measured within a subgroup
            rows = np.flatnonzero(sub == sg)
            if not rows.size:
                continue
            m = perturbation_metrics(
                pred[rows],
                truth[rows],
                control_mean,
                de_genes=[de[r] for r in rows],
                conditions=[test_names[r] for r in rows],
            ).reset_index()
            m.insert(0, "method", name)
            m.insert(2, "subgroup", sg)
            m.insert(3, "n_cells", counts[np.asarray(test)[rows]].astype(int))
            m.insert(4, "de_source", [de_source[r] for r in rows])
            parts.append(m)
        return pd.concat(parts, ignore_index=True)

    order = ["method", "condition", "subgroup", "n_cells", "de_source", *PERTURBATION_METRICS, "n_de"]
    in_subgroup_order = np.argsort([TEST_SUBGROUPS.index(g) for g in sub], kind="stable")
    frames = []
    for name, run in methods.items():
        table, err = guarded(name, _score, name, run)
        if err is None:
            logger.info(
                "%s: mean pearson_delta_de %.3f over %d conditions",
                name, float(table["pearson_delta_de"].mean()), len(table),
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
                }
            ).iloc[in_subgroup_order]
        frames.append(table[order].assign(error=err))
    return pd.concat(frames, ignore_index=True)


def summarize_perturbation(
    df: pd.DataFrame,
    metrics: Sequence[str] = (
        "pearson_delta_de",
        "pearson_delta",
        "direction_de",
        "mse_de",
        "mse",
        "spread_de",
    ),
    as_text: bool = True,
) -> pd.DataFrame:
    """Mean ± sd over conditions of the perturbation metrics, per method and subgroup.

    A subgroup ``"all"`` pools every held-out condition. ``spread_ratio`` is the mean
    ``spread_de`` of the method over the mean ``spread_de_true`` (1 when the predicted
    responses are as diverse as the real ones, 0 for one response for all conditions).

    Parameters
    ----------
    df
        Output of :func:`perturbation`.
    metrics
        Metric columns to summarise.
    as_text
        Return ``"mean ± sd"`` strings (default) or numbers with ``(metric, "mean"/"sd")``
        columns.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(method, subgroup)``.

    Raises
    ------
    ValueError
        If a metric column or ``method``/``subgroup`` is missing.

    Examples
    --------
    >>> import pandas as pd
    >>> from celltx.bench import summarize_perturbation
    >>> df = pd.DataFrame({"method": ["a", "a"], "subgroup": ["unseen_single"] * 2,
    ...                    "pearson_delta_de": [0.5, 0.7], "spread_de": [1.0, 1.0],
    ...                    "spread_de_true": [2.0, 2.0]})
    >>> summarize_perturbation(df, metrics=["pearson_delta_de"]).loc[("a", "all"), "pearson_delta_de"]
    '0.600 ± 0.141'
    """
    need = ["method", "subgroup", *metrics]
    missing = [c for c in need if c not in df]
    if missing:
        raise ValueError(f"Columns {missing} are missing; pass the output of perturbation().")
    pooled = pd.concat([df, df.assign(subgroup="all")], ignore_index=True)
    order = [s for s in (*TEST_SUBGROUPS, "all") if s in set(pooled["subgroup"])]
    g = pooled.groupby(["method", "subgroup"], sort=False)
    mean, sd = g[list(metrics)].mean(), g[list(metrics)].std()
    if {"spread_de", "spread_de_true"} <= set(df.columns):
        sums = g[["spread_de", "spread_de_true"]].mean()
        mean["spread_ratio"] = sums["spread_de"] / sums["spread_de_true"]
        sd["spread_ratio"] = np.nan
    methods = list(dict.fromkeys(df["method"]))
    idx = pd.MultiIndex.from_tuples(
        [(m, s) for m in methods for s in order if (m, s) in mean.index],
        names=["method", "subgroup"],
    )
    mean, sd = mean.loc[idx], sd.loc[idx]
    if not as_text:
        return (
            pd.concat({"mean": mean, "sd": sd}, axis=1)
            .swaplevel(axis=1)
            .sort_index(axis=1, level=0, sort_remaining=False)
        )
    text = mean.map("{:.3f}".format) + " ± " + sd.map("{:.3f}".format)
    if "spread_ratio" in mean:
        text["spread_ratio"] = mean["spread_ratio"].map("{:.3f}".format)
    return text
