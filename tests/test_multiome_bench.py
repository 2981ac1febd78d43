"""The multiome benchmark's methods, FOSCTTM, WNN graph scores and seconds column."""

import numpy as np
import pytest
from scipy import sparse

import celltx
from celltx.bench import foscttm


def _brute_foscttm(x, y):
    n = len(x)
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    fx = [(d[i] < d[i, i]).sum() / (n - 1) for i in range(n)]
    fy = [(d[:, i] < d[i, i]).sum() / (n - 1) for i in range(n)]
    return float(np.mean((np.array(fx) + np.array(fy)) / 2))


def test_foscttm_matches_the_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(57, 4))
    y = x + rng.normal(scale=0.8, size=x.shape)
    expected = _brute_foscttm(x, y)
    assert 0 < expected < 0.5
    # chunked over rows or not, the same value
    assert foscttm(x, y) == pytest.approx(expected)
    assert foscttm(x, y, chunk_size=5) == pytest.approx(expected)


def test_foscttm_by_hand():
    x = np.array([[0.0], [1.0], [2.0]])
    assert foscttm(x, x.copy()) == 0.0
    # cells 0 and 1 swapped in y: each of them has 1 of 2 other cells closer, both ways
    y = np.array([[1.0], [0.0], [2.0]])
    # cell 0: y0=1, true d=1; y1=0 (d 0) closer -> 1/2; x: x1=1 is closer to y0=1 -> 1/2
    # cell 1: same; cell 2: nothing closer
    assert foscttm(x, y) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_foscttm_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        foscttm(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        foscttm(np.array([[0.0], [np.nan]]), np.zeros((2, 1)))


def test_graph_scores_on_a_block_graph():
    from celltx.bench._multiome._metrics import graph_scores

    block = np.ones((10, 10))
    G = sparse.csr_matrix(np.kron(np.eye(3), block))
    labels = np.repeat(["a", "b", "c"], 10)
    s = graph_scores(G, labels, [1.0], seed=0)
    assert s["knn_accuracy"] == 1.0
    assert s["leiden_ari"] == pytest.approx(1.0)
    # shuffled labels: the vote is wrong often
    wrong = graph_scores(G, np.random.default_rng(0).permutation(labels), [1.0])
    assert wrong["knn_accuracy"] < 0.8


@pytest.fixture(scope="module")
def tiny():
    return celltx.datasets.simulate_multiome(n_cells=150, n_genes=60, n_peaks=120, seed=3)


def test_methods_rows_and_seconds(tiny):
    table = celltx.bench.multiome(tiny, "cell_type", methods=("rna_pca", "atac_lsi"), seed=0)
    assert table.index.tolist() == ["rna_pca", "atac_lsi"]
    assert table["error"].isna().all(), table["error"].tolist()
    assert (table["seconds"] > 0).all()
    assert table["n_cells"].tolist() == [150, 150]
    assert table["foscttm"].isna().all()


@pytest.mark.slow  # muon's neighbour search compiles numba code (minutes on a loaded CPU)
def test_wnn_is_scored_on_its_graph(tiny):
    table = celltx.bench.multiome(tiny, "cell_type", methods=("wnn",), seed=0)
    assert table.index.tolist() == ["wnn"]
    assert table["error"].isna().all(), table["error"].tolist()
    assert table.loc["wnn", "seconds"] > 0
    assert table.loc["wnn", "n_cells"] == 150
    # WNN is scored on its graph: better than chance on 5 types
    assert table.loc["wnn", "knn_accuracy"] > 0.5
    assert table.loc["wnn", "leiden_nmi"] > 0.3
    # no method here has per-modality embeddings in one space
    assert table["foscttm"].isna().all()


def test_foscttm_of_a_callers_joint_rna_atac_triple(tiny):
    z = np.asarray(tiny.uns["simulation"]["latent"])
    noise = np.random.default_rng(0).normal(scale=5.0, size=z.shape).astype(np.float32)
    table = celltx.bench.multiome(
        tiny,
        "cell_type",
        embeddings={
            "x_joint": z,
            "x_rna": z,
            "x_atac": z,
            "y_joint": z,
            "y_rna": z,
            "y_atac": noise,
        },
        baselines=(),
        knn=False,
    )
    assert table.loc["x_joint", "foscttm"] == 0.0
    assert 0.2 < table.loc["y_joint", "foscttm"] < 0.6
    assert np.isnan(table.loc["x_rna", "foscttm"])
    assert np.isnan(table.loc["x_joint", "seconds"])


def test_methods_bad_input(tiny):
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.multiome(tiny, "cell_type", methods=("scbasset",))
    with pytest.raises(ValueError, match="celltx_kwargs"):
        celltx.bench.multiome(tiny, "cell_type", methods=("rna_pca",), celltx_kwargs={})


@pytest.mark.slow
def test_celltx_and_multivi_rows_with_budget(tiny):
    table = celltx.bench.multiome(
        tiny,
        "cell_type",
        methods=("celltx", "multivi"),
        celltx_kwargs={"epochs": 1, "model": {"d_model": 32, "n_layers": 1, "n_heads": 2}},
        multivi_kwargs={"max_epochs": 10_000, "max_seconds": 3, "accelerator": "cpu"},
    )
    assert table.index.tolist() == ["celltx_joint", "celltx_rna", "celltx_atac", "multivi"]
    assert table["error"].isna().all(), table["error"].tolist()
    for name in ("celltx_joint", "multivi"):
        assert 0.0 <= table.loc[name, "foscttm"] <= 1.0
        assert table.loc[name, "seconds"] > 0
    assert table.loc["celltx_joint", "epochs"] == 1
    # the wall-clock budget stopped MULTIVI long before its 10,000 epochs; epochs reported
    assert 1 <= table.loc["multivi", "epochs"] < 10_000
    assert table.loc["multivi", "seconds"] < 120
    assert table.loc["celltx_rna", "n_cells"] == 150


# ---- informative peak tokens (TF-IDF rank) and data-driven peak panels ---------------------


def test_peak_idf_known_values():
    from celltx.data import peak_idf

    x = sparse.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]))
    # 3 cells with ATAC (the empty one is not counted); peaks open in 3, 1, 1, 0 of them
    assert peak_idf(x) == pytest.approx(np.log1p(3 / (1 + np.array([3, 1, 1, 0]))))


