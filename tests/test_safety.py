"""Unusual and bad input (issue "Safe by default"): empty cells in any batch composition,
tiny data, backed data, mis-ordered MuData modalities, heads that were never trained,
malformed perturbation requests, impossible hyperparameters, failed setups that must leave
the user's data as it was."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

import celltx
from celltx.model import ScGPT
from celltx.nn import preset

from _helpers import FIXTURES, need

TINY = preset("tiny", d_model=32, n_heads=4)
CPU = {"accelerator": "cpu", "enable_progress_bar": False}


def _snapshot(a: ad.AnnData) -> dict:
    """What of an AnnData a celltx call must leave as it was (not scvi-tools' own keys)."""
    dense = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
    return {
        "X": dense.copy(),
        "layers": {
            k: (v.toarray() if sparse.issparse(v) else np.asarray(v)).copy()
            for k, v in a.layers.items()
        },
        "obs": a.obs[[c for c in a.obs.columns if not str(c).startswith("_scvi")]].copy(),
        "var": a.var.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in a.obsm.items()},
    }


def _assert_unchanged(a: ad.AnnData, snap: dict) -> None:
    dense = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
    np.testing.assert_array_equal(dense, snap["X"])
    assert set(a.layers) == set(snap["layers"])
    for k, v in snap["layers"].items():
        got = a.layers[k]
        np.testing.assert_array_equal(got.toarray() if sparse.issparse(got) else np.asarray(got), v)
    pd.testing.assert_frame_equal(
        a.obs[[c for c in a.obs.columns if not str(c).startswith("_scvi")]], snap["obs"]
    )
    pd.testing.assert_frame_equal(a.var, snap["var"])
    assert set(a.obsm) == set(snap["obsm"])


# --- 6. cells without any vocabulary gene -------------------------------------------------
def test_batches_made_only_of_empty_cells(pbmc):
    X = pbmc.X.toarray() if sparse.issparse(pbmc.X) else np.array(pbmc.X)
    X[:6] = 0
    pbmc.X = X
    ScGPT.setup_anndata(pbmc)
    model = ScGPT(pbmc, **TINY)
    model.is_trained_ = True  # embeddings of random weights are fine here
    with pytest.warns(UserWarning, match="no expressed gene"):
        alone = model.get_latent_representation(indices=[0, 1], batch_size=2)
    with pytest.warns(UserWarning, match="no expressed gene"):
        mixed = model.get_latent_representation(indices=[0, 1, 10, 11], batch_size=4)
    with pytest.warns(UserWarning, match="no expressed gene"):
        one = model.get_latent_representation(indices=[0], batch_size=1)
    # the documented behaviour: the embedding of a sequence holding only <cls>, whatever the batch
    np.testing.assert_allclose(alone, mixed[:2], atol=1e-5)
    np.testing.assert_allclose(one[0], alone[1], atol=1e-5)
    # and a training step on a batch of only empty cells, for every objective
    module = model.module
    module.train()
    tensors = {
        REGISTRY_KEYS.X_KEY: torch.zeros(3, pbmc.n_vars),
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(3, 1),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(3, 1),
    }
    for weights in ({"gep": 1.0, "mvc": 1.0}, {"gep": 1.0, "mvc": 1.0, "ecs": 10.0}):
        module.set_objective(**weights)
        _, _, loss = module(tensors)
        assert torch.isfinite(loss.loss)


# --- 7. no validation cells ------------------------------------------------------------------
def test_training_without_validation_cells(pbmc):
    small = pbmc[:8].copy()
    ScGPT.setup_anndata(small)
    model = ScGPT(small, **TINY)
    model.train(max_epochs=1, batch_size=4, **CPU)  # 8 cells: the 0.9 split leaves none
    assert model.is_trained_ and "train_loss" in model.history
    assert "validation_loss" not in model.history
    sub = pbmc[:64].copy()
    ScGPT.setup_anndata(sub)
    model = ScGPT(sub, **TINY)
    model.train(max_epochs=1, train_size=1.0, batch_size=32, **CPU)
    assert model.is_trained_ and len(model.validation_indices) == 0
    with pytest.raises(ValueError, match="no validation cells"):
        model.train(max_epochs=1, train_size=1.0, early_stopping=True, **CPU)


