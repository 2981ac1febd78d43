"""Perturbation prediction, model-independent parts: conditions, simulator, GEARS loaders,
splits, metrics, baselines and the plot."""

from __future__ import annotations

import logging
import tarfile
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import celltx
from celltx.bench import (
    Additive,
    LinearGeneEmbedding,
    NoChange,
    TrainMean,
    perturbation,
    perturbation_metrics,
    perturbation_split,
    summarize_perturbation,
)
from celltx.data._perturbation import condition_name, parse_condition, parse_conditions
from celltx.datasets import simulate_perturbseq


def _lognorm(x) -> np.ndarray:
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def _means(adata, log=True) -> pd.DataFrame:
    x = _lognorm(adata.X) if log else (adata.X.toarray() if sparse.issparse(adata.X) else adata.X)
    return (
        pd.DataFrame(x, columns=adata.var_names).groupby(adata.obs["condition"].to_numpy()).mean()
    )


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(seed=0)


@pytest.fixture(scope="module")
def bench(sim):
    return perturbation(sim, seed=0)


# ---------------------------------------------------------------------------- conditions
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ctrl", ()),
        ("ctrl+ctrl", ()),
        ("KLF1+ctrl", ("KLF1",)),
        ("ctrl+KLF1", ("KLF1",)),
        ("KLF1", ("KLF1",)),
        (" CEBPA + KLF1 ", ("CEBPA", "KLF1")),
        ("KLF1+CEBPA", ("KLF1", "CEBPA")),
        ("KLF1+KLF1", ("KLF1",)),
    ],
)
def test_parse_condition(text, expected):
    assert parse_condition(text) == expected
    assert parse_condition(condition_name(expected)) == expected


@pytest.mark.parametrize("bad", ["", "   ", None, np.nan, "A++B", "+A", "A+", 3])
def test_parse_condition_rejects(bad):
    with pytest.raises(ValueError):
        parse_condition(bad)


def test_condition_name_and_parse_conditions():
    assert condition_name(()) == "ctrl"
    assert condition_name(["A"]) == "A+ctrl"
    assert condition_name(("A", "B")) == "A+B"
    assert condition_name(("A",), control_value="NT", sep="_") == "A_NT"
    with pytest.raises(ValueError, match="sequence of genes"):
        condition_name("A")
    s = pd.Series(["ctrl", "ctrl+A", "A+ctrl", "B+A", "ctrl"], index=list("vwxyz"))
    genes, names = parse_conditions(s)
    assert list(names) == ["ctrl", "A+ctrl", "A+ctrl", "B+A", "ctrl"]
    assert genes["y"] == ("B", "A") and genes["v"] == ()
    assert list(names.index) == list("vwxyz")
    with pytest.raises(ValueError, match="max_genes=2"):
        parse_conditions(["ctrl", "A+B+C"], max_genes=2)
    assert parse_conditions(["A+B+C"], max_genes=3)[1].iloc[0] == "A+B+C"
    with pytest.raises(ValueError, match="NaN"):
        parse_conditions(pd.Series(["ctrl", None]))


# ----------------------------------------------------------------------------- simulator
def test_simulator_layout(sim):
    truth = sim.uns["simulation"]
    n_cond = 1 + 40 + 30
    assert sim.n_vars == 200 and sparse.isspmatrix_csr(sim.X)
    assert np.all(sim.X.data == np.round(sim.X.data)) and sim.X.data.min() >= 0
    conds = sim.obs["condition"].astype(str)
    assert conds.nunique() == n_cond
    assert (conds == "ctrl").sum() == 300
    assert conds.value_counts().min() >= 48  # 60 ± 20%
    assert ((conds == "ctrl").astype(int) == sim.obs["control"]).all()
    _, names = parse_conditions(conds)
    assert (names == conds).all()  # already canonical GEARS spelling
    assert sum(c.endswith("+ctrl") for c in conds.unique()) == 40
    assert list(sim.var["gene_name"]) == list(sim.var_names)
    assert truth["log_rate_delta"].shape == (n_cond, 200)
    assert truth["mean_expression"].shape == (n_cond, 200)
    assert sim.var["perturbed"].sum() == 40
    assert set(truth["grn"]["source"]) <= set(truth["perturbations"].index) | set(
        sim.var_names[sim.var["regulator"]]
    )
    assert set(truth["grn"].columns) == {"source", "target", "weight"} and len(truth["grn"]) > 200


