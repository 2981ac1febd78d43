"""Published scGPT checkpoints: load_pretrained / export_scgpt, identity with the original,
safety and error messages. Reads ../shared/fixtures/scgpt_reference (skips without it)."""

from __future__ import annotations

import json
import shutil
import warnings

import anndata as ad
import numpy as np
import pytest
import torch

import celltx
from celltx.model import ScGPT

from _helpers import FIXTURES, need

LAYOUTS = ["ckpt_small", "ckpt_small_torch", "ckpt_small_fa2"]


@pytest.fixture(scope="module")
def tiefree():
    return ad.read_h5ad(need(FIXTURES / "pbmc68k_tiefree.h5ad"))


@pytest.fixture
def ckpt_copy(tmp_path):
    """A writable copy of the official-layout fixture directory."""
    d = tmp_path / "ckpt"
    shutil.copytree(need(FIXTURES / "ckpt_small"), d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


def _load(path, adata, **kw):
    return ScGPT.load_pretrained(path, adata.copy(), accelerator="cpu", **kw)


# --- identity with the original implementation -------------------------------------------
@pytest.mark.parametrize("layout_dir", LAYOUTS)
def test_embeddings_match_scgpt_embed_data(tiefree, layout_dir):
    ref = np.load(need(FIXTURES / "pbmc68k_tiefree_embed_data.npy"))
    model = _load(FIXTURES / layout_dir, tiefree)
    assert model.module.tokenizer.max_seq_len == 1200  # from args.json: every expressed gene fits
    emb = model.get_latent_representation(normalize=True, batch_size=64)
    assert emb.shape == ref.shape == (700, 64)
    np.testing.assert_allclose(emb, ref, atol=1e-4, rtol=0)
    # the comparison is sensitive: dropping genes (subsampling to 100 tokens) breaks it
    sub = model.get_latent_representation(normalize=True, max_seq_len=101)
    assert np.abs(sub - ref).max() > 1e-3


@pytest.mark.parametrize("layout_dir", LAYOUTS)
def test_loaded_transformer_reproduces_golden_outputs(layout_dir, tiefree):
    g = np.load(need(FIXTURES / "golden_small.npz"))
    model = _load(FIXTURES / layout_dir, tiefree)
    net = model.module.transformer.eval()
    with torch.no_grad():
        out = net(*(torch.from_numpy(g[k]) for k in ("gene_ids", "values", "padding_mask")))
    keep = ~g["padding_mask"]
    for ours, theirs in [
        (out["encoder_output"].numpy()[keep], g["encoder_output"][keep]),
        (out["cell_emb"].numpy(), g["cell_emb"]),
        (out["expr"].numpy()[keep], g["mlm_output"][keep]),
        (out["mvc"].numpy()[keep], g["mvc_output"][keep]),
    ]:
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_three_layouts_load_the_same_weights(tiefree):
    models = [_load(FIXTURES / d, tiefree) for d in LAYOUTS]
    sds = [m.module.transformer.state_dict() for m in models]
    for sd in sds[1:]:
        assert sd.keys() == sds[0].keys()
        assert all(torch.equal(sd[k], sds[0][k]) for k in sd)
    rep = models[0].checkpoint_report_
    assert rep.skipped == {"cls_decoder": 10}  # reported, not silently dropped
    assert rep.initialised == []
    assert "skipped" in models[0]._model_summary_string


# --- export ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "safetensors", "fixture_dir"),
    [
        ("official", False, "ckpt_small"),
        ("torch", False, "ckpt_small_torch"),
        ("fa2", True, "ckpt_small_fa2"),
    ],
)
def test_export_load_round_trip(tiefree, tmp_path, layout, safetensors, fixture_dir):
    model = _load(FIXTURES / "ckpt_small", tiefree)
    emb = model.get_latent_representation()
    wpath = model.export_scgpt(tmp_path / "out", layout=layout, safetensors=safetensors)
    assert wpath.endswith(".safetensors" if safetensors else "best_model.pt")
    # the file carries the original's key names for this layout (its classifier aside)
    theirs = {
        line.split("\t")[0]
        for line in (FIXTURES / fixture_dir / "key_names.txt").read_text().splitlines()
        if line and not line.startswith("cls_decoder.")
    }
    assert set(celltx.io.read_weights(wpath)) == theirs
    # args.json has every key of the original's with the same value for the architecture
    args = json.loads((tmp_path / "out" / "args.json").read_text())
    orig = json.loads((FIXTURES / "ckpt_small" / "args.json").read_text())
    for k in (
        "embsize",
        "nheads",
        "nlayers",
        "d_hid",
        "n_bins",
        "pad_token",
        "pad_value",
        "input_emb_style",
        "cell_emb_style",
        "max_seq_len",
        "ntoken",
        "dropout",
    ):
        assert args[k] == orig[k], k
    again = _load(tmp_path / "out", tiefree)
    a, b = model.module.transformer.state_dict(), again.module.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(again.get_latent_representation(), emb)


