"""The ``celltx`` verbs refuse unusable outputs and inputs before doing any work (issue 25).

Every refusal is checked with ``anndata.read_h5ad`` (and the bundled data set) replaced by a
function that fails the test: a check that fires after reading an input is a failure. The
models are tiny and untrained (saved, or exported in scGPT's format) so nothing here trains,
except the one test marked slow.
"""

from __future__ import annotations

import hashlib
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import celltx
from celltx.cli import main
from celltx.model import ScGPT
from celltx.nn import preset

# the models are untrained on purpose: these tests are about files, not embeddings
pytestmark = pytest.mark.filterwarnings("ignore:This model was neither trained")

TINY = preset("tiny", max_seq_len=32)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """60 pbmc68k cells, an untrained tiny model saved by celltx and exported as scGPT."""
    d = tmp_path_factory.mktemp("safety_cli")
    adata = celltx.datasets.pbmc68k()[:60].copy()
    adata.write_h5ad(d / "in.h5ad")
    adata[:20].write_h5ad(d / "query.h5ad")
    ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = ScGPT(adata, seed=0, **TINY)
    model.save(str(d / "ckpt"))
    model.export_scgpt(str(d / "scgpt"))
    return d


@pytest.fixture
def no_reading(monkeypatch):
    """Any read of an input (or of quickstart's bundled data) fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError(f"an input was read before the arguments were checked: {args}")

    monkeypatch.setattr(ad, "read_h5ad", fail)
    monkeypatch.setattr(celltx.datasets, "pbmc68k", fail)


def _refused(argv, capsys, *messages, code=2):
    """Run ``celltx argv``: it must exit ``code`` with every message and no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code, argv
    captured = capsys.readouterr()
    err = captured.err
    for m in messages:
        assert m in err, (argv, m, err)
    assert "Traceback" not in err and "NameError" not in captured.out + err
    return err


def _embed(files, out):
    return ["embed", str(files / "ckpt"), str(files / "in.h5ad"), str(out), "--device", "cpu"]


def _finetune(files, out, *extra):
    argv = ["finetune", str(files / "scgpt"), str(files / "in.h5ad"), "--out", str(out)]
    return [*argv, "--labels-key", "cell_type", "--epochs", "1", "--accelerator", "cpu", *extra]


def _pretrain(files, out, *extra):
    argv = ["pretrain", str(files / "in.h5ad"), "--out", str(out), "--epochs", "1"]
    return [*argv, "--accelerator", "cpu", "--no-progress", *extra]


# item 3: an output is never an input, even with --overwrite -------------------------------


def test_finetune_predict_out_never_replaces_an_input(files, tmp_path, capsys, no_reading):
    train, query = files / "in.h5ad", files / "query.h5ad"
    before = {p: _sha256(p) for p in (train, query)}
    link = tmp_path / "link.h5ad"
    link.symlink_to(train)
    hard = tmp_path / "hard.h5ad"
    os.link(train, hard)
    for target in (train, query, link, hard):
        argv = _finetune(files, tmp_path / "ft", "--predict", str(query), "--predict-out")
        _refused([*argv, str(target), "--overwrite"], capsys, "--predict-out", "is the input")
    assert {p: _sha256(p) for p in (train, query)} == before
    assert not (tmp_path / "ft").exists()


def test_embed_output_never_an_input_even_with_overwrite(files, tmp_path, capsys, no_reading):
    src = files / "in.h5ad"
    link = tmp_path / "link.h5ad"
    link.symlink_to(src)
    hard = tmp_path / "hard.h5ad"
    os.link(src, hard)
    for target in (src, link, hard):
        _refused([*_embed(files, target), "--overwrite"], capsys, "is the input file")
    # an output inside the checkpoint would change the model
    _refused(
        [*_embed(files, files / "ckpt" / "model.json.npy"), "--overwrite"],
        capsys,
        "inside the input",
    )


def test_training_out_never_holds_an_input(files, tmp_path, capsys, no_reading):
    # finetune --out the checkpoint folder it loads
    _refused([*_finetune(files, files / "scgpt"), "--overwrite"], capsys, "is an input")
    # pretrain --out a folder whose model/ (written by pretrain) holds the input
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    data = out / "model" / "cells.h5ad"
    data.write_bytes((files / "in.h5ad").read_bytes())
    argv = ["pretrain", str(data), "--out", str(out), "--epochs", "1", "--overwrite"]
    _refused(argv, capsys, "model", "is an input")
    # --predict-out inside what --out writes
    argv = _finetune(files, tmp_path / "ft", "--predict", str(files / "query.h5ad"))
    _refused([*argv, "--predict-out", str(tmp_path / "ft" / "model" / "p.h5ad")], capsys, "--out")