def test_simulator_knockdown_and_truth_match_data(sim):
    truth = sim.uns["simulation"]
    pert = truth["perturbations"]
    emp = _means(sim)
    emp_delta = emp - emp.loc["ctrl"]
    true_delta = truth["mean_expression"] - truth["mean_expression"].loc["ctrl"]
    for gene in pert.index[pert["mode"] == "knockdown"]:
        cond = f"{gene}+ctrl"
        assert truth["log_rate_delta"].loc[cond, gene] <= -1.5
        assert true_delta.loc[cond, gene] < -0.5
        assert emp_delta.loc[cond, gene] < -0.3
    # the stored truth is what the cells show
    r = np.corrcoef(
        emp_delta.drop("ctrl").to_numpy().ravel(),
        true_delta.loc[emp_delta.index].drop("ctrl").to_numpy().ravel(),
    )[0, 1]
    assert r > 0.9
    # responses differ between perturbations: the truth is far from one average response
    d = true_delta.drop("ctrl").to_numpy()
    assert np.abs(d - d.mean(axis=0)).mean() > 0.5 * np.abs(d).mean()


def test_simulator_interactions(sim):
    truth = sim.uns["simulation"]
    combos = truth["combos"]
    D = truth["log_rate_delta"]
    E = truth["mean_expression"] - truth["mean_expression"].loc["ctrl"]
    assert combos["interacts"].sum() == 9 and (~combos["interacts"]).sum() == 21
    dev_rate, dev_expr = {}, {}
    for cond, row in combos.iterrows():
        a, b = f"{row.gene_a}+ctrl", f"{row.gene_b}+ctrl"
        dev_rate[cond] = np.abs(D.loc[cond] - D.loc[a] - D.loc[b]).max()
        dev_expr[cond] = np.abs(E.loc[cond] - E.loc[a] - E.loc[b]).mean()
    dev_rate, dev_expr = pd.Series(dev_rate), pd.Series(dev_expr)
    inter = combos["interacts"]
    assert dev_rate[~inter].max() < 1e-9  # exactly additive on the log scale
    assert dev_rate[inter].min() > 0.5
    # in log-normalised space, additivity holds only up to the per-cell normalisation
    assert dev_expr[inter].median() > 5 * dev_expr[~inter].median()
    assert dev_expr[inter].min() > 2 * dev_expr[~inter].median()
    assert set(combos.loc[inter, "interaction_type"]) <= {
        "synergy",
        "buffering",
        "epistasis",
        "neomorphic",
    }


def test_simulator_deterministic_and_unmeasured(tmp_path):
    kw = dict(
        n_genes=60, n_perturbations=8, n_combos=5, n_cells_per_condition=20, n_control_cells=40
    )
    a = simulate_perturbseq(seed=3, **kw)
    b = simulate_perturbseq(seed=3, **kw)
    c = simulate_perturbseq(seed=4, **kw)
    assert (a.X != b.X).nnz == 0 and a.X.shape == b.X.shape
    assert a.obs["condition"].equals(b.obs["condition"])
    pd.testing.assert_frame_equal(
        a.uns["simulation"]["log_rate_delta"], b.uns["simulation"]["log_rate_delta"]
    )
    assert a.X.shape != c.X.shape or (a.X != c.X).nnz > 0

    u = simulate_perturbseq(seed=3, n_unmeasured_targets=3, **kw)
    truth = u.uns["simulation"]
    hidden = list(truth["unmeasured_genes"])
    assert len(hidden) == 3 and u.n_vars == 60
    assert not set(hidden) & set(u.var_names)
    pert = truth["perturbations"]
    assert sorted(pert.index[~pert["measured"]]) == sorted(hidden)
    conds = set(u.obs["condition"].astype(str))
    for g in hidden:
        assert f"{g}+ctrl" in conds
        # the hidden regulator still acts on measured genes through the network
        assert (
            np.abs(
                truth["mean_expression"].loc[f"{g}+ctrl"] - truth["mean_expression"].loc["ctrl"]
            ).max()
            > 0.3
        )
    # ground truth survives an h5ad round trip
    u.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert list(back.uns["simulation"]["unmeasured_genes"]) == hidden


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_perturbations=5, n_combos=11),
        dict(n_perturbations=5, n_unmeasured_targets=6),
        dict(n_genes=20, n_perturbations=30),
        dict(interaction_fraction=1.5),
        dict(n_cells_per_condition=0),
    ],
)
def test_simulator_rejects(kwargs):
    with pytest.raises(ValueError):
        simulate_perturbseq(**kwargs)


