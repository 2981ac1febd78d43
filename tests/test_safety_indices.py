"""Which cells a query reads (issue 25, items 1, 2, 10, 11, 15): disk-backed data in every
batching mode, unsorted and repeated ``indices``, boolean masks, empty / out-of-range
selections, impossible ``batch_size`` values, and gene interactions no cell contributes to."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import celltx
from celltx.cli import main
from celltx.model import ScGPT
from celltx.nn import preset

# max_seq_len above every pbmc68k cell's expressed genes (183..409 of 765): cells differ in
# length, so token-budget batches regroup and reorder them
LONG = preset("tiny", d_model=32, n_heads=4, max_seq_len=1200)
N = 48
MODES = ["auto", None, 1500]  # the default budget, plain batches, a small budget (many passes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An in-memory AnnData (labels registered), the same cells on disk, a model built on it."""
    d = tmp_path_factory.mktemp("indices")
    mem = celltx.datasets.pbmc68k()[:N].copy()
    mem.write_h5ad(d / "a.h5ad")
    ScGPT.setup_anndata(mem, labels_key="cell_type")
    model = ScGPT(mem, seed=0, **LONG)
    model.is_trained_ = True  # random weights are enough to tell cells apart
    model.module.cls_trained.fill_(True)
    backed = ad.read_h5ad(d / "a.h5ad", backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = model.get_latent_representation(mem, batch_tokens=None)
    return {"dir": d, "mem": mem, "backed": backed, "model": model, "ref": ref}


def test_cells_differ_in_length(data):
    lengths = data["model"]._sequence_lengths(data["mem"])
    assert len(np.unique(lengths)) > N // 2  # else the sweep would not regroup cells


@pytest.mark.parametrize("batch_tokens", MODES)
def test_backed_embedding_equals_in_memory(data, batch_tokens):
    """Item 1: every row of a backed query is its own cell's embedding, in any batching."""
    model = data["model"]
    for adata in (data["mem"], data["backed"]):
        emb = model.get_latent_representation(adata, batch_tokens=batch_tokens, batch_size=16)
        np.testing.assert_allclose(emb, data["ref"], atol=1e-5, err_msg=str(adata.isbacked))


@pytest.mark.parametrize("batch_tokens", MODES)
@pytest.mark.parametrize("kind", ["mem", "backed"])
def test_unsorted_repeated_indices(data, batch_tokens, kind):
    """Item 2: indices=[5, 3, 1, 3] gives exactly those cells, in that order."""
    idx = [5, 3, 1, 3]
    emb = data["model"].get_latent_representation(
        data[kind], indices=idx, batch_tokens=batch_tokens
    )
    np.testing.assert_allclose(emb, data["ref"][idx], atol=1e-5)


def test_backed_labelled_outputs_follow_indices(data):
    """Item 2: get_normalized_expression / predict label the rows with the cells they hold."""
    model, mem, backed = data["model"], data["mem"], data["backed"]
    idx = [5, 3, 1, 3]
    genes = list(mem.var_names[:20])
    want = model.get_normalized_expression(mem, gene_list=genes).iloc[idx]
    got = model.get_normalized_expression(backed, indices=idx, gene_list=genes)
    assert list(got.index) == list(mem.obs_names[idx])
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), atol=1e-5)
    proba = model.predict(mem, soft=True)
    got = model.predict(backed, indices=idx, soft=True)
    assert list(got.index) == list(mem.obs_names[idx])
    np.testing.assert_allclose(got.to_numpy(), proba.to_numpy()[idx], atol=1e-5)


def test_cli_embed_backed_equals_in_memory(data, tmp_path):
    """Item 1: `celltx embed --backed` (one call, or block by block) puts rows on their cells."""
    model, src = data["model"], data["dir"] / "a.h5ad"
    model.save(str(tmp_path / "ckpt"))
    argv = ["embed", str(tmp_path / "ckpt"), str(src)]
    opts = ["--device", "cpu", "--backed", "--no-progress"]
    assert main([*argv, str(tmp_path / "out.h5ad"), *opts]) == 0  # one call
    emb = ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_scgpt"]
    np.testing.assert_allclose(emb, data["ref"], atol=1e-5)
    for extra in ([], ["--batch-size", "16"]):  # .npy: blocks of cells
        out = tmp_path / f"emb{len(extra)}.npy"
        assert main([*argv, str(out), *opts, *extra]) == 0
        np.testing.assert_allclose(np.load(out), data["ref"], atol=1e-5)


# --- items 11 and 15: one check of indices and batch_size for every query -------------------
def _queries(model, adata):
    """Each inference entry point that takes indices and batch_size, as a call."""
    genes = list(adata.var_names[:3])
    return {
        "latent": lambda **kw: model.get_latent_representation(adata, **kw),
        "latent_plain": lambda **kw: model.get_latent_representation(
            adata, batch_tokens=None, **kw
        ),
        "normalized": lambda **kw: model.get_normalized_expression(adata, gene_list=genes, **kw),
        "predict": lambda **kw: model.predict(adata, soft=True, **kw),
        "interactions": lambda **kw: model.get_gene_interactions(adata, genes=genes, **kw),
        "score_generation": lambda **kw: model.score_generation(adata, **kw),
    }


