"""What the mixins of :class:`~celltx.model.ScGPT` use of the model, declared.

Each mixin (``_annotation``, ``_embedding``, ``_hub``, ``_imputation``, ``_inference``,
``_interactions``, ``_multiome``, ``_perturbation``, ``_pretrained``, ``_query``,
``_registry``, ``_save``, ``_training``, ``_zero_shot``) derives from :class:`ModelHost`,
which declares, for the type checker, what the model they are mixed into provides:
scvi-tools' :class:`~scvi.model.base.BaseModelClass` attributes and methods, the
attributes ``ScGPT.__init__`` sets, and the methods another mixin defines. At run time it
is an empty class: nothing declared here exists on it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import os
    from contextlib import AbstractContextManager

    import numpy as np
    import torch
    from anndata import AnnData
    from scvi.data import AnnDataManager

    from celltx.data import GeneMatch, GeneVocab
    from celltx.io import LoadReport
    from celltx.module import ScGPTModule
    from celltx.nn import ScGPTConfig


class ModelHost:
    """The attributes of :class:`~celltx.model.ScGPT` its mixins use."""

    # scvi-tools' BaseModelClass
    adata: AnnData
    adata_manager: AnnDataManager
    module: ScGPTModule
    is_trained_: bool
    init_params_: dict[str, Any]
    summary_stats: Any  # scvi-tools' attribute dictionary of the registry's counts
    _model_summary_string: str
    _data_splitter_cls: type
    _setup_adata_manager_store: ClassVar[dict[str, AnnDataManager]]
    # set by ScGPT.__init__ and the constructors
    vocab: GeneVocab
    min_genes: int
    min_gene_fraction: float
    n_new_tokens_: int
    checkpoint_report_: LoadReport
    gene_match_: GeneMatch | None
    reference_n_batch_: int
    _query_restore: dict[str, torch.Tensor]

    if TYPE_CHECKING:
        # --- scvi-tools' BaseModelClass ---------------------------------------------
        def __init__(self, adata: AnnData | None = None, *args: Any, **kwargs: Any) -> None: ...

        @property
        def device(self) -> torch.device: ...

        def to_device(self, device: str | int | torch.device) -> None: ...

        # (None for data never set up: the mixins ask for data _validate_anndata registered)
        def get_anndata_manager(self, adata: AnnData, required: bool = False) -> AnnDataManager: ...

        def get_var_names(self, legacy_mudata_format: bool = False) -> Any: ...

        def _get_user_attributes(self) -> list[tuple[str, Any]]: ...

        def _validate_anndata(
            self, adata: AnnData | None = None, copy_if_view: bool = True
        ) -> AnnData: ...

        def save(self, dir_path: str | os.PathLike, *args: Any, **kwargs: Any) -> None: ...

        @classmethod
        def load(cls, dir_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any: ...

        @classmethod
        def setup_anndata(cls, adata: AnnData, *args: Any, **kwargs: Any) -> None: ...

        @classmethod
        def register_manager(cls, adata_manager: AnnDataManager) -> None: ...

        @classmethod
        def _get_setup_method_args(cls, **setup_locals: Any) -> dict[str, Any]: ...

        # --- ScGPT ---------------------------------------------------------------------
        @property
        def config(self) -> ScGPTConfig: ...

        # --- InferenceMixin ------------------------------------------------------------
        def _run_inference(
            self,
            adata: AnnData | None,
            indices: Any,
            batch_size: int | None,
            fn: Callable[[dict], object],
            *,
            batch_tokens: int | str | None = None,
            max_seq_len: int | None = None,
            datamodule: Any = None,
            trim_every: int | None = None,
        ) -> Any: ...

        def _inference_batches(
            self,
            adata: AnnData | None,
            indices: Any,
            batch_size: int | None,
            *,
            batch_tokens: int | str | None = None,
            max_seq_len: int | None = None,
            datamodule: Any = None,
            trim_every: int | None = None,
        ) -> tuple[Generator[dict, None, None], np.ndarray | None]: ...

        def _cells(self, adata: Any, indices: Any) -> np.ndarray: ...

        # --- DataMixin -----------------------------------------------------------------
        def _setup_args(self, adata: AnnData) -> dict: ...

        def _modality(self, adata: Any, key: str) -> AnnData | None: ...

        def _match(self, adata: Any, vocab: GeneVocab | None = None) -> GeneMatch | None: ...

        def _gene_ids(self, adata: Any) -> np.ndarray | None: ...

        def _panel(self, adata: Any) -> AbstractContextManager[Any]: ...

        def _datamodule_panel(self, datamodule: Any) -> AbstractContextManager[Any]: ...

        def _require_head(self, name: str, missing: str, untrained: str) -> None: ...

        def _check_datamodule_model(self) -> None: ...

        @property
        def gene_column(self) -> str: ...

        # --- TrainingMixin -------------------------------------------------------------
        def _label_state(self) -> Any: ...
