"""Loading files from others runs no code (issue 12: items 1, 2, 9).

``ScGPT.save`` / ``load`` / ``load_registry`` use safetensors + JSON and refuse scvi-tools'
pickled ``model.pt`` unless ``trust_remote_pickle=True``; ``celltx.io.read_weights`` tells
a file that is no checkpoint from one that holds code; ``args.json`` fields are checked.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scvi.model.base import BaseModelClass

from celltx.io import read_scgpt_dir, read_weights, scgpt_args_to_kwargs
from celltx.model import ScGPT

from _helpers import FIXTURES, SMALL, Evil, need

PICKLE_OR_ZIP = (b"\x80", b"PK\x03\x04")


def _scvi_shaped_dir(tmp_path, pbmc):
    """A directory laid out like an scvi-tools save whose model.pt carries code."""
    marker = tmp_path / "pwned"
    d = tmp_path / "evil_model"
    d.mkdir()
    torch.save(
        {
            "model_state_dict": {},
            "var_names": pbmc.var_names.to_numpy(),
            "attr_dict": {"payload": Evil(marker)},
        },
        d / "model.pt",
    )
    pbmc.write_h5ad(d / "adata.h5ad")
    return d, marker


# --- 1. pickled model.pt is refused -------------------------------------------------------------
def test_pickled_model_pt_is_refused_and_runs_nothing(tmp_path, pbmc):
    d, marker = _scvi_shaped_dir(tmp_path, pbmc)
    for load in (
        lambda: ScGPT.load(d, pbmc, accelerator="cpu"),
        lambda: ScGPT.load(d, accelerator="cpu"),
        lambda: ScGPT.load_registry(d),
        lambda: ScGPT.view_setup_args(d),
    ):
        with pytest.raises(ValueError, match="trust_remote_pickle=True") as e:
            load()
        assert "runs any code" in str(e.value)
        assert not marker.exists()
    # the payload is live: the explicit opt-in reaches scvi-tools' unpickling loader
    with pytest.raises(KeyError):
        ScGPT.load_registry(d, trust_remote_pickle=True)
    assert marker.exists()


def test_scvi_tools_save_loads_only_with_opt_in(trained, tmp_path):
    model, adata = trained
    BaseModelClass.save(model, str(tmp_path / "old"))  # scvi-tools' pickled format
    assert (tmp_path / "old" / "model.pt").read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(ValueError, match="trust_remote_pickle"):
        ScGPT.load(tmp_path / "old", adata)
    old = ScGPT.load(tmp_path / "old", adata, accelerator="cpu", trust_remote_pickle=True)
    np.testing.assert_array_equal(
        old.get_latent_representation(), model.get_latent_representation()
    )
    # saving again converts it to the safe format, which loads without the opt-in
    old.save(tmp_path / "old", overwrite=True)
    assert not (tmp_path / "old" / "model.pt").exists()
    again = ScGPT.load(tmp_path / "old", adata, accelerator="cpu")
    np.testing.assert_array_equal(
        again.get_latent_representation(), model.get_latent_representation()
    )


# --- 1. the safe format round trip --------------------------------------------------------------
def test_round_trip_without_pickles(trained, tmp_path):
    model, adata = trained
    d = tmp_path / "m"
    model.save(d, save_anndata=True)
    assert sorted(p.name for p in d.iterdir()) == ["adata.h5ad", "model.json", "model.safetensors"]
    for p in d.iterdir():
        assert not p.read_bytes().startswith(PICKLE_OR_ZIP), p.name
    json.loads((d / "model.json").read_text())  # plain JSON
    z = model.get_latent_representation()

    loaded = ScGPT.load(d, adata, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    assert loaded.vocab == model.vocab
    for name in ("train_indices_", "validation_indices_", "test_indices_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.history.keys() == model.history.keys()
    for key, frame in model.history.items():
        pd.testing.assert_frame_equal(loaded.history[key], frame)

    alone = ScGPT.load(d, accelerator="cpu")  # the AnnData saved with save_anndata=True
    assert alone.is_trained_ is True and alone.adata.shape == adata.shape
    np.testing.assert_array_equal(alone.get_latent_representation(), z)
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(alone.module.state_dict()[key], value.cpu(), rtol=0, atol=0)

    registry = ScGPT.load_registry(d)
    assert registry["setup_args"] == model.registry_["setup_args"]
    np.testing.assert_array_equal(
        registry["field_registries"]["labels"]["state_registry"]["categorical_mapping"],
        model.registry_["field_registries"]["labels"]["state_registry"]["categorical_mapping"],
    )
    with pytest.raises(ValueError, match="already exists"):
        model.save(d)


def test_untrained_state_objective_and_prefix_survive(pbmc, tmp_path):
    ScGPT.setup_anndata(pbmc, labels_key="cell_type")
    model = ScGPT(pbmc, **SMALL)
    n = model.summary_stats.n_labels
    weights = torch.arange(1, n + 1, dtype=torch.float32)
    model.module.set_objective(
        gep=0.5, mvc=0.0, cls=1.0, label_smoothing=0.1, class_weights=weights
    )
    # module state outside the state dict (perturbation models store their control cells)
    model.module.set_controls(torch.rand(6, 5), torch.tensor([0, 1, 0, 1, 1, 0]), 2)
    model.save(tmp_path, prefix="run1_", overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == {"run1_model.json", "run1_model.safetensors"}
    with pytest.raises(ValueError, match="no saved model"):
        ScGPT.load(tmp_path, pbmc)  # no prefix: nothing there
    loaded = ScGPT.load(tmp_path, pbmc, prefix="run1_", accelerator="cpu")
    assert loaded.is_trained_ is False
    m, m0 = loaded.module, model.module
    assert (m.weight("gep"), m.weight("mvc"), m.weight("cls"), m.label_smoothing) == (
        0.5,
        0.0,
        1.0,
        0.1,
    )
    assert m.objective == {"gep": 0.5, "cls": 1.0}
    for name in ("class_weights", "ctrl_x", "ctrl_mean", "ctrl_start", "ctrl_count"):
        torch.testing.assert_close(getattr(m, name), getattr(m0, name))
    with pytest.raises(ValueError, match="save_anndata=True"):
        ScGPT.load(tmp_path, prefix="run1_")  # no AnnData saved, none passed
    model.extra_ = object()
    with pytest.raises(ValueError, match="'extra_'.*del model.extra_"):
        model.save(tmp_path / "x")
    assert not (tmp_path / "x" / "model.json").exists()


def test_pretrained_model_round_trip(tmp_path):
    import anndata as ad

    tiefree = ad.read_h5ad(need(FIXTURES / "pbmc68k_tiefree.h5ad"))
    model = ScGPT.load_pretrained(FIXTURES / "ckpt_small", tiefree, accelerator="cpu")
    model.save(tmp_path, overwrite=True, save_anndata=True)
    loaded = ScGPT.load(tmp_path, accelerator="cpu")
    assert loaded.is_trained_ is True and loaded.history_ is None
    assert loaded.checkpoint_report_ == model.checkpoint_report_
    np.testing.assert_array_equal(loaded.gene_match_.ids, model.gene_match_.ids)
    assert loaded.gene_match_.names.equals(model.gene_match_.names)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def test_damaged_and_foreign_directories(trained, tmp_path):
    model, adata = trained
    with pytest.raises(ValueError, match="holds no saved model"):
        ScGPT.load(tmp_path, adata)
    d = tmp_path / "m"
    model.save(d)
    good = (d / "model.json").read_text()

    (d / "model.json").write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="model.json is not valid JSON"):
        ScGPT.load(d, adata)
    with pytest.raises(ValueError, match="not valid JSON"):
        ScGPT.load_registry(d)

    (d / "model.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a celltx model file"):
        ScGPT.load(d, adata)

    meta = json.loads(good)
    meta["attributes"]["history_"] = {"__object__": "os.system"}
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="damaged: unknown type tag '__object__'"):
        ScGPT.load(d, adata)

    meta = json.loads(good)
    meta["model_class"] = "SCVI"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a SCVI model, not a ScGPT"):
        ScGPT.load(d, adata)

    (d / "model.json").write_text(good)
    weights = (d / "model.safetensors").read_bytes()
    from safetensors.torch import save_file

    sd = read_weights(need(FIXTURES / "ckpt_small" / "best_model.pt"))
    save_file(sd, str(d / "model.safetensors"))  # a scGPT checkpoint: foreign safetensors
    with pytest.raises(ValueError, match="not a celltx model's weights.*load_pretrained"):
        ScGPT.load(d, adata)
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ScGPT.load(d, adata)
    (d / "model.safetensors").write_bytes(weights)
    meta = json.loads(good)
    meta["weights_sha256"] = "0" * 64  # as if the weights came from another save
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        ScGPT.load(d, adata)
    (d / "model.json").write_text(good)
    (d / "model.safetensors").write_bytes(weights)
    np.testing.assert_array_equal(
        ScGPT.load(d, adata, accelerator="cpu").get_latent_representation(),
        model.get_latent_representation(),
    )


# --- 2. weight files that are no checkpoint -------------------------------------------------
def test_random_bytes_are_not_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for name, data in (
        ("random.pt", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("text.pt", b"hello, this is not a model"),
        ("empty.pt", b""),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="not a valid PyTorch or safetensors checkpoint") as e:
            read_weights(tmp_path / name)
        assert "weights_only=False" not in str(e.value)
        assert "pickled objects" not in str(e.value)
        assert e.value.__cause__ is None  # torch's advice is not chained either


def test_pickled_code_is_refused_for_safety(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "evil": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="Refused .*could run code") as e:
        read_weights(tmp_path / "evil.pt")
    assert "open" in str(e.value)  # names the pickled callable
    assert "weights_only=False" not in str(e.value) and e.value.__cause__ is None
    assert not marker.exists()


# --- 9. args.json fields ----------------------------------------------------------------------
@pytest.fixture
def ckpt_dir(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(need(FIXTURES / "ckpt_small"), d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


def _set_arg(d, key, value):
    args = json.loads((d / "args.json").read_text())
    args[key] = value
    (d / "args.json").write_text(json.dumps(args))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("nheads", None, "an integer"),
        ("nheads", [4], "an integer"),
        ("nheads", "4", "an integer"),
        ("nheads", 4.5, "whole number"),
        ("nheads", True, "an integer"),
        ("embsize", 64.7, "whole number"),
        ("embsize", None, "an integer"),
        ("nlayers", 0, "an integer >= 1"),
        ("d_hid", "64", "an integer"),
        ("n_bins", [51], "an integer"),
        ("max_seq_len", None, "an integer"),
        ("dropout", 1.5, r"a number in \[0.0, 1.0\)"),
        ("dropout", "0.2", "a number"),
        ("pad_value", None, "a number"),
        ("mask_ratio", "0.4", "a number"),
        ("input_emb_style", None, "supports input_emb_style"),
        ("norm_scheme", ["post"], "supports norm_scheme"),
    ],
)
def test_bad_args_json_fields_name_file_and_key(ckpt_dir, key, value, expected):
    _set_arg(ckpt_dir, key, value)
    with pytest.raises(ValueError, match=expected) as e:
        read_scgpt_dir(ckpt_dir)
    msg = str(e.value)
    assert str(ckpt_dir / "args.json") in msg and key in msg and repr(value) in msg


def test_args_json_sizes(ckpt_dir):
    _set_arg(ckpt_dir, "nheads", 4.0)  # integral floats are integers
    assert read_scgpt_dir(ckpt_dir).model_kwargs["n_heads"] == 4
    _set_arg(ckpt_dir, "nheads", 5)
    with pytest.raises(ValueError, match="'embsize' \\(64\\) is not divisible by 'nheads' \\(5\\)"):
        read_scgpt_dir(ckpt_dir)
    kwargs = scgpt_args_to_kwargs({"embsize": 8, "nheads": 2, "nlayers": 1, "mask_ratio": 0.0})
    assert "mask_ratio" not in kwargs  # 0 (fine-tuning without masking) keeps the defaults
    with pytest.raises(ValueError, match="^args.json: 'nlayers' is 1.5"):
        scgpt_args_to_kwargs({"embsize": 8, "nheads": 2, "nlayers": 1.5})
