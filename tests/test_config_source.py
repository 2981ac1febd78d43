"""The config is the only source of the model's hyperparameters (issue 26).

``ScGPTTransformer(config, ...)`` builds the config's shape; every setting reaches the block
that uses it; the building blocks of :mod:`celltx.nn` write no hyperparameter default of
their own (a guard scans their signatures); the scGPT checkpoint writer writes the config's
values.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import celltx.nn as cnn
from celltx.io import config_from_scgpt_args, scgpt_args_from_config
from celltx.module import ScGPTModule
from celltx.nn import (
    AdversarialDiscriminator,
    CategoryValueEncoder,
    CellTextHead,
    ClsDecoder,
    ContinuousValueEncoder,
    ScGPTConfig,
    ScGPTTransformer,
    SelfAttention,
    TransformerEncoderLayer,
)

#: parameters whose default means "this data-dependent part is not built" (the data decides
#: them, not the config); every other default of a building block must be None
DATA_SWITCHES = {"perturbation": False, "n_modalities": 0}


def hyperparameter_defaults(obj) -> list[str]:
    """``"Name.param=default"`` for each default of ``obj``'s signature that is a value.

    ``obj``: an ``nn.Module`` class (its ``__init__`` and ``from_config`` are read) or a
    function. Allowed: ``None`` (the block then takes :class:`ScGPTConfig`'s value or a named
    constant), and the :data:`DATA_SWITCHES` at their "not built" value.
    """
    if inspect.isclass(obj):
        funcs = [obj.__init__] + ([obj.from_config] if hasattr(obj, "from_config") else [])
    else:
        funcs = [obj]
    found = []
    for f in funcs:
        for p in inspect.signature(f).parameters.values():
            if p.default is inspect.Parameter.empty or p.default is None:
                continue
            if p.name in DATA_SWITCHES and p.default == DATA_SWITCHES[p.name]:
                continue
            found.append(f"{obj.__name__}.{p.name}={p.default!r}")
    return found


def _building_blocks():
    out = []
    for name in cnn.__all__:
        obj = getattr(cnn, name)
        if (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj):
            out.append(obj)
    return out


def test_no_building_block_writes_a_hyperparameter_default():
    blocks = _building_blocks()
    assert len(blocks) >= 17  # every module class and function of celltx.nn is scanned
    found = [d for b in blocks for d in hyperparameter_defaults(b)]
    assert found == [], (
        f"Hyperparameter defaults outside ScGPTConfig: {found}. Default them to None and "
        "take the value from ScGPTConfig (celltx.nn._config.config_default), or from a "
        "named module constant if it is scGPT's architecture rather than a setting."
    )


def test_the_guard_catches_a_written_default():
    class Block(nn.Module):
        def __init__(self, d_model, dropout=0.1, norm_first=False, perturbation=False, eps=None):
            super().__init__()

    def head(x, temperature=0.07, n_modalities=0):
        return x

    assert hyperparameter_defaults(Block) == ["Block.dropout=0.1", "Block.norm_first=False"]
    assert hyperparameter_defaults(head) == ["head.temperature=0.07"]


def test_the_transformer_builds_the_configs_shape():
    cfg = ScGPTConfig.preset("tiny", n_layers=3, d_hid=24)
    net = ScGPTTransformer(cfg, n_tokens=11, pad_id=0)
    assert net.config is cfg
    assert net.d_model == 16 and net.encoder.embedding.weight.shape == (11, 16)
    assert net.encoder.embedding.padding_idx == 0
    layers = net.transformer_encoder.layers
    assert len(layers) == 3
    assert all(lay.linear1.out_features == 24 and lay.self_attn.n_heads == 2 for lay in layers)
    assert net.mvc_decoder is not None and net.cls_decoder is None and net.dsbn is None
    # from_config is the same construction
    torch.manual_seed(0)
    a = ScGPTTransformer(cfg, n_tokens=11, pad_id=0).state_dict()
    torch.manual_seed(0)
    b = ScGPTTransformer.from_config(cfg, 11, pad_id=0).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("style", ["continuous", "category"])
def test_every_setting_reaches_its_block(style):
    cfg = ScGPTConfig(
        d_model=24,
        n_heads=3,
        n_layers=2,
        d_hid=40,
        dropout=0.15,
        attn_dropout=0.05,
        input_emb_style=style,
        n_bins=11,
        norm_first=True,
        activation="gelu",
        n_layers_cls=2,
        dsbn=True,
        dab=True,
        batch_token=True,
    )
    net = ScGPTTransformer(cfg, n_tokens=20, pad_id=0, n_cls=4, n_batches=3)
    if style == "continuous":
        assert isinstance(net.value_encoder, ContinuousValueEncoder)
        assert net.value_encoder.dropout.p == 0.15
    else:
        assert isinstance(net.value_encoder, CategoryValueEncoder)
        assert net.value_encoder.n_bins == 11
    for lay in net.transformer_encoder.layers:
        assert lay.dropout.p == lay.dropout1.p == lay.dropout2.p == 0.15
        assert lay.self_attn.dropout == 0.05
        assert lay.activation is F.gelu and lay.norm_first
        assert lay.linear1.out_features == 40
    # n_layers_cls: (n_layers_cls - 1) blocks of (Linear, activation, LayerNorm) + output
    assert len(net.cls_decoder._decoder) == 3 and net.cls_decoder.out_layer.out_features == 4
    disc = net.grad_reverse_discriminator
    assert len(disc._decoder) == 3 and disc.out_layer.out_features == 3
    assert len(net.dsbn.bns) == 3
    assert net.decoder.fc[0].in_features == 48  # batch token: decoders see 2 * d_model
    assert net.mvc_decoder.W.out_features == 48


def test_the_module_builds_its_heads_from_its_config():
    cfg = ScGPTConfig.preset("tiny", n_layers_cls=2, text_dim=8, text_temperature=0.25)
    module = ScGPTModule(12, 0, 1, torch.arange(2, 12), config=cfg, n_labels=3)
    assert len(module.transformer.cls_decoder._decoder) == 3
    assert module.transformer.config == module.config
    assert math.isclose(module.text_head.scale.item(), 4.0, rel_tol=1e-6)
    later = ScGPTModule(12, 0, 1, torch.arange(2, 12), config=replace(cfg, text_dim=None))
    later.add_text_head(8)
    assert math.isclose(later.text_head.scale.item(), 4.0, rel_tol=1e-6)


def test_a_blocks_left_out_setting_is_the_configs_default():
    d = ScGPTConfig()
    assert ContinuousValueEncoder(8).dropout.p == d.dropout
    layer = TransformerEncoderLayer(8, 2, 16)
    assert layer.dropout.p == d.dropout and layer.self_attn.dropout == d.attn_dropout
    assert layer.norm_first == d.norm_first
    assert SelfAttention(8, 2).dropout == d.attn_dropout
    assert len(ClsDecoder(8, 2)._decoder) == 3 * (d.n_layers_cls - 1)
    assert len(AdversarialDiscriminator(8, 2)._decoder) == 3 * (d.n_layers_cls - 1)
    assert math.isclose(CellTextHead(8, 8).scale.item(), 1 / d.text_temperature, rel_tol=1e-6)


def test_the_keyword_form_still_works_with_a_warning():
    kw = dict(d_model=32, n_heads=4, d_hid=32, n_layers=2, dropout=0.1, pad_id=0)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="ScGPTConfig"):
        old = ScGPTTransformer(60, **kw)
    torch.manual_seed(0)
    new = ScGPTTransformer(
        ScGPTConfig(d_model=32, n_heads=4, d_hid=32, n_layers=2, dropout=0.1, attn_dropout=0.1),
        n_tokens=60,
        pad_id=0,
    )
    a, b = old.state_dict(), new.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # attn_dropout=None meant "as dropout" in the keyword form
    assert old.transformer_encoder.layers[0].self_attn.dropout == 0.1
    # the keyword form's defaults stay scGPT_human's shape, d_hid 512 whatever d_model
    with pytest.warns(FutureWarning):
        small = ScGPTTransformer(n_tokens=10, d_model=16, n_heads=2, n_layers=1, do_mvc=False)
    assert small.transformer_encoder.layers[0].linear1.out_features == 512
    assert small.mvc_decoder is None
    with pytest.warns(FutureWarning):
        human = ScGPTTransformer(10)
    assert (human.d_model, len(human.transformer_encoder.layers)) == (512, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config form does not warn
        ScGPTTransformer(ScGPTConfig.preset("tiny"), n_tokens=10)


def test_a_config_and_keyword_settings_together_are_refused():
    with pytest.raises(ValueError, match="takes its settings from the config"):
        ScGPTTransformer(ScGPTConfig.preset("tiny"), n_tokens=10, d_model=32)
    with pytest.raises(ValueError, match="needs n_tokens"):
        ScGPTTransformer(ScGPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="first argument is a ScGPTConfig"):
        ScGPTTransformer({"d_model": 16}, n_tokens=10)


def test_the_checkpoint_writer_writes_the_configs_values():
    cfg = ScGPTConfig.preset(
        "small",
        n_layers_cls=2,
        n_bins=21,
        norm_first=True,
        activation="gelu",
        input_emb_style="category",
        dropout=0.1,
        pad_value=-3.0,
        mask_ratio=(0.4,),
    )
    args = scgpt_args_from_config(cfg, n_tokens=100)
    assert args["n_layers_cls"] == 2
    back = config_from_scgpt_args(args)
    arch = (
        "d_model n_heads n_layers d_hid dropout n_bins pad_value input_emb_style norm_first "
        "activation max_seq_len mask_ratio n_layers_cls"
    ).split()
    assert {k: getattr(back, k) for k in arch} == {
        k: getattr(replace(cfg, d_hid=cfg.d_hid_resolved), k) for k in arch
    }
    # scGPT's own args.json without the key: scGPT's classifier depth (the config default)
    plain = config_from_scgpt_args({"embsize": 64, "nheads": 4, "nlayers": 2})
    assert plain.n_layers_cls == ScGPTConfig().n_layers_cls


def test_nn_files_stay_small():
    nn_dir = Path(cnn.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in nn_dir.glob("*.py")}
    assert max(sizes.values()) < 600, sizes
