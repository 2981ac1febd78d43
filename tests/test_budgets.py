"""Training budgets (``celltx.model.train_budget``) and the imputation benchmark's cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import celltx
from celltx.model import ScGPT, train_budget
from celltx.nn import preset

TINY = preset("tiny", d_model=32, n_heads=4)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def test_train_budget_keeps_small_data_and_shrinks_epochs_with_size():
    # up to ref_cells: exactly the recipe's epochs (tests and small data unchanged)
    assert train_budget(50, 1) == 1
    assert train_budget(1_000, 20, ref_cells=1_000) == 20
    sizes = np.unique(np.geomspace(500, 100_000, 60).astype(int))
    epochs = np.array([train_budget(int(n), 40, ref_cells=1_000) for n in sizes])
    assert (np.diff(epochs) <= 0).all() and epochs[-1] >= 1
    passes = sizes * epochs
    # sub-linear: 100x the cells (1,000 -> 100,000) costs about sqrt(100) = 10x the passes
    big = passes[-1] / (1_000 * 40)
    assert 9 < big < 11, big
    # but never fewer cell passes for more data by more than one epoch's rounding
    assert (passes[1:] >= passes[:-1] - sizes[1:]).all()


def test_train_budget_exponent_one_is_scvi_tools_rule():
    from celltx.model._training import default_max_epochs

    for n in (100, 20_000, 31_234, 250_000, 10**7):
        assert train_budget(n, 400, ref_cells=20_000, exponent=1.0) == default_max_epochs(n)
    assert train_budget(10**6, 20, ref_cells=None) == 20  # no budget: fixed epochs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_obs": 0, "epochs": 5},
        {"n_obs": 10, "epochs": 0},
        {"n_obs": 10, "epochs": 2.5},
        {"n_obs": 10, "epochs": 5, "exponent": 1.5},
        {"n_obs": 10, "epochs": 5, "ref_cells": 0},
    ],
)
def test_train_budget_bad_input(kwargs):
    with pytest.raises(ValueError, match="must be"):
        train_budget(**kwargs)


def test_train_budget_steps_form_is_a_constant_number_of_steps():
    # steps of batch_size cells, at most `epochs` epochs: rounded up so the budget is reached
    assert train_budget(540, 50, steps=300, batch_size=64) == 34  # 9 steps an epoch
    assert train_budget(2_340, 50, steps=300, batch_size=64) == 9  # 37 steps an epoch
    assert train_budget(100, 50, steps=300, batch_size=64) == 50  # 2 steps an epoch: capped
    assert train_budget(10**6, 50, steps=300, batch_size=64) == 1  # never below min_epochs
    assert train_budget(10**6, 50, steps=300, batch_size=64, min_epochs=3) == 3
    for n in range(50, 20_000, 37):
        epochs = train_budget(n, 50, steps=300, batch_size=64)
        per_epoch = -(-n // 64)
        assert 1 <= epochs <= 50
        # at least the budget's steps (unless capped), and one epoch fewer would fall short
        assert epochs == 50 or (epochs * per_epoch >= 300 > (epochs - 1) * per_epoch)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_obs": 10, "epochs": 5, "steps": 100},
        {"n_obs": 10, "epochs": 5, "steps": 0, "batch_size": 8},
        {"n_obs": 10, "epochs": 5, "steps": 100, "batch_size": 0},
        {"n_obs": 10, "epochs": 5, "batch_size": 8},
    ],
)
def test_train_budget_steps_form_bad_input(kwargs):
    with pytest.raises(ValueError, match="steps|batch_size"):
        train_budget(**kwargs)


def test_multiome_recipe_epochs_is_the_steps_form_of_train_budget():
    import math

    from celltx.bench import MULTIOME_CELLTX_DEFAULTS, multiome_recipe_epochs

    def step_budget(n_cells, cfg, train_size):  # the recipe's rule, written out
        per_epoch = max(math.ceil(train_size * n_cells / cfg["batch_size"]), 1)
        return min(max(math.ceil(cfg["steps"] / per_epoch), 1), cfg["epochs"])

    assert (multiome_recipe_epochs(600), multiome_recipe_epochs(2_600)) == (34, 9)
    for settings in ({}, {"steps": 500, "batch_size": 32}, {"steps": 64, "epochs": 7}):
        cfg = {**MULTIOME_CELLTX_DEFAULTS, **settings}
        for train_size in (0.9, 1.0, 0.75):
            for n in (*range(10, 3_000, 13), 10_000, 123_457):
                got = multiome_recipe_epochs(n, settings, train_size)
                n_train = math.ceil(train_size * n)
                kw = dict(steps=cfg["steps"], batch_size=cfg["batch_size"])
                assert got == train_budget(n_train, cfg["epochs"], **kw)
                assert got == step_budget(n, cfg, train_size), (n, settings, train_size)
    assert multiome_recipe_epochs(10**6, {"steps": None, "epochs": 12}) == 12  # no budget


def test_recipes_carry_a_budget():
    from celltx.bench import CELLTX_DEFAULTS as ANNOTATION
    from celltx.bench import (
        EMBED_CELLTX_DEFAULTS,
        IMPUTATION_CELLTX_DEFAULTS,
        INTEGRATION_CELLTX_DEFAULTS,
    )

    for recipe in (
        EMBED_CELLTX_DEFAULTS,
        INTEGRATION_CELLTX_DEFAULTS,
        IMPUTATION_CELLTX_DEFAULTS,
        ANNOTATION,
    ):
        assert isinstance(recipe.get("budget_cells"), int), recipe


def test_fit_celltx_trains_the_budgeted_epochs(monkeypatch):
    from celltx.bench._fit import fit_celltx

    seen = {}
    monkeypatch.setattr(ScGPT, "train", lambda self, **kw: seen.update(kw))
    adata = celltx.datasets.pbmc68k()[:200].copy()
    recipe = {"model": TINY, "epochs": 8, "lr": 1e-3, "batch_size": 32, "accelerator": "cpu"}
    fit_celltx(adata, recipe, {"budget_cells": 50}, seed=0)
    assert seen["max_epochs"] == train_budget(200, 8, ref_cells=50) == 4
    fit_celltx(adata, recipe, {"budget_cells": 50, "budget_exponent": 1.0}, seed=0)
    assert seen["max_epochs"] == 2  # constant cell passes: 8 epochs x 50 cells
    fit_celltx(adata, recipe, {"budget_cells": None}, seed=0)
    assert seen["max_epochs"] == 8


@pytest.fixture(scope="module")
def untrained():
    adata = celltx.datasets.pbmc68k()[:40].copy()
    ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    return ScGPT(adata, **TINY)


def test_impute_generates_only_the_listed_genes(untrained):
    module = untrained.module.eval()
    x = torch.as_tensor(_dense(untrained.adata.X[:4]), dtype=torch.float32)
    full, cols = module.impute(x, chunk_size=100)
    genes = torch.tensor([7, 3, 300])
    part, part_cols = module.impute(x, chunk_size=100, genes=genes)
    assert part.shape == (4, 3) and sorted(part_cols.tolist()) == [3, 7, 300]
    where = {c: i for i, c in enumerate(cols.tolist())}
    for j, c in enumerate(part_cols.tolist()):
        np.testing.assert_allclose(part[:, j], full[:, where[c]], atol=1e-4)


def test_hidden_bins_match_the_full_prediction(untrained):
    from celltx.bench._imputation import _hidden_bins, _mask

    x = _dense(untrained.adata.X)
    rows, cols = _mask(x[:12], 0.1, seed=0)
    full = untrained.get_normalized_expression(indices=np.arange(12), return_numpy=True)
    got = _hidden_bins(untrained, rows, cols, chunk_size=64)
    np.testing.assert_allclose(got, full[rows, cols], atol=1e-4)


def test_annotation_budgets_both_stages(monkeypatch):
    from celltx.bench._annotation_methods import _celltx

    seen = []
    monkeypatch.setattr(ScGPT, "train", lambda self, **kw: seen.append(kw["max_epochs"]))
    monkeypatch.setattr(ScGPT, "predict", lambda self, indices: np.zeros(len(indices), str))
    adata = celltx.datasets.pbmc68k()[:400].copy()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = np.arange(100), np.arange(100, 400)
    kw = {"model": TINY, "pretrain_epochs": 8, "finetune_epochs": 8, "budget_cells": 50}
    _celltx(adata, y, train, test, 0, **kw, accelerator="cpu")
    # pretraining on all 400 cells, fine-tuning on the 100 labelled ones
    assert seen == [train_budget(400, 8, 50), train_budget(100, 8, 50)] == [3, 6]
