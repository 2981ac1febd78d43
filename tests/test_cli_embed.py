"""``celltx embed``: a celltx save and the scGPT-written reference checkpoint, on real PBMCs
(``celltx.datasets.pbmc68k``); bad arguments end with a message, not a traceback."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pytest

import celltx
from celltx.cli import main
from celltx.model import ScGPT
from celltx.nn import preset

from _helpers import FIXTURES, need

TINY = preset("tiny", max_seq_len=32)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model trained 1 epoch on pbmc68k, its save, the input file and its embedding."""
    d = tmp_path_factory.mktemp("embed")
    adata = celltx.datasets.pbmc68k()
    adata.write_h5ad(d / "in.h5ad")
    ScGPT.setup_anndata(adata, labels_key="cell_type")
    model = ScGPT(adata, seed=0, **TINY)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    model.save(str(d / "ckpt"))
    return {
        "dir": d,
        "ckpt": d / "ckpt",
        "input": d / "in.h5ad",
        "emb": model.get_latent_representation(),
    }


def test_embed_celltx_save_matches_python_api(saved, tmp_path, capsys):
    src, out = saved["input"], tmp_path / "out.h5ad"
    before = _sha256(src)
    argv = ["embed", str(saved["ckpt"]), str(src), str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "700 cells" in printed and "765/765 genes" in printed and "16-dim" in printed
    assert str(out) in printed
    assert _sha256(src) == before  # the input is untouched
    res, orig = ad.read_h5ad(out), ad.read_h5ad(src)
    assert np.allclose(res.obsm["X_scgpt"], saved["emb"], atol=1e-5)
    # a copy of the input plus the embedding, without scvi-tools' registration
    assert list(res.obs.columns) == list(orig.obs.columns)
    assert set(res.uns) == set(orig.uns)
    assert set(res.obsm) == {*orig.obsm, "X_scgpt"}
    assert (res.X != orig.X).nnz == 0


@pytest.mark.parametrize("progress", [True, False])
def test_embed_to_npy_block_by_block(saved, tmp_path, capsys, progress):
    """An .npy OUTPUT gets only the embedding, written block by block (memory-mapped)."""
    out = tmp_path / "emb.npy"
    argv = ["embed", str(saved["ckpt"]), str(saved["input"]), str(out), "--device", "cpu"]
    argv += ["--backed", "--batch-size", "64"]  # 700 cells: blocks of 64 cells
    assert main(argv if progress else [*argv, "--no-progress"]) == 0
    assert "700 × 16 float32 embedding" in capsys.readouterr().out
    emb = np.load(out)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, saved["emb"], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]  # no partial file left


def test_embed_backed_without_labels_column(saved, tmp_path, capsys):
    """--backed writes obs/var/obsm without X; a labels column the model was set up with
    but the input lacks is replaced by a placeholder (labels do not enter the embedding)."""
    src = tmp_path / "nolabels.h5ad"
    a = ad.read_h5ad(saved["input"])
    del a.obs["cell_type"]
    a.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    argv = ["embed", str(saved["ckpt"]), str(src), str(out), "--device", "cpu", "--backed"]
    assert main([*argv, "--no-progress", "--key-added", "X_tiny"]) == 0
    err = capsys.readouterr().err
    assert "labels_key='cell_type'" in err
    res = ad.read_h5ad(out)
    assert res.X is None and res.shape == (700, 765)
    assert "cell_type" not in res.obs.columns
    assert list(res.obs.columns) == list(a.obs.columns)
    np.testing.assert_allclose(res.obsm["X_tiny"], saved["emb"], atol=1e-5)


def test_embed_scgpt_reference_checkpoint(tmp_path, capsys):
    ckpt = need(FIXTURES / "ckpt_small")
    adata = celltx.datasets.pbmc68k()[:100].copy()  # gene symbols in var_names, as the vocab
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    ref = ScGPT.load_pretrained(ckpt, adata, accelerator="cpu").get_latent_representation()
    # with the progress bar: the same call over blocks of cells
    assert (
        main(["embed", str(ckpt), str(src), str(out), "--device", "cpu", "--batch-size", "32"]) == 0
    )
    printed = capsys.readouterr().out
    assert "100 cells" in printed and "765/765 genes" in printed and "64-dim" in printed
    emb = ad.read_h5ad(out).obsm["X_scgpt"]
    assert emb.shape == (100, 64)
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_embed_refuses_bad_arguments(saved, tmp_path, capsys):
    src, ckpt = saved["input"], saved["ckpt"]
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    existing = tmp_path / "existing.h5ad"
    existing.write_bytes(b"keep me")
    cases = [
        ([str(empty), str(src), str(tmp_path / "o.h5ad")], ["args.json", "model.safetensors"]),
        ([str(ckpt), str(src), str(src)], ["is the input file"]),
        ([str(ckpt), str(src), str(existing)], ["--overwrite"]),
        ([str(ckpt), str(tmp_path / "absent.h5ad"), str(tmp_path / "o.h5ad")], ["does not exist"]),
    ]
    for args, messages in cases:
        with pytest.raises(SystemExit) as exc:
            main(["embed", *args, "--device", "cpu", "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert all(m in err for m in messages) and "Traceback" not in err
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "o.h5ad").exists()
    # a problem found while loading (a gene-symbol column it was not set up with): status 1
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "embed",
                str(ckpt),
                str(src),
                str(tmp_path / "o.h5ad"),
                "--device",
                "cpu",
                "--gene-symbols",
                "sym",
            ]
        )
    assert exc.value.code == 1
    assert "gene_symbols" in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()


def test_help_lists_verbs_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "embed" in out
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    for option in (
        "CHECKPOINT",
        "INPUT",
        "OUTPUT",
        "--key-added",
        "--batch-size",
        "--device",
        "--gene-symbols",
        "--max-seq-len",
        "--backed",
        "--overwrite",
        "--no-progress",
        "--precision",
        "--low-memory",
        "--batch-tokens",
    ):
        assert option in out


def test_embed_bf16_close_to_fp32(saved, tmp_path, capsys):
    """--precision bf16 runs under bf16 autocast on the CPU: close to, not equal to, fp32."""
    out = tmp_path / "bf16.h5ad"
    argv = ["embed", str(saved["ckpt"]), str(saved["input"]), str(out), "--device", "cpu"]
    assert main([*argv, "--no-progress", "--precision", "bf16"]) == 0
    assert "(bf16)" in capsys.readouterr().out
    emb, ref = ad.read_h5ad(out).obsm["X_scgpt"], saved["emb"]
    assert emb.dtype == np.float32
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.median(cos) > 0.99
    assert not np.allclose(emb, ref, atol=1e-6)  # bf16 really ran
    with pytest.raises(SystemExit):
        main([*argv[:-2], "--precision", "fp16"])


def test_inference_precision_property(saved):
    model = ScGPT.load(str(saved["ckpt"]), adata=celltx.datasets.pbmc68k())
    assert model.inference_precision == "auto"
    model.inference_precision = "fp32"
    np.testing.assert_allclose(model.get_latent_representation(), saved["emb"], atol=1e-5)
    with pytest.raises(ValueError, match="inference_precision='half'"):
        model.inference_precision = "half"
