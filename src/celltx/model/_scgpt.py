"""The user-facing scvi-tools model class :class:`ScGPT`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses rich.pretty unimported)
import torch
from anndata import AnnData
from lightning.pytorch import LightningDataModule
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from celltx.data import GeneVocab, gene_names
from celltx.module import ATAC_KEY, ScGPTModule
from celltx.nn import ScGPTConfig
from celltx.train import PretrainingPlan

from ._annotation import AnnotationMixin
from ._checks import (
    check_anndata_setup,
    registration_undone_on_failure,
    resolve_vocab,
)
from ._datamodule import check_datamodule_config, datamodule_panel, datamodule_registry
from ._docs import doc_params
from ._embedding import EmbeddingMixin
from ._fields import anndata_setup_fields
from ._hub import HubMixin
from ._imputation import ImputationMixin
from ._interactions import InteractionMixin
from ._multiome import MultiomeMixin
from ._perturbation import PerturbationMixin
from ._pretrained import PretrainedMixin
from ._query import QueryMixin
from ._registry import DataMixin
from ._save import SafeSaveMixin
from ._tasks import finish
from ._training import (
    SafeTrainRunner,
    TrainingMixin,
    bf16_available,
    data_parallel_defaults,
    step_checkpoints,
)
from ._zero_shot import ZeroShotMixin


class ScGPT(
    SafeSaveMixin,
    HubMixin,
    QueryMixin,
    PretrainedMixin,
    EmbeddingMixin,
    ImputationMixin,
    InteractionMixin,
    AnnotationMixin,
    ZeroShotMixin,
    PerturbationMixin,
    MultiomeMixin,
    TrainingMixin,
    DataMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """scGPT foundation model as an scvi-tools model.

    Cells become sequences of gene tokens with per-cell binned expression values; a
    transformer is pretrained with scGPT's attention-masked generative objective, and the
    ``<cls>`` output is the cell embedding. The class is assembled from task mixins (as
    scvi-tools assembles ``SCVI``): embeddings (:meth:`get_latent_representation`),
    annotation (:meth:`predict`), perturbation (:meth:`predict_perturbation`), multiome
    (:meth:`predict_rna_from_atac`), published checkpoints (:meth:`load_pretrained`) and a
    safe save format (:meth:`save`, :meth:`load`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (or MuData with :meth:`setup_mudata`).
    vocab
        Gene vocabulary (:class:`~celltx.data.GeneVocab`, ``{token: id}`` dict or path to a
        scGPT ``vocab.json``). ``None`` builds one from the data's genes (and peaks).
    config
        Every hyperparameter of the model (:class:`~celltx.nn.ScGPTConfig`: shape,
        tokenizer, objective weights, batch-aware parts, ATAC budget). Default:
        ``ScGPTConfig()``.
    min_genes
        Fewest genes of an AnnData that must be in the vocabulary.
    min_gene_fraction
        Smallest fraction of an AnnData's genes that must be in the vocabulary.
    datamodule
        Instead of ``adata``: scvi-tools' :class:`~scvi.dataloaders.TileDBDataModule` over a
        SOMA experiment (``pip install 'celltx[soma]'``) or
        :class:`~scvi.dataloaders.MappedCollectionDataModule` over a lamindb collection
        (``pip install 'celltx[lamindb]'``); the vocabulary is built from its genes. Train with
        ``model.train(datamodule=...)`` and embed with
        ``model.get_latent_representation(datamodule=...)``. Such a model has no labels,
        batches or perturbations; ``model.save(dir)`` then ``ScGPT.load(dir, adata)`` puts it
        on an AnnData.
    gene_column
        Column of the SOMA measurement's ``var`` holding gene names (:attr:`gene_column`;
        unused for lamindb collections, whose genes are their ``var_names``):
        ``"var_id"`` (default) is where ``tiledbsoma.io.from_h5ad`` writes ``var_names``;
        CELLxGENE Census keeps symbols in ``"feature_name"``.
    **settings
        Any field of :class:`~celltx.nn.ScGPTConfig` (``d_model=64``, ``n_layers=2``,
        ``max_seq_len=256``, ``dsbn=True``, …), overriding ``config``.

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> celltx.model.ScGPT.setup_anndata(adata)
    >>> model = celltx.model.ScGPT(adata, d_model=64, n_layers=2, n_heads=4, max_seq_len=256)
    >>> model.train(max_epochs=5, batch_size=32)  # doctest: +SKIP
    >>> adata.obsm["X_scgpt"] = model.get_latent_representation()  # doctest: +SKIP
    """

    _module_cls = ScGPTModule
    _training_plan_cls = PretrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = SafeTrainRunner  # reads checkpoints with weights_only=True

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
        config: ScGPTConfig | None = None,
        *,
        min_genes: int = 10,
        min_gene_fraction: float = 0.0,
        datamodule: LightningDataModule | None = None,
        gene_column: str = "var_id",
        **settings,
    ):
        if adata is None and datamodule is None:
            raise ValueError(
                "ScGPT needs an AnnData registered with ScGPT.setup_anndata(adata) (or a "
                "datamodule: ScGPT(datamodule=TileDBDataModule(...)) for SOMA, "
                "MappedCollectionDataModule(...) for lamindb) to build its gene vocabulary."
            )
        if adata is not None and datamodule is not None:
            raise ValueError(
                "Pass adata or datamodule, not both: the model's genes come from one of them."
            )
        config = ScGPTConfig.from_dict(settings) if config is None else replace(config, **settings)
        if (
            isinstance(min_genes, bool)
            or not isinstance(min_genes, int | np.integer)
            or min_genes < 0
        ):
            raise ValueError(f"min_genes={min_genes!r} must be an integer >= 0.")
        if not 0 <= min_gene_fraction < 1:
            raise ValueError(f"min_gene_fraction={min_gene_fraction!r} must be in [0, 1).")
        if datamodule is None:
            super().__init__(adata)
            setup = self._setup_args(self.adata)
            conditions = self._registered_conditions()
            rna, atac = (
                self._modality(self.adata, REGISTRY_KEYS.X_KEY),
                self._modality(self.adata, ATAC_KEY),
            )
        else:
            # scvi-tools' pattern for datamodules: no AnnData, the datamodule's registry
            check_datamodule_config(config)
            if config.gene_selection != "random":
                raise ValueError(
                    "A model built from a datamodule has no rank-value gene selection "
                    "(gene_selection='rank' / 'hvg' need gene statistics over the cells); "
                    "build it from an AnnData for those."
                )
            rna = datamodule_panel(datamodule, gene_column)  # cell-less: the genes of X
            registry = datamodule_registry(datamodule, type(self).__name__, rna.var_names)
            super().__init__(None, registry=registry)
            setup, conditions, atac = {}, None, None
        self.gene_column = gene_column
        modalities = tuple(m for m, a in (("rna", rna), ("atac", atac)) if a is not None)
        peaks = [] if atac is None else [str(p) for p in atac.var_names]
        if vocab is None:
            genes = []
            if rna is not None:
                names = gene_names(rna, setup.get("gene_symbols"))
                genes = list(pd.unique(names[names != ""].to_numpy()))
            # perturbed genes outside the measured panel get tokens of their own
            targets = self._condition_targets(conditions)
            genes += [g for g in targets if g not in set(genes)]
            # peak tokens are built from the data (peaks are dataset-specific)
            vocab = GeneVocab.from_genes(genes + peaks)
            self.n_new_tokens_ = 0
        else:
            vocab = resolve_vocab(vocab)
            n = len(vocab)
            vocab = vocab.extend(peaks)  # e.g. a checkpoint's genes: peak tokens are new
            self.n_new_tokens_ = len(vocab) - n
        self.vocab = vocab
        self.min_genes = min_genes
        self.min_gene_fraction = min_gene_fraction
        if datamodule is None:
            match = self._match(self.adata, vocab)
        else:
            match = self._match_panel(rna, vocab)
        atac_ids = None if atac is None else self._atac_ids(self.adata, vocab)
        n_labels = self.summary_stats.n_labels if setup.get("labels_key") else None
        n_batch = self.summary_stats.n_batch if setup.get("batch_key") else 0
        if (config.dsbn or config.dab or config.batch_token) and not n_batch:
            raise ValueError(
                "dsbn, dab and batch_token need batches: set up the AnnData with "
                "ScGPT.setup_anndata(adata, batch_key='<obs column>')."
            )
        self.module = self._module_cls(
            n_tokens=len(vocab),
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            gene_ids=np.zeros(0, dtype=np.int64) if match is None else match.ids,
            config=config,
            n_labels=n_labels,
            n_batch=n_batch,
            perturbation=conditions is not None,
            modalities=modalities,
            atac_ids=atac_ids,
        )
        # the tokenizer's selection statistics (rank medians, HVGs, peak IDF) over the cells
        learns = self.module.tokenizer_learns_from
        rna_stats = "rna" in learns and match is not None
        atac_stats = "atac" in learns and atac_ids is not None
        if rna_stats or atac_stats:
            get = self.adata_manager.get_from_registry
            self.module.fit_tokenizer(
                get(REGISTRY_KEYS.X_KEY) if rna_stats else None,
                get(ATAC_KEY) if atac_stats else None,
            )
        if conditions is not None:
            self.module.set_conditions(torch.as_tensor(self._condition_gene_ids(conditions)))
            self.module.pair_by_labels = bool(setup.get("labels_key"))
        self._model_summary_string = self._summary(
            config, match, rna, atac_ids, n_labels, conditions
        )
        # init parameters as scvi-tools records them, JSON-ready: the vocabulary itself (so
        # that ScGPT.load(dir, other_adata) rebuilds it exactly) and the settings as a dict
        self.init_params_ = {
            "non_kwargs": {
                "vocab": vocab.to_dict(),
                "config": None,
                "min_genes": min_genes,
                "min_gene_fraction": min_gene_fraction,
                "gene_column": gene_column,
            },
            "kwargs": {"settings": config.to_dict()},
        }

    @property
    def config(self) -> ScGPTConfig:
        """The model's hyperparameters (:class:`~celltx.nn.ScGPTConfig`)."""
        return self.module.config

    # --- registration -----------------------------------------------------------------
    @classmethod
    @doc_params
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols: str | None = None,
        perturbation_key: str | None = None,
        control_value: str = "ctrl",
        max_perturbed_genes: int = 2,
        min_cells_per_condition: int = 2,
        modality: str = "rna",
        **kwargs,
    ) -> None:
        """Register an AnnData with scvi-tools for :class:`ScGPT`.

        Values may be raw counts or log-normalized expression (tokenization bins each cell
        by rank, so both work); they must be non-negative and finite. Nothing is added to
        ``adata`` beyond scvi-tools' registration (``obs['_scvi_*']``, ``uns['_scvi_*']``).

        Parameters
        ----------
        adata
            AnnData with cells × genes.
        layer
            Layer with the expression values; ``None`` uses ``adata.X``.
        %(batch_key)s
        %(labels_key)s
        %(gene_symbols)s
        perturbation_key
            ``obs`` column with genetic perturbations, in GEARS notation (``"ctrl"``,
            ``"GENE+ctrl"``, ``"GENE1+GENE2"``) or one gene symbol per cell. For
            :meth:`predict_perturbation` after ``train(task="perturbation")``; the values
            must be log-normalized expression (as GEARS), not raw counts. ``batch_key``
            and ``labels_key`` (e.g. a cell line) then decide which control cells a
            perturbed cell is paired with.
        control_value
            The value of ``perturbation_key`` that marks control cells.
        max_perturbed_genes
            Most genes one condition may perturb.
        min_cells_per_condition
            Fewest cells a condition must have.
        modality
            ``"rna"`` (genes) or ``"atac"``: cells × peaks with fragment counts or binary
            accessibility, for an ATAC-only model (peaks are tokens whose vocabulary is
            built from the data; see :meth:`setup_mudata` for how peaks are tokenized).

        Examples
        --------
        >>> import celltx
        >>> adata = celltx.datasets.pbmc68k()
        >>> celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
        """
        check_anndata_setup(
            adata,
            layer,
            batch_key,
            labels_key,
            gene_symbols,
            perturbation_key,
            control_value,
            max_perturbed_genes,
            min_cells_per_condition,
            modality,
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = anndata_setup_fields(
            modality,
            layer,
            batch_key,
            labels_key,
            perturbation_key,
            control_value,
            max_perturbed_genes,
        )
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        with registration_undone_on_failure(adata):
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @doc_params
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 32,
        lr: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        check_val_every_n_epoch: int | None = 1,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        task: str | None = None,
        loss_weights: Mapping[str, float] | None = None,
        class_weight: str | Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
        freeze_layers: int = 0,
        chunk_size: int | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        checkpoint_every: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        datamodule: LightningDataModule | None = None,
        batch_tokens: int | None = None,
        **trainer_kwargs,
    ):
        """Pretrain or fine-tune, from scratch or from loaded weights, on a task.

        The task (:data:`~celltx.model.TASK_REGISTRY`) sets the objective's parts and says
        what it needs; then a data splitter, a plan and scvi-tools' runner train it
        (:class:`~scvi.train.TrainRunner` and Lightning, so Lightning arguments pass through:
        ``strategy="ddp"``, ``precision``, ``gradient_clip_val``, …). On a GPU with bf16
        support ``precision="bf16-mixed"`` is the default. Losses per epoch land in
        ``model.history`` (``train_loss``, ``validation_loss``, one column per part metric).

        Parameters
        ----------
        %(train)s

        Examples
        --------
        >>> celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")  # doctest: +SKIP
        >>> model = celltx.model.ScGPT.load_pretrained("scGPT_human", adata)  # doctest: +SKIP
        >>> model.train(max_epochs=10, task="annotation", lr=1e-4)  # doctest: +SKIP
        >>> adata.obs["predicted"] = model.predict()  # doctest: +SKIP

        From a SOMA experiment (``pip install 'celltx[soma]'``):

        >>> dm = TileDBDataModule(query, layer_name="data", batch_size=64,
        ...                       batch_column_names=["dataset_id"])  # doctest: +SKIP
        >>> model = celltx.model.ScGPT(datamodule=dm, d_model=64)  # doctest: +SKIP
        >>> model.train(max_epochs=1, datamodule=dm)  # doctest: +SKIP
        """
        kw = trainer_kwargs
        self._check_train(datamodule, task, max_epochs, batch_size, early_stopping, kw)
        spec = self._set_task(task, loss_weights, class_weight, label_smoothing, datamodule)
        plan_cls, plan_kwargs = self._plan(spec, chunk_size, lr, plan_kwargs, kw)
        if "precision" not in kw and accelerator in ("auto", "gpu", "cuda") and bf16_available():
            kw["precision"] = "bf16-mixed"
        data_parallel_defaults(kw)
        splitter_cls, ds_kwargs = self._splitter(
            spec, batch_tokens, datamodule, datasplitter_kwargs, kw
        )
        if checkpoint_every is not None:
            kw = step_checkpoints(kw, checkpoint_every, checkpoint_dir)
        elif checkpoint_dir is not None:
            raise ValueError("checkpoint_dir needs checkpoint_every=<steps>.")
        if compile and not getattr(self, "_encoder_compiled", False):
            self.module.compile_encoder()
            self._encoder_compiled = True
        vals = (train_size, validation_size, batch_size, ds_kwargs, early_stopping)
        self._validation(datamodule, *vals, check_val_every_n_epoch, kw)
        if self.is_trained_ and not isinstance(self.history_, dict):
            # loaded weights (load_pretrained) have no history: let scvi start a fresh one
            self.is_trained_ = False
        if spec is not None and spec.prepare is not None:
            spec.prepare(self, self.adata)
        max_epochs = self._max_epochs(max_epochs, datamodule)
        frozen = self._freeze(freeze_layers, gradient_checkpointing)
        # scvi-tools leaves the module in eval mode after training or inference, and Lightning
        # keeps submodules' modes: without this, a second train() call would run without
        # dropout and with batch norms on running statistics
        self.module.train()
        try:
            dm = datamodule
            with self._panel(self.adata) if dm is None else self._datamodule_panel(dm):
                split = (splitter_cls, ds_kwargs, train_size, validation_size, batch_size)
                splitter = dm if dm is not None else self._data_splitter(*split, kw)
                plan = plan_cls(self.module, **plan_kwargs)
                out = self._run(
                    splitter, plan, max_epochs, accelerator, devices, early_stopping, kw
                )
        finally:
            self.module.set_gradient_checkpointing(False)
            for p in frozen:
                p.requires_grad_(True)
            self._restore_reference_batches()  # a query model keeps its reference batches
        finish(self, spec)
        return out