# --- 8. disk-backed AnnData --------------------------------------------------------------------
def test_backed_sparse_anndata_works_as_in_memory(pbmc, tmp_path):
    pbmc.X = sparse.csr_matrix(pbmc.X)
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    ScGPT.setup_anndata(backed)
    model = ScGPT(backed, **TINY)
    model.is_trained_ = True
    ScGPT.setup_anndata(pbmc)
    twin = ScGPT(pbmc, **TINY)
    twin.module.load_state_dict(model.module.state_dict())
    twin.is_trained_ = True
    np.testing.assert_array_equal(
        model.get_latent_representation(), twin.get_latent_representation()
    )
    again = ad.read_h5ad(path, backed="r")  # a backed query of a model built in memory
    np.testing.assert_array_equal(
        twin.get_latent_representation(again), twin.get_latent_representation()
    )
    model.train(max_epochs=1, batch_size=64, **CPU)
    assert model.is_trained_


def test_backed_expression_check_reads_in_chunks(pbmc, tmp_path):
    X = sparse.csr_matrix(pbmc.X)
    X.data[5] = -1.0
    pbmc.X = X
    pbmc.write_h5ad(tmp_path / "neg.h5ad")
    backed = ad.read_h5ad(tmp_path / "neg.h5ad", backed="r")
    with pytest.raises(ValueError, match="negative values"):
        ScGPT.setup_anndata(backed)


# --- 3. MuData modalities are paired by obs_names, never by position ---------------------------
def test_mudata_modalities_in_another_order_are_refused():
    mdata = celltx.datasets.simulate_multiome(n_cells=60)
    shuffled = md.MuData({"rna": mdata.mod["rna"].copy(), "atac": mdata.mod["atac"][::-1].copy()})
    mods = {"rna_layer": "rna", "atac_layer": "atac"}
    with pytest.raises(ValueError, match="another order.*pad_mosaic"):
        ScGPT.setup_mudata(shuffled, modalities=mods)
    assert not [k for k in shuffled.obs.columns if str(k).startswith("_scvi")]
    fixed = celltx.data.pad_mosaic(shuffled)
    ScGPT.setup_mudata(fixed, modalities=mods)
    model = ScGPT(fixed, **TINY, max_peaks=32)
    model.is_trained_ = True
    ScGPT.setup_mudata(mdata, modalities=mods)
    ref = model.get_latent_representation(mdata)
    emb = model.get_latent_representation()
    np.testing.assert_array_equal(emb, ref[mdata.obs_names.get_indexer(fixed.obs_names)])
    with pytest.raises(ValueError, match="another order"):
        model.get_latent_representation(shuffled)
    with pytest.raises(ValueError, match="another order"):
        model.predict_rna_from_atac(shuffled)


# --- 4. heads that were never trained ---------------------------------------------------------
def test_untrained_classifier_is_refused(trained, pbmc):
    model, _ = trained  # generative training only, with labels registered
    with pytest.raises(ValueError, match="never trained.*task='annotation'"):
        model.predict()
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    fresh = ScGPT(pbmc, **TINY)
    with pytest.raises(ValueError, match="never trained"):
        fresh.predict()
    with pytest.warns(UserWarning, match="neither trained nor loaded"):
        fresh.get_latent_representation(indices=np.arange(4))


def test_pretrained_classifier_state_follows_the_file(pbmc):
    tiefree = ad.read_h5ad(need(FIXTURES / "pbmc68k_tiefree.h5ad"))
    tiefree.obs["cell_type"] = pbmc.obs["cell_type"].to_numpy()
    ScGPT.setup_anndata(tiefree, labels_key="cell_type")
    model = ScGPT.load_pretrained(FIXTURES / "ckpt_small", tiefree, accelerator="cpu")
    assert "cls_decoder" in model.checkpoint_report_.initialised
    with pytest.raises(ValueError, match="never trained"):
        model.predict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # loaded weights: no "untrained" warning
        model.get_latent_representation(indices=np.arange(4))


