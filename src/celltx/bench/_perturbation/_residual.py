"""celltx's condition-level perturbation model: a residual over the best simple prior.

Published evaluations (Ahlmann-Eltze, Huber & Anders 2025) found that no deep model beat
the additive model on pairs nor the training mean on unseen singles. This model starts
from those priors and learns only what they miss, from gene embeddings, with a
regulariser chosen by cross-validation over the training conditions, so that when the
embeddings carry no signal it falls back to the prior.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from celltx.data import condition_name, parse_condition

from ._baselines import PerturbationBaseline, _gene_pca, _own_knockdown

logger = logging.getLogger(__package__)

#: ridge penalties tried by the inner cross-validation (``inf``: no residual, the prior)
RESIDUAL_RIDGES = (0.01, 0.1, 1.0, 10.0, 100.0, np.inf)
#: single-gene priors :class:`PerturbationResidual` chooses among (``single_prior="auto"``)
SINGLE_PRIORS = ("own_knockdown", "train_mean", "linear", "linear_knockdown")


def _bilinear_fit(G: np.ndarray, P: np.ndarray, R: np.ndarray, lam: float) -> np.ndarray:
    """``W`` of ``R ≈ G W Pᵀ`` (genes × conditions) by ridge regression in closed form."""
    k = G.shape[1]
    if not np.isfinite(lam) or P.shape[0] == 0:
        return np.zeros((k, P.shape[1]))
    left = np.linalg.solve(G.T @ G + lam * np.eye(k), G.T @ R @ P)
    return np.linalg.solve((P.T @ P + lam * np.eye(P.shape[1])).T, left.T).T


def _choose_ridge(
    G: np.ndarray, P: np.ndarray, R: np.ndarray, ridges: Sequence[float], folds: int, seed: int
) -> tuple[float, dict[float, float]]:
    """The penalty by K-fold CV over the columns of ``R``, with the one-standard-error rule.

    The strongest penalty whose held-out squared error is within one standard error (over
    the folds) of the least: a residual must beat "no residual" clearly to be kept.
    """
    n = P.shape[0]
    if n < 3:
        return np.inf, {}
    k = min(folds, n)
    fold = np.random.default_rng(seed).permutation(n) % k
    err, se = {}, {}
    for lam in ridges:
        per_fold = np.zeros(k)
        for f in range(k):
            tr, te = fold != f, fold == f
            W = _bilinear_fit(G, P[tr], R[:, tr], lam)
            per_fold[f] = float(((R[:, te] - G @ W @ P[te].T) ** 2).sum())
        err[float(lam)] = float(per_fold.sum()) / R.size
        se[float(lam)] = float(per_fold.std(ddof=1)) * np.sqrt(k) / R.size if k > 1 else 0.0
    best = min(err, key=lambda lam: (err[lam], -lam))
    best = max(lam for lam in err if err[lam] <= err[best] + se[best])
    return best, err


def _choose_scale(
    F: np.ndarray, R: np.ndarray, folds: int, seed: int
) -> tuple[float, dict[str, float]]:
    """``a`` of ``R ≈ a F`` by least squares, or 0 where that is not better out of fold."""
    n = F.shape[1]
    k = min(folds, n)
    fold = np.random.default_rng(seed).permutation(n) % k
    sse_fit = sse_zero = 0.0
    for f in range(k):
        tr, te = fold != f, fold == f
        den = float((F[:, tr] ** 2).sum())
        a = float((F[:, tr] * R[:, tr]).sum()) / den if den > 0 else 0.0
        sse_fit += float(((R[:, te] - a * F[:, te]) ** 2).sum())
        sse_zero += float((R[:, te] ** 2).sum())
    err = {"fit": sse_fit / R.size, "zero": sse_zero / R.size}
    if sse_fit >= sse_zero:
        return 0.0, err
    den = float((F**2).sum())
    return (float((F * R).sum()) / den if den > 0 else 0.0), err


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (0 where either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


def _scaled(e: pd.DataFrame) -> pd.DataFrame:
    """Centre the embedding and scale it to the squared norm of orthonormal loadings."""
    e = e.astype(np.float64)
    e = e - e.mean(axis=0)
    return e * np.sqrt(e.shape[1] / max(float((e.to_numpy() ** 2).sum()), 1e-12))


class PerturbationResidual(PerturbationBaseline):
    """Condition-level perturbation model: a simple prior plus a residual from gene embeddings.

    For a single gene ``t`` the prior is, with ``single_prior="auto"``, the one of
    ``"own_knockdown"`` (the mean of all perturbed training cells with ``t``'s own
    expression moved by the typical knock-down, :class:`OwnKnockdown`), ``"train_mean"``,
    ``"linear"`` (the linear model on PCA gene embeddings of the training cells,
    :class:`LinearGeneEmbedding`) and ``"linear_knockdown"`` (that with ``t``'s own
    expression moved by the typical knock-down) that predicts the training singles best
    out of fold: ``folds``-fold cross-validation over the training singles, the linear
    model refitted without the fold's singles and without the training pairs containing
    them, scored by the Pearson of the changes from the perturbed mean (Systema-style).
    ``single_prior_`` holds the choice and ``cv_error_["prior"]`` each candidate's
    ``1 − Pearson``. For a pair the prior is additive: control plus the two single-gene
    changes, each the observed training single where there is one, else the gene-specific
    part of this model's single-gene prediction (the prediction minus the perturbed mean;
    the shift that every perturbation shares is counted once). The residuals of the
    training conditions over their prior (genes × conditions, ``R``; for singles over the
    out-of-fold prior, so the residual learns what an unseen single misses) are fitted as
    ``R ≈ G W Pᵀ`` by ridge regression, ``G`` the gene embeddings of the panel and ``P``
    the perturbed genes' embeddings (summed for a pair), one model for singles and one for
    pairs. The penalty is chosen by ``folds``-fold cross-validation over the training
    conditions among :data:`RESIDUAL_RIDGES`, which include ``inf`` (no residual), with
    the one-standard-error rule (the strongest penalty within one standard error of the
    best): when the embeddings do not predict held-out training conditions clearly better
    than the prior, the model *is* the prior. ``ridge_`` holds the choice and
    ``cv_error_`` the cross-validated errors. Perturbed genes without an embedding get the
    prior.

    Parameters
    ----------
    gene_embedding
        Gene embeddings, a DataFrame indexed by gene (e.g. a pretrained celltx model's
        ``get_gene_embeddings()``), or ``None``.
    gene_profiles
        Predicted change profiles of single-gene perturbations: a DataFrame (panel genes
        × targets) or a callable ``genes -> DataFrame`` (e.g.
        :class:`~celltx.bench.InSilicoProfiles`, celltx's in-silico knock-downs). Before
        the embedding term, the single residuals get ``a × profile``, ``a`` one number
        fitted by least squares and kept only when it lowers the cross-validated error
        (else 0, ``profile_scale_``). ``None``: no profile term.
    folds
        Folds of the inner cross-validation.
    ridges
        Penalties tried (default :data:`RESIDUAL_RIDGES`).
    seed
        Seed of the folds (and of the PCA's cell subset).
    single_prior
        ``"auto"`` (chosen by cross-validation, above) or one of ``"own_knockdown"``,
        ``"train_mean"``, ``"linear"``, ``"linear_knockdown"``.
    n_components
        Dimension of the PCA gene embedding of the linear priors.
    linear_ridge
        Ridge penalty of the linear priors (as :class:`LinearGeneEmbedding`'s).
    perturbation_key
        The obs column with the GEARS-style condition of each cell.
    control_value
        The condition of control cells.
    layer
        Layer to read instead of ``.X``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from celltx.bench import PerturbationResidual
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=50, n_perturbations=8, n_combos=4)
    >>> emb = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 8)), index=adata.var_names)
    >>> m = PerturbationResidual(emb).fit(adata)
    >>> m.predict(["G001+ctrl"]).shape
    (1, 50)
    >>> m.single_prior_ in m.cv_error_["prior"]
    True
    """

    #: seconds spent pretraining the embeddings it was built from (set by the benchmark)
    pretrain_seconds_: float

    name = "celltx_residual"

    def __init__(
        self,
        gene_embedding: pd.DataFrame | None = None,
        gene_profiles=None,
        folds: int = 5,
        ridges: Sequence[float] = RESIDUAL_RIDGES,
        seed: int = 0,
        single_prior: str = "auto",
        n_components: int = 10,
        linear_ridge: float = 0.1,
        perturbation_key: str = "condition",
        control_value: str = "ctrl",
        layer: str | None = None,
    ):
        if single_prior != "auto" and single_prior not in SINGLE_PRIORS:
            raise ValueError(
                f"single_prior must be 'auto' or one of {SINGLE_PRIORS}, got {single_prior!r}."
            )
        if gene_embedding is not None and not isinstance(gene_embedding, pd.DataFrame):
            raise ValueError("gene_embedding must be a DataFrame indexed by gene, or None.")
        if int(folds) < 2:
            raise ValueError(f"folds must be at least 2, got {folds}.")
        if not ridges or any(r <= 0 for r in ridges):
            raise ValueError("ridges must be positive penalties (inf allowed).")
        if gene_profiles is not None and not (
            callable(gene_profiles) or isinstance(gene_profiles, pd.DataFrame)
        ):
            raise ValueError(
                "gene_profiles must be a DataFrame (genes × targets) or a callable "
                "genes -> such a DataFrame, or None."
            )
        self.gene_embedding, self.gene_profiles = gene_embedding, gene_profiles
        self.folds, self.ridges, self.seed = int(folds), tuple(ridges), seed
        self.single_prior, self.n_components = single_prior, int(n_components)
        self.linear_ridge = float(linear_ridge)
        super().__init__(perturbation_key, control_value, layer)

    # ---------------------------------------------------------------------------- fitting
    def _fit(self, x, codes) -> None:
        """The priors and residual models, from the condition means that ``fit`` computed."""
        means, counts = self.means_, self.conditions_["n_cells"].to_numpy()
        cond_genes = list(self.conditions_["genes"])
        self._index = {str(g): i for i, g in enumerate(self.var_names_)}
        perturbed = np.array([len(g) > 0 for g in cond_genes])
        w = counts * perturbed
        self.perturbed_mean_ = (
            (means * w[:, None]).sum(0) / w.sum() if w.sum() else self.control_mean_.copy()
        )
        kd = _own_knockdown(means, self.conditions_, self.control_mean_, self._index)
        self.knockdown_ = 0.0 if np.isnan(kd) else kd
        self.single_deltas_ = {
            g[0]: means[i] - self.control_mean_ for i, g in enumerate(cond_genes) if len(g) == 1
        }
        self._fit_single_prior(x, means, cond_genes, perturbed)
        # embeddings: panel genes (G) and perturbed genes (P rows)
        if self.gene_embedding is not None:
            e = _scaled(self.gene_embedding)
            e.index = e.index.astype(str)
            self._emb = {g: e.loc[g].to_numpy() for g in e.index}
            self.G_ = e.reindex(self.var_names_).fillna(0.0).to_numpy()
        else:
            self._emb, self.G_ = {}, np.zeros((len(self.var_names_), 1))
        k = self.G_.shape[1]
        self.W_single_ = np.zeros((k, k))
        self.W_pair_ = np.zeros((k, k))
        self.ridge_: dict[str, float] = {}
        # singles: residual over train mean + own knock-down (+ the profile term)
        self.profile_scale_ = 0.0
        prof_singles = [(i, g[0]) for i, g in enumerate(cond_genes) if len(g) == 1]
        if self.gene_profiles is not None and len(prof_singles) >= 3:
            F = self._profiles([t for _, t in prof_singles])
            R0 = np.stack([means[i] - self._oof_prior(t) for i, t in prof_singles], axis=1)
            self.profile_scale_, self.cv_error_["profile"] = _choose_scale(
                F, R0, self.folds, self.seed
            )
        singles = [(i, g[0]) for i, g in enumerate(cond_genes) if len(g) == 1]
        singles = [(i, t) for i, t in singles if t in self._emb]
        if singles:
            R = np.stack([means[i] - self._single_base(t, oof=True) for i, t in singles], axis=1)
            P = np.stack([self._emb[t] for _, t in singles])
            lam, err = _choose_ridge(self.G_, P, R, self.ridges, self.folds, self.seed)
            self.W_single_ = _bilinear_fit(self.G_, P, R, lam)
            self.ridge_["single"], self.cv_error_["single"] = lam, err
        # pairs: residual over the additive prior
        pairs = [(i, g) for i, g in enumerate(cond_genes) if len(g) == 2]
        pairs = [(i, g) for i, g in pairs if all(t in self._emb for t in g)]
        if pairs:
            R = np.stack([means[i] - self._pair_prior(g)[0] for i, g in pairs], axis=1)
            P = np.stack([self._emb[g[0]] + self._emb[g[1]] for _, g in pairs])
            lam, err = _choose_ridge(self.G_, P, R, self.ridges, self.folds, self.seed)
            self.W_pair_ = _bilinear_fit(self.G_, P, R, lam)
            self.ridge_["pair"], self.cv_error_["pair"] = lam, err
        logger.info("PerturbationResidual: ridge %s", self.ridge_)

    def _linear_fit(self, means, cond_genes, use) -> np.ndarray:
        """``W`` of the linear model ``Δ ≈ G W Pᵀ`` on the conditions ``use`` (PCA ``G``)."""
        G = self.G_pca_
        Y = (means[use] - self.control_mean_).T
        P = np.stack([self._pca_embed(cond_genes[i]) for i in np.flatnonzero(use)])
        return _bilinear_fit(G, P, Y, self.linear_ridge)

    def _pca_embed(self, genes) -> np.ndarray:
        p = np.zeros(self.G_pca_.shape[1])
        for g in genes:
            i = self._index.get(g)
            if i is not None:
                p += self.G_pca_[i]
        return p

    def _fit_single_prior(self, x, means, cond_genes, perturbed) -> None:
        """The single-gene prior: given, or chosen by CV over the training singles.

        Every candidate is scored on each training single as it would be on an unseen one:
        the linear priors are refitted without the fold's singles and without the training
        pairs that contain their genes. The out-of-fold predictions are kept as the base of
        the residual fits (``_oof``), so the residual learns what an unseen single misses.
        """
        singles = [(i, g[0]) for i, g in enumerate(cond_genes) if len(g) == 1]
        want = SINGLE_PRIORS if self.single_prior == "auto" else (self.single_prior,)
        self._oof: dict[str, dict[str, np.ndarray]] = {p: {} for p in want}
        self.G_pca_ = np.zeros((len(self.var_names_), 1))
        self.W_linear_ = np.zeros((1, 1))
        if any(p.startswith("linear") for p in want) and perturbed.sum() >= 2:
            self.G_pca_ = _gene_pca(x, self.n_components, 20_000, self.seed)
            self.W_linear_ = self._linear_fit(means, cond_genes, perturbed)
        if len(singles) >= 3:
            k = min(self.folds, len(singles))
            fold = np.random.default_rng(self.seed).permutation(len(singles)) % k
            for f in range(k):
                out = {t for (_, t), ff in zip(singles, fold, strict=True) if ff == f}
                use = perturbed & np.array([not (set(g) & out) for g in cond_genes])
                W = self._linear_fit(means, cond_genes, use) if use.sum() >= 1 else None
                for t in out:
                    for p in want:
                        self._oof[p][t] = self._prior(t, p, W)
        # scored as the benchmark scores: 1 - Pearson of the changes from the perturbed mean
        # (squared error would favour the priors that shrink the most)
        err = {
            p: float(
                np.mean(
                    [
                        1.0
                        - _pearson(
                            self._oof[p][t] - self.perturbed_mean_, means[i] - self.perturbed_mean_
                        )
                        for i, t in singles
                    ]
                )
            )
            for p in want
            if singles and all(t in self._oof[p] for _, t in singles)
        }
        self.cv_error_: dict[str, dict[str, float] | dict[float, float]] = {"prior": err}
        if self.single_prior == "auto":
            self.single_prior_ = min(err, key=lambda p: err[p]) if err else "own_knockdown"
        else:
            self.single_prior_ = self.single_prior

    def _prior(self, t: str, kind: str, W: np.ndarray | None = None) -> np.ndarray:
        """The prior ``kind`` of the single ``t`` (``W``: the linear model's, else the fit)."""
        if kind.startswith("linear"):
            W = self.W_linear_ if W is None else W
            out = self.control_mean_ + self.G_pca_ @ (W @ self._pca_embed([t]))
        else:
            out = self.perturbed_mean_.copy()
        i = self._index.get(t)
        if i is not None and kind.endswith("knockdown"):
            out[i] = self.control_mean_[i] + self.knockdown_
        return out

    def _oof_prior(self, t: str) -> np.ndarray:
        """The chosen prior of training single ``t`` out of fold (else as for a new gene)."""
        got = self._oof.get(self.single_prior_, {}).get(t)
        return got.copy() if got is not None else self._single_prior(t)

    # ------------------------------------------------------------------------- predicting
    def _single_prior(self, t: str) -> np.ndarray:
        return self._prior(t, self.single_prior_)

    def _profiles(self, genes: list[str]) -> np.ndarray:
        """Profiles of ``genes`` as panel genes × genes (0 where a gene has none)."""
        p = self.gene_profiles
        frame = p(genes) if callable(p) else p
        frame = frame.reindex(index=self.var_names_, columns=genes)
        return frame.fillna(0.0).to_numpy(dtype=np.float64)

    def _single_base(self, t: str, oof: bool = False) -> np.ndarray:
        """The prior (out of fold for a training single with ``oof``) plus the profile term."""
        out = self._oof_prior(t) if oof else self._single_prior(t)
        if self.profile_scale_:
            out = out + self.profile_scale_ * self._profiles([t])[:, 0]
        return out

    def _single(self, t: str) -> np.ndarray:
        """Predicted mean of the single-gene condition ``t`` (unseen or seen)."""
        out = self._single_base(t)
        e = self._emb.get(t)
        if e is not None:
            out = out + self.G_ @ (self.W_single_ @ e)
        return out

    def _pair_prior(self, genes) -> tuple[np.ndarray, int]:
        """Additive prior of a pair and how many of its genes were seen as singles.

        A seen gene adds its observed single change; an unseen gene adds only the
        gene-specific part of its predicted single (prediction − perturbed mean), so that
        the shift every perturbation shares is counted once, not once per gene.
        """
        out = self.control_mean_.copy()
        n_seen = 0
        for t in genes:
            d = self.single_deltas_.get(t)
            if d is not None:
                n_seen += 1
                out = out + d
            else:
                out = out + self._single(t) - self.perturbed_mean_
        if n_seen == 0:
            out = out + self.perturbed_mean_ - self.control_mean_
        return out, n_seen

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Mean log-normalised expression of each condition (conditions × genes).

        Parameters
        ----------
        conditions
            GEARS-style conditions (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``).

        Returns
        -------
        numpy.ndarray
            Conditions × genes (the genes of the training data). ``fallback_`` lists the
            pairs of the last call whose genes were both unseen as singles (predicted from
            the single-gene model, as the sum of its two predicted changes).

        Raises
        ------
        ValueError
            If the model is not fitted, a condition cannot be parsed or perturbs more than
            two genes.
        """
        self._check_fitted()
        if isinstance(conditions, str):
            conditions = [conditions]
        rows, self.fallback_ = [], []
        for c in conditions:
            g = parse_condition(str(c), control_value=self.control_value)
            if len(g) == 0:
                rows.append(self.control_mean_.copy())
            elif len(g) == 1:
                d = self.single_deltas_.get(g[0])
                rows.append(self.control_mean_ + d if d is not None else self._single(g[0]))
            elif len(g) == 2:
                out, n_seen = self._pair_prior(g)
                if n_seen == 0:
                    self.fallback_.append(condition_name(g, self.control_value))
                if all(t in self._emb for t in g):
                    out = out + self.G_ @ (self.W_pair_ @ (self._emb[g[0]] + self._emb[g[1]]))
                rows.append(out)
            else:
                raise ValueError(
                    f"Condition {c!r} perturbs {len(g)} genes; at most 2 are modelled."
                )
        return np.vstack(rows) if rows else np.zeros((0, len(self.var_names_)))

    def predict_perturbation(self, conditions, return_type: str = "mean") -> AnnData:
        """Predictions as an AnnData, one row per condition (``return_type="mean"``).

        ``uns["fallback_pairs"]`` lists the pairs predicted from the single-gene model
        because neither gene was seen as a single; ``uns["ridge"]`` the chosen penalties.

        Parameters
        ----------
        conditions
            GEARS-style conditions.
        return_type
            Only ``"mean"``: this model predicts condition means, not cells.

        Returns
        -------
        anndata.AnnData
            Conditions × genes; ``obs_names`` the canonical condition names.

        Raises
        ------
        ValueError
            For ``return_type`` other than ``"mean"``.
        """
        if return_type != "mean":
            raise ValueError(
                f"return_type={return_type!r}: PerturbationResidual predicts condition means "
                "only; for per-cell predictions use ScGPT.predict_perturbation after "
                "train(task='perturbation')."
            )
        if isinstance(conditions, str):
            conditions = [conditions]
        X = self.predict(conditions)
        names = [
            condition_name(
                parse_condition(str(c), control_value=self.control_value), self.control_value
            )
            for c in conditions
        ]
        out = AnnData(
            X=X.astype(np.float32),
            obs=pd.DataFrame(index=pd.Index(names, dtype=str)),
            var=pd.DataFrame(index=self.var_names_.copy()),
        )
        out.uns["fallback_pairs"] = list(self.fallback_)
        out.uns["ridge"] = {k: float(v) for k, v in self.ridge_.items()}
        if self.fallback_:
            logger.info(
                "PerturbationResidual: %d pair(s) with both genes unseen predicted from the "
                "single-gene model: %s",
                len(self.fallback_),
                self.fallback_[:5],
            )
        return out
