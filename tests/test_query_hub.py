"""Query mapping (``ScGPT.load_query_data``, ``celltx.bench.query_mapping``) and sharing models
through scvi-tools' hub (``to_hub`` / ``from_hub``)."""

from __future__ import annotations

import shutil
import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import torch

import celltx
from celltx.model import ScGPT
from celltx.nn import preset

from _helpers import DATA, need

TINY = preset("tiny", d_model=32, n_heads=4)
CPU = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}


@pytest.fixture(scope="module")
def cellbench():
    """CellBench (doublets dropped, 500 HVGs), one batch held out as the query."""
    a = ad.read_h5ad(need(DATA / "cellbench_5batches.h5ad"))
    a = a[a.obs["demuxlet_cls"] != "DBL"].copy()
    sc.pp.highly_variable_genes(a, n_top_genes=500, flavor="seurat_v3", batch_key="batch")
    a = a[:, a.var["highly_variable"]].copy()
    query_batch = "CEL-seq2_5cl_p1"
    return a[a.obs["batch"] != query_batch].copy(), a[a.obs["batch"] == query_batch].copy()


@pytest.fixture(scope="module")
def reference_model(cellbench):
    ref, _ = cellbench
    ScGPT.setup_anndata(ref, batch_key="batch", labels_key="cell_line")
    torch.manual_seed(0)
    model = ScGPT(ref, **TINY, dsbn=True, batch_token=True)
    model.train(max_epochs=2, **CPU)
    return model


@pytest.mark.slow
def test_query_gets_new_batch_parts_and_leaves_the_reference_as_it_was(cellbench, reference_model):
    ref, query = cellbench
    model = reference_model
    before = model.get_latent_representation()
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    q = ScGPT.load_query_data(query.copy(), model)
    n_ref = model.summary_stats.n_batch
    assert q.summary_stats.n_batch == n_ref + 1 and q.reference_n_batch_ == n_ref
    mapping = list(q.adata_manager.get_state_registry("batch").categorical_mapping)
    assert mapping[:n_ref] == list(
        model.adata_manager.get_state_registry("batch").categorical_mapping
    )
    assert len(q.module.network.dsbn.bns) == n_ref + 1
    trainable = {n for n, p in q.module.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("transformer.dsbn.", "transformer.batch_encoder.")) for n in trainable
    )
    q.train(max_epochs=2, **CPU)
    # the query's own parts moved; the reference's did not (shared weights are frozen)
    new = q.module.state_dict()
    assert not torch.equal(
        new["transformer.batch_encoder.embedding.weight"][n_ref],
        state["transformer.batch_encoder.embedding.weight"][0],
    )
    for k, v in state.items():
        if k.startswith("transformer.batch_encoder.embedding"):
            torch.testing.assert_close(new[k][:n_ref], v)
        elif not k.startswith("transformer.dsbn.bns." + str(n_ref)) and new[k].shape == v.shape:
            torch.testing.assert_close(new[k], v, msg=k)
    np.testing.assert_allclose(q.get_latent_representation(ref), before, atol=1e-5)
    assert q.get_latent_representation().shape == (query.n_obs, TINY["d_model"])
    # the reference model itself is untouched
    np.testing.assert_array_equal(model.get_latent_representation(), before)


@pytest.mark.slow
def test_query_errors(cellbench, reference_model, pbmc):
    _, query = cellbench
    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(ValueError, match="no obs column 'batch'"):
        ScGPT.load_query_data(no_batch, reference_model)
    with pytest.raises(ValueError, match="reference must be"):
        ScGPT.load_query_data(query.copy(), object())
    # a model without batch parts embeds the query as it is: nothing to train
    ScGPT.setup_anndata(pbmc)
    plain = ScGPT(pbmc, **TINY)
    plain.is_trained_ = True
    q = ScGPT.load_query_data(pbmc[:50].copy(), plain)
    with pytest.raises(ValueError, match="Nothing to train"):
        q.train(max_epochs=1, **CPU)
    np.testing.assert_allclose(
        q.get_latent_representation(), plain.get_latent_representation(pbmc[:50].copy()), atol=1e-6
    )