# ---------------------------------------------------------------------------------- GEARS
def _gears_file(path, drop_obs=None):
    """A small file in the layout of GEARS' perturb_processed.h5ad (log-normalised X,
    Ensembl-like index, symbols in var['gene_name'], DE lists keyed by condition_name)."""
    sim = simulate_perturbseq(
        n_genes=30,
        n_perturbations=6,
        n_combos=3,
        n_cells_per_condition=12,
        n_control_cells=40,
        seed=2,
    )
    x = sparse.csr_matrix(_lognorm(sim.X).astype(np.float32))
    symbols = list(sim.var_names)
    symbols[-1] = symbols[-2]  # a duplicated symbol, as in real panels
    var = pd.DataFrame({"gene_name": symbols}, index=[f"ENSG{i:011d}" for i in range(sim.n_vars)])
    cond = sim.obs["condition"].astype(str)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(cond),
            "cell_type": "K562",
            "dose_val": np.where(cond == "ctrl", "1", "1+1"),
            "control": (cond == "ctrl").astype(int).to_numpy(),
        },
        index=sim.obs_names,
    )
    obs["condition_name"] = "K562_" + obs["condition"].astype(str) + "_" + obs["dose_val"]
    means = pd.DataFrame(x.toarray(), columns=var.index).groupby(cond.to_numpy()).mean()
    de, ranks = {}, {}
    for c in means.index:
        key = f"K562_{c}_{'1' if c == 'ctrl' else '1+1'}"
        order = (means.loc[c] - means.loc["ctrl"]).abs().sort_values(ascending=False).index
        ranks[key] = np.array(order, dtype=object)
        de[key] = np.array(order[:20], dtype=object)
    if drop_obs:
        obs = obs.drop(columns=drop_obs)
    a = ad.AnnData(X=x, obs=obs, var=var)
    a.uns["rank_genes_groups_cov_all"] = ranks
    a.uns["top_non_dropout_de_20"] = de
    a.uns["non_zeros_gene_idx"] = {k: np.arange(5) for k in de}
    a.write_h5ad(path)
    return a


def test_read_gears(tmp_path):
    orig = _gears_file(tmp_path / "perturb_processed.h5ad")
    a = celltx.datasets.read_gears(tmp_path)  # a folder works too
    assert a.var_names.is_unique and a.var_names[-1] != a.var_names[-2]
    assert list(a.var["gene_id"]) == list(orig.var_names)
    assert a.var_names[0] == orig.var["gene_name"].iloc[0]
    key = next(iter(a.uns["top_non_dropout_de_20"]))
    assert set(a.uns["top_non_dropout_de_20"][key]) <= set(a.var_names)  # ids → symbols
    assert "non_zeros_gene_idx" in a.uns and sparse.isspmatrix_csr(a.X)
    # the benchmark takes the DE genes from the GEARS entry
    df = perturbation(a, baselines=("no_change",), min_cells=2)
    assert set(df["de_source"]) == {"top_non_dropout_de_20"}


@pytest.mark.parametrize("missing", ["condition", "cell_type"])
def test_read_gears_missing_column(tmp_path, missing):
    _gears_file(tmp_path / "bad.h5ad", drop_obs=[missing])
    with pytest.raises(ValueError, match=missing):
        celltx.datasets.read_gears(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match="No GEARS file"):
        celltx.datasets.read_gears(tmp_path / "absent.h5ad")


def test_gears_loaders_offline(tmp_path, monkeypatch):
    import pooch

    src = tmp_path / "src.h5ad"
    orig = _gears_file(src)
    # zip in the layout of the Dataverse archive: <name>/perturb_processed.h5ad
    archive = tmp_path / "dl" / "norman.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src, "norman/perturb_processed.h5ad")
        zf.writestr("norman/go.csv", "a,b\n")
    a = celltx.datasets.norman2019(path=archive, data_dir=tmp_path / "out")
    assert (
        a.shape == orig.shape and (tmp_path / "out" / "norman" / "perturb_processed.h5ad").is_file()
    )

    # the download path, with pooch.retrieve standing in for the network
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar=False):
        calls.append((url, fname))
        dest = tmp_path / "cache0" / "adamson.zip"
        dest.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(dest, "w") as zf:
            zf.write(src, "adamson/perturb_processed.h5ad")
        return str(dest)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    b = celltx.datasets.adamson2016(data_dir=tmp_path / "cache")
    assert calls == [("https://dataverse.harvard.edu/api/access/datafile/6154417", "adamson.zip")]
    assert (
        b.n_obs == orig.n_obs
        and (tmp_path / "cache" / "adamson" / "perturb_processed.h5ad").is_file()
    )

    tar = tmp_path / "k562.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(src, "replogle_k562_essential/perturb_processed.h5ad")
    c = celltx.datasets.replogle2022_k562_essential(path=tar)
    assert c.n_vars == orig.n_vars
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("x.txt", "")
    with pytest.raises(ValueError, match="holds no"):
        celltx.datasets.norman2019(path=tmp_path / "empty.zip")


