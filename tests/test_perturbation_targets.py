"""Perturbation targets (issue 28): the residual model's single-gene prior chosen by
cross-validation, and a residual that shrinks to its prior (additive for pairs) when its
features carry no signal. Fast, on small synthetic screens."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from celltx.bench import (
    Additive,
    LinearGeneEmbedding,
    OwnKnockdown,
    PerturbationResidual,
    celltx_perturbation_model,
)


def _screen(coupled: bool, seed: int = 0, n_genes: int = 40, n_targets: int = 30, pairs=()):
    """Log-scale cells of a screen whose responses follow the control co-expression or not.

    Control cells vary along 3 gene programs (loadings ``L``). A knock-down of ``t`` lowers
    ``t`` itself by 1 and, with ``coupled``, moves the other genes along ``t``'s programs
    (``-L L[t]``: what co-varies with ``t`` goes down with it); else along a random
    direction unrelated to the co-expression.
    """
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(n_genes, 3))
    base = rng.uniform(3.0, 4.0, n_genes)
    other = rng.normal(size=(n_genes, n_targets))

    def delta(t):
        d = -0.5 * (L @ L[t]) if coupled else 0.8 * other[:, t]
        d[t] = -1.0
        return d

    rows, conds = [], []
    singles = [f"G{t:02d}+ctrl" for t in range(n_targets)]
    for c in ["ctrl"] * 10 + singles + [f"G{a:02d}+G{b:02d}" for a, b in pairs]:
        if c == "ctrl":
            mean = base
        else:
            mean = base + sum(delta(int(g[1:])) for g in c.split("+") if g != "ctrl")
        z = rng.normal(size=(20, 3))
        rows.append(mean + z @ L.T * 0.5 + rng.normal(scale=0.1, size=(20, n_genes)))
        conds += [c] * 20
    return ad.AnnData(
        X=np.clip(np.vstack(rows), 0, None).astype(np.float32),
        obs=pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(len(conds))]),
        var=pd.DataFrame(index=[f"G{i:02d}" for i in range(n_genes)]),
    )


def _means(data, conds):
    x = np.asarray(data.X)
    df = pd.DataFrame(x).groupby(data.obs["condition"].astype(str).to_numpy()).mean()
    return df.loc[list(conds)].to_numpy()


def _systema(pred, truth, perturbed_mean):
    """Mean over conditions of the Pearson of the changes from the perturbed mean."""
    p, t = pred - perturbed_mean, truth - perturbed_mean
    return float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(p, t, strict=True)]))


def _split(data, n_train):
    conds = data.obs["condition"].astype(str)
    train_c = {"ctrl"} | {f"G{t:02d}+ctrl" for t in range(n_train)}
    train_c |= {c for c in conds.unique() if "+" in c and not c.endswith("ctrl")}
    return data[conds.isin(train_c).to_numpy()].copy()


def test_single_prior_chosen_by_cv_uses_coexpression_when_responses_follow_it():
    data = _screen(coupled=True)
    train = _split(data, 24)
    test = [f"G{t:02d}+ctrl" for t in range(24, 30)]
    truth = _means(data, test)
    m = PerturbationResidual().fit(train)
    assert set(m.cv_error_["prior"]) == {
        "own_knockdown",
        "train_mean",
        "linear",
        "linear_knockdown",
    }
    assert m.single_prior_ == min(m.cv_error_["prior"], key=m.cv_error_["prior"].get)
    assert m.single_prior_.startswith("linear")
    own = OwnKnockdown().fit(train)
    lin = LinearGeneEmbedding(n_components=10).fit(train)
    score = {
        k: _systema(v.predict(test), truth, m.perturbed_mean_)
        for k, v in (("res", m), ("own", own), ("lin", lin))
    }
    assert score["res"] > score["own"] + 0.2
    assert score["res"] >= score["lin"] - 0.02


def test_single_prior_keeps_own_knockdown_when_coexpression_says_nothing():
    data = _screen(coupled=False, seed=1)
    train = _split(data, 24)
    m = PerturbationResidual().fit(train)
    assert m.single_prior_ in ("own_knockdown", "train_mean")
    test = [f"G{t:02d}+ctrl" for t in range(24, 30)]
    fixed = PerturbationResidual(single_prior=m.single_prior_).fit(train)
    np.testing.assert_allclose(m.predict(test), fixed.predict(test))


def test_pairs_both_seen_shrink_to_additive_without_signal():
    """Noise embeddings: the one-standard-error rule keeps the pair residual at zero in
    every screen, so pairs whose genes were both seen are predicted exactly as additive."""
    rng = np.random.default_rng(0)
    kept = []
    for seed in range(8):
        pairs = [tuple(rng.choice(12, 2, replace=False)) for _ in range(14)]
        pairs = sorted({(int(min(p)), int(max(p))) for p in pairs})
        data = _screen(coupled=False, seed=seed, n_targets=12, pairs=pairs)
        emb = pd.DataFrame(rng.normal(size=(40, 6)), index=data.var_names)
        train = _split(data, 12)
        m = PerturbationResidual(emb).fit(train)
        kept.append(m.ridge_["pair"])
        test = [c for c in train.obs["condition"].unique() if "+" in c and "ctrl" not in c]
        if m.ridge_["pair"] == np.inf:
            np.testing.assert_allclose(
                m.predict(test), Additive().fit(train).predict(test), rtol=1e-6, atol=1e-6
            )
    assert all(r == np.inf for r in kept), kept


def test_bad_single_prior_refused():
    with pytest.raises(ValueError, match="single_prior"):
        PerturbationResidual(single_prior="pca")
    with pytest.raises(ValueError, match="single_prior"):
        celltx_perturbation_model(single_prior="pca")


@pytest.mark.slow
def test_one_pretraining_whether_or_not_the_condition_column_is_spelled_out():
    """The benchmark's celltx methods share one pretraining: the ``perturbation_key`` /
    ``control_value`` defaults given explicitly or not must not start a second one."""
    from celltx.bench import celltx_gene_features
    from celltx.bench._perturbation import _celltx

    data = _screen(coupled=True, n_genes=20, n_targets=6)
    kw = {"pretrain_epochs": 1, "pretrain_cells": 64, "features": ("embedding",)}
    _celltx._CACHE.clear()
    a, _ = celltx_gene_features(data, perturbation_key="condition", control_value="ctrl", **kw)
    first = next(iter(_celltx._CACHE.values()))["model"]
    b, _ = celltx_gene_features(data, **kw)
    assert next(iter(_celltx._CACHE.values()))["model"] is first
    pd.testing.assert_frame_equal(a, b)
