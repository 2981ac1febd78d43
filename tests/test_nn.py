import numpy as np
import pytest
import torch

from celltx.io import detect_layout, from_scgpt, read_weights, to_scgpt
from celltx.nn import ScGPTTransformer, TransformerEncoderLayer, generative_attn_mask

from _helpers import FIXTURES, need


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_layer_equals_torch_transformer_layer(norm_first, activation):
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(
        32, 4, 48, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    ours = TransformerEncoderLayer(
        32, 4, 48, dropout=0.0, activation=activation, norm_first=norm_first
    ).eval()
    sd = from_scgpt({k: v for k, v in ref.state_dict().items()})
    ours.load_state_dict(sd)
    x = torch.randn(3, 10, 32)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 7:] = True
    pad[2, 4:] = True
    with torch.no_grad():
        y_ref = ref(x, src_key_padding_mask=pad)
        y = ours(x, ~pad[:, None, None, :])
    keep = ~pad
    torch.testing.assert_close(y[keep], y_ref[keep], atol=1e-5, rtol=1e-5)


def _net(**kw):
    torch.manual_seed(0)
    base = dict(n_tokens=60, d_model=32, n_heads=4, d_hid=32, n_layers=2, dropout=0.0, pad_id=0)
    base.update(kw)
    return ScGPTTransformer(**base).eval()


