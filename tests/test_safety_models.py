"""Issue 25, items 4, 5, 6, 7, 14 and 16: resuming, untrained heads, the scale of rank-value
tokens, local hub directories, refused queries and zero-shot overrides.

Each test failed on the code before its fix.
"""

from __future__ import annotations

import json
import socket

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import torch
from scipy import sparse

from celltx.data import nonzero_medians
from celltx.model import ScGPT
from celltx.nn import preset

from _helpers import Evil

TINY = preset("tiny", d_model=32, n_heads=4)
CPU = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}


def _small(pbmc, n=96, **setup):
    a = pbmc[:n].copy()
    ScGPT.setup_anndata(a, **setup)
    return a


def _scvi_keys(adata):
    return (
        sorted(c for c in adata.obs.columns if str(c).startswith("_scvi")),
        sorted(k for k in adata.uns if str(k).startswith("_scvi")),
    )


# --- 4. resuming never unpickles ---------------------------------------------------------------
def test_resume_from_a_planted_pickle_runs_nothing(pbmc, tmp_path, monkeypatch):
    # torch's own default would unpickle: this variable turns weights_only off where a caller
    # does not pass it (so do torch versions before 2.6)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    evil = tmp_path / "step=3.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "loops": Evil(marker)}, evil)
    model = ScGPT(_small(pbmc), **TINY)
    with pytest.raises(ValueError, match="Refused") as e:
        model.train(max_epochs=1, ckpt_path=str(evil), **CPU)
    assert "could run code" in str(e.value) and str(evil) in str(e.value)
    assert not marker.exists()
    # files that are no Lightning checkpoint: clear errors before training starts
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        model.train(max_epochs=1, ckpt_path=str(tmp_path / "empty.ckpt"), **CPU)
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        model.train(max_epochs=1, ckpt_path=str(tmp_path / "weights.ckpt"), **CPU)
    with pytest.raises(ValueError, match="does not exist"):
        model.train(max_epochs=1, ckpt_path=str(tmp_path / "nope.ckpt"), **CPU)


def test_lightning_reads_the_checkpoint_with_weights_only(pbmc, tmp_path, monkeypatch):
    """Past celltx's own check, Lightning's load is safe too (weights_only=True, explicitly)."""
    adata = _small(pbmc)
    model = ScGPT(adata, **TINY)
    model.train(max_epochs=1, checkpoint_every=1, checkpoint_dir=tmp_path / "c", **CPU)
    ckpt = sorted((tmp_path / "c").glob("*.ckpt"))[-1]
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    again = ScGPT(adata, **TINY)
    again.train(max_epochs=2, ckpt_path=str(ckpt), **CPU)
    assert again.trainer.global_step == 2 * model.trainer.global_step  # it did resume
    assert calls and all(c is True for c in calls), calls


# --- 5. untrained heads ------------------------------------------------------------------------
def test_zero_shot_refuses_an_untrained_text_head(pbmc):
    pytest.importorskip("sentence_transformers", reason="needs the text extra: celltx[text]")
    pytest.importorskip("cellxgene_ontology_guide", reason="needs the text extra: celltx[text]")
    a = _small(pbmc, labels_key="cell_type")
    model = ScGPT(a, **TINY)
    model.set_label_texts(ontology=False)  # builds a (random) text head
    with pytest.raises(ValueError, match="never trained"):
        model.predict_zero_shot(candidates=["B cell", "T cell"], ontology=False)
    with pytest.raises(ValueError, match="never trained"):
        model.get_text_embeddings(["B cell"])
    # after cell–text training it answers; the flag survives save / load
    model.train(max_epochs=1, task="cell_text", **CPU)
    assert len(model.predict_zero_shot(candidates=["B cell", "T cell"], ontology=False)) == a.n_obs
    # a fresh text head (another model's set_label_texts) starts untrained again
    other = ScGPT(a, **TINY)
    other.set_label_texts(ontology=False)
    with pytest.raises(ValueError, match="never trained"):
        other.predict_zero_shot(candidates=["B cell"], ontology=False)


