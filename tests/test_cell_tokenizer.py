"""``celltx.data.CellTokenizer``: the one place a sequence is assembled (issue 26).

The tokenizer alone gives the tokens the module gives (and those of the plain ``Tokenizer``
steps the module used to run itself), saves from before the tokenizer was a submodule load,
and the model classes ask the module instead of naming its parts or state-dict keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import celltx
from celltx.model import ScGPT

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 24}


def _model(selection: str = "random", **kw) -> tuple[ScGPT, torch.Tensor]:
    adata = celltx.datasets.pbmc68k()
    ScGPT.setup_anndata(adata)
    model = ScGPT(adata, **TINY, gene_selection=selection, **kw)
    return model, torch.as_tensor(adata.X[:60].toarray())


def _standalone(model: ScGPT, x_fit, **kw):
    from celltx.data import CellTokenizer

    m = model.module
    tok = CellTokenizer(
        model.config, m.n_tokens, model.vocab.pad_id, model.vocab.cls_id, m.panel_gene_ids, **kw
    )
    tok.fit(*x_fit)
    return tok


def _same(a, b) -> None:
    for name in ("gene_ids", "values", "padding_mask", "modality"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("selection", ["random", "rank", "hvg"])
def test_cell_tokenizer_alone_gives_the_module_tokens(selection):
    from celltx.data import Tokenizer, highly_variable, nonzero_medians

    model, x = _model(selection)
    adata_x = model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    tok = _standalone(model, (adata_x,))  # learns the same statistics from the same cells
    m = model.module
    assert isinstance(m.tokenizer, torch.nn.Module)
    for mode in ("eval", "train"):
        getattr(m, mode)()
        getattr(tok, mode)()
        torch.manual_seed(1)
        want = m.tokenize(x)
        torch.manual_seed(1)
        _same(tok(x), want)
    # ... and the tokens of the plain Tokenizer steps the module used to run itself
    tok.eval()
    c = model.config
    plain = Tokenizer(
        max_seq_len=c.max_seq_len, pad_id=tok.pad_id, cls_id=tok.cls_id, n_bins=c.n_bins
    )
    ids = m.panel_gene_ids
    if selection == "random":
        old = plain(x, ids, sample="hash")
    else:
        med = torch.ones(m.n_tokens)
        med[ids] = torch.as_tensor(nonzero_medians(adata_x, seed=c.seed, linear=True)).float()
        prio = None
        if selection == "hvg":
            hv = torch.zeros(m.n_tokens)
            hv[ids] = torch.as_tensor(highly_variable(adata_x, n_top=c.n_hvg, seed=c.seed)).float()
            prio = hv[ids]
        old = plain(x, ids, sample="rank", scale=1.0 / med[ids], priority=prio, linear=True)
    _same(tok(x), old)


def test_cell_tokenizer_joins_modalities_as_the_module_did():
    from celltx.data import join_modalities

    mdata = celltx.datasets.simulate_multiome(n_cells=60, seed=0)
    ScGPT.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = ScGPT(mdata, **TINY, max_peaks=32, peak_selection="idf")
    m = model.module.eval()
    x = torch.as_tensor(np.asarray(mdata.mod["rna"].X[:40].todense()), dtype=torch.float32)
    xa = torch.as_tensor(np.asarray(mdata.mod["atac"].X[:40].todense()), dtype=torch.float32)
    x[:5] = 0  # cells without RNA
    xa[5:10] = 0  # cells without ATAC
    x_atac_all = model.adata_manager.get_from_registry(REGISTRY_KEYS.ATAC_X_KEY)
    tok = _standalone(model, (None, x_atac_all), modalities=m.modalities, atac_ids=m.panel_atac_ids)
    tok.eval()
    assert tok.zero_fraction == 0.25  # the multiome default
    _same(tok(x, x_atac=xa), m.tokenize(x, x_atac=xa))
    # the old steps: binarised peaks (open = top bin), ranked by IDF, joined after the RNA
    rna = tok.rna(x, tok.gene_ids, sample="hash")
    open_ = (xa > 0).float() * (tok.n_bins - 1)
    atac = tok.atac(open_, tok.atac_ids, sample="rank", scale=tok.peak_scale())
    has_rna = (x[:, tok.gene_ids >= 0] > 0).any(1)
    has_atac = (open_[:, tok.atac_ids >= 0] > 0).any(1)
    old = join_modalities(rna, atac, has_rna, has_atac, pad_id=tok.pad_id, pad_value=tok.pad_value)
    _same(tok(x, x_atac=xa), old)
    assert torch.equal(tok.peak_idf, m.tokenizer.peak_idf)
    assert (tok.peak_idf != 1).any()  # learned, not the default


def test_old_layout_state_dict_loads():
    model, x = _model("hvg")
    state = model.module.state_dict()
    moved = ("gene_medians", "rank_linear", "gene_hvg")
    assert all(f"tokenizer.{k}" in state and k not in state for k in moved)
    # a save from before the tokenizer was a submodule: its buffers at the top level
    old = {k.removeprefix("tokenizer."): v.clone() for k, v in state.items()}
    ids = model.module.panel_gene_ids
    old["gene_medians"][ids] = torch.linspace(0.5, 3.0, len(ids))
    old["gene_hvg"][ids] = (torch.arange(len(ids)) % 3 == 0).float()
    old["rank_linear"] = torch.zeros((), dtype=torch.bool)
    again, _ = _model("hvg")
    again.module.load_state_dict(old)  # strict: no key left over, none missing
    t = again.module.tokenizer
    assert torch.equal(t.gene_medians, old["gene_medians"])
    assert torch.equal(t.gene_hvg, old["gene_hvg"])
    assert not bool(t.rank_linear)
    # older still: medians saved before the rank_linear flag -> medians of the values as they were
    older = {k: v for k, v in old.items() if k != "rank_linear"}
    third, _ = _model("hvg")
    assert bool(third.module.rank_linear)
    third.module.load_state_dict(older)
    assert not bool(third.module.tokenizer.rank_linear)
    # and the module's old attribute names still read the tokenizer's buffers
    assert third.module.gene_medians is third.module.tokenizer.gene_medians


def test_tokenizer_called_as_a_tokenizer_is_deprecated_but_works():
    model, x = _model("rank")
    m = model.module.eval()
    with pytest.warns(FutureWarning, match="tokenizer.rna"):
        got = m.tokenizer(x, m.panel_gene_ids, sample="rank", scale=m.rank_scale())
    _same(got, m.tokenizer.rna(x, m.panel_gene_ids, sample="rank", scale=m.rank_scale()))


def test_model_code_names_no_module_internals():
    """``model/`` asks the module (``batch_state``, ``load_grown_state``, ...): it never
    parses state-dict keys or walks into the transformer's submodules."""
    forbidden = [
        (r"""["']transformer\.""", "a state-dict key of the module"),
        (r"\.transformer_encoder\b", "the transformer's layers"),
        (r"\.self_attn\b", "an attention submodule"),
        (r"\bmodule\.transformer\b", "the module's transformer"),
        (r"\.dsbn\.bns\b|\.bns\[", "the batch norms of DSBN"),
    ]
    root = Path(celltx.model.__file__).parent
    hits = []
    for path in sorted(root.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in forbidden:
                if re.search(pattern, line):
                    hits.append(f"{path.name}:{n}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_query_batch_parts_grow_from_the_reference():
    adata = celltx.datasets.pbmc68k()
    adata.obs["b"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    ScGPT.setup_anndata(adata, batch_key="b")
    torch.manual_seed(0)
    ref = ScGPT(adata, **TINY, dsbn=True, batch_token=True).module
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    adata.obs["b"] = np.where(np.arange(adata.n_obs) % 3 == 0, "c", adata.obs["b"])
    ScGPT.setup_anndata(adata, batch_key="b")
    query = ScGPT(adata, **TINY, dsbn=True, batch_token=True).module
    query.load_grown_state(ref)
    saved = ref.batch_state()
    assert saved and all(torch.equal(v, ref.state_dict()[k]) for k, v in saved.items())
    n_ref = 2
    dsbn, ref_dsbn = query.transformer.dsbn, ref.transformer.dsbn
    for i in range(n_ref):
        assert torch.equal(dsbn.bns[i].weight, ref_dsbn.bns[i].weight)
    mean = torch.stack([b.weight for b in ref_dsbn.bns]).mean(0)
    torch.testing.assert_close(dsbn.bns[n_ref].weight, mean)
    emb, ref_emb = query.transformer.batch_encoder, ref.transformer.batch_encoder
    w, rw = emb.state_dict()["embedding.weight"], ref_emb.state_dict()["embedding.weight"]
    assert w.shape[0] == rw.shape[0] + 1 and torch.equal(w[:n_ref], rw)
    # restore puts the reference rows back after a query-training step changed them
    with torch.no_grad():
        for p in query.batch_parameters():
            p.add_(1.0)
    query.restore_batch_state(saved)
    assert torch.equal(dsbn.bns[0].weight, ref_dsbn.bns[0].weight)
    assert not torch.equal(dsbn.bns[n_ref].weight, mean)  # the new batch keeps its change
    all_params = {id(p) for p in query.parameters()}
    assert {id(p) for p in query.batch_parameters()} < all_params