def test_export_refuses_non_empty_dir_and_bad_layout(tiefree, tmp_path):
    model = _load(FIXTURES / "ckpt_small", tiefree)
    model.export_scgpt(tmp_path / "out")
    with pytest.raises(ValueError, match="not empty"):
        model.export_scgpt(tmp_path / "out")
    model.export_scgpt(tmp_path / "out", safetensors=True, overwrite=True)
    assert not (tmp_path / "out" / "best_model.pt").exists()  # no stale weights left behind
    with pytest.raises(ValueError, match="layout"):
        model.export_scgpt(tmp_path / "other", layout="flash")


def test_trained_model_exports_and_reloads(trained, tmp_path):
    model, adata = trained
    model.export_scgpt(tmp_path / "mine")
    again = ScGPT.load_pretrained(tmp_path / "mine", adata.copy(), accelerator="cpu")
    np.testing.assert_allclose(
        again.get_latent_representation(adata.copy()), model.get_latent_representation(), atol=1e-6
    )


# --- fine-tuning from the loaded weights -------------------------------------------------
@pytest.mark.slow  # trains an epoch on pbmc68k (~6 s)
def test_training_continues_from_loaded_weights(tiefree):
    model = _load(FIXTURES / "ckpt_small", tiefree)
    file_sd = celltx.io.from_scgpt(
        celltx.io.read_weights(FIXTURES / "ckpt_small" / "best_model.pt")
    )
    before = {k: v.clone() for k, v in model.module.transformer.state_dict().items()}
    assert all(torch.equal(before[k], file_sd[k]) for k in before)
    model.train(max_epochs=1, batch_size=64, accelerator="cpu", enable_progress_bar=False, lr=1e-4)
    after = model.module.transformer.state_dict()
    w = "transformer_encoder.layers.0.linear1.weight"
    assert not torch.equal(after[w], before[w])
    # lr 1e-4 for 10 steps: a fine-tune stays close to the checkpoint, not a re-initialisation
    rel = (after[w] - before[w]).norm() / before[w].norm()
    assert 0 < rel < 0.1
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()


# --- gene matching -----------------------------------------------------------------------
def test_gene_symbols_column_and_overlap_threshold(tiefree):
    adata = tiefree.copy()
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match="Only 0 of 765 genes"):
        _load(FIXTURES / "ckpt_small", adata)
    model = _load(FIXTURES / "ckpt_small", adata, gene_symbols="symbol")
    assert model.gene_match_.n_matched == 765
    # half of the genes unknown: passes at 0.4, fails at 0.6 (and the message says how many)
    half = tiefree.copy()
    half.var_names = [g if i % 2 else f"X{g}" for i, g in enumerate(half.var_names)]
    assert _load(FIXTURES / "ckpt_small", half, min_gene_overlap=0.4).gene_match_.n_matched == 382
    with pytest.raises(ValueError, match="Only 382 of 765"):
        _load(FIXTURES / "ckpt_small", half, min_gene_overlap=0.6)
    with pytest.raises(ValueError, match="at least 400"):
        _load(FIXTURES / "ckpt_small", half, min_gene_overlap=400)


def test_architecture_overrides_are_refused(tiefree):
    with pytest.raises(ValueError, match="cannot override.*d_model"):
        _load(FIXTURES / "ckpt_small", tiefree, d_model=128)
    model = _load(FIXTURES / "ckpt_small", tiefree, max_seq_len=300, dropout=0.1)
    assert model.module.tokenizer.max_seq_len == 300


# --- safety and bad files ----------------------------------------------------------------
def test_code_in_a_checkpoint_is_never_run(ckpt_copy, tmp_path, tiefree):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    sd = torch.load(ckpt_copy / "best_model.pt", weights_only=True)
    sd["payload"] = Evil()
    torch.save(sd, ckpt_copy / "best_model.pt")
    with pytest.raises(ValueError, match="Refused"):
        _load(ckpt_copy, tiefree)
    assert not marker.exists()


def test_safetensors_weights_load(ckpt_copy, tiefree):
    from safetensors.torch import save_file

    sd = torch.load(ckpt_copy / "best_model.pt", weights_only=True)
    (ckpt_copy / "best_model.pt").unlink()
    save_file(sd, str(ckpt_copy / "best_model.safetensors"))
    ref = _load(FIXTURES / "ckpt_small", tiefree).get_latent_representation()
    np.testing.assert_array_equal(_load(ckpt_copy, tiefree).get_latent_representation(), ref)


def _edit_args(d, **changes):
    args = json.loads((d / "args.json").read_text())
    args.update(changes)
    (d / "args.json").write_text(json.dumps(args))


