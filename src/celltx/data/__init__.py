"""Data layer: gene vocabulary, gene matching, the on-device tokenizer and datasets."""

from ._datasets import pbmc68k
from ._genes import GeneMatch, check_expression, gene_names, match_genes
from ._mosaic import modality_presence, pad_mosaic
from ._tokenizer import (
    MOD_ATAC,
    MOD_CLS,
    MOD_RNA,
    TokenizedBatch,
    Tokenizer,
    digitize,
    join_modalities,
    quantile_edges,
)
from ._vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneVocab

__all__ = [
    "GeneVocab",
    "GeneMatch",
    "Tokenizer",
    "TokenizedBatch",
    "join_modalities",
    "pad_mosaic",
    "modality_presence",
    "MOD_CLS",
    "MOD_RNA",
    "MOD_ATAC",
    "match_genes",
    "gene_names",
    "check_expression",
    "quantile_edges",
    "digitize",
    "pbmc68k",
    "PAD_TOKEN",
    "CLS_TOKEN",
    "EOC_TOKEN",
    "SPECIAL_TOKENS",
]
