"""Fine-tuning: annotation (classifier head, predict) and batch integration (DSBN, DAB,
ECS, batch token), and the annotation / integration benchmarks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
import torch

import celltx
from celltx.model import ScGPT
from celltx.nn import AdversarialDiscriminator, DomainSpecificBatchNorm, grad_reverse

from _helpers import DATA, FIXTURES, SMALL, need

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


@pytest.fixture(scope="module")
def annotated(_pbmc):
    """SMALL model fine-tuned for annotation on pbmc68k with 10% of labels missing."""
    scvi.settings.seed = 0
    adata = _pbmc.copy()
    adata.obs["label"] = adata.obs["cell_type"].astype(object)
    rng = np.random.default_rng(0)
    adata.obs.loc[adata.obs_names[rng.random(adata.n_obs) < 0.1], "label"] = np.nan
    ScGPT.setup_anndata(adata, labels_key="label")
    model = ScGPT(adata, **{**SMALL, "max_seq_len": 256, "dropout": 0.1})
    kw = {"train_size": 1.0, "check_val_every_n_epoch": None, **CPU}
    model.train(max_epochs=10, task="generative", lr=1e-2, **kw)  # the <cls> route learns here
    model.train(max_epochs=10, task="annotation", lr=1e-3, **kw)
    return model, adata


# --- annotation --------------------------------------------------------------------------
@pytest.mark.slow
def test_annotation_learns_and_predicts(annotated):
    model, adata = annotated
    pred = model.predict()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    assert pred.shape == (adata.n_obs,) and set(pred) <= set(adata.obs["cell_type"].cat.categories)
    majority = pd.Series(truth).value_counts(normalize=True).iloc[0]
    acc = (pred == truth).mean()
    # a tiny model after 20 short epochs: well above always predicting the largest type
    assert acc > majority + 0.1, (acc, majority)
    unlabeled = adata.obs["label"].isna().to_numpy()
    assert (pred[unlabeled] == truth[unlabeled]).mean() > majority  # cells it never saw labelled
    proba = model.predict(soft=True)
    assert list(proba.columns) == sorted(
        adata.obs["cell_type"].cat.categories
    )  # the registered order
    assert (proba.index == adata.obs_names).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (proba.to_numpy().argmax(1) == pd.Index(proba.columns).get_indexer(pred)).all()
    hist = model.history
    assert "cls_loss_train" in hist and "cls_accuracy_train" in hist
    cls_loss = hist["cls_loss_train"].iloc[:, 0].astype(float)
    assert cls_loss.isna().sum() == 10  # the generative epochs log no classification loss
    cls_loss = cls_loss.dropna()
    assert len(cls_loss) == 10 and cls_loss.iloc[-1] < cls_loss.iloc[0]


@pytest.mark.slow
def test_predict_on_query_with_other_genes_and_no_labels(annotated):
    model, adata = annotated
    query = adata[:50, ::-1].copy()  # reversed gene order, no label column
    del query.obs["label"]
    same = model.predict(indices=np.arange(50))
    np.testing.assert_array_equal(model.predict(query), same)
    assert model.predict(query, soft=True).shape == (50, 10)


@pytest.mark.slow
def test_nan_labels_are_unlabelled(annotated):
    model, adata = annotated
    codes = model.adata_manager.get_from_registry("labels").ravel()
    assert (codes[adata.obs["label"].isna().to_numpy()] == -1).all()
    assert (codes[adata.obs["label"].notna().to_numpy()] >= 0).all()


def test_class_weights_and_freezing(pbmc):
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    model = ScGPT(pbmc, **SMALL)
    counts = (
        pbmc.obs["cell_type"]
        .value_counts()
        .reindex(pbmc.obs["cell_type"].cat.categories)
        .to_numpy()
    )
    expected = counts.sum() / (len(counts) * counts)
    np.testing.assert_allclose(model._class_weights("balanced").numpy(), expected, rtol=1e-6)
    frozen_before = {k: v.clone() for k, v in model.module.transformer.state_dict().items()}
    model.train(
        max_epochs=1,
        task="annotation",
        freeze_layers=1,
        label_smoothing=0.1,
        class_weight={"CD34+": 2.0},
        **CPU,
    )
    after = model.module.transformer.state_dict()
    for k in ("encoder.embedding.weight", "transformer_encoder.layers.0.linear1.weight"):
        assert torch.equal(after[k], frozen_before[k]), k
    for k in ("transformer_encoder.layers.1.linear1.weight", "cls_decoder.out_layer.weight"):
        assert not torch.equal(after[k], frozen_before[k]), k
    assert all(p.requires_grad for p in model.module.parameters())  # restored after training
    assert (
        float(model.module.class_weights[list(pbmc.obs["cell_type"].cat.categories).index("CD34+")])
        == 2.0
    )


def test_finetune_errors(pbmc):
    ScGPT.setup_anndata(pbmc)
    model = ScGPT(pbmc, **SMALL)
    with pytest.raises(ValueError, match="needs labels"):
        model.train(max_epochs=1, task="annotation", **CPU)
    with pytest.raises(ValueError, match="needs batches"):
        model.train(max_epochs=1, task="integration", **CPU)
    with pytest.raises(ValueError, match="task="):
        model.train(max_epochs=1, task="denoise", **CPU)
    with pytest.raises(ValueError, match="no classifier"):
        model.predict()
    with pytest.raises(ValueError, match="need batches"):
        ScGPT(pbmc, **SMALL, dsbn=True)
    with pytest.raises(ValueError, match="Unknown loss weights"):
        model.train(max_epochs=1, loss_weights={"kl": 1.0}, **CPU)
    with pytest.raises(ValueError, match="apply to classification"):
        model.train(max_epochs=1, label_smoothing=0.1, **CPU)
    with pytest.raises(ValueError, match="freeze_layers"):
        model.train(max_epochs=1, freeze_layers=7, **CPU)
    one = pbmc.copy()
    one.obs["one"] = "T"
    ScGPT.setup_anndata(one, labels_key="one")
    with pytest.raises(ValueError, match="at least 2 labelled classes"):
        ScGPT(one, **SMALL).train(max_epochs=1, task="annotation", **CPU)
    lonely = pbmc.copy()
    lonely.obs["b"] = ["a"] * (lonely.n_obs - 1) + ["z"]
    ScGPT.setup_anndata(lonely, batch_key="b")
    with pytest.raises(ValueError, match=r"Batches \['z'\] have fewer than 2 cells"):
        ScGPT(lonely, **SMALL, dab=True).train(max_epochs=1, task="integration", **CPU)


# --- integration building blocks ---------------------------------------------------------
def test_grad_reverse_and_discriminator():
    x = torch.randn(4, 8, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -0.5)
    disc = AdversarialDiscriminator(8, 3)
    assert disc(torch.randn(5, 8)).shape == (5, 3)


def test_dsbn_normalizes_each_batch_over_real_tokens():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4)
    x[3:] = x[3:] * 5 + 10  # batch 1 is shifted and scaled
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    pad = torch.zeros(6, 5, dtype=torch.bool)
    pad[:, -1] = True
    x[:, -1] = 1e6  # padding must not enter the statistics
    out = DomainSpecificBatchNorm(4, 2).train()(x, batch, pad)
    for b in (0, 1):
        tok = out[(batch == b)[:, None] & ~pad]
        np.testing.assert_allclose(tok.mean(0).detach().numpy(), 0, atol=1e-5)
        np.testing.assert_allclose(tok.std(0, unbiased=False).detach().numpy(), 1, atol=1e-3)
    assert torch.equal(out[:, -1], x[:, -1])


def test_ecs_loss_matches_its_formula(pbmc):
    ScGPT.setup_anndata(pbmc)
    module = ScGPT(pbmc, **SMALL).module
    module.set_objective(gep=0.0, mvc=0.0, ecs=1.0, ecs_threshold=0.6)
    emb = torch.randn(5, SMALL["d_model"])
    out = module.loss({}, {"cell_emb": emb}, {})
    unit = torch.nn.functional.normalize(emb, dim=1)
    cos = torch.relu(unit @ unit.T)
    off = ~torch.eye(5, dtype=torch.bool)
    np.testing.assert_allclose(
        float(out.loss), float((1 - (cos[off] - 0.6) ** 2).mean()), rtol=1e-5
    )


@pytest.fixture(scope="module")
def cellbench():
    a = ad.read_h5ad(need(DATA / "cellbench_5batches.h5ad"))
    a = a[a.obs["demuxlet_cls"] != "DBL"].copy()
    rng = np.random.default_rng(0)
    a = a[np.sort(rng.choice(a.n_obs, 400, replace=False))].copy()
    import scanpy as sc

    sc.pp.filter_genes(a, min_cells=20)
    sc.pp.highly_variable_genes(a, n_top_genes=500, flavor="seurat_v3", subset=True)
    return a


@pytest.mark.slow
def test_integration_training_and_bench(cellbench):
    a = cellbench.copy()
    scvi.settings.seed = 0
    ScGPT.setup_anndata(a, batch_key="batch")
    model = ScGPT(a, **SMALL, dsbn=True, dab=True, batch_token=True)
    model.train(max_epochs=2, task="integration_scgpt", **CPU)
    for key in ("dab_loss_train", "ecs_loss_train", "gep_mse_train", "mvc_mse_validation"):
        assert np.isfinite(model.history[key].to_numpy(dtype=float)).all(), key
    emb = model.get_latent_representation()
    assert emb.shape == (a.n_obs, SMALL["d_model"]) and np.isfinite(emb).all()
    # the embedding is a function of the cell and its batch only, not of the minibatch
    np.testing.assert_allclose(
        model.get_latent_representation(indices=np.arange(10, 20)), emb[10:20], atol=1e-5
    )
    assert model.score_generation()["n_tokens"] > 0
    table = celltx.bench.integration(
        a,
        "batch",
        "cell_line",
        {"celltx": emb},
        baselines=["pca", "harmony", "scvi"],
        scvi_kwargs={"max_epochs": 2, "accelerator": "cpu"},
        fast=True,
    )
    rows = ["celltx", "PCA (unintegrated)", "Harmony", "scVI"]
    assert list(table.index[:-1]) == rows and table.index[-1] == "Metric Type"
    totals = table.loc[rows, "Total"].astype(float)
    assert ((totals > 0) & (totals < 1)).all()
    # Harmony removes batch effects PCA keeps: a check that the metrics respond
    bc = table.loc[rows, "Batch correction"].astype(float)
    assert bc["Harmony"] > bc["PCA (unintegrated)"]


def test_integration_bench_errors(pbmc):
    with pytest.raises(ValueError, match="Unknown baselines"):
        celltx.bench.integration(pbmc, "cell_type", "cell_type", baselines=["bbknn"])
    with pytest.raises(ValueError, match="batch_key='donor'"):
        celltx.bench.integration(pbmc, "donor", "cell_type")
    pbmc.obs["b"] = "one"
    with pytest.raises(ValueError, match="at least 2 batches"):
        celltx.bench.integration(pbmc, "b", "cell_type", baselines=["pca"])
    with pytest.raises(ValueError, match="has shape"):
        celltx.bench.integration(
            pbmc, "cell_type", "cell_type", {"bad": np.zeros((3, 2))}, baselines=[]
        )


# --- loaded checkpoints -------------------------------------------------------------------
@pytest.mark.slow  # trains an epoch on pbmc68k (~6 s)
def test_pretrained_checkpoint_gets_a_new_classifier():
    adata = ad.read_h5ad(need(FIXTURES / "pbmc68k_tiefree.h5ad"))
    adata.obs["cell_type"] = celltx.datasets.pbmc68k().obs["cell_type"].to_numpy()
    ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = ScGPT.load_pretrained(FIXTURES / "ckpt_small", adata, accelerator="cpu")
    rep = model.checkpoint_report_
    assert "cls_decoder" in rep.initialised and "(1, 64)" in rep.reasons["cls_decoder"]
    assert "transformer_encoder.layers.0.linear1.weight" in rep.loaded
    model.train(max_epochs=1, task="annotation", lr=1e-4, **CPU)
    assert model.predict().shape == (adata.n_obs,)


# --- annotation benchmark -----------------------------------------------------------------
def test_annotation_bench_baselines(pbmc):
    df = celltx.bench.annotation(
        pbmc, "cell_type", methods=["logreg", "knn_pca", "celltypist"], n_splits=3
    )
    assert len(df) == 9 and set(df["method"]) == {"logreg", "knn_pca", "celltypist"}
    assert df[["accuracy", "macro_f1", "weighted_f1"]].apply(lambda c: c.between(0, 1)).all().all()
    # logistic regression on pbmc68k: about 0.83 accuracy (5-fold reference 0.826)
    assert df.loc[df["method"] == "logreg", "accuracy"].mean() > 0.75
    table = celltx.bench.summarize(df)
    assert "±" in table.loc["logreg", "accuracy"]


def test_annotation_bench_celltx_and_scanvi_run(pbmc):
    small = pbmc[::2].copy()  # log-normalized values: scANVI (counts only) is skipped, not fed them
    with pytest.warns(UserWarning, match="scanvi is skipped"):
        df = celltx.bench.annotation(
            small,
            "cell_type",
            methods=["celltx", "scanvi"],
            n_splits=2,
            method_kwargs={
                "celltx": {
                    "model": SMALL,
                    "pretrain_epochs": 1,
                    "finetune_epochs": 1,
                    "accelerator": "cpu",
                },
                "scanvi": {"scvi_epochs": 2, "scanvi_epochs": 1, "accelerator": "cpu"},
            },
        )
    assert list(df["method"]) == ["celltx", "scanvi", "celltx", "scanvi"]
    assert df.loc[df["method"] == "celltx", "accuracy"].between(0, 1).all()
    assert (
        df.loc[df["method"] == "scanvi", "error"]
        .str.startswith("skipped: scANVI needs raw counts")
        .all()
    )


def test_annotation_bench_errors(pbmc):
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.annotation(pbmc, "cell_type", methods=["svm"])
    with pytest.raises(ValueError, match="labels_key"):
        celltx.bench.annotation(pbmc, "celltype", methods=["logreg"])
    pbmc.obs["one"] = "T"
    with pytest.raises(ValueError, match="at least 2 cell types"):
        celltx.bench.annotation(pbmc, "one", methods=["logreg"])
    pbmc.obs["lab"] = pbmc.obs["cell_type"].astype(object)
    pbmc.obs.loc[pbmc.obs_names[:20], "lab"] = np.nan
    with pytest.warns(UserWarning, match="20 cells have no label"):
        df = celltx.bench.annotation(pbmc, "lab", methods=["logreg"], n_splits=2)
    assert len(df) == 2
