"""Inputs the type checker showed could be missing: each is refused with a ValueError that
names what is missing, or handled, instead of failing deep inside (issue 26, mypy)."""

from __future__ import annotations

import pytest
import torch

from celltx.data import CellTokenizer, Tokenizer
from celltx.module import PARTS, ScGPTModule
from celltx.nn import ScGPTConfig

TINY = ScGPTConfig.preset("tiny")


def test_a_tokenizer_without_bins_refuses_to_bin():
    tok = Tokenizer(max_seq_len=4, pad_id=0, cls_id=1, n_bins=None)
    with pytest.raises(ValueError, match="n_bins"):
        tok.bin(torch.ones(1, 3))


def test_the_cell_tokenizer_needs_the_expression_of_an_rna_model():
    tok = CellTokenizer(TINY, 10, 0, 1, [2, 3, 4])
    with pytest.raises(ValueError, match="expression"):
        tok(None)


def test_parts_say_which_registered_codes_the_minibatch_lacks():
    module = ScGPTModule(12, 0, 1, torch.arange(2, 12), config=TINY, n_labels=3, n_batch=2)
    with pytest.raises(ValueError, match="labels"):
        PARTS["cls"](module, {}, {"rows": None}, {})
    with pytest.raises(ValueError, match="batch"):
        PARTS["dab"](module, {}, {"rows": None}, {})


def test_perturbation_predictions_need_a_condition():
    module = ScGPTModule(12, 0, 1, torch.arange(2, 12), config=TINY, perturbation=True)
    x = torch.rand(2, 10)
    no_conditions = torch.zeros(0, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="condition_ids is empty"):
        module.perturb_conditions(x, no_conditions, torch.zeros(2, dtype=torch.long), 2)


def test_cross_modal_prediction_needs_both_modalities_values():
    module = ScGPTModule(
        20, 0, 1, torch.arange(2, 8), config=TINY, modalities=("rna", "atac"),
        atac_ids=torch.arange(8, 20),
    )  # fmt: skip
    with pytest.raises(ValueError, match="x and x_atac"):
        module.predict_modality(None, torch.ones(2, 12), "rna")


def test_token_value_sums_of_cells_without_rna():
    """An ATAC-only module has no ``x``: the sums live on the tokens' device."""
    module = ScGPTModule(
        20, 0, 1, torch.zeros(0, dtype=torch.long), config=TINY, modalities=("atac",),
        atac_ids=torch.arange(8, 20),
    )  # fmt: skip
    x_atac = (torch.rand(3, 12) > 0.5).float()
    sums, counts = module.token_value_sums(None, x_atac)
    assert sums.shape == counts.shape == (20,)
    assert counts[8:].sum() > 0 and counts[:8].sum() == 0
