"""Perturbation baselines: per-condition means of the training cells, and a linear model.

Every baseline reads log-normalised expression (raw counts are normalised to 10,000 per
cell and ``log1p``-transformed first) and predicts one mean profile per condition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from celltx.bench._inputs import lognorm_expression
from celltx.data import parse_condition, parse_conditions

from ._split import _conditions_of

# the task's logger, ``celltx.bench._perturbation``
logger = logging.getLogger(__package__)

# the constructor arguments every baseline shares, in each class docstring
_COMMON_PARAMETERS = """perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``."""


def _common_parameters(cls: type) -> type:
    """Fill ``{common_parameters}`` in the docstring of a baseline class."""
    if cls.__doc__:  # None under python -OO
        cls.__doc__ = cls.__doc__.replace("{common_parameters}", _COMMON_PARAMETERS)
    return cls


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


@_common_parameters
class PerturbationBaseline:
    """Base class of the perturbation baselines: group means of a training AnnData.

    ``fit`` reads the log-normalised expression (``.X`` or ``layer``; raw counts are
    normalised to 10,000 per cell and ``log1p``-transformed first), the mean of the control
    cells and of every training condition; ``predict`` returns one mean profile per
    requested condition, in the order of the training genes.

    Parameters
    ----------
    {common_parameters}

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

    def fit(self, adata: AnnData) -> Self:
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
        x = lognorm_expression(adata, self.layer)
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


@_common_parameters
class NoChange(PerturbationBaseline):
    """Predict the control mean for every condition (no perturbation effect).

    Parameters
    ----------
    {common_parameters}

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


@_common_parameters
class TrainMean(PerturbationBaseline):
    """Predict the mean of all perturbed training cells for every perturbed condition.

    Control (``"ctrl"``) is predicted as the control mean. The same response for every
    perturbation: a reference for "collapsed" predictors.

    Parameters
    ----------
    {common_parameters}

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


def _own_knockdown(means: np.ndarray, conditions: pd.DataFrame, control: np.ndarray, index):
    """Median change of a target's own expression over the training singles (NaN: none)."""
    own = [
        means[i, index[g[0]]] - control[index[g[0]]]
        for i, g in enumerate(conditions["genes"])
        if len(g) == 1 and g[0] in index
    ]
    return float(np.median(own)) if own else float("nan")


@_common_parameters
class OwnKnockdown(PerturbationBaseline):
    """The training mean with each target's own expression moved by the typical knock-down.

    A perturbed condition is predicted as the mean of all perturbed training cells
    (:class:`TrainMean`), except that each perturbed gene in the panel is set to its
    control mean plus ``knockdown_``: the median, over the training single-gene conditions
    whose target is measured, of the change of the target's own mean log expression. A
    CRISPRi / CRISPR-KO screen lowers the target itself more than anything else, which the
    training mean misses. Targets outside the panel change nothing. Control is predicted as
    the control mean.

    Parameters
    ----------
    {common_parameters}

    Examples
    --------
    >>> from celltx.bench import OwnKnockdown
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=5, n_combos=2)
    >>> m = OwnKnockdown().fit(adata)
    >>> bool(m.knockdown_ < 0)
    True
    """

    name = "own_knockdown"

    def _fit(self, x, codes):
        TrainMean._fit(self, x, codes)
        self._gene_index = {g: i for i, g in enumerate(self.var_names_)}
        kd = _own_knockdown(self.means_, self.conditions_, self.control_mean_, self._gene_index)
        if np.isnan(kd):
            logger.warning(
                "OwnKnockdown: no training single with a measured target; no knock-down."
            )
            kd = 0.0
        self.knockdown_ = kd

    def _predict_one(self, genes):
        out = (self.perturbed_mean_ if genes else self.control_mean_).copy()
        for g in genes:
            i = self._gene_index.get(g)
            if i is not None:
                out[i] = self.control_mean_[i] + self.knockdown_
        return out


@_common_parameters
class Additive(PerturbationBaseline):
    """Control mean plus the sum of the single-gene changes seen in training.

    A gene never seen as a single-gene perturbation in training contributes nothing, so an
    unseen single is predicted as control and a pair with one seen gene as that gene's
    single effect.

    Parameters
    ----------
    {common_parameters}

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
    """Gene loadings of the top principal components of a cells × genes matrix.

    Genes × k, orthonormal columns, from the gene covariance (accumulated over blocks of
    cells, so a sparse matrix is densified one block at a time). With ``group_means`` and
    ``codes``, each cell is first centred on the mean of its group.
    """
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
            assert codes is not None  # group means are per code
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


@_common_parameters
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
    gene_embedding
        Given gene embeddings instead of the PCA: a DataFrame indexed by gene (e.g.
        ``model.get_gene_embeddings()`` of a celltx model, see
        :class:`~celltx.bench.CelltxGeneEmbeddingLinear`); genes of the panel it lacks get a
        zero embedding. ``n_components`` and ``embedding`` are then ignored.
    {common_parameters}

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
        gene_embedding: pd.DataFrame | None = None,
        perturbation_key: str = "condition",
        control_value: str = "ctrl",
        layer: str | None = None,
    ):
        super().__init__(perturbation_key, control_value, layer)
        self.gene_embedding = gene_embedding
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
            elif g in self._extra:  # a target outside the panel with a given embedding
                p += self._extra[g]
        return p

    def _given_embedding(self) -> np.ndarray:
        """The panel genes' rows of ``gene_embedding`` (zero where absent), centred.

        Scaled to the squared norm of ``d`` orthonormal PCA loadings.
        """
        e = self.gene_embedding
        if not isinstance(e, pd.DataFrame):
            raise ValueError("gene_embedding must be a DataFrame indexed by gene.")
        e = e.astype(np.float64)
        e = e - e.mean(axis=0)
        e = e * np.sqrt(e.shape[1] / max(float((e.to_numpy() ** 2).sum()), 1e-12))  # as PCA
        self._extra = {str(g): e.loc[g].to_numpy() for g in e.index if g not in self._gene_index}
        return e.reindex(self.var_names_).fillna(0.0).to_numpy()

    def _fit(self, x, codes):
        self._gene_index = {g: i for i, g in enumerate(self.var_names_)}
        perturbed = np.array([len(g) > 0 for g in self.conditions_["genes"]])
        deltas = self.means_[perturbed] - self.control_mean_  # perturbations × genes
        self._extra = {}
        if self.gene_embedding is not None:
            G = self._given_embedding()
        elif self.embedding == "cells":
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
    "own_knockdown": OwnKnockdown,
}
