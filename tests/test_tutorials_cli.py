import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from celltx.cli import main

from _helpers import DATA, FIXTURES, ROOT

TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLTX_TUTORIAL_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if (FIXTURES / "ckpt_small" / "args.json").exists():  # the scGPT-written reference checkpoint
        monkeypatch.setenv("CELLTX_SCGPT_DIR", str(FIXTURES / "ckpt_small"))
    if DATA.exists():
        monkeypatch.setenv("CELLTX_DATA_DIR", str(DATA))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors


@pytest.mark.slow  # trains the representation recipe on pbmc68k, UMAP, PCA scores
def test_cli_quickstart(tmp_path, capsys, caplog):
    out = tmp_path / "qs"
    assert (
        main(
            [
                "quickstart",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--accelerator",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert "celltx ScGPT" in printed and "PCA (50 PCs)" in printed
    assert "representation recipe" in printed  # the documented recipe, not generative-only
    # the noise a user cannot act on is gone: Lightning's adverts, third-party deprecations
    noise = captured.out + captured.err + caplog.text
    assert "💡 Tip" not in noise and "litlogger" not in noise and "LeafSpec" not in noise
    for f in (
        "pbmc68k_scgpt.h5ad",
        "umap_cell_type.png",
        "scores.csv",
        "model/model.safetensors",
        "model/model.json",
    ):
        assert (out / f).exists(), f
    import anndata as ad

    a = ad.read_h5ad(out / "pbmc68k_scgpt.h5ad")
    assert a.obsm["X_scgpt"].shape == (700, 64)
    saved = json.loads((out / "model" / "model.json").read_text())
    assert '"gene_selection": "rank"' in json.dumps(saved)  # rank-value tokens


def test_quiet_third_party_is_narrow():
    """Third-party deprecations are hidden inside the block only; celltx's own stay."""
    import warnings

    from celltx.cli import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_third_party():
            warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="lightning.x")
            warnings.warn_explicit("mine", FutureWarning, "x.py", 1, module="celltx.model")
            warnings.warn_explicit("user", UserWarning, "x.py", 1, module="lightning.x")
        warnings.warn_explicit("after", FutureWarning, "x.py", 1, module="lightning.x")
    assert [str(w.message) for w in seen] == ["mine", "user", "after"]


def test_cli_rejects_bad_epochs():
    with pytest.raises(SystemExit):
        main(["quickstart", "--epochs", "0"])