# ---------------------------------------------------------------------------------- split
def test_split_simulation(sim):
    s = perturbation_split(sim, seed=0)
    assert s.equals(perturbation_split(sim, seed=0))
    assert not s.equals(perturbation_split(sim, seed=1))
    assert set(s.index) == set(sim.obs["condition"].astype(str)) and s["ctrl"] == "train"
    assert {"train", "val", "unseen_single", "combo_seen1", "combo_seen2"} <= set(s)
    genes = {c: parse_condition(c) for c in s.index}
    train_single_genes = {genes[c][0] for c in s.index if s[c] == "train" and len(genes[c]) == 1}
    train_genes = {g for c in s.index if s[c] == "train" for g in genes[c]}
    for c, grp in s.items():
        if grp == "unseen_single":
            assert len(genes[c]) == 1 and genes[c][0] not in train_genes  # no leakage
        elif grp.startswith("combo_seen"):
            assert len(genes[c]) == 2
            assert sum(g in train_single_genes for g in genes[c]) == int(grp[-1])
    # every perturbed gene is either seen as a training single or held out
    assert 0.6 < len(train_single_genes) / 40 < 0.8
    # spelling variants share a group
    alt = perturbation_split(["ctrl", "A+ctrl", "ctrl+A", "B+ctrl", "A+B"], val_fraction=0)
    assert alt["A+ctrl"] == alt["ctrl+A"]


def test_split_single_and_errors(sim):
    s = perturbation_split(sim, split="single", seed=0)
    genes = {c: parse_condition(c) for c in s.index}
    test = s[s == "unseen_single"].index
    assert len(test) and set(s) <= {"train", "val", "unseen_single", "excluded"}
    held = {genes[c][0] for c in test}
    for c in s.index[s.isin(["train", "val"])]:
        assert not set(genes[c]) & held
    assert all(len(genes[c]) == 2 for c in s.index[s == "excluded"])
    with pytest.raises(ValueError, match="No control"):
        perturbation_split(["A+ctrl", "B+ctrl"])
    with pytest.raises(ValueError, match="max_genes"):
        perturbation_split(["ctrl", "A+B+C"])
    with pytest.raises(ValueError, match="split must be"):
        perturbation_split(sim, split="combo")
    with pytest.raises(ValueError, match="obs\\['cond'\\]"):
        perturbation_split(sim, perturbation_key="cond")


# -------------------------------------------------------------------------------- metrics
class _Oracle:
    """Predicts the observed mean of each condition (fit ignores the training data)."""

    def __init__(self, full, collapse=False):
        self.means = _means(full)
        self.collapse = collapse

    def fit(self, train):
        return self

    def predict(self, conditions):
        p = self.means.loc[list(conditions)].to_numpy()
        if self.collapse:  # one response for every condition
            ctrl = self.means.loc["ctrl"].to_numpy()
            p = np.repeat(ctrl + (p - ctrl).mean(axis=0, keepdims=True), len(p), axis=0)
        return p


def test_metrics_oracle_nochange_collapse(sim):
    df = perturbation(
        sim,
        baselines=("no_change",),
        predictors={"oracle": _Oracle(sim), "collapsed": _Oracle(sim, collapse=True)},
    )
    m = df.groupby("method")[
        ["pearson_delta_de", "pearson_delta", "direction_de", "mse", "spread_de", "spread_de_true"]
    ].mean()
    assert m.loc["oracle", "pearson_delta_de"] == pytest.approx(1.0)
    assert m.loc["oracle", "pearson_delta"] == pytest.approx(1.0)
    assert m.loc["oracle", "direction_de"] == 1.0 and m.loc["oracle", "mse"] < 1e-10
    assert m.loc["no_change", "mse"] > 0.1 and m.loc["no_change", "pearson_delta_de"] == 0.0
    assert m.loc["collapsed", "spread_de"] < 1e-6
    assert m.loc["oracle", "spread_de"] == pytest.approx(m.loc["oracle", "spread_de_true"])
    assert m.loc["collapsed", "spread_de_true"] > 0.5
    table = summarize_perturbation(df)
    assert table.loc[("collapsed", "all"), "spread_ratio"] == "0.000"
    assert table.loc[("oracle", "all"), "spread_ratio"] == "1.000"
    num = summarize_perturbation(df, as_text=False)
    assert num.loc[("oracle", "unseen_single"), ("pearson_delta_de", "mean")] == pytest.approx(1.0)


