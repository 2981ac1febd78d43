"""Tasks and parts as the one extension point of training (issue 26).

A new objective is one :class:`~celltx.module.Part` plus one :class:`~celltx.model.Task`
entry: nothing in ``ScGPT.train``, the module's ``inference`` or ``loss`` changes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import celltx
from celltx.model import TASK_REGISTRY, TASKS, ScGPT, Task, register_task
from celltx.module import PARTS, Part, PartLoss, register_part
from celltx.nn import ScGPTConfig

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}
FIT = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}


class CellNorm(Part):
    """A toy objective: the mean squared ``<cls>`` embedding, scaled by a setting."""

    name = "toy_norm"
    metrics = ("toy_norm_loss",)

    def __init__(self, scale: float = 1.0, weight: float = 0.0):
        super().__init__(weight=weight)
        self.scale = scale

    def __call__(self, module, tensors, inference, predictions):
        loss = self.scale * inference["cell_emb"].float().pow(2).mean()
        return PartLoss(loss, None, {"toy_norm_loss": loss.detach()})


class TwoViews(Part):
    """A toy two-view objective: the two views of a cell should agree."""

    name = "toy_agree"
    views = 2
    metrics = ("toy_agree_loss",)

    def __call__(self, module, tensors, inference, predictions):
        emb = inference["cell_emb"].float()
        half = emb.shape[0] // 2
        loss = (emb[:half] - emb[half:]).pow(2).mean()
        return PartLoss(loss, None, {"toy_agree_loss": loss.detach()})


@pytest.fixture
def toy_parts():
    register_part(CellNorm())
    register_part(TwoViews())
    yield
    for name in ("toy_norm", "toy_agree"):
        PARTS.pop(name, None)
    for name in ("shrink", "needs_labels"):
        TASK_REGISTRY.pop(name, None)


@pytest.fixture
def adata(pbmc):
    a = pbmc[:80].copy()
    ScGPT.setup_anndata(a)
    return a


def test_a_new_part_and_task_train_without_touching_train(toy_parts, adata):
    calls = []
    register_task(
        Task(
            "shrink",
            {"toy_norm": 1.0, "gep": 0.5},
            prepare=lambda model, data: calls.append(("prepare", data.n_obs)),
            on_train_end=lambda model: calls.append(("end", model.is_trained)),
        )
    )
    assert TASKS["shrink"] == {"toy_norm": 1.0, "gep": 0.5}
    torch.manual_seed(0)
    model = ScGPT(adata, **TINY)
    model.train(max_epochs=1, task="shrink", **FIT)
    assert model.module.objective == {"gep": 0.5, "toy_norm": 1.0}
    assert calls == [("prepare", adata.n_obs), ("end", True)]
    hist = model.history["toy_norm_loss_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(hist).all()
    # loss_weights reach the new part like any other; task=None keeps the objective
    model.train(max_epochs=1, loss_weights={"toy_norm": 2.0}, **FIT)
    assert model.module.weight("toy_norm") == 2.0
    assert model.module.weight("gep") == 0.5


def test_part_settings_live_on_the_part(toy_parts, adata):
    model = ScGPT(adata, **TINY)
    m = model.module
    m.set_objective(toy_norm=1.0)
    m.parts["toy_norm"].scale = 0.0
    m.train()
    _, _, out = m(next(iter(model._make_data_loader(adata, batch_size=16))))
    assert float(out.loss) == 0.0


def test_two_views_are_declared_by_the_part(toy_parts, adata):
    model = ScGPT(adata, **TINY)
    m = model.module
    batch = next(iter(model._make_data_loader(adata, batch_size=8)))
    m.set_objective(gep=1.0)
    assert m.inference(**m._get_inference_input(batch))["cell_emb"].shape[0] == 8
    m.set_objective(gep=1.0, toy_agree=1.0)
    inf = m.inference(**m._get_inference_input(batch))
    assert inf["cell_emb"].shape[0] == 16
    assert inf["rows"].tolist() == list(range(8)) * 2


def test_task_requirements_are_clear_errors(toy_parts, adata):
    register_task(Task("needs_labels", {"toy_norm": 1.0}, requires=("labels_key",)))
    model = ScGPT(adata, **TINY)
    with pytest.raises(ValueError, match="task='needs_labels' needs labels"):
        model.train(max_epochs=1, task="needs_labels", **FIT)
    with pytest.raises(ValueError, match="task='annotation' needs labels"):
        model.train(max_epochs=1, task="annotation", **FIT)
    with pytest.raises(ValueError, match="task='integration' needs batches"):
        model.train(max_epochs=1, task="integration", **FIT)
    with pytest.raises(ValueError, match="task='perturbation' needs perturbation"):
        model.train(max_epochs=1, task="perturbation", **FIT)
    with pytest.raises(ValueError, match="Unknown task requirement"):
        Task("bad", {"gep": 1.0}, requires=("colour",))
    with pytest.raises(ValueError, match="unknown parts"):
        Task("bad", {"nope": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task("generative", {"gep": 1.0}))


def test_generative_task_weights_come_from_the_config(adata):
    model = ScGPT(adata, **TINY, gep_weight=0.5, mvc_weight=0.25)
    assert model.module.objective == {"gep": 0.5, "mvc": 0.25}
    assert TASK_REGISTRY["generative"].weights_for(model.module) == {"gep": 0.5, "mvc": 0.25}
    # the registry's view for the default config
    assert TASKS["generative"] == {"gep": 1.0, "mvc": 1.0}


def test_part_settings_default_from_the_config(adata):
    m = ScGPT(adata, **TINY, ecs_threshold=0.6, align_temperature=0.2).module
    assert m.parts["ecs"].threshold == 0.6 and m.ecs_threshold == 0.6
    assert m.parts["align"].temperature == 0.2 and m.align_temperature == 0.2
    assert m.parts["contrast"].temperature == m.config.contrast_temperature
    m.set_objective(ecs=1.0, ecs_threshold=0.7)
    assert m.parts["ecs"].threshold == 0.7
    m.set_objective(ecs=1.0)  # unnamed settings go back to the config's
    assert m.parts["ecs"].threshold == 0.6
    for bad in ({"ecs_threshold": 1.5}, {"align_temperature": 0.0}, {"text_temperature": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScGPTConfig(**bad)


def test_old_task_tables_still_import_with_a_warning():
    with pytest.warns(FutureWarning, match="celltx.model.TASK_REGISTRY"):
        old = celltx.module.TASKS
    assert old["annotation"] == {"cls": 1.0}
    with pytest.warns(FutureWarning):
        opts = celltx.module.TASK_OPTIONS
    assert opts == {"integration": {"contrast_positives": "mnn"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dict(celltx.model.TASKS)["integration_scgpt"] == {
            "gep": 1.0,
            "mvc": 1.0,
            "ecs": 10.0,
            "dab": 1.0,
        }


def test_setting_a_task_the_old_way_still_works():
    try:
        with pytest.warns(FutureWarning, match="register_task"):
            TASKS["old_style"] = {"gep": 2.0}
        assert TASK_REGISTRY["old_style"].declared_weights() == {"gep": 2.0}
    finally:
        TASK_REGISTRY.pop("old_style", None)
