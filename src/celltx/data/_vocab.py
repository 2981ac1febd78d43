"""Gene vocabulary: token <-> id, compatible with scGPT's ``vocab.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
EOC_TOKEN = "<eoc>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)


class GeneVocab:
    """Mapping between gene names (tokens) and integer ids.

    The on-disk format is scGPT's ``vocab.json``: one JSON object ``{token: id}`` with
    ids ``0 … n-1``. Special tokens ``<pad>``, ``<cls>`` and ``<eoc>`` are always present.

    Parameters
    ----------
    token_to_id
        Mapping ``{token: id}``; ids must be exactly ``0 … len - 1``.

    Examples
    --------
    >>> from celltx.data import GeneVocab
    >>> vocab = GeneVocab.from_genes(["CD3E", "MS4A1", "LYZ"])
    >>> len(vocab), vocab["MS4A1"], vocab.pad_id
    (6, 1, 3)
    >>> vocab.lookup(["LYZ", "NOT_A_GENE"]).tolist()
    [2, -1]
    """

    def __init__(self, token_to_id: Mapping[str, int]):
        tokens = list(token_to_id.keys())
        ids = np.fromiter((int(i) for i in token_to_id.values()), dtype=np.int64, count=len(tokens))
        if len(tokens) == 0:
            raise ValueError("A gene vocabulary needs at least one token.")
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(len(ids))):
            raise ValueError(
                "Vocabulary ids must be unique and cover 0 … n-1 exactly; this mapping has "
                f"{len(ids)} tokens with ids from {ids.min()} to {ids.max()}"
                f"{' and duplicates' if len(np.unique(ids)) < len(ids) else ''}. "
                "Fix the vocab.json or build the vocabulary with GeneVocab.from_genes()."
            )
        missing = [t for t in (PAD_TOKEN, CLS_TOKEN) if t not in token_to_id]
        if missing:
            raise ValueError(
                f"Vocabulary lacks the special token(s) {missing}. scGPT vocabularies contain "
                f"{list(SPECIAL_TOKENS)}; add them (GeneVocab.from_genes adds them for you)."
            )
        self._itos = [tokens[i] for i in order]
        self._stoi = {t: int(i) for t, i in zip(tokens, ids, strict=True)}
        self._index = pd.Index(self._itos)

    # construction ---------------------------------------------------------------------
    @classmethod
    def from_genes(
        cls,
        genes: Iterable[str],
        specials: Sequence[str] = SPECIAL_TOKENS,
        special_first: bool = False,
    ) -> GeneVocab:
        """Build a vocabulary from gene names.

        Parameters
        ----------
        genes
            Gene names; duplicates are an error.
        specials
            Special tokens to add (``<pad>`` and ``<cls>`` are required).
        special_first
            Put the special tokens before the genes (scGPT's published vocabularies put
            them after, which is the default here).
        """
        genes = [str(g) for g in genes]
        dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
        if dup:
            raise ValueError(
                f"Duplicate gene names: {dup[:10]}{' …' if len(dup) > 10 else ''}. Make them unique "
                "first, e.g. with adata.var_names_make_unique()."
            )
        clash = [s for s in specials if s in set(genes)]
        if clash:
            raise ValueError(f"Gene names clash with special tokens: {clash}.")
        tokens = [*specials, *genes] if special_first else [*genes, *specials]
        return cls({t: i for i, t in enumerate(tokens)})

    def extend(self, tokens: Iterable[str]) -> GeneVocab:
        """A new vocabulary with ``tokens`` not yet present appended.

        New tokens get ids ``len(self)`` onwards; existing ids are unchanged, so a
        checkpoint's embedding rows still fit.
        """
        d = self.to_dict()
        for t in tokens:
            t = str(t)
            if t not in d:
                d[t] = len(d)
        return GeneVocab(d)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GeneVocab:
        """Read a vocabulary from a scGPT ``vocab.json`` (``{token: id}``)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); expected scGPT's vocab.json.") from e
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise ValueError(
                f"{path} is not a scGPT vocab.json: expected a JSON object mapping tokens to ids."
            )
        return cls(data)

    load = from_file

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as scGPT's ``vocab.json``."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=0)

    def to_dict(self) -> dict[str, int]:
        """``{token: id}`` in id order."""
        return {t: i for i, t in enumerate(self._itos)}

    # access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __getitem__(self, token: str) -> int:
        try:
            return self._stoi[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the vocabulary") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} tokens, {len(self.genes)} genes)"

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order."""
        return list(self._itos)

    @property
    def genes(self) -> list[str]:
        """Non-special tokens in id order."""
        return [t for t in self._itos if t not in SPECIAL_TOKENS]

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self._stoi[PAD_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self._stoi[CLS_TOKEN]

    @property
    def eoc_id(self) -> int | None:
        """Id of ``<eoc>`` (``None`` if the vocabulary has none)."""
        return self._stoi.get(EOC_TOKEN)

    def lookup(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids of ``tokens`` as ``int64``; ``-1`` for tokens not in the vocabulary.

        Vectorized through a :class:`pandas.Index`, so 60k-token lookups take milliseconds.
        """
        index = pd.Index([str(t) for t in tokens])
        ids: np.ndarray = self._index.get_indexer(index).astype(np.int64)
        special = index.isin(SPECIAL_TOKENS)
        ids[special] = -1
        return ids

    def lookup_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens for ids."""
        return [self._itos[int(i)] for i in ids]
