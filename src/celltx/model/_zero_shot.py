"""Cell–text alignment and zero-shot annotation (LangCell)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._docs import doc_params
from ._host import ModelHost


def _check_candidates(candidates) -> tuple[list[str], list[str] | None]:
    """Names (and explicit texts for a dict) of zero-shot candidates, validated."""
    if isinstance(candidates, Mapping):
        names, texts = list(candidates), list(candidates.values())
    elif isinstance(candidates, str) or not isinstance(
        candidates, Sequence | np.ndarray | pd.Index
    ):
        raise ValueError(
            f"candidates must be a list of cell-type names, free texts or CL ids (or a "
            f"{{name: text}} dict), got {type(candidates).__name__}."
        )
    else:
        names, texts = list(candidates), None
    if not names:
        raise ValueError("candidates is empty: pass the cell types to choose from.")
    for v in names + (texts or []):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"Every candidate must be a non-empty string, got {v!r}.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"Duplicated candidates {dup}: each candidate must appear once.")
    return names, texts


def _check_overrides(overrides, names: list[str], what: str) -> None:
    """Refuse an ``overrides`` key that is none of ``names`` (a typo would be ignored)."""
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"overrides must be a {{{what}: CL id or text}} dict, not {type(overrides).__name__}."
        )
    unknown = [k for k in overrides if k not in set(names)]
    if unknown:
        raise ValueError(
            f"overrides names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"among the {what}s {names}; each key must be one of them exactly."
        )


def _check_smooth_neighbors(k, n_cells: int) -> int | None:
    """``smooth_neighbors`` of :meth:`ZeroShotMixin.predict_zero_shot`, validated."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(
            f"smooth_neighbors={k!r} must be a whole number >= 1 (neighbours per cell), or "
            "None for no smoothing."
        )
    if k >= n_cells:
        raise ValueError(
            f"smooth_neighbors={k} needs more than {k} cells, but the query has {n_cells}: "
            f"pass smooth_neighbors <= {n_cells - 1} (or None)."
        )
    return int(k)