def test_idf_rank_takes_the_rarest_open_peaks_first():
    import torch

    from celltx.data import Tokenizer

    # one cell with 4 open peaks, IDF known: peaks 2 and 0 are the rarest
    idf = torch.tensor([2.0, 0.5, 3.0, 1.0, 4.0])
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    tok = Tokenizer(max_seq_len=3, pad_id=0, cls_id=1, n_bins=None)
    out = tok(x, torch.arange(10, 15), sample="rank", scale=idf)
    assert out.gene_ids[0, 1:].tolist() == [12, 10]


def _peak_model(mdata, peak_selection, max_peaks=4):
    from celltx.model import ScGPT

    ScGPT.setup_mudata(mdata)
    return ScGPT(
        mdata,
        d_model=32,
        n_layers=1,
        n_heads=2,
        max_seq_len=16,
        max_peaks=max_peaks,
        atac_zero_fraction=0.0,
        peak_selection=peak_selection,
    )


def test_model_with_peak_selection_idf_tokens_rare_peaks():
    import torch

    from celltx.data import peak_idf
    from celltx.module import ATAC_KEY

    mdata = celltx.datasets.simulate_multiome(n_cells=60, n_genes=20, n_peaks=40, seed=1)
    model = _peak_model(mdata, "idf")
    x_atac = model.adata_manager.get_from_registry(ATAC_KEY)
    idf = peak_idf(x_atac)
    x_atac = torch.as_tensor(np.asarray(x_atac.todense()), dtype=torch.float32)
    x = torch.as_tensor(np.asarray(mdata.mod["rna"].X.todense()), dtype=torch.float32)
    m = model.module
    for training in (True, False):  # the same rank in training and inference
        m.train(training)
        t = m.tokenize(x, x_atac=x_atac)
        peaks = (t.modality == 2) & ~t.padding_mask
        ids = m.panel_atac_ids.tolist()
        for c in range(5):
            chosen = sorted(ids.index(g) for g in t.gene_ids[c][peaks[c]].tolist())
            open_ = np.flatnonzero(x_atac[c].numpy() > 0)
            assert len(open_) > 4  # more open peaks than tokens: a choice was made
            expected = open_[np.argsort(-idf[open_], kind="stable")][:4]
            assert len(chosen) == 4
            assert idf[chosen].min() >= idf[expected].min() - 1e-6
    m.eval()
    # a random choice gets lower-IDF peaks on average than the IDF rank
    rnd = _peak_model(mdata.copy(), "random").module.eval()
    t_idf, t_rnd = m.tokenize(x, x_atac=x_atac), rnd.tokenize(x, x_atac=x_atac)

    def mean_idf(t, module):
        ids = module.panel_atac_ids.tolist()
        cols = [ids.index(g) for g in t.gene_ids[(t.modality == 2) & ~t.padding_mask].tolist()]
        return float(idf[cols].mean())

    assert mean_idf(t_idf, m) > mean_idf(t_rnd, rnd) + 0.05


