"""Parameter descriptions shared by several methods, filled into their docstrings.

A docstring names a shared parameter as ``%(name)s`` on its own line (in place of the
parameter's name and description); :func:`doc_params` replaces it with the text below, as
scvi-tools' ``setup_anndata_dsp`` does for its models.
"""

from __future__ import annotations

import re
import textwrap

PARAMS = {
    "adata": """adata
    AnnData (default: the one the model was built with). Set up automatically from the
    model's registry if it was not; another gene panel works (genes are matched to the
    vocabulary by name, the others ignored).""",
    "indices": """indices
    Cells to use (default all): integer positions, in any order and with repeats (the
    result follows them; negative ones count from the end), or a boolean mask with one
    value per cell. An empty selection, positions out of range and a mask of another
    length raise a ``ValueError``.""",
    "batch_size": """batch_size
    Cells per forward pass, a positive integer (default: scvi-tools' ``settings.batch_size``).""",
    "max_seq_len": """max_seq_len
    Tokens per cell for this call (e.g. the cells' largest number of expressed genes + 1 to
    use every gene); default: the model's ``max_seq_len``.""",
    "batch_key": """batch_key
    Column with batches (``obs``; for a MuData, ``mdata.obs`` or the modality named in
    ``modalities["batch_key"]``).""",
    "labels_key": """labels_key
    Column with cell-type labels (NaN = unlabelled).""",
    "gene_symbols": """gene_symbols
    ``var`` column (of the RNA modality) with gene symbols, when ``var_names`` are not the
    names the vocabulary uses (e.g. Ensembl IDs).""",
}

_MARK = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def doc_params(func):
    """Fill the ``%(name)s`` lines of ``func``'s docstring from :data:`PARAMS`."""
    if func.__doc__:
        func.__doc__ = _MARK.sub(
            lambda m: textwrap.indent(PARAMS[m.group("name")], m.group("indent")), func.__doc__
        )
    return func
