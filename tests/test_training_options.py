"""Training options for long runs: gradient checkpointing, torch.compile, step checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import celltx

from _helpers import SMALL


@pytest.fixture
def small(pbmc):
    adata = pbmc[:96].copy()
    celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(0)
    model = celltx.model.ScGPT(adata, **{**SMALL, "dropout": 0.0})
    return model, adata


def _grads(model, adata, seed=1):
    mod = model.module
    mod.train()
    mod.zero_grad()
    batch = next(iter(model._make_data_loader(adata, batch_size=48)))
    torch.manual_seed(seed)
    _, _, out = mod(batch)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in mod.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def test_gradient_checkpointing_gives_the_same_gradients(small):
    model, adata = small
    model.module.transformer.transformer_encoder.layers[0].dropout1.p = 0.3  # RNG preserved
    loss, grads = _grads(model, adata)
    model.module.set_gradient_checkpointing(True)
    loss_ckpt, grads_ckpt = _grads(model, adata)
    model.module.set_gradient_checkpointing(False)
    assert loss_ckpt == loss
    assert grads.keys() == grads_ckpt.keys()
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k], rtol=1e-5, atol=1e-6, msg=k)
    # train() switches it on for the call only
    model.train(max_epochs=1, batch_size=48, gradient_checkpointing=True, accelerator="cpu")
    assert not model.module.transformer.transformer_encoder.gradient_checkpointing


def test_compile_keeps_losses_and_weight_names(small):
    model, adata = small
    names = list(model.module.state_dict())
    loss, grads = _grads(model, adata)
    model.module.compile_encoder()
    loss_c, grads_c = _grads(model, adata)
    assert loss_c == pytest.approx(loss, rel=1e-5)
    for k in grads:
        torch.testing.assert_close(grads_c[k], grads[k], rtol=1e-3, atol=1e-4, msg=k)
    assert list(model.module.state_dict()) == names  # saves and loads unchanged


def test_step_checkpoints_load_and_resume(small, tmp_path):
    model, adata = small
    ckpts = tmp_path / "ckpts"
    model.train(
        max_epochs=2, batch_size=16, accelerator="cpu", checkpoint_every=3, checkpoint_dir=ckpts
    )
    steps = int(model.trainer.global_step)  # 86 training cells / 16: 6 steps an epoch
    assert steps == 12
    last = 3 * (steps // 3)
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step={last}", f"step={last}.ckpt"]
    # the Lightning checkpoint holds tensors and plain values only
    state = torch.load(ckpts / f"step={last}.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == last
    # the celltx save beside it loads, with the weights of that step
    saved = celltx.model.ScGPT.load(str(ckpts / f"step={last}"), adata=adata)
    for k, v in saved.module.state_dict().items():
        torch.testing.assert_close(v, state["state_dict"][f"module.{k}"], msg=k)
    # resuming continues from the checkpoint's step
    torch.manual_seed(0)
    again = celltx.model.ScGPT(adata, **{**SMALL, "dropout": 0.0})
    again.train(
        max_epochs=3, batch_size=16, accelerator="cpu", ckpt_path=str(ckpts / f"step={last}.ckpt")
    )
    assert again.trainer.global_step == 3 * steps // 2  # the third epoch's steps
    assert np.isfinite(again.history["train_loss"].to_numpy(dtype=float)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoint_every": 0}, "checkpoint_every=0 must be"),
        ({"checkpoint_dir": "x"}, "checkpoint_dir needs checkpoint_every"),
    ],
)
def test_bad_checkpoint_arguments(small, kwargs, match):
    model, _ = small
    with pytest.raises(ValueError, match=match):
        model.train(max_epochs=1, accelerator="cpu", **kwargs)
