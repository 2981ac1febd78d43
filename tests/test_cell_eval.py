"""Export to Arc Institute's cell-eval (and its metrics in the benchmark), and perturbation
data in pertpy's / scPerturb's layout."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import celltx
from celltx.bench import (
    Additive,
    cell_eval_command,
    perturbation,
    run_cell_eval,
    write_cell_eval,
)
from celltx.bench._perturbation import _cell_eval, _runner
from celltx.datasets import from_pertpy, simulate_perturbseq
from celltx.nn import preset

SMALL = {
    "n_genes": 40,
    "n_perturbations": 8,
    "n_combos": 4,
    "n_cells_per_condition": 20,
    "n_control_cells": 60,
    "seed": 0,
}
QUICK = {"baselines": ("no_change", "additive"), "min_cells": 2}


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(**SMALL)


def _counts(adata, key="condition") -> pd.Series:
    return adata.obs[key].astype(str).value_counts()


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _means(sim, conds) -> pd.DataFrame:
    model = Additive().fit(sim)
    return pd.DataFrame(model.predict(conds), index=conds, columns=sim.var_names)


def _perturbed(sim, n=3) -> list[str]:
    conds = [c for c in _counts(sim).index if c != "ctrl"]
    return sorted(conds)[:n]


# ------------------------------------------------------------------------------- layout
def test_write_cell_eval_layout(sim, tmp_path):
    conds = _perturbed(sim)
    pp, pr = tmp_path / "p" / "pred.h5ad", tmp_path / "real.h5ad"
    write_cell_eval(_means(sim, conds), sim, pp, pr)
    pred, real = ad.read_h5ad(pp), ad.read_h5ad(pr)
    observed = _counts(sim)
    for a in (pred, real):
        assert list(a.obs.columns) == ["target_gene"]
        assert list(a.var_names) == list(sim.var_names)
        assert a.obs_names.is_unique
        counts = _counts(a, "target_gene")
        assert set(counts.index) == {*conds, "non-targeting"}
        assert counts["non-targeting"] == observed["ctrl"]
        for c in conds:  # a mean profile is repeated once per observed cell
            assert counts[c] == observed[c]
        x = _dense(a.X)
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() < 15
        assert np.any(np.mod(x, 1) > 1e-3)  # log-normalised, not counts
    # the same control cells in both files, with their observed values
    ctrl_p = pred[pred.obs["target_gene"] == "non-targeting"]
    ctrl_r = real[real.obs["target_gene"] == "non-targeting"]
    assert list(ctrl_p.obs_names) == list(ctrl_r.obs_names)
    np.testing.assert_allclose(_dense(ctrl_p.X), _dense(ctrl_r.X))
    # the predicted rows are the prediction (clipped at 0), the observed rows the cells
    row = _dense(pred[pred.obs["target_gene"] == conds[0]].X)
    np.testing.assert_allclose(
        row,
        np.clip(_means(sim, conds).loc[[conds[0]]], 0, None).to_numpy().repeat(len(row), 0),
        rtol=1e-5,
        atol=1e-6,
    )
    assert set(real.obs_names[real.obs["target_gene"] == conds[0]]) == set(
        sim.obs_names[sim.obs["condition"] == conds[0]]
    )


def test_write_cell_eval_per_cell_spelling_and_options(sim):
    conds = _perturbed(sim, 2)
    means = _means(sim, conds)
    # per-cell predictions, as predict_perturbation(return_type="cells"), other spelling
    spelled = ["ctrl+" + c.split("+")[0] if c.endswith("+ctrl") else c for c in conds]
    cells = ad.AnnData(
        X=np.repeat(means.to_numpy(np.float32), 4, axis=0)[:, ::-1],
        obs=pd.DataFrame({"condition": np.repeat(spelled, 4)}),
        var=pd.DataFrame(index=list(sim.var_names)[::-1]),
    )
    cells.obs_names = [f"c{i}" for i in range(cells.n_obs)]
    pred, real = write_cell_eval(
        cells, sim, pert_col="gene", control_label="control", max_control_cells=10
    )
    assert _counts(pred, "gene").to_dict() == {conds[0]: 4, conds[1]: 4, "control": 10}
    assert _counts(real, "gene")["control"] == 10 and list(pred.var_names) == list(sim.var_names)
    np.testing.assert_allclose(
        _dense(pred[pred.obs["gene"] == conds[0]].X)[0], np.clip(means.iloc[0], 0, None), rtol=1e-5
    )
    # an array with conditions=, and predicted control rows are dropped
    arr = np.vstack([means.to_numpy(), means.to_numpy()[:1]])
    pred2, _ = write_cell_eval(arr, sim, conditions=[*conds, "ctrl"])
    assert set(pred2.obs["target_gene"]) == {*conds, "non-targeting"}


def test_write_cell_eval_from_a_model(sim):
    conds = _perturbed(sim, 2)
    means = _means(sim, conds)

    class _Model:
        def predict_perturbation(self, conditions, return_type="mean", n_cells=100):
            assert return_type == "cells"
            rows = means.loc[list(conditions)].to_numpy(np.float32)
            return ad.AnnData(
                X=np.repeat(rows, n_cells, axis=0),
                obs=pd.DataFrame({"condition": np.repeat(list(conditions), n_cells)}),
                var=pd.DataFrame(index=sim.var_names),
            )

    pred, _ = write_cell_eval(_Model(), sim, conditions=conds, predict_kwargs={"n_cells": 3})
    assert _counts(pred, "target_gene")[conds[0]] == 3
    with pytest.raises(ValueError, match="conditions="):
        write_cell_eval(_Model(), sim)


def test_write_cell_eval_refuses_bad_input(sim):
    conds = _perturbed(sim, 2)
    means = _means(sim, conds)
    ghost = pd.concat([means, means.iloc[:1].rename(index={conds[0]: "G999+ctrl"})])
    with pytest.raises(ValueError, match=r"no observed cells.*G999\+ctrl"):
        write_cell_eval(ghost, sim)
    with pytest.raises(ValueError, match=r"no prediction.*" + conds[1].replace("+", r"\+")):
        write_cell_eval(means.iloc[:1], sim, conditions=conds)
    with pytest.raises(ValueError, match="lacks 1 gene"):
        write_cell_eval(means.iloc[:, 1:], sim)
    no_ctrl = sim[sim.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="no control cells"):
        write_cell_eval(means, no_ctrl)
    with pytest.raises(ValueError, match="NaN"):
        write_cell_eval(means.where(means > 1e9), sim)


def test_cell_eval_command_and_missing_package(monkeypatch):
    cmd = cell_eval_command("a b/pred.h5ad", "real.h5ad", "out", pert_col="gene")
    assert cmd.startswith("cell-eval run -ap 'a b/pred.h5ad' -ar real.h5ad --pert-col gene")
    monkeypatch.setattr(_cell_eval, "cell_eval_installed", lambda: False)
    with pytest.raises(ImportError, match="cell-eval run -ap pred.h5ad"):
        run_cell_eval("pred.h5ad", "real.h5ad", "out")
    with pytest.raises(ValueError, match="profile"):
        run_cell_eval("pred.h5ad", "real.h5ad", "out", profile="bogus")


# ------------------------------------------------------------------------------ benchmark
def test_benchmark_writes_cell_eval_files(sim, tmp_path, caplog):
    plain = perturbation(sim, **QUICK)
    with caplog.at_level(logging.WARNING, logger="celltx.bench._perturbation"):
        df = perturbation(sim, **QUICK, cell_eval_dir=tmp_path, cell_eval=False)
    # the export changes no score (only the wall time)
    pd.testing.assert_frame_equal(df.drop(columns="seconds"), plain.drop(columns="seconds"))
    assert "cell-eval run -ap" in caplog.text
    assert "cell_eval_commands.sh" in caplog.text
    real = ad.read_h5ad(tmp_path / "real.h5ad")
    table = df[df["method"] == "additive"].set_index("condition")
    observed = _counts(real, "target_gene")
    assert set(observed.index) == {*table.index, "non-targeting"}
    assert observed["non-targeting"] == int((sim.obs["condition"] == "ctrl").sum())
    for c, n in table["n_cells"].items():
        assert observed[c] == n
    for method in ("no_change", "additive"):
        pred = ad.read_h5ad(tmp_path / method / "pred.h5ad")
        assert list(pred.var_names) == list(real.var_names)
        assert _counts(pred, "target_gene").to_dict() == observed.to_dict()
    commands = (tmp_path / "cell_eval_commands.sh").read_text()
    assert commands.count("cell-eval run") == 2 and "--control-pert non-targeting" in commands


def test_benchmark_exports_per_cell_model_predictions(sim, tmp_path):
    x = np.log1p(_dense(sim.X) / _dense(sim.X).sum(1, keepdims=True) * 1e4)
    truth = pd.DataFrame(x, columns=sim.var_names).groupby(sim.obs["condition"].to_numpy()).mean()

    class _CellModel:  # predicts each condition's observed mean from 5 "cells"
        def predict_perturbation(self, conditions, return_type="mean"):
            rows = truth.loc[list(conditions)].to_numpy(np.float32)
            if return_type == "mean":
                return ad.AnnData(
                    rows,
                    obs=pd.DataFrame(index=list(conditions)),
                    var=pd.DataFrame(index=sim.var_names),
                )
            noise = np.tile(np.array([-0.1, -0.05, 0, 0.05, 0.1], np.float32), len(rows))[:, None]
            return ad.AnnData(
                np.repeat(rows, 5, axis=0) + noise,
                obs=pd.DataFrame({"condition": np.repeat(list(conditions), 5)}),
                var=pd.DataFrame(index=sim.var_names),
            )

    df = perturbation(
        sim,
        model=_CellModel(),
        model_name="m",
        baselines=(),
        min_cells=2,
        cell_eval_dir=tmp_path,
        cell_eval=False,
    )
    plain = perturbation(sim, model=_CellModel(), model_name="m", baselines=(), min_cells=2)
    pd.testing.assert_frame_equal(df.drop(columns="seconds"), plain.drop(columns="seconds"))
    assert df["pearson_delta_de"].min() > 0.999
    pred = ad.read_h5ad(tmp_path / "m" / "pred.h5ad")
    counts = _counts(pred, "target_gene")
    assert all(counts[c] == 5 for c in df["condition"])


def test_benchmark_cell_eval_option_errors(sim, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="cell_eval_dir"):
        perturbation(sim, **QUICK, cell_eval=True)
    with pytest.raises(ValueError, match="cell_eval_profile"):
        perturbation(sim, **QUICK, cell_eval_dir=tmp_path, cell_eval_profile="bogus")
    monkeypatch.setattr(_runner, "cell_eval_installed", lambda: False)
    with pytest.raises(ImportError, match="pip install cell-eval"):
        perturbation(sim, **QUICK, cell_eval_dir=tmp_path, cell_eval=True)


def test_benchmark_reports_cell_eval_metrics(sim, tmp_path):
    pytest.importorskip("cell_eval")
    df = perturbation(sim, **QUICK, cell_eval_dir=tmp_path)
    for col in (
        "cell_eval_pearson_delta",
        "cell_eval_mse",
        "cell_eval_mae",
        "cell_eval_discrimination_score_l1",
        "cell_eval_overlap_at_N",
    ):
        assert col in df.columns
    assert list(df.columns[-2:]) == ["cell_eval_error", "error"]
    assert df["cell_eval_error"].isna().all()
    add = df[df["method"] == "additive"]
    assert add["cell_eval_mse"].notna().all() and add["cell_eval_mae"].notna().all()
    # no_change predicts the control mean (positive, so unclipped): the same MSE both ways
    nc = df[df["method"] == "no_change"]
    np.testing.assert_allclose(nc["cell_eval_mse"], nc["mse"], rtol=1e-4)
    for method in ("no_change", "additive"):
        assert (tmp_path / method / "results.csv").is_file()


# --------------------------------------------------------------------- pertpy / scPerturb
def _pertpy_labels(conditions: pd.Series, sep: str, control: str) -> pd.Series:
    """GEARS conditions in pertpy's / scPerturb's spelling: bare genes, pairs joined by sep."""

    def one(c: str) -> str:
        if c == "ctrl":
            return control
        genes = [g for g in c.split("+") if g != "ctrl"]
        return sep.join(genes)

    return conditions.astype(str).map(one)


@pytest.mark.parametrize(
    ("key", "sep", "control", "extra"),
    [
        ("perturbation_name", "+", "control", {}),  # pt.dt.norman_2019()
        ("perturbation", "_", "control", {"nperts": True}),  # scPerturb files
        ("gene_target", "+", "NT", {}),  # pt.dt.papalexi_2021()["rna"]
        ("target_gene", "+", "non-targeting", {}),  # cell-eval / Arc
    ],
)
def test_from_pertpy_layouts(sim, key, sep, control, extra):
    a = sim.copy()
    a.obs = pd.DataFrame(
        {key: _pertpy_labels(sim.obs["condition"], sep, control).to_numpy()}, index=sim.obs_names
    )
    if extra.get("nperts"):
        a.obs["nperts"] = [
            len([g for g in c.split("+") if g != "ctrl"]) for c in sim.obs["condition"].astype(str)
        ]
    out = from_pertpy(a, sep=sep)
    assert list(out.obs["condition"].astype(str)) == list(sim.obs["condition"].astype(str))
    assert "condition" not in a.obs  # a copy
    assert list(out.obs[key]) == list(a.obs[key])


def test_from_pertpy_mapping_and_errors():
    obs = pd.DataFrame(
        {
            "perturbation": ["ctrl_g1", "ctrl_g1", "ATF6_g2", "ATF6_g2", "XBP1_g1"],
            "nperts": [1, 1, 1, 1, 1],
        }
    )
    a = ad.AnnData(np.zeros((5, 2), np.float32), obs=obs)
    with pytest.raises(ValueError, match="nperts"):  # guide labels look like pairs at "_"
        from_pertpy(a, sep="_", control_values="ctrl_g1")
    with pytest.raises(ValueError, match="No control cell.*ctrl_g1"):
        from_pertpy(a, nperts_key=None)
    mapped = from_pertpy(
        a, sep="_", mapping={"ctrl_g1": "control", "ATF6_g2": "ATF6", "XBP1_g1": "XBP1"}
    )
    assert list(mapped.obs["condition"]) == ["ctrl", "ctrl", "ATF6+ctrl", "ATF6+ctrl", "XBP1+ctrl"]
    same = from_pertpy(a, sep="_", control_values="ctrl_g1", nperts_key=None, copy=False)
    assert same is a and list(a.obs["condition"])[:3] == ["ctrl", "ctrl", "ATF6+g2"]
    b = ad.AnnData(
        np.zeros((3, 2), np.float32), obs=pd.DataFrame({"perturbation": ["control", "A+B", None]})
    )
    with pytest.raises(ValueError, match="NaN"):
        from_pertpy(b)
    b.obs["perturbation"] = ["control", "A__B", "A+B"]
    with pytest.raises(ValueError, match="empty part"):
        from_pertpy(b[:2].copy(), sep="_")
    with pytest.raises(ValueError, match="GEARS notation"):  # a "+" inside a gene
        from_pertpy(b[[0, 2]].copy(), sep="_")
    with pytest.raises(ValueError, match="No perturbation column"):
        from_pertpy(ad.AnnData(np.zeros((2, 2)), obs=pd.DataFrame({"x": ["a", "b"]})))


def test_pertpy_layout_works_directly(sim):
    """pertpy's Norman layout ("control", "KLF1", "FEV+ISL2") needs no conversion."""
    a = sim.copy()
    a.obs["perturbation_name"] = _pertpy_labels(sim.obs["condition"], "+", "control").to_numpy()
    ref = perturbation(sim, baselines=("additive",), min_cells=2)
    df = perturbation(
        a,
        perturbation_key="perturbation_name",
        control_value="control",
        baselines=("additive",),
        min_cells=2,
    )
    assert list(df["condition"]) == [c.replace("+ctrl", "+control") for c in ref["condition"]]
    np.testing.assert_allclose(df["pearson_delta_de"], ref["pearson_delta_de"])
    conv = perturbation(from_pertpy(a), baselines=("additive",), min_cells=2)
    pd.testing.assert_frame_equal(conv.drop(columns="seconds"), ref.drop(columns="seconds"))

    from celltx.model import ScGPT

    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    ScGPT.setup_anndata(a, perturbation_key="perturbation_name", control_value="control")
    model = ScGPT(a, **preset("tiny"))
    conds = model._registered_conditions()
    assert "control" in conds
    expected = _pertpy_labels(sim.obs["condition"], "+", "control")
    assert set(conds) == {c if c == "control" or "+" in c else f"{c}+control" for c in expected}
    assert isinstance(celltx.datasets.PERTPY_PERTURBATION_KEYS, tuple)