@pytest.mark.slow
def test_query_mapping_bench_on_cellbench(cellbench):
    ref, query = cellbench
    both = ad.concat([ref, query])
    settings = {
        "celltx": {"model": TINY, "reference_epochs": 2, "query_epochs": 1, "accelerator": "cpu"},
        "scvi": {"reference_epochs": 5, "query_epochs": 2, "accelerator": "cpu"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = celltx.bench.query_mapping(
            both, "batch", "cell_line", "CEL-seq2_5cl_p1", method_kwargs=settings
        )
    assert list(df["method"]) == ["celltx", "pca", "scvi"]
    assert df["error"].isna().all(), df["error"].tolist()
    assert (df["n_query"] == query.n_obs).all()
    # PCA label transfer between CEL-seq2 batches of the same five cell lines is easy
    assert df.loc[df["method"] == "pca", "accuracy"].item() > 0.8
    assert df["accuracy"].between(0, 1).all()
    with pytest.raises(ValueError, match="not in obs"):
        celltx.bench.query_mapping(both, "batch", "cell_line", "nope")


# --- hub -------------------------------------------------------------------------------
def _model(pbmc):
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    model = ScGPT(pbmc, **TINY)
    model.is_trained_ = True
    return model


def test_hub_round_trip_through_a_local_directory(pbmc, tmp_path):
    pytest.importorskip("huggingface_hub")
    from scvi.hub import HubModel

    model = _model(pbmc)
    hub_model = model.to_hub(
        tmp_path / "hub",
        save_anndata=True,
        tissues=["blood"],
        training_data_url="https://example.org/pbmc.h5ad",
    )
    names = {p.name for p in (tmp_path / "hub").iterdir()}
    assert {
        "model.json",
        "model.safetensors",
        "adata.h5ad",
        "README.md",
        "_scvi_required_metadata.json",
    } <= names
    assert "model.pt" not in names
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "celltx" in card and "https://example.org/pbmc.h5ad" in card and "tissue:blood" in card
    assert hub_model.metadata.model_parent_module == "celltx.model"
    ref = model.get_latent_representation()
    again = ScGPT.from_hub(tmp_path / "hub")  # the stored AnnData
    np.testing.assert_array_equal(again.get_latent_representation(), ref)
    # scvi-tools' own HubModel finds the class and loads it through the safe loader
    via_scvi = HubModel(str(tmp_path / "hub"))
    via_scvi.load_model(adata=pbmc, accelerator="cpu")
    np.testing.assert_array_equal(via_scvi.model.get_latent_representation(), ref)


def test_from_hub_pulls_a_repo(pbmc, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub

    model = _model(pbmc)
    model.to_hub(tmp_path / "published")

    def fake_download(repo_id, allow_patterns=None, cache_dir=None, revision=None, **kwargs):
        assert repo_id == "me/pbmc-scgpt"
        assert {"model.json", "model.safetensors", "_scvi_required_metadata.json"} <= set(
            allow_patterns
        )
        dest = tmp_path / "cache" / repo_id.replace("/", "--")
        shutil.copytree(tmp_path / "published", dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    pulled = ScGPT.from_hub("me/pbmc-scgpt", pbmc, accelerator="cpu")
    np.testing.assert_array_equal(
        pulled.get_latent_representation(), model.get_latent_representation()
    )


def test_from_hub_refuses_foreign_directories(pbmc, tmp_path):
    pytest.importorskip("huggingface_hub")
    model = _model(pbmc)
    model.save(tmp_path / "plain")  # a saved model without the hub metadata
    with pytest.raises(ValueError, match="_scvi_required_metadata.json"):
        ScGPT.from_hub(tmp_path / "plain", pbmc)
    (tmp_path / "scvi").mkdir()
    (tmp_path / "scvi" / "model.pt").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickled model.pt"):
        ScGPT.from_hub(tmp_path / "scvi", pbmc)
    model.to_hub(tmp_path / "other")
    meta = tmp_path / "other" / "_scvi_required_metadata.json"
    meta.write_text(meta.read_text().replace("celltx.model", "scvi.model"))
    with pytest.raises(ValueError, match="not a celltx model"):
        ScGPT.from_hub(tmp_path / "other", pbmc)