def test_perturbation_metrics_function():
    rng = np.random.default_rng(0)
    control = rng.normal(size=40)
    truth = control + rng.normal(size=(4, 40))
    m = perturbation_metrics(-(truth - control) + control, truth, control, n_de=5)
    assert np.allclose(m["pearson_delta_de"], -1.0) and np.allclose(m["direction_de"], 0.0)
    m = perturbation_metrics(truth, truth, control, de_genes=[np.array([0, 1])] * 4)
    assert (m["n_de"] == 2).all()
    with pytest.raises(ValueError, match="Shapes"):
        perturbation_metrics(truth[:, :3], truth, control)
    with pytest.raises(ValueError, match="finite"):
        perturbation_metrics(np.full_like(truth, np.nan), truth, control)


# ------------------------------------------------------------------------------ baselines
def test_baselines_on_simulator(bench):
    m = bench.groupby(["method", "subgroup"])[["pearson_delta_de", "mse_de"]].mean()
    assert set(bench["method"]) == {"no_change", "train_mean", "additive", "linear"}
    assert set(bench["subgroup"]) <= {"unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"}
    # additive is nearly exact for pairs of seen genes, and far better than no change
    assert m.loc[("additive", "combo_seen2"), "pearson_delta_de"] > 0.9
    assert (
        m.loc[("additive", "combo_seen2"), "mse_de"]
        < 0.5 * m.loc[("no_change", "combo_seen2"), "mse_de"]
    )
    # additive knows nothing about unseen genes
    assert m.loc[("additive", "unseen_single"), "pearson_delta_de"] == 0.0
    # the linear model generalises to unseen targets through gene co-expression
    lin = m.loc[("linear", "unseen_single"), "pearson_delta_de"]
    assert lin > 0.4
    assert lin > m.loc[("no_change", "unseen_single"), "pearson_delta_de"] + 0.3
    assert lin > m.loc[("train_mean", "unseen_single"), "pearson_delta_de"] + 0.2
    assert (
        m.loc[("linear", "unseen_single"), "mse_de"]
        < m.loc[("no_change", "unseen_single"), "mse_de"]
    )
    # train_mean gives one response to every condition
    assert bench.loc[bench["method"] == "train_mean", "spread_de"].max() < 1e-9


def test_baseline_classes(sim):
    s = perturbation_split(sim, seed=0)
    train = sim[sim.obs["condition"].astype(str).map(s).eq("train").to_numpy()].copy()
    single = s.index[(s == "train") & s.index.str.endswith("+ctrl")][0]
    unseen = s.index[s == "unseen_single"][0]
    emp = _means(train)
    add = Additive().fit(train)  # raw counts are log-normalised inside
    p = add.predict([single, unseen, "ctrl"])
    assert np.allclose(p[0], emp.loc[single], atol=1e-5)
    assert np.allclose(p[1], emp.loc["ctrl"], atol=1e-5) and np.allclose(p[2], p[1])
    tm = TrainMean().fit(train).predict([single, unseen])
    assert np.allclose(tm[0], tm[1])
    lin = LinearGeneEmbedding(n_components=5).fit(train)
    assert lin.gene_embedding_.shape == (200, 5)
    assert np.allclose(
        lin.predict(["NOTAGENE+ctrl"])[0], lin.control_mean_
    )  # no embedding → no change
    for emb in ("within", "pseudobulk"):
        assert LinearGeneEmbedding(embedding=emb).fit(train).predict([unseen]).shape == (1, 200)
    with pytest.raises(ValueError, match="not fitted"):
        NoChange().predict(["ctrl"])
    with pytest.raises(ValueError, match="No control"):
        NoChange().fit(train[train.obs["condition"] != "ctrl"].copy())
    with pytest.raises(ValueError, match="embedding"):
        LinearGeneEmbedding(embedding="bogus")


