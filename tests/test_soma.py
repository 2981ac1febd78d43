"""Training and embedding from a SOMA experiment through scvi-tools' TileDBDataModule.

The experiment is built locally (no network) with ``tiledbsoma.io.from_h5ad`` from pbmc68k.
"""

import numpy as np
import pytest

import celltx
from celltx.model import ScGPT

from _helpers import SMALL

pytest.importorskip(
    "tiledbsoma", reason="SOMA support needs tiledbsoma (pip install 'celltx[soma]')"
)
pytest.importorskip(
    "tiledbsoma_ml", reason="SOMA support needs tiledbsoma_ml (pip install 'celltx[soma]')"
)
import tiledbsoma  # noqa: E402
import tiledbsoma.io  # noqa: E402
from scvi.dataloaders import TileDBDataModule  # noqa: E402


@pytest.fixture(scope="module")
def soma_pbmc(tmp_path_factory):
    """pbmc68k (700 cells) as an AnnData and as a local SOMA experiment (measurement 'RNA')."""
    adata = celltx.datasets.pbmc68k()
    adata.obs["sample"] = "pbmc68k"  # TileDBDataModule needs batch_column_names
    adata.obs["sample"] = adata.obs["sample"].astype("category")
    root = tmp_path_factory.mktemp("soma")
    adata.write_h5ad(root / "pbmc.h5ad")
    uri = str(root / "pbmc_soma")
    tiledbsoma.io.from_h5ad(uri, str(root / "pbmc.h5ad"), measurement_name="RNA")
    with tiledbsoma.Experiment.open(uri) as exp:
        yield adata, exp


def datamodule(exp, **kwargs):
    kw = {
        "layer_name": "data",
        "batch_size": 64,
        "batch_column_names": ["sample"],
        "accelerator": "cpu",
        "device": 1,
        "dataloader_kwargs": {"num_workers": 0},
    }
    kw.update(kwargs)
    return TileDBDataModule(exp.axis_query("RNA"), **kw)


@pytest.fixture(scope="module")
def soma_trained(soma_pbmc):
    import scvi

    adata, exp = soma_pbmc
    scvi.settings.seed = 0
    dm = datamodule(exp, shuffle=True, seed=0, train_size=0.9, split_seed=0)
    model = ScGPT(datamodule=dm, **SMALL)
    model.train(max_epochs=1, datamodule=dm, accelerator="cpu", enable_progress_bar=False)
    return model, adata, exp


def test_train_from_soma(soma_trained):
    model, adata, _ = soma_trained
    assert model.is_trained_ and model.adata is None
    assert model.vocab.genes[: adata.n_vars] == list(adata.var_names)
    for key in ("train_loss", "validation_loss"):  # the datamodule's 90 / 10 split
        loss = model.history[key].to_numpy(dtype=float)
        assert len(loss) == 1 and np.isfinite(loss).all(), key


def test_embedding_from_soma_equals_anndata_path(soma_trained, tmp_path):
    model, adata, exp = soma_trained
    z_soma = model.get_latent_representation(datamodule=datamodule(exp, shuffle=False))
    assert z_soma.shape == (adata.n_obs, SMALL["d_model"]) and np.isfinite(z_soma).all()
    # the same weights on the AnnData the experiment was built from: save, load onto it
    model.save(str(tmp_path / "m"))
    loaded = ScGPT.load(str(tmp_path / "m"), adata=adata.copy())
    assert loaded.vocab == model.vocab and loaded.gene_column == "var_id"
    z_adata = loaded.get_latent_representation()
    np.testing.assert_allclose(z_soma, z_adata, atol=1e-5)
    np.testing.assert_allclose(
        loaded.get_latent_representation(datamodule=datamodule(exp, shuffle=False)),
        z_soma,
        atol=1e-5,
    )
    # a query that selects cells: rows in the query's order
    q = exp.axis_query("RNA", obs_query=tiledbsoma.AxisQuery(coords=(slice(100, 299),)))
    dm = TileDBDataModule(
        q,
        layer_name="data",
        shuffle=False,
        batch_size=50,
        batch_column_names=["sample"],
        accelerator="cpu",
        device=1,
    )
    np.testing.assert_allclose(
        model.get_latent_representation(datamodule=dm), z_adata[100:300], atol=1e-5
    )