# --- 5. perturbation requests ----------------------------------------------------------------
@pytest.fixture(scope="module")
def _pert():
    adata = celltx.datasets.simulate_perturbseq(
        n_genes=60,
        n_perturbations=6,
        n_combos=2,
        n_cells_per_condition=12,
        n_control_cells=40,
        seed=0,
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ScGPT.setup_anndata(adata, perturbation_key="condition")
    return adata


def test_untrained_perturbation_head_is_refused(_pert):
    model = ScGPT(_pert, **TINY)
    cond = str(_pert.obs["condition"].cat.categories[1])
    with pytest.raises(ValueError, match="never trained.*task='perturbation'"):
        model.predict_perturbation(cond)


@pytest.mark.parametrize("cond", ["ctrl+ctrl", "{g}+{g}", "{g}+ctrl+ctrl", "{g}+{h}+ctrl"])
def test_malformed_conditions_are_refused(_pert, cond):
    model = ScGPT(_pert, **TINY)
    model.module.pert_trained.fill_(True)
    g, h = (str(x) for x in _pert.var_names[:2])
    with pytest.raises(ValueError, match="Condition"):
        model.predict_perturbation(cond.format(g=g, h=h), n_cells=4)


def test_perturbed_control_cells_are_refused(_pert):
    model = ScGPT(_pert, **TINY)
    model.module.pert_trained.fill_(True)
    perturbed = _pert[_pert.obs["condition"] != "ctrl"].copy()
    cond = str(_pert.obs["condition"].cat.categories[1])
    with pytest.raises(ValueError, match="perturbed cells"):
        model.predict_perturbation(cond, control_adata=perturbed, n_cells=4)
    ctrl = _pert[_pert.obs["condition"] == "ctrl"].copy()
    assert model.predict_perturbation(cond, control_adata=ctrl, n_cells=4).n_obs == 1


def test_small_raw_counts_are_refused_for_perturbation():
    adata = celltx.datasets.simulate_perturbseq(
        n_genes=40,
        n_perturbations=4,
        n_combos=1,
        n_cells_per_condition=8,
        n_control_cells=20,
        seed=1,
    )
    rng = np.random.default_rng(0)
    adata.X = rng.poisson(1.0, size=adata.shape).astype(np.float32)  # counts, max well below 30
    assert adata.X.max() <= 30
    with pytest.raises(ValueError, match="raw counts"):
        ScGPT.setup_anndata(adata, perturbation_key="condition")
    assert not [k for k in adata.obs.columns if str(k).startswith("_scvi")]


# --- 10. impossible settings, failed setups ----------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_heads": 0}, "n_heads=0"),
        ({"d_model": 0}, "d_model=0"),
        ({"d_model": 30, "n_heads": 4}, "not divisible"),
        ({"n_layers": 0}, "n_layers=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"max_seq_len": 1}, "max_seq_len=1"),
        ({"n_heads": 4.5}, "n_heads=4.5"),
        ({"activation": "tanh"}, "activation"),
        ({"n_bins": 1}, "n_bins=1"),
    ],
)
def test_impossible_model_settings(pbmc, kw, match):
    ScGPT.setup_anndata(pbmc)
    with pytest.raises(ValueError, match=match):
        ScGPT(pbmc, **{**TINY, **kw})


def test_zero_epochs_is_refused(pbmc):
    ScGPT.setup_anndata(pbmc)
    model = ScGPT(pbmc, **TINY)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_epochs"):
            model.train(max_epochs=bad, **CPU)
    assert not model.is_trained_


def test_failed_setup_and_load_leave_no_registration(pbmc):
    pbmc.obs["b"] = pbmc.obs["cell_type"].astype(object)
    pbmc.obs.iloc[3, pbmc.obs.columns.get_loc("b")] = np.nan
    before_obs, before_uns = set(pbmc.obs.columns), set(pbmc.uns)
    with pytest.raises(ValueError, match="missing values"):
        ScGPT.setup_anndata(pbmc, batch_key="b")
    assert set(pbmc.obs.columns) == before_obs and set(pbmc.uns) == before_uns
    # load_pretrained registers the data, then finds too few genes: nothing may stay behind
    renamed = pbmc.copy()
    renamed.var_names = [g if i % 10 == 0 else f"X{i}" for i, g in enumerate(renamed.var_names)]
    with pytest.raises(ValueError, match="genes"):
        ScGPT.load_pretrained(need(FIXTURES / "ckpt_small"), renamed, accelerator="cpu")
    assert set(renamed.obs.columns) == before_obs and set(renamed.uns) == before_uns
    # a registration failing inside scvi-tools keeps the earlier registration intact
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    codes = pbmc.obs["_scvi_labels"].copy()
    with pytest.raises(ValueError, match="missing values"):
        ScGPT.setup_anndata(pbmc, batch_key="b")
    pd.testing.assert_series_equal(pbmc.obs["_scvi_labels"], codes)


# --- property-style sweep: input kinds through setup -> embed ------------------------------------
def _variants(base: ad.AnnData, tmp_path) -> dict:
    X = np.asarray(base.X.toarray() if sparse.issparse(base.X) else base.X, dtype=np.float32)
    counts = np.round(np.expm1(X)).astype(np.float32)  # whole-number values
    out = {}
    out["dense"] = base.copy()
    for name, fmt in (("csr", sparse.csr_matrix), ("csc", sparse.csc_matrix)):
        a = base.copy()
        a.X = fmt(X)
        out[name] = a
    a = base.copy()
    a.X = counts.astype(np.int64)
    out["int_counts"] = a
    a = base.copy()
    a.X = counts
    out["float_counts"] = a
    big = ad.concat([base, base[:5]], index_unique="-")
    out["view"] = big[: base.n_obs]
    a = base.copy()
    a.X = sparse.csr_matrix(X)
    a.write_h5ad(tmp_path / "v.h5ad")
    out["backed"] = ad.read_h5ad(tmp_path / "v.h5ad", backed="r")
    a = base.copy()
    a.X = X
    a.write_h5ad(tmp_path / "dense.h5ad")
    out["backed_dense"] = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    return out


