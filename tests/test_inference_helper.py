"""One inference loop: every query of the model runs ``InferenceMixin._run_inference``.

Its results do not depend on the batching, follow the order of ``indices`` (unsorted,
repeated, backed data), and it leaves the module's gene panel as it found it, also when the
per-batch function raises. A source check keeps the loop in one place.
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch

import celltx
from celltx.model import ScGPT

from _helpers import ROOT

MODEL_DIR = ROOT / "src" / "celltx" / "model"
HELPER = "_inference.py"
#: files another helper of this round owns; their loop moves onto the helper after the merge
#: what builds a loader over cells: only the helper may call these
LOADERS = {"_query_loader", "_make_data_loader", "inference_loader"}
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, "dropout": 0.0}
IDX = np.array([30, 2, 2, 77, 5, 101, 0, 64, 13, 13, 40, 99])


def _loops_outside_helper() -> list[str]:
    """``file:line`` of each loader call or ``for`` over a loader outside the helper."""
    found = []
    for path in sorted(MODEL_DIR.glob("*.py")):
        if path.name == HELPER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in LOADERS:
                    found.append(f"{path.name}:{node.lineno} calls {name}")
            if isinstance(node, ast.For | ast.comprehension):
                names = {
                    getattr(n, "id", None) or getattr(n, "attr", None) for n in ast.walk(node.iter)
                }
                if any(n and n.endswith("loader") for n in names):
                    line = getattr(node, "lineno", node.iter.lineno)
                    found.append(f"{path.name}:{line} loops over {ast.unparse(node.iter)}")
    return found


def test_the_helper_is_the_only_inference_loop():
    """No model file but the helper builds a cell loader or loops over one."""
    assert _loops_outside_helper() == []


def test_the_model_names_no_module_head_or_buffer():
    """The model asks the module (``has_head``, ``head_trained``, ``saved_state``, ...)
    instead of reading its heads, submodules and state-dict buffers."""
    owned = sorted(p.name for p in MODEL_DIR.glob("*.py"))
    internals = (
        "transformer",
        "cls_decoder",
        "pert_decoder",
        "text_head",
        "cell_offset",
        "cls_trained",
        "pert_trained",
        "text_trained",
        "tokenizer",
        "label_text",
        "class_weights",
        "ctrl_x",
        "dsbn",
        "transformer_encoder",
    )
    hits = []
    for name in owned:
        if not (MODEL_DIR / name).exists():
            continue
        for node in ast.walk(ast.parse((MODEL_DIR / name).read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in internals
                and ast.unparse(node.value).endswith("module")
            ):
                hits.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert hits == []


@pytest.fixture(scope="module")
def rna():
    """An untrained small model with a classifier on 142 PBMCs (weights fixed by the seed)."""
    scvi.settings.seed = 0
    adata = celltx.datasets.pbmc68k()[::5].copy()
    ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = ScGPT(adata, **SMALL)
    model.module.cls_trained.fill_(True)  # random head: the tests compare batchings only
    model.is_trained_ = True
    return model, adata


@pytest.mark.parametrize("batch_tokens", [None, "auto", 300])
def test_embedding_independent_of_batching_and_order(rna, batch_tokens):
    model, adata = rna
    full = model.get_latent_representation(batch_size=64, batch_tokens=None)
    for bs in (7, 64):
        emb = model.get_latent_representation(indices=IDX, batch_size=bs, batch_tokens=batch_tokens)
        assert emb.dtype == np.float32 and emb.shape == (len(IDX), full.shape[1])
        np.testing.assert_allclose(emb, full[IDX], rtol=1e-5, atol=1e-5)


def test_queries_independent_of_batch_size(rna):
    model, adata = rna
    p7 = model.predict(indices=IDX, soft=True, batch_size=7)
    p64 = model.predict(indices=IDX, soft=True, batch_size=64)
    pd.testing.assert_index_equal(p7.index, adata.obs_names[IDX])
    np.testing.assert_allclose(p7.to_numpy(), p64.to_numpy(), rtol=1e-5, atol=1e-6)
    labels = model.predict(indices=IDX, batch_size=7).astype(str)
    assert (labels == np.asarray(p64.columns)[p64.to_numpy().argmax(1)]).all()
    i7 = model.get_normalized_expression(indices=IDX, batch_size=7, chunk_size=40)
    i64 = model.get_normalized_expression(indices=IDX, batch_size=64)
    pd.testing.assert_index_equal(i7.index, adata.obs_names[IDX])
    np.testing.assert_allclose(i7.to_numpy(), i64.to_numpy(), rtol=1e-5, atol=1e-5)
    assert i7.to_numpy().dtype == np.float32


def test_backed_rows_follow_indices(rna, tmp_path):
    """Disk-backed data: each row is the cell asked for, in the order asked."""
    model, adata = rna
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = sc.read_h5ad(tmp_path / "a.h5ad", backed="r")
    want = model.get_latent_representation(indices=IDX, batch_size=5, batch_tokens=None)
    got = model.get_latent_representation(backed, indices=IDX, batch_size=5, batch_tokens=None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    soft = model.predict(backed, indices=IDX, soft=True, batch_size=3)
    np.testing.assert_allclose(
        soft.to_numpy(), model.predict(indices=IDX, soft=True).to_numpy(), rtol=1e-5, atol=1e-6
    )


def test_helper_concatenates_in_indices_order_and_restores_the_panel(rna):
    """Tuples of outputs, ``None`` parts and token-budget batches come back in the order of
    ``indices``; the gene panel and precision are restored even when ``fn`` raises."""
    model, adata = rna
    panel = model.module.panel_gene_ids.clone()
    rows = np.array([9, 3, 120, 3, 0])

    def first_value(b):
        return b["x"][:, :3].float(), None

    for bt in (None, 200):
        x, none = model._run_inference(adata, rows, 2, first_value, batch_tokens=bt)
        assert none is None
        np.testing.assert_array_equal(x.numpy(), np.asarray(adata.X[rows][:, :3].todense()))

    seen = []

    def boom(b):
        seen.append((model.module.panel_gene_ids.clone(), torch.is_autocast_enabled("cpu")))
        raise RuntimeError("boom")

    other = model._validate_anndata(adata[:, ::-1].copy())  # another gene order: another panel
    model.inference_precision = "bf16"
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model._run_inference(other, None, 4, boom)
    finally:
        model.inference_precision = "auto"
    assert not torch.equal(seen[0][0], panel) and seen[0][1]  # set during the call
    assert torch.equal(model.module.panel_gene_ids, panel)  # and undone after
    assert not torch.is_autocast_enabled("cpu")
    assert model._run_inference(adata, rows, 2, lambda b: None) is None


@pytest.fixture(scope="module")
def pert():
    scvi.settings.seed = 0
    adata = celltx.datasets.simulate_perturbseq(
        n_genes=40,
        n_perturbations=5,
        n_combos=2,
        n_cells_per_condition=10,
        n_control_cells=40,
        seed=0,
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ScGPT.setup_anndata(adata, perturbation_key="condition")
    model = ScGPT(adata, **SMALL)
    model._store_controls()
    model.module.pert_trained.fill_(True)
    return model


def test_perturbation_independent_of_batch_size(pert):
    conds = [c for c in pert._registered_conditions() if c != "ctrl"][:2]
    a = pert.predict_perturbation(conds, n_cells=11, return_type="cells", batch_size=7)
    b = pert.predict_perturbation(conds, n_cells=11, return_type="cells", batch_size=64)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.uns["control_mean"], b.uns["control_mean"])
    assert list(a.obs_names) == list(b.obs_names)


def test_cross_modal_independent_of_batch_size():
    torch.manual_seed(0)
    mdata = celltx.data.pad_mosaic(
        celltx.datasets.simulate_multiome(n_cells=30, n_genes=50, n_peaks=80, mosaic=True, seed=0)
    )
    ScGPT.setup_mudata(mdata)
    model = ScGPT(mdata, **SMALL, max_peaks=32)
    rows = np.array([25, 3, 3, 17, 0, 14, 21])
    for predict in (model.predict_rna_from_atac, model.predict_atac_from_rna):
        a = predict(mdata, indices=rows, batch_size=3, chunk_size=16)
        b = predict(mdata, batch_size=64)
        assert list(a.obs_names) == list(mdata.obs_names[rows])
        np.testing.assert_allclose(a.X, b.X[rows], rtol=1e-5, atol=1e-5)
