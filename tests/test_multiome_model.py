"""Multiome model: setup_mudata, genes + peaks in one sequence, cross-modal generation,
alignment of mosaic data, ATAC-only models and an RNA checkpoint under a multiome model."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

import celltx
from celltx.data import MOD_ATAC, MOD_RNA
from celltx.model import ScGPT
from celltx.nn import preset

from _helpers import DATA, need

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)

SMALL = preset("small", d_model=32, max_seq_len=64, max_peaks=64, dropout=0.0)
FIT = dict(
    batch_size=32, accelerator="cpu", enable_progress_bar=False, check_val_every_n_epoch=None
)


def _mosaic(n=240, seed=0):
    return celltx.data.pad_mosaic(
        celltx.datasets.simulate_multiome(n_cells=n, mosaic=True, seed=seed)
    )


@pytest.fixture(scope="module")
def trained():
    """A small multiome model trained on a simulated mosaic (paired, RNA-only, ATAC-only)."""
    mdata = _mosaic(300)
    ScGPT.setup_mudata(mdata)
    torch.manual_seed(0)
    model = ScGPT(mdata, **SMALL)
    model.train(max_epochs=30, lr=1e-2, train_size=1.0, **FIT)
    return model, mdata


# --- registration and bad input ---------------------------------------------------------
def test_setup_mudata_builds_genes_and_peaks_vocabulary():
    mdata = celltx.datasets.simulate_multiome(n_cells=60)
    ScGPT.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = ScGPT(mdata, **SMALL)
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert all(g in model.vocab for g in rna.var_names)
    assert all(p in model.vocab for p in atac.var_names)
    assert model.module.modalities == ("rna", "atac")
    assert model.module.transformer.mod_encoder is not None
    assert "400 peaks" in model._model_summary_string
    # multiome default: non-expressed genes take a quarter of the RNA budget
    assert model.module.tokenizer.zero_fraction == 0.25


def test_setup_mudata_bad_input():
    mdata = celltx.datasets.simulate_multiome(n_cells=60)
    with pytest.raises(ValueError, match="expects a MuData"):
        ScGPT.setup_mudata(mdata.mod["rna"])
    with pytest.raises(ValueError, match="not a modality"):
        ScGPT.setup_mudata(mdata, modalities={"rna_layer": "gex", "atac_layer": "atac"})
    with pytest.raises(ValueError, match="Unknown keys"):
        ScGPT.setup_mudata(mdata, modalities={"rna": "rna"})
    with pytest.raises(ValueError, match="swapped"):
        ScGPT.setup_mudata(mdata, modalities={"rna_layer": "atac", "atac_layer": "rna"})
    with pytest.raises(ValueError, match="not a layer"):
        ScGPT.setup_mudata(mdata, rna_layer="counts")
    with pytest.raises(ValueError, match="batch_key='donor' is not a column"):
        ScGPT.setup_mudata(mdata, batch_key="donor")
    bad = mdata.copy()
    bad.mod["atac"].X = bad.mod["atac"].X.toarray() * -1.0
    with pytest.raises(ValueError, match="negative"):
        ScGPT.setup_mudata(bad)
    mosaic = celltx.datasets.simulate_multiome(n_cells=60, mosaic=True)
    with pytest.raises(ValueError, match="pad_mosaic"):
        ScGPT.setup_mudata(mosaic)
    empty = celltx.data.pad_mosaic(mdata)
    for mod in ("rna", "atac"):
        x = empty.mod[mod].X.tolil()
        x[:3] = 0
        empty.mod[mod].X = x.tocsr()
    with pytest.raises(ValueError, match="3 cells have no counts in any registered modality"):
        ScGPT.setup_mudata(empty)
    # nothing was registered or changed by the failed calls
    assert "_scvi_uuid" not in mdata.uns
    assert mdata.mod["rna"].n_obs == 60


def test_pad_mosaic_keeps_the_data_and_marks_the_modality():
    raw = celltx.datasets.simulate_multiome(n_cells=100, mosaic=True, seed=1)
    padded = celltx.data.pad_mosaic(raw)
    assert padded.obs_names.equals(raw.obs_names)
    rna = padded.mod["rna"]
    pos = padded.obs_names.get_indexer(raw.mod["rna"].obs_names)
    np.testing.assert_array_equal(rna.X[pos].toarray(), raw.mod["rna"].X.toarray())
    absent = np.setdiff1d(np.arange(100), pos)
    assert rna.X[absent].nnz == 0
    assert (padded.obs["modality"].to_numpy()[absent] == "atac").all()
    assert raw.mod["rna"].n_obs == 70  # the input is not modified


# --- tokens ---------------------------------------------------------------------------
def test_one_sequence_with_modality_codes_and_unmeasured_modalities_left_out():
    mdata = _mosaic(60)
    ScGPT.setup_mudata(mdata)
    model = ScGPT(mdata, **SMALL)
    m = model.module.eval()
    loader = model._make_data_loader(mdata, batch_size=60)
    inputs = model._inputs(next(iter(loader)))
    with model._panel(mdata):
        tokens = m.tokenize(**inputs)
    modality = mdata.obs["modality"].to_numpy()
    real = ~tokens.padding_mask
    has_rna = ((tokens.modality == MOD_RNA) & real).any(1).numpy()
    has_atac = ((tokens.modality == MOD_ATAC) & real).any(1).numpy()
    np.testing.assert_array_equal(has_rna, modality != "atac")
    np.testing.assert_array_equal(has_atac, modality != "rna")
    # budgets: at most max_seq_len - 1 genes and max_peaks peaks per cell
    assert ((tokens.modality == MOD_RNA) & real).sum(1).max() <= SMALL["max_seq_len"] - 1
    assert ((tokens.modality == MOD_ATAC) & real).sum(1).max() <= SMALL["max_peaks"]
    # binary accessibility: open peaks carry the top bin, sampled closed peaks 0
    atac_vals = tokens.values[(tokens.modality == MOD_ATAC) & real]
    assert set(atac_vals.unique().tolist()) == {0.0, 50.0}


def test_views_generate_one_modality_from_the_other_without_leaking():
    """In the RNA-alone view every ATAC token is to be generated; the <cls> output of that
    row equals the embedding of the same cell with its ATAC removed (generated tokens never
    reach known ones)."""
    mdata = celltx.datasets.simulate_multiome(n_cells=8)
    ScGPT.setup_mudata(mdata)
    torch.manual_seed(0)
    model = ScGPT(mdata, **SMALL)
    m = model.module.eval()
    inputs = model._inputs(next(iter(model._make_data_loader(mdata, batch_size=8))))
    with model._panel(mdata), torch.no_grad():
        tokens = m.tokenize(**inputs, sample="hash")
        rows_tok, known, rows, view = m.generative_views(tokens, torch.Generator().manual_seed(0))
        assert (view == 1).sum() == 8 and (view == 2).sum() == 8
        rna_view = view == 1
        mod = rows_tok.modality[rna_view]
        real = ~rows_tok.padding_mask[rna_view]
        assert not known[rna_view][(mod == MOD_ATAC) & real].any()
        assert known[rna_view][(mod == MOD_RNA) & real].all()
        h = m.network.encode(
            rows_tok.gene_ids,
            rows_tok.values,
            rows_tok.padding_mask,
            known,
            modality=rows_tok.modality,
        )
        rna_alone, _ = m.cell_embedding(inputs["x"], x_atac=torch.zeros_like(inputs["x_atac"]))
    torch.testing.assert_close(h[rna_view][:, 0], rna_alone, atol=1e-5, rtol=1e-5)


# --- training and outputs ----------------------------------------------------------------
@pytest.mark.slow
def test_training_aligns_modalities_and_embeds_every_cell(trained):
    model, mdata = trained
    hist = model.history
    for key in ("rna_mse_train", "atac_mse_train", "align_loss_train"):
        assert np.isfinite(hist[key].to_numpy(dtype=float)).all(), key
    # peak-level generation learns slowly on this noisy simulation (knowing a cell's type
    # explains ~10 % of a peak's variance); RNA generation and alignment learn within epochs
    for key in ("rna_mse_train", "align_loss_train"):
        values = hist[key].to_numpy(dtype=float).ravel()
        assert values[-1] < 0.9 * values[0], key
    z = model.get_latent_representation(mdata)
    assert z.shape == (mdata.n_obs, 32) and np.isfinite(z).all()
    np.testing.assert_array_equal(z, model.get_latent_representation(mdata, batch_size=7))
    table = celltx.bench.multiome(
        mdata,
        "cell_type",
        embeddings={"celltx": z},
        baselines=(),
        modality_key="modality",
        knn=False,
    )
    # RNA-only and ATAC-only cells share the space: their neighbours include the other kind.
    # Without the distance term of the alignment loss this was 0.00 (the modalities never
    # met); with it 0.24. (Cell types are barely resolved by so small a model: see
    # docs/multiome.md for the benchmark.)
    assert table.loc["celltx", "modality_mixing"] > 0.1


@pytest.mark.slow
def test_muon_workflow(trained):
    """A joint embedding in muon: scanpy's neighbours / UMAP on the MuData (muon's own
    ``mu.pp.neighbors`` is its weighted-nearest-neighbour graph over modalities and takes no
    ``use_rep``), muon's plot."""
    import matplotlib
    import scanpy as sc

    matplotlib.use("Agg")
    mu = pytest.importorskip("muon")
    model, mdata = trained
    mdata = mdata.copy()
    mdata.obsm["X_scgpt"] = model.get_latent_representation(mdata)
    sc.pp.neighbors(mdata, use_rep="X_scgpt")
    sc.tl.umap(mdata)
    assert mdata.obsm["X_umap"].shape == (mdata.n_obs, 2)
    mu.pl.umap(mdata, color=["cell_type", "modality"], show=False)