def _edit_weights(d, fn):
    sd = torch.load(d / "best_model.pt", weights_only=True)
    torch.save(fn(sd), d / "best_model.pt")


def test_bad_directories(tmp_path, ckpt_copy, tiefree):
    with pytest.raises(ValueError, match="not a directory"):
        _load(tmp_path / "nope", tiefree)
    (ckpt_copy / "vocab.json").rename(tmp_path / "vocab.json")
    with pytest.raises(ValueError, match="no vocab.json"):
        _load(ckpt_copy, tiefree)
    (tmp_path / "vocab.json").rename(ckpt_copy / "vocab.json")
    (ckpt_copy / "best_model.pt").rename(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="No weights"):
        _load(ckpt_copy, tiefree)
    (tmp_path / "w.pt").rename(ckpt_copy / "weights.pt")
    assert _load(ckpt_copy, tiefree, weights="weights.pt").is_trained_
    (ckpt_copy / "args.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _load(ckpt_copy, tiefree, weights="weights.pt")


def test_truncated_and_foreign_weights(ckpt_copy, tiefree):
    data = (ckpt_copy / "best_model.pt").read_bytes()
    (ckpt_copy / "best_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        _load(ckpt_copy, tiefree)
    torch.save(
        {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)},
        ckpt_copy / "best_model.pt",
    )
    with pytest.raises(ValueError, match="does not look like a scGPT state dict"):
        _load(ckpt_copy, tiefree)
    torch.save([torch.zeros(2)], ckpt_copy / "best_model.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        _load(ckpt_copy, tiefree)


def test_vocab_that_does_not_fit_the_embedding(ckpt_copy, tiefree):
    vocab = json.loads((ckpt_copy / "vocab.json").read_text())
    vocab["EXTRA_GENE"] = len(vocab)
    (ckpt_copy / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="769 tokens but the gene embedding .* 768 rows"):
        _load(ckpt_copy, tiefree)


def test_shapes_that_disagree_with_args(ckpt_copy, tiefree):
    _edit_args(ckpt_copy, d_hid=128)
    with pytest.raises(ValueError) as e:
        _load(ckpt_copy, tiefree)
    msg = str(e.value)
    assert "'transformer_encoder.layers.0.linear1.weight'" in msg
    assert "(64, 64)" in msg and "(128, 64)" in msg
    _edit_args(ckpt_copy, d_hid=64, nlayers=1)
    with pytest.raises(ValueError, match="2 transformer layers but .* has 1"):
        _load(ckpt_copy, tiefree)
    _edit_args(ckpt_copy, nlayers=3)
    with pytest.raises(ValueError, match="missing required tensor 'transformer_encoder.layers.2"):
        _load(ckpt_copy, tiefree)
    _edit_args(ckpt_copy, nlayers=2, cell_emb_style="avg-pool")
    with pytest.raises(ValueError, match="cell_emb_style='avg-pool'"):
        _load(ckpt_copy, tiefree)
    _edit_args(ckpt_copy, cell_emb_style="cls")
    del_args = json.loads((ckpt_copy / "args.json").read_text())
    del del_args["embsize"]
    (ckpt_copy / "args.json").write_text(json.dumps(del_args))
    with pytest.raises(ValueError, match="lacks \\['embsize'\\]"):
        _load(ckpt_copy, tiefree)


def test_missing_tensors_and_heads(ckpt_copy, tiefree):
    _edit_weights(
        ckpt_copy, lambda sd: {k: v for k, v in sd.items() if k != "value_encoder.norm.bias"}
    )
    with pytest.raises(ValueError, match="missing required tensor 'value_encoder.norm.bias'"):
        _load(ckpt_copy, tiefree)
    shutil.copy(FIXTURES / "ckpt_small" / "best_model.pt", ckpt_copy / "best_model.pt")
    (ckpt_copy / "best_model.pt").chmod(0o644)
    _edit_weights(
        ckpt_copy, lambda sd: {k: v for k, v in sd.items() if not k.startswith("mvc_decoder.")}
    )
    with pytest.warns(UserWarning, match="mvc_decoder"):
        model = _load(ckpt_copy, tiefree)
    assert model.checkpoint_report_.initialised == ["mvc_decoder"]
    with warnings.catch_warnings():  # embeddings do not use the head: still identical
        warnings.simplefilter("ignore")
        ref = _load(FIXTURES / "ckpt_small", tiefree)
    np.testing.assert_array_equal(
        model.get_latent_representation(), ref.get_latent_representation()
    )
    _edit_weights(ckpt_copy, lambda sd: {k: v for k, v in sd.items() if k != "decoder.fc.4.bias"})
    with pytest.raises(ValueError, match="head 'decoder' is incomplete"):
        _load(ckpt_copy, tiefree)
