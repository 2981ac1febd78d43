"""Data layer: gene vocabulary, gene matching, the on-device tokenizer and datasets."""

from ._augment import (
    PARTNER_KEY,
    NeighbourBatchSampler,
    augment_views,
    drop_genes,
    input_pca,
    multiome_pairs,
    neighbour_pairs,
    partner_collate,
    partner_rows,
    thin_counts,
)
from ._batching import (
    DEFAULT_BATCH_TOKENS,
    RowsInOrder,
    ShuffledTokenBudgetSampler,
    TokenBudgetSampler,
    expressed_counts,
    first_item,
    sequence_lengths,
    shuffled_token_budget_batches,
    token_budget_batches,
)
from ._binning import digitize, quantile_edges
from ._cell_tokenizer import VIEW_ATAC, VIEW_JOINT, VIEW_RNA, CellTokenizer
from ._gene_activity import (
    gene_activity,
    peak_coordinates,
    peak_gene_weights,
    smooth_gene_activity,
)
from ._gene_table import ensembl_to_symbol, gene_id_table, tss_table
from ._genes import (
    GeneMatch,
    check_expression,
    gene_names,
    highly_variable,
    is_counts,
    match_genes,
    nonzero_medians,
    sample_values,
)
from ._heap import fix_mmap_threshold, trim_heap
from ._mosaic import modality_presence, pad_mosaic, place_rows
from ._pbmc68k import pbmc68k
from ._peaks import atac_lsi, peak_idf, peak_panel
from ._perturbation import condition_name, parse_condition, parse_conditions
from ._sequences import append_queries, fixed_gene_tokens, join_modalities, perturbation_tokens
from ._tokenizer import MOD_ATAC, MOD_CLS, MOD_RNA, PERT_PAD, TokenizedBatch, Tokenizer
from ._vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneVocab

__all__ = [
    "ensembl_to_symbol",
    "gene_id_table",
    "tss_table",
    "gene_activity",
    "peak_coordinates",
    "peak_gene_weights",
    "smooth_gene_activity",
    "PARTNER_KEY",
    "NeighbourBatchSampler",
    "augment_views",
    "drop_genes",
    "input_pca",
    "multiome_pairs",
    "neighbour_pairs",
    "partner_collate",
    "partner_rows",
    "thin_counts",
    "fix_mmap_threshold",
    "trim_heap",
    "TokenBudgetSampler",
    "ShuffledTokenBudgetSampler",
    "shuffled_token_budget_batches",
    "first_item",
    "RowsInOrder",
    "DEFAULT_BATCH_TOKENS",
    "expressed_counts",
    "sequence_lengths",
    "token_budget_batches",
    "GeneVocab",
    "GeneMatch",
    "Tokenizer",
    "CellTokenizer",
    "TokenizedBatch",
    "join_modalities",
    "perturbation_tokens",
    "append_queries",
    "fixed_gene_tokens",
    "PERT_PAD",
    "pad_mosaic",
    "place_rows",
    "parse_condition",
    "parse_conditions",
    "condition_name",
    "modality_presence",
    "MOD_CLS",
    "MOD_RNA",
    "MOD_ATAC",
    "VIEW_JOINT",
    "VIEW_RNA",
    "VIEW_ATAC",
    "match_genes",
    "gene_names",
    "check_expression",
    "nonzero_medians",
    "atac_lsi",
    "peak_idf",
    "peak_panel",
    "highly_variable",
    "is_counts",
    "sample_values",
    "quantile_edges",
    "digitize",
    "pbmc68k",
    "PAD_TOKEN",
    "CLS_TOKEN",
    "EOC_TOKEN",
    "SPECIAL_TOKENS",
]