# ----------------------------------------------------------------------- benchmark runner
class _FakeModel:
    """Stands in for a trained model: predicts the observed means, obs_names in another
    spelling and order, genes shuffled."""

    def __init__(self, full):
        self.means = _means(full)

    def predict_perturbation(self, conditions, return_type="mean"):
        assert return_type == "mean"
        conds = list(conditions)[::-1]
        genes = list(self.means.columns)[::-1]
        obs_names = ["ctrl+" + c.split("+")[0] if c.endswith("+ctrl") else c for c in conds]
        out = ad.AnnData(
            X=self.means.loc[conds, genes].to_numpy(np.float32), var=pd.DataFrame(index=genes)
        )
        out.obs_names = obs_names
        return out


def test_perturbation_with_model_and_train_fn(sim):
    df = perturbation(sim, model=_FakeModel(sim), baselines=(), model_name="fake")
    assert set(df["method"]) == {"fake"}
    assert df["pearson_delta_de"].min() == pytest.approx(1.0, abs=1e-5)

    seen = {}

    def train_fn(train_adata):
        seen["conds"] = set(train_adata.obs["condition"].astype(str))
        seen["counts"] = bool(np.all(train_adata.X.data == np.round(train_adata.X.data)))
        return _FakeModel(sim)

    df = perturbation(sim, model=train_fn, baselines=("no_change",))
    s = perturbation_split(sim, seed=0)
    assert seen["conds"] == set(s.index[s == "train"]) and seen["counts"]
    assert set(df["condition"]) & seen["conds"] == set()
    with pytest.raises(ValueError, match="predict_perturbation"):
        perturbation(sim, model=object(), baselines=())


def test_perturbation_counts_equal_lognorm(sim, bench):
    logged = sim.copy()
    logged.X = sparse.csr_matrix(_lognorm(sim.X).astype(np.float32))
    df = perturbation(logged, baselines=("additive",))
    ref = bench[bench["method"] == "additive"].reset_index(drop=True)
    np.testing.assert_allclose(df["pearson_delta_de"], ref["pearson_delta_de"], atol=1e-4)
    # and via a layer
    layered = sim.copy()
    layered.layers["counts"] = sim.X.copy()
    layered.X = sparse.csr_matrix(sim.shape, dtype=np.float32)
    df2 = perturbation(layered, layer="counts", baselines=("additive",))
    np.testing.assert_allclose(df2["mse"], ref["mse"], rtol=1e-4)


def test_perturbation_bad_input(sim, caplog):
    no_ctrl = sim[sim.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="control cell"):
        perturbation(no_ctrl, baselines=("no_change",))
    bad = sim.copy()
    bad.obs["condition"] = bad.obs["condition"].astype(str)
    bad.obs.iloc[0, bad.obs.columns.get_loc("condition")] = "G001++G002"
    with pytest.raises(ValueError, match="empty token"):
        perturbation(bad, baselines=("no_change",))
    with pytest.raises(ValueError, match="Unknown baseline"):
        perturbation(sim, baselines=("gears",))
    # a held-out condition with a single cell is not scored
    s = perturbation_split(sim, seed=0)
    target = s.index[s == "unseen_single"][0]
    conds = sim.obs["condition"].astype(str).to_numpy()
    keep = (conds != target) | (np.cumsum(conds == target) == 1)
    with caplog.at_level(logging.WARNING, logger="celltx.bench._perturbation"):
        df = perturbation(sim[keep].copy(), baselines=("no_change",))
    assert target not in set(df["condition"]) and "fewer than 5 cells" in caplog.text
    with pytest.raises(ValueError, match="min_cells"):
        perturbation(sim, baselines=("no_change",), min_cells=10_000)


# ----------------------------------------------------------------------------------- plot
def test_perturbation_deltas_plot(bench, sim):
    import matplotlib.pyplot as plt

    true = pd.Series([-2.0, -1.0, 0.5, 1.5], index=list("ABCD"))
    ax = celltx.pl.perturbation_deltas(
        true, true.to_numpy() * 0.5, title="A+ctrl", annotate=2, show=False
    )
    assert ax.get_title() == "A+ctrl (Pearson 1.000)"
    assert {t.get_text() for t in ax.texts} == {"A", "D"}
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="same length"):
        celltx.pl.perturbation_deltas([1.0, 2.0], [1.0])