def test_zero_shot_text_head_state_survives_save_and_load(pbmc, tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs the text extra: celltx[text]")
    pytest.importorskip("cellxgene_ontology_guide", reason="needs the text extra: celltx[text]")
    a = _small(pbmc, labels_key="cell_type")
    model = ScGPT(a, **TINY)
    model.set_label_texts(ontology=False)
    model.save(tmp_path / "untrained")
    loaded = ScGPT.load(tmp_path / "untrained", adata=a, accelerator="cpu")
    with pytest.raises(ValueError, match="never trained"):
        loaded.predict_zero_shot(candidates=["B cell"], ontology=False)


def test_query_on_a_never_trained_reference_is_refused(pbmc):
    ref = _small(pbmc)
    reference = ScGPT(ref, **TINY)
    query = pbmc[100:140].copy()
    before = _scvi_keys(query)
    with pytest.raises(ValueError, match="never trained"):
        ScGPT.load_query_data(query, reference, accelerator="cpu")
    assert _scvi_keys(query) == before


# --- 6. rank-value tokens do not depend on the scale of the values ----------------------------
@pytest.fixture(scope="module")
def counts_and_log():
    """The same 120 pbmc68k cells as raw counts and as log1p(normalize_total) values."""
    import celltx

    a = celltx.datasets.pbmc68k()[:120]
    x = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
    counts = ad.AnnData(
        sparse.csr_matrix(np.rint(np.expm1(x) * 3).astype(np.float32)),
        obs=a.obs[["cell_type"]].copy(),
        var=a.var[[]].copy(),
    )
    log = counts.copy()
    sc.pp.normalize_total(log, target_sum=1e4)
    sc.pp.log1p(log)
    return counts, log


@pytest.mark.parametrize("selection", ["rank", "hvg"])
def test_rank_tokens_are_the_same_for_counts_and_log_values(counts_and_log, selection):
    counts, log = (a.copy() for a in counts_and_log)
    settings = {**TINY, "max_seq_len": 48, "gene_selection": selection, "n_hvg": 200}
    models = {}
    for name, a in (("counts", counts), ("log", log)):
        ScGPT.setup_anndata(a)
        torch.manual_seed(0)
        models[name] = ScGPT(a, **settings)
    m = models["log"]
    x_counts = torch.as_tensor(counts.X.toarray())
    x_log = torch.as_tensor(log.X.toarray())
    m.module.eval()
    with m._panel(log):
        t_log = m.module.tokenize(x_log)
        t_counts = m.module.tokenize(x_counts)
    torch.testing.assert_close(t_counts.gene_ids, t_log.gene_ids, rtol=0, atol=0)
    torch.testing.assert_close(t_counts.values, t_log.values, rtol=0, atol=0)
    # the same embeddings whichever scale the model was built on and the cells come in
    ref = m.get_latent_representation(log)
    for model in models.values():
        for a in (counts, log):
            np.testing.assert_allclose(model.get_latent_representation(a), ref, atol=1e-5)


def test_counts_query_on_a_log_reference(counts_and_log):
    counts, log = (a.copy() for a in counts_and_log)
    log.obs["batch"] = "ref"
    counts.obs["batch"] = "query"
    ScGPT.setup_anndata(log, batch_key="batch")
    torch.manual_seed(0)
    reference = ScGPT(log, **{**TINY, "max_seq_len": 48}, gene_selection="rank")
    reference.train(max_epochs=1, **CPU)
    query = ScGPT.load_query_data(counts, reference, accelerator="cpu")
    np.testing.assert_allclose(
        query.get_latent_representation(), reference.get_latent_representation(), atol=1e-5
    )


# --- 7. local hub directories never reach the network ------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    tries = []

    def refuse(self, address, *args):
        tries.append(address)
        raise OSError(f"network access in a test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tries


def _hub_dir(pbmc, tmp_path, **kwargs):
    pytest.importorskip("huggingface_hub")
    a = _small(pbmc)
    model = ScGPT(a, **TINY)
    model.is_trained_ = True
    d = tmp_path / "hub"
    model.to_hub(d, **kwargs)
    return d, a


def test_from_hub_without_data_needs_adata_and_stays_offline(pbmc, tmp_path, no_network):
    d, a = _hub_dir(pbmc, tmp_path, training_data_url="https://example.org/pbmc.h5ad")
    with pytest.raises(ValueError, match="no stored data") as e:
        ScGPT.from_hub(d, accelerator="cpu")
    assert "adata" in str(e.value)
    assert not no_network
    model = ScGPT.from_hub(d, a, accelerator="cpu")  # with data it loads
    assert isinstance(model, ScGPT)
    assert not no_network


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda meta: [meta], "not a JSON object"),
        (lambda meta: {**meta, "model_cls_name": "SCVI"}, "SCVI"),
        (lambda meta: {**meta, "model_cls_name": "__init__"}, "__init__"),
        (lambda meta: {k: v for k, v in meta.items() if k != "model_cls_name"}, "model_cls_name"),
        (lambda meta: "celltx.model", "not a JSON object"),
    ],
)
def test_from_hub_tampered_metadata(pbmc, tmp_path, no_network, edit, match):
    d, a = _hub_dir(pbmc, tmp_path)
    path = d / "_scvi_required_metadata.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    for adata in (a, None):
        with pytest.raises(ValueError, match=match):
            ScGPT.from_hub(d, adata, accelerator="cpu")
    assert not no_network


