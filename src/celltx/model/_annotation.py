"""Cell-type annotation with the classifier head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._docs import doc_params
from ._host import ModelHost


class AnnotationMixin(ModelHost):
    """Cell-type annotation with the classifier head."""

    @doc_params
    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type predictions of the classifier head (after ``train(task="annotation")``).

        The classifier knows the labels registered at setup: every cell, including one of
        a type absent from training, gets one of them (a closed-set classifier). Use
        ``soft=True`` and a threshold on the highest probability to flag uncertain cells.
        Cells with an unlabelled (NaN) or new label in ``adata`` are predicted like others.

        Parameters
        ----------
        %(adata)s
        %(indices)s
        soft
            Return class probabilities instead of labels.
        %(batch_size)s
        %(max_seq_len)s

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Labels (``object`` array), or a cells × labels DataFrame of probabilities
            indexed by ``obs_names`` with the label names as columns.

        Examples
        --------
        >>> adata.obs["predicted"] = model.predict()  # doctest: +SKIP
        >>> proba = model.predict(soft=True)  # doctest: +SKIP
        """
        self._require_head(
            "cls",
            (
                "This model has no classifier: set up the AnnData with labels_key, build or load "
                "the model, and train(task='annotation')."
            ),
            (
                "The classifier head of this model was never trained (it is randomly initialised: "
                "a new model, generative-only training, or a checkpoint without a classifier for "
                "these labels). Train it first: model.train(task='annotation', max_epochs=...)."
            ),
        )
        adata = self._validate_anndata(adata)
        cats = np.asarray(self._label_state().categorical_mapping)
        rows = self._cells(adata, indices)
        proba = self._run_inference(
            adata, rows, batch_size, lambda b: self.module.classify(**b, max_seq_len=max_seq_len)
        ).numpy()
        if soft:
            return pd.DataFrame(
                proba, index=adata.obs_names[rows], columns=pd.Index(cats.astype(str), name="label")
            )
        return cats[proba.argmax(1)].astype(object)

    # --- perturbation ------------------------------------------------------------------