@pytest.mark.slow
def test_predict_rna_from_atac(trained):
    model, mdata = trained
    pred = model.predict_rna_from_atac(mdata)
    assert pred.shape == (mdata.n_obs, mdata.mod["rna"].n_vars)
    assert pred.var_names.equals(mdata.mod["rna"].var_names)
    no_atac = (mdata.obs["modality"] == "rna").to_numpy()
    assert np.isnan(pred.X[no_atac]).all()
    assert np.isfinite(pred.X[~no_atac]).all()
    # the result does not depend on how many genes are generated per pass
    small = model.predict_rna_from_atac(mdata, indices=np.flatnonzero(~no_atac)[:6], chunk_size=7)
    np.testing.assert_allclose(small.X, pred.X[np.flatnonzero(~no_atac)[:6]], atol=1e-4)
    # the RNA cells' own measured genes: predicted from ATAC, expressed genes score higher
    paired = np.flatnonzero((mdata.obs["modality"] == "paired").to_numpy())
    x = mdata.mod["rna"].X[paired].toarray()
    p = pred.X[paired]
    assert p[x > 0].mean() > p[x == 0].mean()
    back = model.predict_atac_from_rna(mdata, indices=paired[:5])
    assert back.shape == (5, mdata.mod["atac"].n_vars)
    assert (back.X >= 0).all() and (back.X <= 1).all()


