"""The Cell Ontology offline, a free-text → CL-term index, and the texts that describe cell types."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ._encoder import TextEncoder, _require

_CL_ID = re.compile(r"^CL[:_]\d{7}$")
_ROOT = "CL:0000000"


def is_cl_id(text: str) -> bool:
    """Whether ``text`` is a Cell Ontology id (``CL:0000236``; ``CL_0000236`` also accepted)."""
    return isinstance(text, str) and bool(_CL_ID.match(text.strip()))


def normalize(text: str) -> str:
    """A cell-type name in a canonical spelling for exact matching.

    Lower case; marker notation as the ontology writes it (``CD14+`` → ``cd14-positive``,
    ``CD25-`` → ``cd25-negative``); plurals made singular (``NK cells`` → ``nk cell``);
    punctuation other than hyphens (commas, ``/``) dropped.

    Examples
    --------
    >>> from celltx.text._ontology import normalize
    >>> normalize("CD14+ Monocytes")
    'cd14-positive monocyte'
    """
    t = str(text).lower().replace("_", " ").replace("/", " ")
    t = re.sub(r"(?<=[a-z0-9])\+(?=[\s,]|$)", "-positive", t)
    t = re.sub(r"(?<=[a-z0-9])-(?=[\s,]|$)", "-negative", t)
    t = re.sub(r"[^a-z0-9\- ]", " ", t)
    words = [
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in t.split()
    ]
    return " ".join(words)


class CellOntology:
    """The Cell Ontology (CL) as shipped by ``cellxgene-ontology-guide``, with a free-text index.

    :meth:`match` maps free-text cell-type names to CL terms: by the exact label, then an exact
    synonym (both after :func:`normalize`), then the most similar label or synonym by text
    embedding; a best similarity under ``min_similarity`` is no match. The table it returns
    says which rule decided, so that a wrong choice can be seen and overridden.

    Parameters
    ----------
    encoder
        :class:`~celltx.text.TextEncoder` for the similarity step (default: the bundled one).
    min_similarity
        Lowest cosine similarity accepted by the embedding step.

    Examples
    --------
    >>> from celltx.text import CellOntology
    >>> cl = CellOntology()  # doctest: +SKIP
    >>> cl.match(["CD14+ Monocytes", "Treg"])[["term_id", "term_label", "how"]]  # doctest: +SKIP
    """

    def __init__(self, encoder: TextEncoder | None = None, min_similarity: float = 0.65):
        guide = _require("cellxgene_ontology_guide.ontology_parser")
        self._parser = guide.OntologyParser()
        self.encoder = encoder
        self.min_similarity = float(min_similarity)
        label_to_id = self._parser.get_term_label_to_id_map("CL")
        ids = [i for i in label_to_id.values() if i.startswith("CL:")]
        labels = self._parser.map_term_labels(ids)
        defs = self._parser.map_term_descriptions(ids)
        syns = self._parser.map_term_synonyms(ids)
        self.terms = pd.DataFrame(
            {
                "label": [labels[i] for i in ids],
                "definition": [defs.get(i) or "" for i in ids],
                "synonyms": [list(syns.get(i) or []) for i in ids],
            },
            index=pd.Index(ids, name="term_id"),
        )
        self._exact: dict[str, str] = {}
        self._synonym: dict[str, str] = {}
        for i, row in self.terms.iterrows():
            self._exact.setdefault(normalize(row["label"]), i)
            for s in row["synonyms"]:
                self._synonym.setdefault(normalize(s), i)
        self._names: list[str] | None = None
        self._name_ids: list[str] | None = None
        self._name_emb: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.terms)

    def term_id(self, text: str) -> str:
        """``CL:0000236`` for ``CL:0000236`` or ``CL_0000236``; a ``ValueError`` if unknown."""
        tid = text.strip().replace("_", ":")
        if tid not in self.terms.index:
            raise ValueError(
                f"{text!r} is not a term of the Cell Ontology shipped with "
                "cellxgene-ontology-guide (obsolete, or a typo?)."
            )
        return tid

    def describe(self, term_id: str) -> str:
        """The text of a term: ``"<label>: <definition>"`` (the label alone without one)."""
        row = self.terms.loc[self.term_id(term_id)]
        return f"{row['label']}: {row['definition']}" if row["definition"] else row["label"]

    def _index(self, encoder: TextEncoder) -> tuple[list[str], np.ndarray]:
        if self._name_emb is None:
            names, ids = [], []
            for i, row in self.terms.iterrows():
                if i == _ROOT:  # "cell": matches everything vaguely, describes nothing
                    continue
                for n in [row["label"], *row["synonyms"]]:
                    names.append(n)
                    ids.append(i)
            self._names, self._name_ids = names, ids
            self._name_emb = encoder.encode_cached(names, "cell-ontology")
        assert self._name_ids is not None  # set with _name_emb
        return self._name_ids, self._name_emb

    def match(self, queries: Sequence[str]) -> pd.DataFrame:
        """CL term for each free-text query.

        Returns
        -------
        pandas.DataFrame
            Indexed by query: ``term_id``, ``term_label`` (empty when there is no match),
            ``how`` (``"id"``, ``"label"``, ``"synonym"``, ``"similarity"`` or ``"none"``) and
            ``score`` (cosine similarity of the embedding step; 1 for exact matches).
        """
        rows = {}
        pending = []
        for q in dict.fromkeys(str(q) for q in queries):
            if is_cl_id(q):
                tid = self.term_id(q)
                rows[q] = (tid, "id", 1.0)
            elif normalize(q) in self._exact:
                rows[q] = (self._exact[normalize(q)], "label", 1.0)
            elif normalize(q) in self._synonym:
                rows[q] = (self._synonym[normalize(q)], "synonym", 1.0)
            else:
                pending.append(q)
        if pending:
            encoder = self.encoder or TextEncoder()
            self.encoder = encoder
            ids, emb = self._index(encoder)
            # the name as written (abbreviations: "HSPC", "CD8 TEM") and in canonical
            # spelling with "cell" added ("NK" -> "nk cell"): the better of the two
            expanded = [
                normalize(q) if normalize(q).endswith("cell") else normalize(q) + " cell"
                for q in pending
            ]
            sim = np.maximum(encoder.encode(pending) @ emb.T, encoder.encode(expanded) @ emb.T)
            best = sim.argmax(1)
            for q, b, s in zip(pending, best, sim[np.arange(len(pending)), best], strict=True):
                ok = s >= self.min_similarity
                rows[q] = (ids[b] if ok else "", "similarity" if ok else "none", float(s))
        out = pd.DataFrame.from_dict(rows, orient="index", columns=["term_id", "how", "score"])
        out.index.name = "query"
        out.insert(1, "term_label", [self.terms.label.get(t, "") for t in out.term_id])
        return out.loc[list(dict.fromkeys(str(q) for q in queries))]


def cell_type_texts(
    names: Sequence[str],
    ontology: CellOntology | bool | None = True,
    overrides: Mapping[str, str] | None = None,
    encoder: TextEncoder | None = None,
) -> pd.DataFrame:
    """The text that stands for each cell-type name in cell–text alignment.

    A name is matched to a Cell Ontology term (:meth:`CellOntology.match`) and described by
    the name, the term's label and its definition (``"CD14 Mono; CD14-positive monocyte: A
    monocyte that …"``), so that differently written names of one type share most of their
    description while two names matched to one term stay distinct. A CL id is described by
    its term alone; a name without a match keeps its own text, with a warning.

    Parameters
    ----------
    names
        Cell-type names, free texts or CL ids.
    ontology
        A :class:`CellOntology`, ``True`` (build one) or ``False``/``None``: every text is the
        name itself.
    overrides
        ``{name: CL id or text}``: the term (or literal text) to use for a name, to correct a
        match shown by the returned table.
    encoder
        Encoder for the ontology's similarity step (when ``ontology=True``).

    Returns
    -------
    pandas.DataFrame
        Indexed by name: ``text`` and the match (``term_id``, ``term_label``, ``how``,
        ``score``).
    """
    names = [str(n) for n in names]
    overrides = dict(overrides or {})
    if ontology is True:
        ontology = CellOntology(encoder=encoder)
    table = pd.DataFrame(
        {"text": names, "term_id": "", "term_label": "", "how": "text", "score": np.nan},
        index=pd.Index(names, name="name"),
    )
    table = table[~table.index.duplicated()]
    if ontology:
        queries = [overrides.get(n, n) for n in table.index]
        literal = [
            n
            for n, q in zip(table.index, queries, strict=True)
            if n in overrides and not is_cl_id(q)
        ]
        m = ontology.match(queries)
        for n, q in zip(table.index, queries, strict=True):
            if n in literal:
                table.loc[n, ["text", "how"]] = [q, "override"]
                continue
            tid, how, score = m.loc[q, "term_id"], m.loc[q, "how"], m.loc[q, "score"]
            table.loc[n, ["how", "score"]] = [how if n not in overrides else "override", score]
            if tid:
                label = ontology.terms.label[tid]
                text = ontology.describe(tid)
                if normalize(n) != normalize(label) and not is_cl_id(n):
                    # keep the name: two names matched to one term stay distinguishable
                    text = f"{n}; {text}"
                table.loc[n, ["text", "term_id", "term_label"]] = [text, tid, label]
        missing = table.index[table.how == "none"].tolist()
        if missing:
            warnings.warn(
                f"No Cell Ontology match for {missing}: their own text is used. Pass "
                "overrides={name: 'CL:…'} to choose a term.",
                UserWarning,
                stacklevel=2,
            )
    else:
        for n, q in overrides.items():
            if n in table.index:
                table.loc[n, ["text", "how"]] = [q, "override"]
    return table