def _bad(base: ad.AnnData) -> dict:
    X = np.asarray(base.X.toarray() if sparse.issparse(base.X) else base.X, dtype=np.float32)
    out = {}
    for name, value in (("nan", np.nan), ("inf", np.inf), ("negative", -1.0)):
        a = base.copy()
        Y = X.copy()
        Y[2, 3] = value
        a.X = Y
        out[name] = (a, {"nan": "NaN", "inf": "infinite", "negative": "negative"}[name])
    a = base.copy()
    names = a.var_names.to_numpy().copy()
    names[1] = names[0]
    a.var_names = names
    out["duplicate_genes"] = (a, "duplicated gene name")
    a = base.copy()
    out["missing_layer"] = (a, "not in adata.layers")
    return out


#: batch_tokens of the sweep: the default budget, plain batches, a budget of a few cells
BATCHINGS = ("auto", None, 1500)
#: tokens per cell in the sweep's long pass: above every cell's expressed genes, so cells
#: differ in length and token-budget batches regroup and reorder them
LONG_SEQ = 1200


def test_input_kinds_sweep(pbmc, tmp_path):
    """Every legal kind embeds exactly like the clean in-memory input, in every batching mode
    (``batch_tokens`` auto / None / a number) with cells of different lengths, also for
    unsorted and repeated ``indices``; every bad kind raises a ValueError naming the problem;
    the user's AnnData is unchanged either way."""
    base = pbmc[:40].copy()
    X = base.X.toarray() if sparse.issparse(base.X) else np.array(base.X)
    X[:3] = 0  # empty cells in every variant
    base.X = X
    clean = base.copy()  # never registered: the variants start without scvi-tools' keys
    ScGPT.setup_anndata(base)
    model = ScGPT(base, **TINY)
    model.is_trained_ = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = model.get_latent_representation()
        ref_long = model.get_latent_representation(max_seq_len=LONG_SEQ, batch_tokens=None)
        lengths = model._sequence_lengths(base, max_seq_len=LONG_SEQ)
        assert len(np.unique(lengths)) > base.n_obs // 2  # the cells differ in length
        idx = [5, 3, 1, 3]
        ref_counts = None
        ref_counts_long = None
        for name, a in _variants(clean, tmp_path).items():
            snap = _snapshot(a) if not a.isbacked else None
            if a.is_view:  # registration writes to the data: a view is refused, naming the fix
                with pytest.raises(ValueError, match="view.*copy"):
                    ScGPT.setup_anndata(a)
                assert a.is_view
            else:
                ScGPT.setup_anndata(a)
            emb = model.get_latent_representation(a)  # a view is embedded through a copy
            if name in ("int_counts", "float_counts"):
                # counts bin like any values; both count dtypes give the same tokens
                ref_counts = emb if ref_counts is None else ref_counts
                np.testing.assert_array_equal(emb, ref_counts, err_msg=name)
            else:
                np.testing.assert_array_equal(emb, ref, err_msg=name)
            for bt in BATCHINGS:
                long = model.get_latent_representation(
                    a, max_seq_len=LONG_SEQ, batch_tokens=bt, batch_size=16
                )
                want = ref_long
                if name in ("int_counts", "float_counts"):
                    ref_counts_long = long if ref_counts_long is None else ref_counts_long
                    want = ref_counts_long
                np.testing.assert_allclose(long, want, atol=1e-5, err_msg=f"{name} {bt}")
                picked = model.get_latent_representation(
                    a, indices=idx, max_seq_len=LONG_SEQ, batch_tokens=bt
                )
                np.testing.assert_allclose(picked, want[idx], atol=1e-5, err_msg=f"{name} {bt}")
            if snap is not None:
                _assert_unchanged(a, snap)
    for name, (a, match) in _bad(clean).items():
        snap = _snapshot(a)
        kw = {"layer": "counts"} if name == "missing_layer" else {}
        with pytest.raises(ValueError, match=match):
            ScGPT.setup_anndata(a, **kw)
        _assert_unchanged(a, snap)
        assert not [k for k in a.obs.columns if str(k).startswith("_scvi")], name
        if name in ("nan", "inf", "negative"):  # the same data as a query of a working model
            q = a.copy()
            with pytest.raises(ValueError, match=match):
                model.get_latent_representation(q)