def test_every_verb_refuses_an_existing_output(files, tmp_path, capsys, no_reading):
    existing = tmp_path / "existing.h5ad"
    existing.write_bytes(b"keep me")
    _refused(_embed(files, existing), capsys, "exists", "--overwrite")
    argv = _finetune(files, tmp_path / "ft", "--predict", str(files / "query.h5ad"))
    _refused([*argv, "--predict-out", str(existing)], capsys, "exists", "--overwrite")
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    _refused(_pretrain(files, run), capsys, "--overwrite")
    # quickstart: refused when --out holds a file quickstart writes
    qs = tmp_path / "qs"
    qs.mkdir()
    (qs / "scores.csv").write_text("mine")
    _refused(["quickstart", "--out", str(qs), "--epochs", "1"], capsys, "scores.csv", "--overwrite")
    assert existing.read_bytes() == b"keep me" and (qs / "scores.csv").read_text() == "mine"
    assert not (tmp_path / "ft").exists()


def test_quickstart_out_with_other_files_is_used(tmp_path, no_reading):
    """An --out that holds none of quickstart's files is written into (the check passes:
    quickstart goes on to read its data, which the fixture turns into an AssertionError)."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AssertionError, match="an input was read"):
        main(["quickstart", "--out", str(tmp_path), "--epochs", "1", "--accelerator", "cpu"])
    (tmp_path / "scores.csv").write_text("old run")
    with pytest.raises(AssertionError, match="an input was read"):
        main(["quickstart", "--out", str(tmp_path), "--epochs", "1", "--overwrite"])


def test_directories_where_files_belong(files, tmp_path, capsys, no_reading):
    d = tmp_path / "adir.h5ad"
    d.mkdir()
    _refused(_embed(files, d), capsys, "is a directory")
    argv = _finetune(files, tmp_path / "ft", "--predict", str(files / "query.h5ad"))
    _refused([*argv, "--predict-out", str(d), "--overwrite"], capsys, "is a directory")
    f = tmp_path / "afile"
    f.write_text("x")
    _refused(["quickstart", "--out", str(f)], capsys, "is a file")
    _refused(_pretrain(files, f), capsys, "is a file")


# item 13: unusable output locations are found before any input is read ------------------


def test_unusable_output_location_found_first(files, tmp_path, capsys, no_reading):
    notadir = tmp_path / "notadir"
    notadir.write_text("a file")
    _refused(_pretrain(files, notadir / "run"), capsys, "notadir", "is a file")
    _refused(_finetune(files, notadir / "run"), capsys, "notadir", "is a file")
    argv = _finetune(files, tmp_path / "ft", "--predict", str(files / "query.h5ad"))
    _refused([*argv, "--predict-out", str(notadir / "p.h5ad")], capsys, "notadir", "is a file")
    _refused(_embed(files, notadir / "sub" / "o.h5ad"), capsys, "notadir", "is a file")
    _refused(["quickstart", "--out", str(notadir / "qs")], capsys, "notadir", "is a file")
    assert not (tmp_path / "ft").exists()


def test_unwritable_output_folder(files, tmp_path, capsys, no_reading, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real = os.access

    def access(path, mode, *args, **kwargs):  # root may write anywhere: deny it here too
        if os.path.realpath(path) == str(locked.resolve()) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    try:
        _refused(_embed(files, locked / "o.h5ad"), capsys, "not writable")
        _refused(_pretrain(files, locked / "run"), capsys, "not writable")
        _refused(["quickstart", "--out", str(locked / "qs")], capsys, "not writable")
    finally:
        locked.chmod(0o700)


# item 8: .h5ad output is written beside the target and renamed ---------------------------


def test_embed_h5ad_failed_write_keeps_the_previous_output(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.h5ad"
    assert main([*_embed(files, out), "--no-progress"]) == 0
    good = _sha256(out)

    def broken_write(self, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"half an HDF5 file")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_write)
    _refused([*_embed(files, out), "--no-progress", "--overwrite"], capsys, "disk full", code=1)
    assert _sha256(out) == good
    _refused([*_embed(files, tmp_path / "new.h5ad"), "--no-progress"], capsys, "disk full", code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]  # no partial files
    monkeypatch.undo()
    assert main([*_embed(files, out), "--no-progress", "--overwrite"]) == 0
    assert ad.read_h5ad(out).obsm["X_scgpt"].shape == (60, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_embed_creates_missing_output_folders(files, tmp_path):
    out = tmp_path / "a" / "b" / "emb.npy"
    assert main([*_embed(files, out), "--no-progress"]) == 0
    assert np.load(out).shape == (60, 16)
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.npy"]


# item 9: --key-added ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a/b", "", "/"])
def test_key_added_must_be_an_hdf5_name(files, tmp_path, capsys, no_reading, key):
    _refused([*_embed(files, tmp_path / "o.h5ad"), "--key-added", key], capsys, "--key-added")
    assert not (tmp_path / "o.h5ad").exists()


# item 12: the user's own _scvi_* columns survive ------------------------------------------


@pytest.mark.parametrize("backed", [False, True])
def test_embed_keeps_the_users_obs_and_uns(files, tmp_path, backed):
    src = tmp_path / "mine.h5ad"
    a = ad.read_h5ad(files / "in.h5ad")
    a.obs["_scvi_batch"] = np.arange(a.n_obs) % 7 + 100
    a.obs["_scvi_labels"] = pd.Categorical(["mine"] * a.n_obs)
    a.uns["_scvi_uuid"] = "my-own-uuid"
    a.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    argv = [*_embed(files, out), "--no-progress"]
    argv[2] = str(src)
    assert main([*argv, "--backed"] if backed else argv) == 0
    res, orig = ad.read_h5ad(out), ad.read_h5ad(src)
    pd.testing.assert_frame_equal(res.obs, orig.obs)
    assert res.uns["_scvi_uuid"] == "my-own-uuid" and set(res.uns) == set(orig.uns)
    pd.testing.assert_frame_equal(res.var, orig.var)
    assert set(res.obsm) == {*orig.obsm, "X_scgpt"}
    # an input without such columns does not gain them
    out2 = tmp_path / "out2.h5ad"
    assert main([*_embed(files, out2), "--no-progress"]) == 0
    res = ad.read_h5ad(out2)
    assert not any(str(c).startswith("_scvi") for c in [*res.obs.columns, *res.uns])


@pytest.mark.slow
def test_finetune_predict_keeps_the_users_obs(files, tmp_path, capsys):
    query = tmp_path / "q.h5ad"
    q = ad.read_h5ad(files / "query.h5ad")
    q.obs["_scvi_batch"] = np.arange(q.n_obs) + 100
    q.write_h5ad(query)
    pred = tmp_path / "pred.h5ad"
    argv = _finetune(files, tmp_path / "ft", "--predict", str(query), "--predict-out", str(pred))
    assert main([*argv, "--no-progress"]) == 0
    res = ad.read_h5ad(pred)
    pd.testing.assert_frame_equal(res.obs[list(q.obs.columns)], q.obs)
    assert set(res.obs.columns) == {*q.obs.columns, "celltx_prediction", "celltx_confidence"}
    assert set(res.uns) == set(q.uns)


# item 17: clean messages instead of tracebacks --------------------------------------------


def test_clean_errors_instead_of_tracebacks(files, tmp_path, capsys, no_reading):
    text = tmp_path / "text.h5ad"
    text.write_text("cell,gene\n")
    folder = tmp_path / "folder.h5ad"
    folder.mkdir()
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    notzip = tmp_path / "notzip.ckpt"
    notzip.write_bytes(b"\x80\x04not a checkpoint")
    cases = [
        (_pretrain(files, tmp_path / "r", "--devices", "abc"), ["--devices", "abc"]),
        (_finetune(files, tmp_path / "r", "--devices", "abc"), ["--devices", "abc"]),
        (_pretrain(files, tmp_path / "r", "--devices", "0"), ["--devices"]),
        (_pretrain(files, tmp_path / "r", "--resume", str(empty)), ["--resume", "empty"]),
        (_pretrain(files, tmp_path / "r", "--resume", str(notzip)), ["--resume", "checkpoint"]),
        (_pretrain(files, tmp_path / "r", "--lr", "-1"), ["--lr"]),
        (_pretrain(files, tmp_path / "r", "--lr", "nan"), ["--lr"]),
        (_finetune(files, tmp_path / "r", "--lr", "0"), ["--lr"]),
        (_embed(files, tmp_path / "o.csv"), [".csv", ".h5ad", ".npy"]),
        (
            _finetune(
                files, tmp_path / "r", "--predict", str(files / "query.h5ad"), "--predict-out"
            )
            + [str(tmp_path / "p.csv")],
            [".csv", ".h5ad"],
        ),
    ]
    for bad, kind in ((text, "not an .h5ad"), (folder, "is a directory")):
        argv = _embed(files, tmp_path / "o.h5ad")
        argv[2] = str(bad)
        cases.append((argv, [kind]))
        argv = _finetune(files, tmp_path / "r")
        argv[2] = str(bad)
        cases.append((argv, [kind]))
        argv = _finetune(files, tmp_path / "r", "--predict", str(bad), "--predict-out")
        cases.append(([*argv, str(tmp_path / "p.h5ad")], [kind]))
    argv = _pretrain(files, tmp_path / "r")
    argv[1] = str(text)
    cases.append((argv, ["not an .h5ad"]))
    for argv, messages in cases:
        _refused(argv, capsys, *messages)
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.csv").exists()


def test_get_normalized_expression_takes_one_gene_name(files):
    adata = ad.read_h5ad(files / "in.h5ad")
    model = ScGPT.load(str(files / "ckpt"), adata=adata)
    one = model.get_normalized_expression(gene_list="HES4")
    assert list(one.columns) == ["HES4"] and one.shape == (60, 1)
    pd.testing.assert_frame_equal(one, model.get_normalized_expression(gene_list=["HES4"]))