def test_peak_selection_bad_value():
    from celltx.nn import ScGPTConfig

    with pytest.raises(ValueError, match="peak_selection"):
        ScGPTConfig(peak_selection="tfidf")


def test_peak_panel_accessible_and_variable():
    import anndata as ad

    from celltx.data import peak_panel

    # peak 0 open everywhere, 1 in cells 0-3, 2 in cells 4-7 (every cell: 2 open), 3 never
    x = np.zeros((8, 4))
    x[:, 0] = 1
    x[:4, 1] = 2
    x[4:, 2] = 1
    a = ad.AnnData(sparse.csr_matrix(x))
    assert peak_panel(a, n_top=1).tolist() == [True, False, False, False]
    assert peak_panel(a, n_top=3).tolist() == [True, True, True, False]
    # variable: the half-open peaks vary, the ubiquitous one does not (tie: column order)
    assert peak_panel(a, n_top=1, by="variable").tolist() == [False, True, False, False]
    assert peak_panel(a, n_top=2, by="variable").tolist() == [False, True, True, False]
    assert peak_panel(a, n_top=10).sum() == 4
    with pytest.raises(ValueError, match="by="):
        peak_panel(a, by="popular")
    with pytest.raises(ValueError, match="n_top"):
        peak_panel(a, n_top=0)


@pytest.mark.slow
def test_multivi_foscttm_on_a_mosaic_counts_only_paired_cells():
    mosaic = celltx.datasets.simulate_multiome(
        n_cells=150, n_genes=60, n_peaks=120, mosaic=True, seed=3
    )
    table, emb = celltx.bench.multiome(
        mosaic,
        "cell_type",
        methods=("multivi",),
        multivi_kwargs={"max_epochs": 2, "accelerator": "cpu"},
        return_embeddings=True,
    )
    paired = (mosaic.obs["modality"] == "paired").to_numpy()
    # the RNA latent covers the cells with RNA only; FOSCTTM over the paired cells
    assert (
        np.isfinite(emb["multivi_rna"]).all(1).tolist()
        == (mosaic.obs["modality"] != "atac").tolist()
    )
    both = np.isfinite(emb["multivi_rna"]).all(1) & np.isfinite(emb["multivi_atac"]).all(1)
    assert both.tolist() == paired.tolist()
    expected = foscttm(emb["multivi_rna"][paired], emb["multivi_atac"][paired])
    assert table.loc["multivi", "foscttm"] == pytest.approx(expected)
