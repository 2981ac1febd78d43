"""Data-parallel training (Lightning DDP) on 2 CPU processes against one process."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from _helpers import ROOT, run_checked

SCRIPT = ROOT / "benchmarks" / "ddp.py"


def _run(out, devices):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(SCRIPT), "train", "--devices", str(devices), "--out", str(out)]
    cmd += ["--cells", "32", "--validation-cells", "8", "--epochs", "3", "--max-seq-len", "200"]
    run_checked(cmd, env=env)
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow  # trains in three fresh processes (1 + 2 DDP ranks): ~23 s on an idle CPU
@pytest.mark.skipif(sys.platform == "win32", reason="DDP subprocess launcher")
def test_ddp_two_processes_match_one(tmp_path):
    """The same global batches give the same losses and weights on 1 and on 2 processes.

    Every epoch is one step over the 32 training cells: one process sees them as one batch,
    each of two DDP processes sees 16 of them and the gradients are averaged. The validation
    loss is computed by both ranks on their shares of the 8 validation cells and gathered.
    """
    from safetensors.numpy import load_file

    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert two["devices"] == 2 and two["strategy"] == "ddp"
    h1, h2 = one["history"], two["history"]
    assert len(h1["train_loss"]) == len(h2["train_loss"]) == 3
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(h2["validation_loss"], h1["validation_loss"], rtol=1e-5)
    assert h1["train_loss"][-1] < h1["train_loss"][0]  # it trained
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k, a in w1.items():
        b = w2[k]
        if a.size == 0 or a.dtype.kind != "f":
            np.testing.assert_array_equal(b, a, err_msg=k)
            continue
        if k.endswith("self_attn.Wqkv.bias"):
            # the key bias shifts every score of a query equally, so softmax makes its
            # gradient zero: Adam normalises float noise there, differently per run
            d = a.shape[0] // 3
            a, b = np.delete(a, np.s_[d : 2 * d]), np.delete(b, np.s_[d : 2 * d])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=k)
    # rank 1 wrote nothing: one save, one result
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "model.json",
        "model.safetensors",
        "result.json",
    ]


def test_save_is_a_no_op_off_rank_zero(trained, tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    model, _ = trained
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_ddp_strategy_names_keep_unused_heads():
    from celltx.model._training import data_parallel_defaults

    kw = {"strategy": "ddp"}
    data_parallel_defaults(kw)
    assert kw == {"strategy": "ddp_find_unused_parameters_true", "inference_mode": False}
    kw = {"strategy": "ddp_spawn", "inference_mode": True}
    data_parallel_defaults(kw)
    assert kw == {"strategy": "ddp_spawn_find_unused_parameters_true", "inference_mode": True}
    kw = {}
    data_parallel_defaults(kw)
    assert kw == {}


@pytest.mark.slow  # trains in four fresh processes (2 DDP ranks, then a resume): ~23 s idle
def test_cli_pretrain_on_two_processes_with_checkpoints(tmp_path):
    """``celltx pretrain --devices 2 --strategy ddp``: rank 0 writes; a checkpoint resumes."""
    import anndata as ad

    import celltx

    celltx.datasets.pbmc68k()[:160].write_h5ad(tmp_path / "cells.h5ad")
    exe = os.path.join(os.path.dirname(sys.executable), "celltx")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    base = [exe, "pretrain", str(tmp_path / "cells.h5ad"), "--accelerator", "cpu"]
    base += ["--batch-size", "16", "--max-seq-len", "64", "--no-progress"]
    out = tmp_path / "run"
    cmd = [*base, "--out", str(out), "--epochs", "1", "--devices", "2", "--strategy", "ddp"]
    cmd += ["--checkpoint-every", "2", "--accumulate-grad-batches", "2"]
    cmd += ["--gradient-checkpointing"]
    proc = run_checked(cmd, env=env)
    assert proc.stdout.count("Wrote ") == 1  # only rank 0 writes and reports
    # 144 training cells, 2 ranks × 16 cells a batch: 5 batches a rank, 2 optimizer steps
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step=2", "step=2.ckpt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1
    # resume for a second epoch (one process)
    cmd = [*base, "--out", str(out), "--epochs", "2", "--accumulate-grad-batches", "2"]
    cmd += ["--resume", str(out / "checkpoints" / "step=2.ckpt")]
    run_checked(cmd, env=env)
    assert json.loads((out / "summary.json").read_text())["epochs"] >= 1
    emb = celltx.model.ScGPT.load(str(out / "model"), adata=ad.read_h5ad(tmp_path / "cells.h5ad"))
    assert np.isfinite(emb.get_latent_representation()).all()