def test_bad_soma_inputs(soma_trained):
    model, _, exp = soma_trained
    with pytest.raises(ValueError, match="shuffles"):
        model.get_latent_representation(datamodule=datamodule(exp))  # shuffle=True default
    with pytest.raises(ValueError, match="layer_name='counts'.*'data'"):
        model.get_latent_representation(
            datamodule=datamodule(exp, layer_name="counts", shuffle=False)
        )
    with pytest.raises(ValueError, match="gene_column='feature_name'.*var_id"):
        ScGPT(datamodule=datamodule(exp), gene_column="feature_name", **SMALL)
    with pytest.raises(ValueError, match="no batch-aware parts"):
        ScGPT(datamodule=datamodule(exp), dsbn=True, **SMALL)
    with pytest.raises(ValueError, match="not both"):
        ScGPT(celltx.datasets.pbmc68k(), datamodule=datamodule(exp), **SMALL)
    with pytest.raises(ValueError, match="Measurement does not exist"):
        exp.axis_query("ATAC")  # tiledbsoma's own check
    with pytest.raises(ValueError, match="train_size"):
        model.get_latent_representation(datamodule=datamodule(exp, shuffle=False, train_size=0.9))
    with pytest.raises(ValueError, match="task='generative'"):
        model.train(max_epochs=1, datamodule=datamodule(exp), task="annotation")
    with pytest.raises(ValueError, match="no AnnData"):
        model.get_latent_representation()
    with pytest.raises(ValueError, match="TileDBDataModule"):
        model.get_latent_representation(datamodule=object())


def test_pretrain_cli_from_a_soma_uri(soma_pbmc, tmp_path, capsys):
    """``celltx pretrain URI``: the same datamodule path, cells selected by --obs-filter."""
    import json

    from celltx.cli import main

    adata, exp = soma_pbmc
    out = tmp_path / "pre"
    keep = adata.obs["bulk_labels"].astype(str) != "Dendritic"
    argv = ["pretrain", f"soma:{exp.uri}", "--out", str(out), "--batch-key", "sample"]
    argv += ["--obs-filter", "bulk_labels != 'Dendritic'", "--epochs", "1", "--batch-size", "64"]
    assert main([*argv, "--accelerator", "cpu", "--no-progress"]) == 0
    assert f"celltx pretrain: {int(keep.sum())} cells × 765 genes" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cells"] == int(keep.sum()) < adata.n_obs
    assert np.isfinite(summary["final"]["train_loss"])
    loaded = ScGPT.load(str(out / "model"), adata=adata.copy())
    assert loaded.vocab.genes[: adata.n_vars] == list(adata.var_names)
    z = loaded.get_latent_representation()
    assert z.shape == (adata.n_obs, 64) and np.isfinite(z).all()
    assert (out / "scgpt" / "args.json").is_file()

    base = ["pretrain", exp.uri, "--out", str(tmp_path / "bad")]
    cases = [
        (base, "obs column for --batch-key"),
        ([*base, "--batch-key", "nope"], "'nope' is not one of"),
        ([*base, "--batch-key", "sample", "--task", "contrastive"], "--task generative"),
        ([*base, "--batch-key", "sample", "--measurement", "ATAC"], "measurements: ['RNA']"),
        ([*base, "--batch-key", "sample", "--layer", "counts"], None),
        ([*base, "--batch-key", "sample", "--backed"], "--backed is for .h5ad"),
        ([*base[:2], str(tmp_path / "x.h5ad"), *base[2:], "--batch-key", "sample"], "on its own"),
        (["pretrain", str(tmp_path), "--out", str(tmp_path / "bad")], "nor a SOMA experiment"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--epochs", "1", "--accelerator", "cpu", "--no-progress"])
        err = capsys.readouterr().err
        if message is None:  # found by celltx's datamodule check: a data problem, exit 1
            assert exc.value.code == 1 and "layer_name='counts'" in err
        else:
            assert exc.value.code == 2 and message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "bad").exists()