def _cell(n_known=6, n_unknown=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    genes = torch.randperm(50, generator=g)[: n_known + n_unknown] + 2  # ids 2..51
    ids = torch.cat([torch.tensor([1]), genes])  # <cls>=1
    vals = torch.cat(
        [torch.tensor([-2.0]), torch.randint(1, 51, (n_known + n_unknown,), generator=g).float()]
    )
    known = torch.zeros(len(ids), dtype=torch.bool)
    known[: 1 + n_known] = True
    return ids[None], vals[None], known[None]


@pytest.mark.parametrize("norm_first", [False, True])
def test_generative_mask_invariances(norm_first):
    net = _net(norm_first=norm_first)
    ids, vals, known = _cell()
    pad = torch.zeros_like(known)
    with torch.no_grad():
        base = net(ids, vals, pad, known)
        # (a) replace the unknown genes (other genes, other values, one more of them)
        ids2, vals2, known2 = ids.clone(), vals.clone(), known.clone()
        ids2[0, 7:] = torch.tensor([55, 56, 57, 58, 59])
        vals2[0, 7:] = 3.0
        ids2 = torch.cat([ids2, torch.tensor([[54]])], 1)
        vals2 = torch.cat([vals2, torch.tensor([[9.0]])], 1)
        known2 = torch.cat([known2, torch.tensor([[False]])], 1)
        rep = net(ids2, vals2, torch.zeros_like(known2), known2)
        # (a') remove them
        rem = net(ids[:, :7], vals[:, :7], pad[:, :7], known[:, :7])
        # padding instead of removal
        pad3 = pad.clone()
        pad3[0, 7:] = True
        padded = net(ids, vals, pad3, known)
    h = base["encoder_output"][0, :7]
    torch.testing.assert_close(rep["encoder_output"][0, :7], h, atol=1e-5, rtol=0)
    torch.testing.assert_close(rem["encoder_output"][0, :7], h, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded["encoder_output"][0, :7], h, atol=1e-5, rtol=0)
    torch.testing.assert_close(rep["cell_emb"], base["cell_emb"], atol=1e-5, rtol=0)

    # (b) the output at one unknown position ignores the other unknown genes
    ids4, vals4 = ids.clone(), vals.clone()
    ids4[0, 8:] = torch.tensor([40, 41, 42, 43])
    with torch.no_grad():
        other = net(ids4, vals4, pad, known)
        alone = net(ids[:, :8], vals[:, :8], pad[:, :8], known[:, :8])
    torch.testing.assert_close(
        other["encoder_output"][0, 7], base["encoder_output"][0, 7], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(alone["expr"][0, 7], base["expr"][0, 7], atol=1e-5, rtol=0)
    # unknown values are not seen at all: changing them changes nothing
    vals5 = vals.clone()
    vals5[0, 7:] = 50.0
    with torch.no_grad():
        hidden = net(ids, vals5, pad, known)
    torch.testing.assert_close(hidden["encoder_output"], base["encoder_output"], atol=0, rtol=0)


def test_the_mask_is_needed():
    """Without the generative mask, known outputs do depend on the unknown genes — so the
    invariance test above can fail."""
    net = _net()
    ids, vals, known = _cell()
    pad = torch.zeros_like(known)
    ids2 = ids.clone()
    ids2[0, 7:] = torch.tensor([55, 56, 57, 58, 59])
    with torch.no_grad():
        a = net.encode(ids, vals, pad)
        b = net.encode(ids2, vals, pad)
    assert (a[0, :7] - b[0, :7]).abs().max() > 1e-3


def test_generative_mask_shape_and_rules():
    known = torch.tensor([[True, True, False, False, False]])
    pad = torch.tensor([[False, False, False, False, True]])
    m = generative_attn_mask(known, pad)[0, 0]
    assert m.shape == (5, 5)
    assert m[:2, :2].all() and not m[:2, 2:].any()
    assert m[2, 2] and not m[2, 3] and m[3, 3] and not m[3, 2]
    assert not m[:4, 4].any()
    assert m.any(1).all()  # every query attends somewhere (no NaN rows)


def test_category_value_encoder_runs():
    net = _net(input_emb_style="category", n_bins=51)
    ids, vals, known = _cell()
    out = net(ids, vals, torch.zeros_like(known))
    assert torch.isfinite(out["expr"]).all()


def test_attention_sdpa_dropout_only_in_training():
    net = _net(dropout=0.5)
    ids, vals, known = _cell()
    pad = torch.zeros_like(known)
    net.eval()
    assert torch.equal(net.encode(ids, vals, pad), net.encode(ids, vals, pad))


# --- numerical identity with the original scGPT (shared fixture) ------------------------
@pytest.mark.parametrize("layout_dir", ["ckpt_small", "ckpt_small_torch", "ckpt_small_fa2"])
def test_golden_outputs_match_original_scgpt(layout_dir):
    g = np.load(need(FIXTURES / "golden_small.npz"))
    sd = read_weights(need(FIXTURES / layout_dir / "best_model.pt"))
    net = ScGPTTransformer(
        768, d_model=64, n_heads=4, d_hid=64, n_layers=2, dropout=0.2, pad_id=765
    )
    missing, unexpected = net.load_state_dict(from_scgpt(sd), strict=False)
    assert missing == []
    assert all(k.startswith("cls_decoder.") for k in unexpected)  # no classifier in this net
    net.eval()
    with torch.no_grad():
        out = net(
            torch.from_numpy(g["gene_ids"]),
            torch.from_numpy(g["values"]),
            torch.from_numpy(g["padding_mask"]),
        )
    keep = ~g["padding_mask"]
    np.testing.assert_allclose(
        out["encoder_output"].numpy()[keep], g["encoder_output"][keep], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(out["cell_emb"].numpy(), g["cell_emb"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["expr"].numpy()[keep], g["mlm_output"][keep], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["mvc"].numpy()[keep], g["mvc_output"][keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["official", "torch", "fa2"])
def test_state_dict_layout_round_trip(layout):
    sd = read_weights(need(FIXTURES / "ckpt_small" / "best_model.pt"))
    ours = from_scgpt(sd)
    back = to_scgpt(ours, layout)
    assert detect_layout(back) == layout
    again = from_scgpt(back)
    assert again.keys() == ours.keys()
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_read_weights_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": torch.zeros(1), "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="Refused"):
        read_weights(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:50])
    with pytest.raises(ValueError):
        read_weights(tmp_path / "trunc.pt")