QUERIES = list(_queries(None, ad.AnnData(np.zeros((1, 3)))))


def _values(out):
    if isinstance(out, dict):
        return out
    return np.asarray(getattr(out, "to_numpy", lambda: out)())


@pytest.mark.parametrize("query", QUERIES)
def test_boolean_mask(data, query):
    """Item 11: a mask over all cells selects its cells; a mask of another length is refused."""
    mem = data["mem"]
    call = _queries(data["model"], mem)[query]
    mask = np.zeros(N, dtype=bool)
    mask[[2, 7, 30]] = True
    want = call(indices=np.flatnonzero(mask))
    for got in (call(indices=mask), call(indices=mask.tolist())):  # a list of bools too
        if isinstance(got, dict):
            assert got == pytest.approx(want)
            continue
        np.testing.assert_allclose(_values(got), _values(want), atol=1e-5)
        if query in ("normalized", "predict"):  # rows labelled with the cells
            assert list(got.index) == list(mem.obs_names[mask])
    for wrong in (mask[:10], np.ones(N + 1, dtype=bool)):
        with pytest.raises(ValueError, match=f"boolean mask.*{len(wrong)}.*{N} cells"):
            call(indices=wrong)


@pytest.mark.parametrize("query", QUERIES)
def test_bad_indices_and_batch_size(data, query):
    """Item 15: empty, out-of-range, fractional or named indices and batch sizes that are not
    positive integers raise a ValueError naming the argument."""
    call = _queries(data["model"], data["mem"])[query]
    for bad, match in (
        ([], "indices selects no cells"),
        (np.zeros(N, dtype=bool), "indices selects no cells"),
        ([0, N], f"out of range.*{N} cells"),
        ([-N - 1], f"out of range.*{N} cells"),
        ([1.5, 2], "integer positions"),
        (["AAAC"], "integer positions"),
        (np.zeros((2, 2), dtype=int), "one-dimensional"),
    ):
        with pytest.raises(ValueError, match=match):
            call(indices=bad)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            call(indices=[0, 1], batch_size=bad)


def test_negative_indices_count_from_the_end(data):
    """As in numpy: -1 is the last cell."""
    model, mem = data["model"], data["mem"]
    emb = model.get_latent_representation(mem, indices=[-1, 0])
    np.testing.assert_allclose(emb, data["ref"][[N - 1, 0]], atol=1e-5)
    names = model.get_normalized_expression(mem, indices=[-1], gene_list=["HES4"]).index
    assert list(names) == [mem.obs_names[-1]]


# --- item 10 ---------------------------------------------------------------------------------
def test_gene_interactions_without_contributing_cells(data):
    """No cell expresses the genes (include_zeros=False): a NaN matrix, as documented, not a
    bare StopIteration; groups with cells but no pair stay in the dict, also all NaN."""
    model, mem = data["model"], data["mem"]
    X = mem.X.toarray() if sparse.issparse(mem.X) else np.asarray(mem.X)
    cells = np.arange(10)
    silent = np.flatnonzero((X[cells] == 0).all(0))[:3]
    assert len(silent) == 3
    genes = list(mem.var_names[silent])
    scores = model.get_gene_interactions(mem, genes=genes, indices=cells, include_zeros=False)
    assert scores.shape == (3, 3) and np.isnan(scores.to_numpy()).all()
    groups = model.get_gene_interactions(
        mem, genes=genes, indices=cells, include_zeros=False, groupby="cell_type"
    )
    present = set(mem.obs["cell_type"].iloc[cells].astype(str))
    assert set(groups) == present
    assert all(np.isnan(g.to_numpy()).all() for g in groups.values())
    # with include_zeros (the default) the same cells give finite scores
    assert np.isfinite(model.get_gene_interactions(mem, genes=genes, indices=cells)).all().all()


def test_multiome_cross_prediction_takes_the_same_indices():
    """The MuData queries go through the same check (mask, order, refusals)."""
    mdata = celltx.data.pad_mosaic(celltx.datasets.simulate_multiome(n_cells=30, seed=0))
    ScGPT.setup_mudata(mdata)
    model = ScGPT(mdata, **preset("tiny", max_seq_len=32), max_peaks=32)
    model.is_trained_ = True
    full = model.predict_rna_from_atac(mdata)
    mask = np.zeros(mdata.n_obs, dtype=bool)
    mask[[4, 9]] = True
    for idx, want in ((mask, [4, 9]), ([9, 4, 9], [9, 4, 9]), ([-1], [mdata.n_obs - 1])):
        got = model.predict_rna_from_atac(mdata, indices=idx)
        assert list(got.obs_names) == list(mdata.obs_names[want])
        np.testing.assert_allclose(got.X, full.X[want], atol=1e-5, equal_nan=True)
    with pytest.raises(ValueError, match="boolean mask of length 5"):
        model.predict_atac_from_rna(mdata, indices=mask[:5])
    with pytest.raises(ValueError, match="batch_size"):
        model.predict_atac_from_rna(mdata, batch_size=0)
