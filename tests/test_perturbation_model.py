"""Perturbation prediction with ScGPT: setup, tokens, training, predict_perturbation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch

import celltx
from celltx.model import ScGPT
from celltx.nn import PERT_PAD

CPU = {"accelerator": "cpu", "enable_progress_bar": False}
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.0}


def _sim(**kw):
    args = {
        "n_genes": 60,
        "n_perturbations": 8,
        "n_combos": 4,
        "n_cells_per_condition": 30,
        "n_control_cells": 120,
        "seed": 0,
    }
    adata = celltx.datasets.simulate_perturbseq(**{**args, **kw})
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="module")
def _trained_pert():
    """A tiny model trained on a simulated screen with two targets outside the panel."""
    scvi.settings.seed = 0
    adata = _sim(n_unmeasured_targets=2)
    ScGPT.setup_anndata(adata, perturbation_key="condition")
    model = ScGPT(adata, **TINY)
    model.train(
        max_epochs=8,
        task="perturbation",
        lr=3e-3,
        batch_size=64,
        train_size=1.0,
        check_val_every_n_epoch=None,
        **CPU,
    )
    return model, adata


def test_setup_errors():
    adata = _sim()
    with pytest.raises(ValueError, match="perturbation_key='cond'"):
        ScGPT.setup_anndata(adata, perturbation_key="cond")
    with pytest.raises(ValueError, match="No control cells"):
        ScGPT.setup_anndata(adata, perturbation_key="condition", control_value="control")
    bad = adata.copy()
    bad.obs["condition"] = bad.obs["condition"].astype(str)
    bad.obs.iloc[0, bad.obs.columns.get_loc("condition")] = "G001+G002+G003"
    with pytest.raises(ValueError, match="more than max_genes=2"):
        ScGPT.setup_anndata(bad, perturbation_key="condition")
    one = adata.copy()
    one.obs["condition"] = one.obs["condition"].astype(str)
    one.obs.iloc[0, one.obs.columns.get_loc("condition")] = "G059+ctrl"
    with pytest.raises(ValueError, match="fewer than 2 cells"):
        ScGPT.setup_anndata(one, perturbation_key="condition")
    counts = celltx.datasets.simulate_perturbseq(n_genes=60, n_perturbations=8, n_combos=4, seed=0)
    with pytest.raises(ValueError, match="raw counts"):
        ScGPT.setup_anndata(counts, perturbation_key="condition")
    # nothing was registered or changed by the failed calls
    assert "_scvi_uuid" not in adata.uns and "_scvi_perturbation" not in adata.obs


def test_conditions_are_canonical_and_plain_genes_work():
    adata = _sim()
    plain = adata.obs["condition"].astype(str).str.replace("+ctrl", "", regex=False)
    plain = plain.where(~plain.str.contains(r"\+"), adata.obs["condition"].astype(str))
    adata.obs["target"] = plain.replace({"ctrl": "ctrl"})
    ScGPT.setup_anndata(adata, perturbation_key="target")
    model = ScGPT(adata, **TINY)
    conds = model._registered_conditions()
    assert "ctrl" in conds and all(c == "ctrl" or "+" in c for c in conds)
    assert set(conds) == set(adata.obs["condition"].astype(str))


def test_tokens_keep_every_panel_gene_and_flag_targets(_trained_pert):
    model, adata = _trained_pert
    m = model.module
    sim = adata.uns["simulation"]
    unmeasured = [g for g in model.vocab.genes if g not in set(adata.var_names)]
    assert len(unmeasured) == 2  # tokens for the perturbed genes outside the panel
    x = torch.as_tensor(adata.X[:3].toarray() if hasattr(adata.X, "toarray") else adata.X[:3])
    ids = torch.as_tensor(
        model._condition_gene_ids(
            [f"{adata.var_names[5]}+{unmeasured[0]}", "ctrl", f"{unmeasured[1]}+ctrl"]
        )
    )
    m.tokenizer.max_seq_len = 8  # a short max_seq_len must not truncate the perturbation sequence
    with m.gene_panel(torch.as_tensor(model._gene_ids(adata))):
        tokens, flags, cols = m.perturb_tokens(x, ids)
    m.tokenizer.max_seq_len = 1200
    assert len(cols) == adata.n_vars and tokens.gene_ids.shape[1] == 1 + adata.n_vars + 2
    # cell 0: one panel gene + one extra token flagged; cell 1: nothing; cell 2: one extra
    assert (flags == 1).sum(1).tolist() == [2, 0, 1]
    extra = tokens.gene_ids[:, 1 + adata.n_vars :]
    assert extra[0, 1] == model.vocab[unmeasured[0]] and not tokens.padding_mask[0, -1]
    assert tokens.padding_mask[1, -2:].all() and (flags[1, -2:] == PERT_PAD).all()
    assert flags[0, 1 + 5] == 1  # the panel gene's own token
    assert "simulation" in adata.uns and len(sim) > 0


def test_training_and_predictions(_trained_pert):
    model, adata = _trained_pert
    mse = model.history["pert_mse_train"].iloc[:, 0].astype(float)
    assert mse.iloc[-1] < mse.iloc[0]
    conds = ["ctrl", adata.obs["condition"].cat.categories[1]]
    unmeasured = [g for g in model.vocab.genes if g not in set(adata.var_names)]
    conds.append(f"{unmeasured[0]}+ctrl")
    pred = model.predict_perturbation(conds, n_cells=40)
    assert pred.shape == (3, adata.n_vars) and np.isfinite(pred.X).all()
    assert list(pred.obs["n_genes"]) == [0, 1, 1]
    assert list(pred.var_names) == list(adata.var_names)
    cells = model.predict_perturbation(conds[:2], n_cells=10, return_type="cells")
    assert cells.shape == (20, adata.n_vars) and cells.obs["condition"].nunique() == 2
    # reproducible, and the mean of the cells is the mean prediction
    again = model.predict_perturbation(conds[:2], n_cells=10)
    np.testing.assert_allclose(again.X[1], cells.X[10:].mean(0), rtol=1e-5, atol=1e-5)
    eff = model.get_perturbation_effects(conds[1], n_cells=40, top_n=5)
    assert len(eff) == 5 and (eff["delta"].abs().diff().dropna() <= 1e-6).all()


def test_model_learns_seen_responses(_trained_pert):
    """On seen single perturbations, predicted deltas (against control) follow each
    condition's own response on its top-20 DE genes better than the training mean of all
    perturbed cells does (one response for everything), and they differ between conditions."""
    model, adata = _trained_pert
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    cond = adata.obs["condition"].astype(str).to_numpy()
    ctrl = X[cond == "ctrl"].mean(0)
    train_mean = X[cond != "ctrl"].mean(0) - ctrl
    singles = sorted(c for c in set(cond) if c.endswith("+ctrl"))
    pred = np.asarray(model.predict_perturbation(singles, n_cells=60).X) - ctrl
    r_model, r_mean, de_all = [], [], []
    for i, c in enumerate(singles):
        truth = X[cond == c].mean(0) - ctrl
        de = np.argsort(-np.abs(truth))[:20]
        de_all.append(de)
        r_model.append(np.corrcoef(pred[i, de], truth[de])[0, 1])
        r_mean.append(np.corrcoef(train_mean[de], truth[de])[0, 1])
    assert np.mean(r_model) > np.mean(r_mean) + 0.05, (r_model, r_mean)
    # not one average response: predicted deltas vary across conditions on the DE genes
    de = np.unique(np.concatenate(de_all))
    truth_all = np.stack([X[cond == c].mean(0) - ctrl for c in singles])
    spread_pred = pred[:, de].std(0).mean()
    spread_true = truth_all[:, de].std(0).mean()
    assert spread_pred > 0.3 * spread_true, (spread_pred, spread_true)


def test_predict_errors(_trained_pert, pbmc):
    model, adata = _trained_pert
    with pytest.raises(ValueError, match="not in the model's gene vocabulary: \\['NOTAGENE'\\]"):
        model.predict_perturbation(["NOTAGENE+ctrl"])
    g = list(adata.var_names[:3])
    with pytest.raises(ValueError, match="at most 2"):
        model.predict_perturbation("+".join(g))
    with pytest.raises(ValueError, match="return_type"):
        model.predict_perturbation("ctrl", return_type="median")
    ScGPT.setup_anndata(pbmc)
    plain = ScGPT(pbmc, **TINY, max_seq_len=64)
    with pytest.raises(ValueError, match="no perturbation parts"):
        plain.predict_perturbation("CD3E+ctrl")
    with pytest.raises(ValueError, match="perturbation_key"):
        plain.train(max_epochs=1, task="perturbation", **CPU)


def test_save_load_keeps_predictions(_trained_pert, tmp_path):
    model, adata = _trained_pert
    cond = adata.obs["condition"].cat.categories[2]
    before = model.predict_perturbation(cond, n_cells=20).X
    model.save(tmp_path / "m", overwrite=True)
    loaded = ScGPT.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.predict_perturbation(cond, n_cells=20).X, before, atol=1e-5)
    assert isinstance(loaded.get_perturbation_effects(cond, n_cells=20), pd.DataFrame)