# --- 14. a refused query leaves the user's AnnData as it was -----------------------------------
def test_refused_query_leaves_the_anndata_unregistered(pbmc):
    ref = _small(pbmc)
    reference = ScGPT(ref, **TINY)
    reference.is_trained_ = True
    # no gene in the reference's vocabulary: refused after registration started
    query = pbmc[100:140].copy()
    query.var_names = [f"gene{i}" for i in range(query.n_vars)]
    before = _scvi_keys(query)
    with pytest.raises(ValueError, match="genes"):
        ScGPT.load_query_data(query, reference, accelerator="cpu")
    assert _scvi_keys(query) == before
    # an AnnData registered before keeps its registration
    other = query.copy()
    ScGPT.setup_anndata(other)
    cols, uns = _scvi_keys(other)
    saved = {k: other.uns[k] for k in uns}
    with pytest.raises(ValueError, match="genes"):
        ScGPT.load_query_data(other, reference, accelerator="cpu")
    assert _scvi_keys(other) == (cols, uns)
    assert all(other.uns[k] == saved[k] for k in uns if isinstance(saved[k], str))


# --- 16. zero-shot overrides name candidates ---------------------------------------------------
def test_zero_shot_override_of_no_candidate_is_refused(pbmc):
    pytest.importorskip("sentence_transformers", reason="needs the text extra: celltx[text]")
    pytest.importorskip("cellxgene_ontology_guide", reason="needs the text extra: celltx[text]")
    a = _small(pbmc, labels_key="cell_type")
    model = ScGPT(a, **TINY)
    model.train(max_epochs=1, task="cell_text", **CPU)
    with pytest.raises(ValueError, match="'B cel'") as e:
        model.predict_zero_shot(candidates=["B cell", "T cell"], overrides={"B cel": "CL:0000236"})
    assert "B cell" in str(e.value) and "T cell" in str(e.value)
    with pytest.raises(ValueError, match="'nope'"):
        model.set_label_texts(overrides={"nope": "CL:0000236"})
    out = model.predict_zero_shot(
        candidates=["B cell", "T cell"], overrides={"B cell": "CL:0000236"}
    )
    assert set(out) <= {"B cell", "T cell"}


def test_rank_models_saved_before_linear_medians_keep_their_tokens(counts_and_log):
    """A save without the ``rank_linear`` flag holds medians of the values as they were."""
    _, log = counts_and_log
    a = log.copy()
    ScGPT.setup_anndata(a)
    model = ScGPT(a, **{**TINY, "max_seq_len": 48}, gene_selection="rank")
    state = model.module.state_dict()
    assert bool(state["tokenizer.rank_linear"])
    # the layout of such saves: the tokenizer's buffers at the top (before CellTokenizer)
    old = {
        k.removeprefix("tokenizer."): v for k, v in state.items() if k != "tokenizer.rank_linear"
    }
    ids = torch.as_tensor(model._gene_ids(a))
    old["gene_medians"] = old["gene_medians"].clone()
    old["gene_medians"][ids] = torch.as_tensor(nonzero_medians(a.X), dtype=torch.float32)
    again = ScGPT(a, **{**TINY, "max_seq_len": 48}, gene_selection="rank")
    again.module.load_state_dict(old)
    assert not bool(again.module.rank_linear)
    x = torch.as_tensor(a.X.toarray())
    again.module.eval()
    with again._panel(a):
        got = again.module.tokenize(x)
        scale = again.module.rank_scale()
    want = again.module.tokenizer.rna(x, again.module.panel_gene_ids, sample="rank", scale=scale)
    torch.testing.assert_close(got.gene_ids, want.gene_ids, rtol=0, atol=0)