@pytest.mark.slow
def test_save_and_load_round_trip(trained, tmp_path):
    model, mdata = trained
    model.save(tmp_path / "m", overwrite=True)
    again = ScGPT.load(tmp_path / "m", adata=mdata)
    np.testing.assert_allclose(
        again.get_latent_representation(mdata), model.get_latent_representation(mdata), atol=1e-5
    )


def test_cross_prediction_needs_both_modalities():
    adata = celltx.datasets.simulate_multiome(n_cells=40).mod["rna"].copy()
    ScGPT.setup_anndata(adata)
    model = ScGPT(adata, **SMALL)
    with pytest.raises(ValueError, match="RNA and ATAC"):
        model.predict_rna_from_atac()
    with pytest.raises(ValueError, match="align"):
        model.train(max_epochs=1, loss_weights={"align": 1.0}, **FIT)


# --- ATAC alone ---------------------------------------------------------------------------
def test_atac_alone_with_setup_anndata():
    atac = celltx.datasets.simulate_multiome(n_cells=120).mod["atac"].copy()
    ScGPT.setup_anndata(atac, modality="atac")
    model = ScGPT(atac, **SMALL)
    assert model.module.modalities == ("atac",)
    model.train(max_epochs=1, **FIT)
    z = model.get_latent_representation()
    assert z.shape == (120, 32) and np.isfinite(z).all()
    genes = celltx.datasets.simulate_multiome(n_cells=20).mod["rna"].copy()
    with pytest.raises(ValueError, match="registered as ATAC but holds genes"):
        ScGPT.setup_anndata(genes, modality="atac")


def test_real_scatac_alone():
    import anndata as ad

    adata = ad.read_h5ad(need(DATA / "granja2019_bmmc_scatac.h5ad"))
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 150, replace=False)].copy()
    ScGPT.setup_anndata(adata, modality="atac", labels_key="cell_type")
    model = ScGPT(adata, **SMALL)
    model.train(max_epochs=1, **FIT)
    assert np.isfinite(model.get_latent_representation()).all()


@pytest.mark.slow  # trains an epoch on the real multiome subset (~6 s)
def test_real_paired_multiome_plumbing():
    import mudata

    mdata = mudata.read_h5mu(need(DATA / "pbmc10x_multiome_subset.h5mu"))
    ScGPT.setup_mudata(mdata)
    model = ScGPT(mdata, **SMALL)
    model.train(max_epochs=1, **FIT)
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 32) and np.isfinite(z).all()


# --- an RNA checkpoint under a multiome model -------------------------------------------------
def test_rna_checkpoint_loads_under_a_multiome_model(tmp_path):
    mdata = celltx.datasets.simulate_multiome(n_cells=50)
    rna = mdata.mod["rna"].copy()
    ScGPT.setup_anndata(rna)
    torch.manual_seed(0)
    rna_model = ScGPT(rna, **{k: v for k, v in SMALL.items() if k != "max_peaks"})
    rna_model.export_scgpt(tmp_path / "ckpt")
    ScGPT.setup_mudata(mdata)
    # zero_fraction=0 as the RNA model (a multiome model's default adds non-expressed genes)
    model = ScGPT.load_pretrained(tmp_path / "ckpt", mdata, accelerator="cpu", zero_fraction=0.0)
    report = model.checkpoint_report_
    assert (
        "encoder.embedding" in report.initialised
        and "400 new tokens" in report.reasons["encoder.embedding"]
    )
    assert len(model.vocab) == len(rna_model.vocab) + 400
    # the RNA part is the checkpoint's: RNA-alone cells embed exactly as in the RNA model
    rna_alone = mdata.copy()
    rna_alone.mod["atac"].X = rna_alone.mod["atac"].X * 0
    ScGPT.setup_mudata(rna_alone)
    np.testing.assert_allclose(
        model.get_latent_representation(rna_alone),
        rna_model.get_latent_representation(rna),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="Set up the MuData first"):
        ScGPT.load_pretrained(tmp_path / "ckpt", celltx.datasets.simulate_multiome(n_cells=20))
