"""Perturbation yardstick, calibrated parts: Systema-style and disjoint-control Pearson,
DE rank, the ceiling, seconds, own-knock-down prior, saved split lists and the residual
model over the best simple prior (all fast, on tiny data)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from celltx.bench import (
    OwnKnockdown,
    PerturbationResidual,
    TrainMean,
    perturbation,
    perturbation_metrics,
    perturbation_split,
    read_perturbation_split,
    save_perturbation_split,
    summarize_perturbation,
)
from celltx.datasets import simulate_perturbseq


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(
        n_genes=60, n_perturbations=12, n_combos=8, n_cells_per_condition=20, seed=0
    )


class _Oracle:
    """Predicts the observed means of the held-out conditions."""

    def __init__(self, full):
        x = full.X.toarray()
        x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
        self.means = (
            pd.DataFrame(x, columns=full.var_names)
            .groupby(full.obs["condition"].astype(str).to_numpy())
            .mean()
        )

    def fit(self, train):
        return self

    def predict(self, conditions):
        return self.means.loc[list(conditions)].to_numpy()


# ------------------------------------------------------------------------------- metrics
def test_new_metrics_definitions():
    rng = np.random.default_rng(0)
    control = rng.normal(size=50)
    pert = control + rng.normal(size=50)  # the shared perturbed-vs-control shift
    truth = pert + rng.normal(size=(3, 50))
    m = perturbation_metrics(
        np.repeat(pert[None], 3, 0), truth, control, n_de=5, perturbed_mean=pert
    )
    # the training mean has a positive delta-Pearson against control but 0 Systema-style
    assert (m["pearson_delta"] > 0.3).all()
    assert np.allclose(m["pearson_delta_pert"], 0.0)
    assert m["pearson_delta_disjoint"].isna().all()  # no disjoint control given
    # de_rank: the oracle ranks its DE genes first, a constant prediction scores chance
    m = perturbation_metrics(truth, truth, control, n_de=5, control_disjoint=control)
    assert np.allclose(m["de_rank"], (5 - 1) / 2 / 49)
    assert np.allclose(m["pearson_delta_disjoint"], 1.0)
    m = perturbation_metrics(np.repeat(control[None], 3, 0), truth, control, n_de=5)
    assert np.allclose(m["de_rank"], 0.5)
    # the worst ranking: DE genes predicted to change least
    d = truth - control
    worst = control - np.sign(d) * (np.abs(d).max() + 1 - np.abs(d))
    assert (perturbation_metrics(worst, truth, control, n_de=5)["de_rank"] > 0.9).all()
    with pytest.raises(ValueError, match="perturbed_mean has 3 values"):
        perturbation_metrics(truth, truth, control, perturbed_mean=np.zeros(3))


def test_disjoint_control_removes_shared_noise():
    # no true effect: the truth is control noise only; a prediction anchored on the same
    # control mean correlates with it through the shared control, not with disjoint controls
    rng = np.random.default_rng(1)
    true_ctrl = rng.normal(size=400)
    ctrl_a = true_ctrl + rng.normal(scale=0.3, size=400)
    ctrl_b = true_ctrl + rng.normal(scale=0.3, size=400)
    truth = true_ctrl + rng.normal(scale=0.3, size=(5, 400))
    pred = np.repeat((true_ctrl + 0.05 * rng.normal(size=400))[None], 5, 0)
    m = perturbation_metrics(pred, truth, ctrl_a, n_de=20, control_disjoint=ctrl_b)
    assert m["pearson_delta"].mean() > 0.5  # inflated by the shared control mean
    assert abs(m["pearson_delta_disjoint"].mean()) < 0.2


# ------------------------------------------------------------------------ runner columns
def test_runner_ceiling_seconds_and_new_columns(sim):
    df = perturbation(
        sim,
        baselines=("train_mean", "own_knockdown"),
        predictors={"oracle": _Oracle(sim)},
        ceiling=True,
    )
    assert set(df["method"]) == {"ceiling", "train_mean", "own_knockdown", "oracle"}
    for col in ("pearson_delta_pert", "pearson_delta_disjoint", "de_rank", "seconds"):
        assert col in df and df[col].notna().all(), col
    m = df.groupby("method")[["pearson_delta_pert", "de_rank", "pearson_delta_de"]].mean()
    assert m.loc["train_mean", "pearson_delta_pert"] == pytest.approx(0.0, abs=1e-9)
    assert m.loc["oracle", "pearson_delta_pert"] == pytest.approx(1.0)
    # the ceiling (half of the cells predicting the other half) is high but not perfect
    assert 0.5 < m.loc["ceiling", "pearson_delta_de"] < 1.0
    assert m.loc["ceiling", "de_rank"] < m.loc["train_mean", "de_rank"]
    assert (df["seconds"] >= 0).all()
    table = summarize_perturbation(df)
    assert "de_rank" in table.columns and "seconds" in table.columns


def test_ceiling_refuses_small_conditions(sim):
    s = perturbation_split(sim, seed=0)
    target = s.index[s == "unseen_single"][0]
    conds = sim.obs["condition"].astype(str).to_numpy()
    keep = (conds != target) | (np.cumsum(conds == target) <= 3)
    small = sim[keep].copy()
    with pytest.raises(ValueError, match="at least 4 cells"):
        perturbation(small, baselines=("train_mean",), ceiling=True, min_cells=2)
    df = perturbation(small, baselines=("train_mean",), min_cells=2)  # fine without
    assert target in set(df["condition"])
    with pytest.raises(ValueError, match="disjoint_controls"):
        perturbation(
            sim[(conds != "ctrl") | (np.cumsum(conds == "ctrl") <= 3)].copy(),
            baselines=("train_mean",),
        )


# ---------------------------------------------------------------------------- baselines
def test_own_knockdown(sim):
    s = perturbation_split(sim, seed=0)
    train = sim[sim.obs["condition"].astype(str).map(s).eq("train").to_numpy()].copy()
    m = OwnKnockdown().fit(train)
    tm = TrainMean().fit(train)
    assert m.knockdown_ < -0.3  # the simulated screen knocks its targets down
    unseen = s.index[s == "unseen_single"][0]
    gene = unseen.split("+")[0]
    p, q = m.predict([unseen])[0], tm.predict([unseen])[0]
    i = list(train.var_names).index(gene)
    assert p[i] == pytest.approx(m.control_mean_[i] + m.knockdown_)
    assert np.allclose(np.delete(p, i), np.delete(q, i))  # elsewhere: the training mean
    assert np.allclose(m.predict(["NOTAGENE+ctrl"])[0], q)  # off-panel target: no change


# ------------------------------------------------------------------------------- splits
def test_split_list_round_trip(sim, tmp_path):
    s = perturbation_split(sim, seed=1)
    path = save_perturbation_split(s, tmp_path / "split.json", seed=1)
    saved = json.loads(path.read_text())
    held = s.index[(s == "unseen_single") | s.str.startswith("combo_seen")]
    assert set(saved["test"]) == set(held) and set(saved["train"]) == set(s.index[s == "train"])
    back = read_perturbation_split(path, sim)
    pd.testing.assert_series_equal(back, s)
    a = perturbation(sim, split=path, seed=1, baselines=("additive",))
    b = perturbation(sim, split="simulation", seed=1, baselines=("additive",))
    np.testing.assert_allclose(a["pearson_delta_de"], b["pearson_delta_de"])
    # GEARS-style lists (train / val / test): subgroups derived from the training singles
    gears = {"train": saved["train"], "val": saved["val"], "test": saved["test"]}
    pd.testing.assert_series_equal(read_perturbation_split(gears, sim), s)


def test_split_list_bad_input(sim, tmp_path):
    with pytest.raises(ValueError, match="not in the data"):
        read_perturbation_split({"train": ["G001+ctrl"], "test": ["NOPE+ctrl"]}, sim)
    with pytest.raises(ValueError, match="not in the data"):
        perturbation(sim, split={"train": ["NOPE+ctrl"]}, baselines=("train_mean",))
    with pytest.raises(ValueError, match="Unknown list"):
        read_perturbation_split({"training": []}, sim)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON split list"):
        read_perturbation_split(tmp_path / "bad.json", sim)
    cond = sim.obs["condition"].astype(str).iloc[-1]
    with pytest.raises(ValueError, match="in both"):
        read_perturbation_split({"train": [cond], "combo_seen0": [cond]}, sim)


# ------------------------------------------------------------------------ residual model
def _synthetic(embedding: np.ndarray, n_targets: int, seed: int = 0) -> ad.AnnData:
    """Log-normalised cells whose single responses are a bilinear function of the embedding.

    Each target knocks itself down and moves the other genes by ``E A E[t]``.
    """
    rng = np.random.default_rng(seed)
    n_genes, k = embedding.shape
    A = rng.normal(size=(k, k))
    base = rng.uniform(2.0, 3.0, n_genes)
    conds, xs = [], []
    for c in ["ctrl"] * 4 + [f"G{t:02d}+ctrl" for t in range(n_targets)]:
        mean = base.copy()
        if c != "ctrl":
            t = int(c[1:3])
            mean = mean + 0.5 * embedding @ (A @ embedding[t])
            mean[t] -= 1.0
        for _ in range(10):
            xs.append(np.clip(mean + rng.normal(scale=0.05, size=n_genes), 0, None))
            conds.append(c)
    return ad.AnnData(
        X=sparse.csr_matrix(np.vstack(xs).astype(np.float32)),
        obs=pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(len(conds))]),
        var=pd.DataFrame(index=[f"G{i:02d}" for i in range(n_genes)]),
    )


def test_residual_learns_signal_and_falls_back_without():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(40, 4))
    data = _synthetic(E, n_targets=30)
    train_conds = [f"G{t:02d}+ctrl" for t in range(24)] + ["ctrl"]
    test_conds = [f"G{t:02d}+ctrl" for t in range(24, 30)]
    train = data[data.obs["condition"].isin(train_conds).to_numpy()].copy()
    truth = _Oracle_means(data, test_conds)
    genes = data.var_names
    kd = {"single_prior": "own_knockdown"}  # the prior these assertions compare with
    good = PerturbationResidual(pd.DataFrame(E, index=genes), **kd).fit(train)
    noise = PerturbationResidual(pd.DataFrame(rng.normal(size=(40, 4)), index=genes), **kd).fit(
        train
    )
    prior = PerturbationResidual(None, **kd).fit(train)
    own = OwnKnockdown().fit(train)
    assert np.isfinite(good.ridge_["single"]) and noise.ridge_["single"] == np.inf
    np.testing.assert_allclose(noise.predict(test_conds), own.predict(test_conds))
    np.testing.assert_allclose(prior.predict(test_conds), own.predict(test_conds))
    err_good = ((good.predict(test_conds) - truth) ** 2).mean()
    err_prior = ((prior.predict(test_conds) - truth) ** 2).mean()
    assert err_good < 0.3 * err_prior


def _Oracle_means(data, conds):
    x = data.X.toarray() if sparse.issparse(data.X) else np.asarray(data.X)
    df = pd.DataFrame(x).groupby(data.obs["condition"].astype(str).to_numpy()).mean()
    return df.loc[conds].to_numpy()


def test_residual_pairs_fallback_and_bad_input(sim):
    s = perturbation_split(sim, seed=0)
    train = sim[sim.obs["condition"].astype(str).map(s).eq("train").to_numpy()].copy()
    m = PerturbationResidual(None).fit(train)
    seen = [c.split("+")[0] for c in s.index[(s == "train") & s.index.str.endswith("+ctrl")]]
    unseen = [c.split("+")[0] for c in s.index[s == "unseen_single"]]
    both_unseen = f"{unseen[0]}+{unseen[1]}"
    one_seen = f"{seen[0]}+{unseen[0]}"
    res = m.predict_perturbation([both_unseen, one_seen, f"{seen[0]}+{seen[1]}"])
    assert res.uns["fallback_pairs"] == [both_unseen]
    # a pair with both genes unseen: the shared shift once, plus each single-gene
    # prediction's own part (prediction − perturbed mean)
    singles = m.predict([f"{unseen[0]}+ctrl", f"{unseen[1]}+ctrl"])
    expected = singles.sum(0) - m.perturbed_mean_
    np.testing.assert_allclose(res.X[0], expected, rtol=1e-5, atol=1e-5)
    # one seen gene: its observed change plus the other's own part
    seen_delta = m.single_deltas_[seen[0]]
    np.testing.assert_allclose(
        res.X[1], m.control_mean_ + seen_delta + singles[0] - m.perturbed_mean_, atol=1e-5
    )
    with pytest.raises(ValueError, match="condition means"):
        m.predict_perturbation([one_seen], return_type="cells")
    with pytest.raises(ValueError, match="not fitted"):
        PerturbationResidual().predict(["ctrl"])
    with pytest.raises(ValueError, match="DataFrame"):
        PerturbationResidual(np.zeros((3, 2)))


def test_residual_profile_term():
    rng = np.random.default_rng(2)
    n_genes, n_targets = 40, 30
    P = rng.normal(size=(n_genes, n_targets))  # each target's true downstream profile
    rows, conds = [], []
    base = rng.uniform(2.0, 3.0, n_genes)
    for c in ["ctrl"] * 4 + [f"G{t:02d}+ctrl" for t in range(n_targets)]:
        mean = base + (0.3 * P[:, int(c[1:3])] if c != "ctrl" else 0.0)
        for _ in range(8):
            rows.append(np.clip(mean + rng.normal(scale=0.05, size=n_genes), 0, None))
            conds.append(c)
    genes = [f"G{i:02d}" for i in range(n_genes)]
    data = ad.AnnData(
        X=np.vstack(rows).astype(np.float32),
        obs=pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(len(conds))]),
        var=pd.DataFrame(index=genes),
    )
    targets = [f"G{t:02d}" for t in range(n_targets)]
    good = pd.DataFrame(P, index=genes, columns=targets)
    noise = pd.DataFrame(rng.normal(size=P.shape), index=genes, columns=targets)
    train = data[data.obs["condition"].isin(["ctrl"] + [f"{g}+ctrl" for g in targets[:24]])].copy()
    test = [f"{g}+ctrl" for g in targets[24:]]
    truth = _Oracle_means(data, test)
    m_good = PerturbationResidual(gene_profiles=lambda gs: good[list(gs)]).fit(train)
    m_noise = PerturbationResidual(gene_profiles=noise).fit(train)
    assert m_good.profile_scale_ == pytest.approx(0.3, rel=0.2)
    assert m_noise.profile_scale_ == 0.0
    err = {k: ((m.predict(test) - truth) ** 2).mean() for k, m in (("g", m_good), ("n", m_noise))}
    assert err["g"] < 0.3 * err["n"]
    with pytest.raises(ValueError, match="gene_profiles"):
        PerturbationResidual(gene_profiles=3)


def test_celltx_model_settings_refused():
    from celltx.bench import celltx_perturbation_model

    with pytest.raises(ValueError, match="features"):
        celltx_perturbation_model(features=("embedding", "bogus"))
    with pytest.raises(ValueError, match="at most one"):
        celltx_perturbation_model(features=("insilico", "coexpression"))
    with pytest.raises(ValueError, match="mode"):
        celltx_perturbation_model(mode="genes")


@pytest.mark.slow
def test_celltx_residual_in_the_benchmark(sim):
    """celltx's default (residual) model trains in seconds and is at least its prior."""
    from celltx.bench import celltx_perturbation_model

    fn = celltx_perturbation_model(
        pretrain_epochs=1,
        pretrain_cells=200,
        attention_cells=32,
        features=("embedding", "attention", "insilico"),
        model={"d_model": 32, "n_layers": 1, "n_heads": 2},
        accelerator="cpu",
    )
    df = perturbation(sim, model=fn, baselines=("own_knockdown", "linear_celltx"))
    assert set(df["method"]) == {"own_knockdown", "linear_celltx", "celltx"}
    assert df["error"].isna().all(), df["error"].dropna().unique()
    cx = df[df["method"] == "celltx"]
    assert (cx["seconds"] > 0).all() and np.isfinite(cx["pearson_delta_pert"]).all()
    # both celltx methods are charged for the one (shared) pretraining
    lin = df[df["method"] == "linear_celltx"]["seconds"].iloc[0]
    assert cx["seconds"].iloc[0] > 0.5 * lin
