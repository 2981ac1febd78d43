import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from celltx.data import GeneVocab, gene_names, match_genes

from _helpers import FIXTURES, need


def test_from_genes_specials_and_lookup():
    v = GeneVocab.from_genes(["A", "B", "C"])
    assert len(v) == 6
    assert v.genes == ["A", "B", "C"]
    assert (v.pad_id, v.cls_id, v.eoc_id) == (3, 4, 5)
    assert v.lookup(["C", "zzz", "<pad>"]).tolist() == [2, -1, -1]
    first = GeneVocab.from_genes(["A"], special_first=True)
    assert first.pad_id == 0 and first["A"] == 3


def test_save_load_is_scgpt_json(tmp_path):
    v = GeneVocab.from_genes(["CD3E", "LYZ"])
    v.save(tmp_path / "vocab.json")
    raw = json.loads((tmp_path / "vocab.json").read_text())
    assert raw == {"CD3E": 0, "LYZ": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    assert GeneVocab.from_file(tmp_path / "vocab.json") == v


def test_reads_published_vocab():
    v = GeneVocab.from_file(need(FIXTURES / "ckpt_small" / "vocab.json"))
    assert len(v) == 768
    assert (v.pad_id, v.cls_id, v.eoc_id) == (765, 766, 767)
    assert v["HES4"] == 0


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"A": 0, "B": 5, "<pad>": 1, "<cls>": 3}, "cover 0"),
        ({"A": 0, "B": 0, "<pad>": 1, "<cls>": 2}, "cover 0"),
        ({"A": 0, "B": 1}, "special token"),
    ],
)
def test_bad_vocab(mapping, match):
    with pytest.raises(ValueError, match=match):
        GeneVocab(mapping)


def test_bad_vocab_file(tmp_path):
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GeneVocab.from_file(tmp_path / "v.json")
    (tmp_path / "v.json").write_text('["A", "B"]')
    with pytest.raises(ValueError, match="not a scGPT vocab.json"):
        GeneVocab.from_file(tmp_path / "v.json")


def test_duplicate_genes():
    with pytest.raises(ValueError, match="Duplicate gene names"):
        GeneVocab.from_genes(["A", "B", "A"])


def test_large_vocab_lookup():
    genes = [f"G{i}" for i in range(60_697)]
    v = GeneVocab.from_genes(genes)
    ids = v.lookup(genes[::-1])
    np.testing.assert_array_equal(ids, np.arange(60_696, -1, -1))


def _adata(var_names, **var_cols):
    a = ad.AnnData(np.ones((3, len(var_names)), dtype=np.float32))
    a.var_names = var_names
    for k, col in var_cols.items():
        a.var[k] = col
    return a


def test_match_by_symbol_column():
    a = _adata(["ENSG1", "ENSG2", "ENSG3", "ENSG4"], symbol=["CD3E", None, "LYZ", "CD3E"])
    v = GeneVocab.from_genes(["LYZ", "CD3E"])
    m = match_genes(a, v, gene_symbols="symbol")
    assert m.ids.tolist() == [1, -1, 0, -1]  # missing symbol and duplicate symbol unmatched
    assert m.n_matched == 2
    with pytest.raises(ValueError, match="Only 0 of 4 genes"):
        match_genes(a, v)  # Ensembl IDs are not symbols: clear error
    with pytest.raises(ValueError, match="not a column of adata.var"):
        match_genes(a, v, gene_symbols="nope")


def test_duplicate_var_names_error():
    a = _adata(["A", "B", "A"])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        gene_names(a)
    assert isinstance(gene_names(_adata(["A", "B"])), pd.Index)
