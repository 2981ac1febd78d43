"""``celltx pretrain`` / ``celltx finetune``: the training verbs on real PBMCs, bad arguments."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

import celltx
from celltx.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_train")
    adata = celltx.datasets.pbmc68k()
    adata[:350].write_h5ad(d / "a.h5ad")
    b = adata[350:].copy()
    b = b[:, b.var_names[:-15]].copy()  # the second file lacks some genes
    b.write_h5ad(d / "b.h5ad")
    return d


@pytest.fixture(scope="module")
def pretrained(files):
    out = files / "pre"
    argv = ["pretrain", str(files / "a.h5ad"), str(files / "b.h5ad"), "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--accelerator", "cpu", "--no-progress"]) == 0
    return out


def test_pretrain_writes_both_formats_and_summary(pretrained, capsys):
    for f in (
        "model/model.safetensors",
        "model/model.json",
        "scgpt/args.json",
        "scgpt/vocab.json",
        "history.csv",
        "summary.json",
    ):
        assert (pretrained / f).is_file(), f
    s = json.loads((pretrained / "summary.json").read_text())
    assert s["n_cells"] == 700 and s["n_genes"] == 765 and s["epochs"] == 1
    assert np.isfinite(s["final"]["train_loss"])
    # the celltx save loads and embeds
    model = celltx.model.ScGPT.load(str(pretrained / "model"), adata=celltx.datasets.pbmc68k())
    assert model.get_latent_representation().shape == (700, 64)


def test_pretrain_backed_reads_the_file_from_disk(files, capsys, monkeypatch):
    import celltx._cli_train as cli_train

    seen = []
    read = cli_train._read_inputs

    def spy(paths, backed=False):
        adata = read(paths, backed)
        seen.append(adata.isbacked)
        return adata

    monkeypatch.setattr(cli_train, "_read_inputs", spy)
    out = files / "pre_backed"
    argv = ["pretrain", str(files / "a.h5ad"), "--out", str(out), "--backed", "--epochs", "1"]
    assert main([*argv, "--accelerator", "cpu", "--no-progress"]) == 0
    assert seen == [True]
    s = json.loads((out / "summary.json").read_text())
    assert s["n_cells"] == 350 and np.isfinite(s["final"]["train_loss"])


def test_finetune_from_pretrain_and_predict(pretrained, files, capsys):
    out, pred = files / "ft", files / "pred.h5ad"
    argv = [
        "finetune",
        str(pretrained / "scgpt"),
        str(files / "a.h5ad"),
        "--out",
        str(out),
        "--labels-key",
        "cell_type",
        "--epochs",
        "1",
        "--accelerator",
        "cpu",
        "--no-progress",
        "--predict",
        str(files / "b.h5ad"),
        "--predict-out",
        str(pred),
    ]
    assert main(argv) == 0
    assert "celltx finetune: 350 cells" in capsys.readouterr().out
    q = ad.read_h5ad(pred)
    labels = set(celltx.datasets.pbmc68k().obs["cell_type"].astype(str))
    assert q.n_obs == 350 and set(q.obs["celltx_prediction"]) <= labels
    assert q.obs["celltx_confidence"].between(0, 1).all()
    assert not any(c.startswith("_scvi") for c in q.obs.columns)
    assert (out / "model" / "model.safetensors").is_file()


def test_bad_arguments_exit_with_a_message(pretrained, files, capsys):
    cases = [
        (["pretrain", str(files / "nope.h5ad"), "--out", str(files / "x")], "do not exist"),
        (["pretrain", str(files / "a.h5ad"), "--out", str(pretrained)], "--overwrite"),
        (
            ["pretrain", str(files / "a.h5ad"), str(files / "b.h5ad"), "--out", str(files / "x")]
            + ["--backed"],
            "concatenate the files",
        ),
        (
            ["pretrain", str(files / "a.h5ad"), "--out", str(files / "x"), "--obs-filter", "a"],
            "for a SOMA experiment",
        ),
        (
            ["pretrain", str(files / "a.h5ad"), "--out", str(files / "y"), "--epochs", "0"],
            "--epochs",
        ),
        (
            [
                "finetune",
                str(pretrained),
                str(files / "a.h5ad"),
                "--out",
                str(files / "z"),
                "--labels-key",
                "cell_type",
            ],
            "scGPT-format copy",
        ),
        (
            [
                "finetune",
                str(pretrained / "scgpt"),
                str(files / "a.h5ad"),
                "--out",
                str(files / "z"),
                "--labels-key",
                "nope",
            ],
            "not a column",
        ),
        (
            [
                "finetune",
                str(pretrained / "scgpt"),
                str(files / "a.h5ad"),
                "--out",
                str(files / "z"),
                "--labels-key",
                "cell_type",
                "--predict",
                str(files / "b.h5ad"),
            ],
            "go together",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (files / "x").exists() and not (files / "z").exists()


def test_help_lists_the_training_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "pretrain" in out and "finetune" in out
    for verb, options in (
        ("pretrain", ("--size", "--task", "--strategy", "--devices", "--precision")),
        ("finetune", ("--labels-key", "--freeze-layers", "--predict", "--predict-out")),
    ):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert all(o in out for o in options)