def _neighbour_mean(scores: np.ndarray, rep: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``scores`` averaged with the rows of its ``k`` nearest cells in ``rep``.

    Neighbours are Euclidean nearest rows of ``rep`` other than the cell itself
    (:class:`sklearn.neighbors.NearestNeighbors`); the cell counts once, its ``k``
    neighbours once each: ``(scores[i] + sum_j scores[j]) / (k + 1)``.
    """
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k).fit(rep).kneighbors(return_distance=False)
    return (scores + scores[idx].sum(axis=1)) / (k + 1)


class ZeroShotMixin(ModelHost):
    """Cell–text alignment (``train(task="cell_text")``) and zero-shot annotation."""

    # --- text side ------------------------------------------------------------------------
    def _text_encoder(self):
        from celltx.text import TextEncoder

        enc = self.__dict__.get("_text_encoder_obj")
        if enc is None:
            enc = TextEncoder(self.module.config.text_encoder)
            self.__dict__["_text_encoder_obj"] = enc
        return enc

    def _ontology(self, ontology):
        if ontology is True:
            from celltx.text import CellOntology

            cl = self.__dict__.get("_ontology_obj")
            if cl is None:
                cl = CellOntology(encoder=self._text_encoder())
                self.__dict__["_ontology_obj"] = cl
            return cl
        return ontology or None

    def set_label_texts(
        self,
        ontology: bool = True,
        overrides: Mapping[str, str] | None = None,
    ) -> pd.DataFrame:
        """Choose the text of each registered label for ``train(task="cell_text")``.

        Each label is matched to a Cell Ontology term and described by its label and
        definition (:func:`celltx.text.cell_type_texts`); ``train(task="cell_text")`` calls
        this with the defaults when it was not called. The table is kept as
        ``model.label_texts_`` (saved with the model).

        Parameters
        ----------
        ontology
            Describe labels by their Cell Ontology term (``False``: the label text itself).
        overrides
            ``{label: CL id or text}`` to correct a match.

        Returns
        -------
        pandas.DataFrame
            One row per label: ``text``, ``term_id``, ``term_label``, ``how``, ``score``.

        Examples
        --------
        >>> model.set_label_texts(overrides={"CD34+": "CL:0000037"})  # doctest: +SKIP
        >>> model.train(task="cell_text", max_epochs=20)  # doctest: +SKIP
        """
        if not self._setup_args(self.adata).get("labels_key"):
            raise ValueError(
                "Cell–text alignment needs labels: ScGPT.setup_anndata(adata, labels_key="
                "'<obs column>'), then build or load the model."
            )
        from celltx.text import cell_type_texts

        labels = [str(c) for c in self._label_state().categorical_mapping]
        _check_overrides(overrides, labels, "registered label")
        enc = self._text_encoder()
        table = cell_type_texts(labels, self._ontology(ontology), overrides, encoder=enc)
        emb = torch.as_tensor(enc.encode(table.loc[labels, "text"].tolist()))
        self.module.add_text_head(emb.shape[1])
        self.module.set_label_texts(emb)
        self.init_params_["kwargs"]["settings"]["text_dim"] = int(emb.shape[1])
        self.label_texts_ = table
        return table

    def _candidate_texts(self, candidates, ontology, overrides) -> pd.DataFrame:
        from celltx.text import cell_type_texts

        names, texts = _check_candidates(candidates)
        _check_overrides(overrides, names, "candidate")
        if texts is not None and overrides:
            raise ValueError(
                "overrides correct the ontology match of candidate names; candidates given as "
                "a {name: text} dict already have their texts: change the texts instead."
            )
        if texts is not None:
            return pd.DataFrame(
                {"text": texts, "term_id": "", "term_label": "", "how": "given", "score": np.nan},
                index=pd.Index(names, name="name"),
            )
        return cell_type_texts(
            names, self._ontology(ontology), overrides, encoder=self._text_encoder()
        )

    def _require_text_head(self) -> None:
        self._require_head(
            "text",
            (
                "This model has no cell–text head: set up labels (labels_key), then "
                "model.train(task='cell_text', ...) before zero-shot annotation."
            ),
            (
                "The cell–text head of this model was never trained (set_label_texts builds it "
                "randomly initialised): its answers would be random. Train it first: "
                "model.train(task='cell_text', max_epochs=...)."
            ),
        )

    @torch.inference_mode()
    def get_text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Texts in the cell–text space: unit vectors ``(len(texts), text_dim)``.

        Cosine similarity with :meth:`predict_zero_shot`'s cell vectors ranks texts for a
        cell. The texts are embedded as given (no ontology lookup).

        Examples
        --------
        >>> emb = model.get_text_embeddings(["B cell", "natural killer cell"])  # doctest: +SKIP
        """
        self._require_text_head()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings.")
        names = list(texts)
        raw = torch.as_tensor(self._text_encoder().encode(names), device=self.device)
        return self.module.text_embedding(raw).cpu().numpy()

    # --- zero-shot annotation -------------------------------------------------------------
    @doc_params
    @torch.inference_mode()
    def predict_zero_shot(
        self,
        adata: AnnData | None = None,
        candidates: Sequence[str] | Mapping[str, str] | None = None,
        key_added: str = "zero_shot",
        indices: Sequence[int] | None = None,
        ontology: bool = True,
        overrides: Mapping[str, str] | None = None,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
        smooth_neighbors: int | None = None,
        smooth_use_rep: str | None = None,
    ) -> np.ndarray:
        """Annotate cells by their similarity to candidate texts, without a classifier.

        Each candidate (a cell-type name, a free text or a CL id) is described as in
        training (:meth:`set_label_texts`: the Cell Ontology term's label and definition),
        embedded by the frozen text encoder and projected; each cell is projected from its
        ``<cls>`` embedding; a cell gets the candidate with the highest cosine similarity.
        The candidates need not be the training labels (LangCell's zero-shot setting).

        With ``smooth_neighbors=k`` each cell's similarities are first averaged with those of
        its ``k`` nearest cells in the query (GRIT, Hu et al. 2025, smooths zero-shot scores
        over the query's kNN graph), so a cell whose own scores disagree with all its
        neighbours' takes theirs.

        Parameters
        ----------
        %(adata)s
        candidates
            Cell types to choose from: names, free texts or CL ids, or a ``{name: text}``
            dict to give the texts yourself. Default: the registered labels.
        key_added
            Written (when ``indices`` is ``None``): ``obs[key_added]`` (the chosen
            candidate), ``obsm[key_added + "_similarity"]`` (cells × candidates cosine
            similarities) and ``uns[key_added + "_candidates"]`` (the texts used and their
            ontology match, to check).
        %(indices)s
        ontology
            Describe candidates by their Cell Ontology term (``False``: the text as given).
        overrides
            ``{candidate: CL id or text}`` to correct a match.
        %(batch_size)s
        %(max_seq_len)s
        smooth_neighbors
            Average each cell's candidate similarities over itself and its
            ``smooth_neighbors`` nearest cells among the cells annotated (all of ``adata``,
            or ``indices``) before choosing; must be at least 1 and smaller than the number
            of cells. ``None`` (default): no smoothing. ``obsm[key_added + "_similarity"]``
            then holds the smoothed similarities.
        smooth_use_rep
            With ``smooth_neighbors``: the ``obsm`` key whose rows define the neighbours
            (e.g. ``"X_pca"``, as GRIT uses). ``None`` (default): the cells' unit vectors in
            the cell–text space (neighbours by cosine similarity).

        Returns
        -------
        numpy.ndarray
            The chosen candidate of each cell (``object`` array).

        Examples
        --------
        >>> celltx.model.ScGPT.setup_anndata(ref, labels_key="cell_type")  # doctest: +SKIP
        >>> model = celltx.model.ScGPT(ref, gene_selection="rank")  # doctest: +SKIP
        >>> model.train(task="cell_text", max_epochs=20)  # doctest: +SKIP
        >>> model.predict_zero_shot(query, candidates=["B cell", "CD14 Mono", "NK"])  # doctest: +SKIP
        >>> sc.pl.umap(query, color="zero_shot")  # doctest: +SKIP
        """
        self._require_text_head()
        if not isinstance(key_added, str) or not key_added:
            raise ValueError(f"key_added={key_added!r} must be a non-empty string.")
        if candidates is None:
            candidates = [str(c) for c in self._label_state().categorical_mapping]
        table = self._candidate_texts(candidates, ontology, overrides)
        names = table.index.tolist()
        text_vec = torch.as_tensor(
            self.get_text_embeddings(table["text"].tolist()), device=self.device
        )
        adata = self._validate_anndata(adata)
        rows = self._cells(adata, indices)  # indices checked once, the cells in their order
        smooth_neighbors = _check_smooth_neighbors(smooth_neighbors, len(rows))
        rep = None
        if smooth_use_rep is not None:
            if smooth_neighbors is None:
                raise ValueError("smooth_use_rep is for smooth_neighbors: pass both.")
            if smooth_use_rep not in adata.obsm:
                raise ValueError(
                    f"smooth_use_rep={smooth_use_rep!r} is not in adata.obsm "
                    f"({list(adata.obsm)}); compute it first (e.g. sc.pp.pca for 'X_pca')."
                )
            rep = np.asarray(adata.obsm[smooth_use_rep])[rows]
        keep_cells = smooth_neighbors is not None and rep is None

        def similarity(b):
            cell = self.module.cell_text_embedding(**b, max_seq_len=max_seq_len).float()
            return cell @ text_vec.T, cell if keep_cells else None

        sim, cells = self._run_inference(adata, rows, batch_size, similarity)
        sim = sim.numpy()
        if smooth_neighbors is not None:
            rep = cells.numpy() if rep is None else rep
            sim = _neighbour_mean(sim, rep, smooth_neighbors)
        chosen = np.asarray(names, dtype=object)[sim.argmax(1)]
        if indices is None:
            adata.obs[key_added] = pd.Categorical(chosen, categories=names)
            adata.obsm[f"{key_added}_similarity"] = sim
            adata.uns[f"{key_added}_candidates"] = {
                "name": np.asarray(names, dtype=str),
                **{c: np.asarray(table[c].astype(str)) for c in ("text", "term_id", "how")},
            }
        return chosen
