"""Mapping query data with new batches onto a trained model (scArches-style)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, cast

from ._checks import registration_undone_on_failure, resolve_device
from ._docs import doc_params
from ._host import ModelHost

if TYPE_CHECKING:
    from anndata import AnnData

    from ._scgpt import ScGPT

logger = logging.getLogger(__name__)


class QueryMixin(ModelHost):
    """:meth:`load_query_data`: new batches on a trained model, as scvi-tools' ``ArchesMixin``."""

    @classmethod
    @doc_params
    def load_query_data(
        cls,
        adata: AnnData,
        reference: ScGPT | str | os.PathLike,
        *,
        unfrozen: bool = False,
        prefix: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> ScGPT:
        """A model for query data whose batches the reference model never saw (scArches).

        The query is set up with the reference's registration, its new batch categories
        appended (``extend_categories``, as scvi-tools does); the model gets the reference's
        vocabulary, settings and weights. Parts with one entry per batch grow: a new
        domain-specific batch norm per new batch (``dsbn``; its scale and shift start at the
        reference batches' mean, its statistics are learned from the query) and new rows of
        the batch embedding (``batch_token``). Everything else is frozen, so that
        ``model.train(max_epochs=...)`` on the query fits only the new batches' parts, and
        the reference batches' entries are put back after every training call: reference
        cells embed exactly as before. A model without batch parts embeds the query as it
        is (no training needed). Genes the model never saw are ignored, as for any query.

        Parameters
        ----------
        adata
            Query AnnData with the reference's ``batch_key`` column (new categories
            allowed; labels may be missing).
        reference
            A trained :class:`ScGPT`, or a directory saved with :meth:`save`.
        unfrozen
            Train every parameter on the query instead of only the new batches' parts.
        prefix
            File prefix of a saved ``reference`` directory.
        accelerator, device
            Where to put the model.

        Returns
        -------
        ScGPT
            The query model; train it briefly (``model.train(max_epochs=10)``), then
            :meth:`get_latent_representation`.

        Examples
        --------
        >>> query_model = celltx.model.ScGPT.load_query_data(query, model)  # doctest: +SKIP
        >>> query_model.train(max_epochs=10)  # doctest: +SKIP
        >>> query.obsm["X_scgpt"] = query_model.get_latent_representation()  # doctest: +SKIP
        """
        if isinstance(reference, str | os.PathLike):
            reference = cls._reference_from_dir(reference, prefix)
        if not isinstance(reference, cls):
            raise ValueError(
                f"reference must be a trained {cls.__name__} or a directory saved with "
                f"model.save(), not {type(reference).__name__}."
            )
        if not reference.is_trained_:
            raise ValueError(
                "The reference model was never trained (its weights are random): a query mapped "
                "onto it gets random embeddings. Train it first (reference.train(...)), or pass "
                "a trained or loaded model (ScGPT.load, ScGPT.load_pretrained)."
            )
        registry = reference.registry_
        method = registry.get("setup_method_name", "setup_anndata")
        setup = dict(registry["setup_args"])
        if setup.get("batch_key") and setup["batch_key"] not in adata.obs.columns:
            raise ValueError(
                f"The query has no obs column {setup['batch_key']!r}, the reference's batch_key; "
                "add it (each query batch a category of its own, e.g. adata.obs[key] = 'query')."
            )
        # a query refused anywhere below leaves the user's AnnData as it was (the setup's own
        # guard only covers the registration, which succeeds before e.g. the gene check)
        with registration_undone_on_failure(adata):
            getattr(cls, method)(adata, source_registry=registry, extend_categories=True, **setup)
            init = reference.init_params_
            model = cls(
                adata,
                **init["non_kwargs"],
                **{k: v for g in init["kwargs"].values() for k, v in g.items()},
            )
            target = resolve_device(accelerator, device)
        # the reference's weights, parts with one entry per batch grown for the new batches
        model.module.load_grown_state(reference.module)
        # the objective's keys are part names (weights), none of set_objective's settings
        model.module.set_objective(**reference.module.objective)  # type: ignore[arg-type]
        n_ref = reference.summary_stats.n_batch if setup.get("batch_key") else 0
        model._query_restore = reference.module.batch_state()
        trainable = _freeze_for_query(model.module, unfrozen)
        model.is_trained_ = True
        model.reference_n_batch_ = int(n_ref)
        new = model.summary_stats.n_batch - n_ref if setup.get("batch_key") else 0
        model._model_summary_string += (
            f"\nQuery model: {new} new batch(es) on a reference with {n_ref}; "
            + (
                f"{trainable} trainable parameters"
                if trainable
                else "no part to train (embed as is)"
            )
        )
        if not trainable:
            logger.info(
                "The reference has no batch-specific parts: the query is embedded as it is."
            )
        model.to_device(target)
        return cast("ScGPT", model)

    @classmethod
    def _reference_from_dir(cls, path, prefix):
        try:
            return cls.load(path, prefix=prefix, accelerator="cpu")
        except ValueError as e:
            if "save_anndata=True" in str(e):
                raise ValueError(
                    f"{path} holds no reference data; load_query_data(query, reference) needs the "
                    "trained model (pass the model object) or a directory saved with "
                    "model.save(dir, save_anndata=True)."
                ) from e
            raise

    def _restore_reference_batches(self) -> None:
        """Put the reference batches' entries of batch-specific parts back (after training)."""
        restore = getattr(self, "_query_restore", None)
        if not restore:
            return
        self.module.restore_batch_state(restore)


def _freeze_for_query(module, unfrozen: bool) -> int:
    """Freeze all but the batch-specific parts (or nothing); returns the trainable count."""
    batch = {id(p) for p in module.batch_parameters()}
    n = 0
    for p in module.parameters():
        train = unfrozen or id(p) in batch
        p.requires_grad_(train)
        n += p.numel() if train else 0
    return n
