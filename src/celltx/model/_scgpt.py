"""The user-facing scvi-tools model class :class:`ScGPT`."""

from __future__ import annotations

import os
import warnings
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
from celltx.train import ContrastivePlan, PretrainingPlan

from ._annotation import AnnotationMixin
from ._base import DataMixin
from ._datamodule import (
    check_datamodule,
    check_datamodule_config,
    datamodule_panel,
    datamodule_registry,
    has_validation,
)
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
from ._save import SafeSaveMixin
from ._training import (
    NeighbourSplitter,
    SafeTrainRunner,
    TokenBudgetSplitter,
    TrainingMixin,
    check_resume,
    data_parallel_defaults,
    step_checkpoints,
)
from ._validation import (
    check_anndata_setup,
    registration_undone_on_failure,
    resolve_vocab,
)
from ._zero_shot import ZeroShotMixin

#: objective parts a model can train from a datamodule (no labels, batches or conditions)
_DM_PARTS = ("gep", "mvc", "ecs")


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
        learns = self.module.tokenizer.learns_from
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

    def _check_datamodule_training(self, datamodule, task, early_stopping) -> None:
        check_datamodule(datamodule, self.gene_column)
        self._check_datamodule_model()
        if task not in (None, "generative"):
            raise ValueError(
                f"task={task!r}: training from a datamodule supports task='generative' (labels, "
                "batches and perturbations come with an AnnData: ScGPT.setup_anndata)."
            )
        if early_stopping and not has_validation(datamodule):
            raise ValueError(
                "early_stopping monitors the validation loss, but the datamodule has no "
                "validation cells: build it with train_size < 1 (e.g. 0.9), or a lamindb "
                "MappedCollectionDataModule with collection_val=...."
            )

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
        """Pretrain or fine-tune, from scratch or from loaded weights.

        Tasks: generative pretraining, cell-type annotation or batch integration.

        Runs through scvi-tools' :class:`~scvi.train.TrainRunner` and Lightning, so
        Lightning arguments pass through (``accelerator``, ``devices``, ``strategy="ddp"``,
        ``precision``, ``gradient_clip_val``, ``accumulate_grad_batches``, …). On a GPU with
        bf16 support ``precision="bf16-mixed"`` is the default. Losses per epoch land in
        ``model.history`` (``train_loss``, ``validation_loss``, ``gep_mse_*``,
        ``mvc_mse_*``).

        Parameters
        ----------
        max_epochs
            Epochs; ``None`` uses scvi-tools' heuristic from the number of cells.
        batch_size
            Cells per step (per device).
        lr
            Peak learning rate (default 1e-3, see :class:`~celltx.train.PretrainingPlan`).
        accelerator, devices
            Lightning device selection (``"cpu"``, ``"gpu"``, ``"auto"``).
        train_size, validation_size
            Split of cells into training and validation.
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``"elbo_validation"``, the
            validation loss) stops improving; ``early_stopping_patience`` etc. pass through.
        check_val_every_n_epoch
            Validation frequency (``None``: only with early stopping).
        plan_kwargs
            Arguments of :class:`~celltx.train.PretrainingPlan`.
        datasplitter_kwargs
            Arguments of scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
        task
            Loss preset: ``"generative"`` (gene- and cell-prompt generation, the default
            for a new model), ``"annotation"`` (cross-entropy of the classifier on the
            ``<cls>`` embedding of whole cells; needs ``labels_key``), ``"integration"``
            (the contrastive loss with neighbour positives, CLAIRE-style: each cell's
            nearest neighbours within its batch and its mutual nearest neighbours in other
            batches, found in the input's PCA, count as positives besides its own second
            view; needs ``batch_key``; see the model's ``contrast_*`` settings),
            ``"integration_scgpt"`` (scGPT's recipe: generation + elastic cell similarity
            ×10 + the adversarial batch discriminator when built with ``dab=True``; needs
            ``batch_key``), ``"contrastive"`` (InfoNCE between two views of each cell, each
            with its own random known / unknown split; add ``loss_weights={"gep": 1,
            "mvc": 1}`` to generate as well, as CellLM does), ``"cell_text"`` (LangCell's cell–text
            alignment: each labelled cell against its label's Cell Ontology text; needs
            ``labels_key`` and ``celltx[text]``; see :meth:`predict_zero_shot`). ``None``
            keeps the objective of the previous call.
        loss_weights
            Override single weights of the preset: ``gep``, ``mvc``, ``cls``, ``ecs``,
            ``dab``, ``contrast``, ``text``, and ``ecs_threshold`` (default 0.8).
        class_weight
            Classification and cell–text alignment: ``"balanced"`` weighs each class by ``n_cells /
            (n_classes × n_class_cells)`` over the labelled training cells, or a
            ``{label: weight}`` dict; ``None``: equal weights.
        label_smoothing
            Classification only: label smoothing of the cross-entropy.
        freeze_layers
            Keep the gene / value embeddings and the first ``freeze_layers`` transformer
            layers fixed during this call (``-1``: all of them, train only the heads).
        chunk_size
            With the contrastive part: CellLM's divide-and-conquer training
            (:class:`~celltx.train.ContrastivePlan`). Each ``batch_size`` minibatch is the
            contrastive batch (every pair of its cells is compared), encoded ``chunk_size``
            cells at a time, so memory follows ``chunk_size`` and the contrastive batch can be
            thousands of cells. ``None``: one pass per minibatch.
        gradient_checkpointing
            Recompute each transformer layer's activations in the backward pass instead of
            keeping them (for long sequences or large batches): less memory, about a third
            more compute; gradients are unchanged. For this call only.
        compile
            Compile the transformer layers with :func:`torch.compile` (``dynamic=True``)
            before training; they stay compiled for later calls and inference. Compiling
            takes tens of seconds; it pays off on GPUs and long runs. Dropout masks then come
            from the compiler's random numbers, so a run is not bit-identical to eager mode.
        checkpoint_every
            Write a checkpoint every this many optimizer steps into ``checkpoint_dir``
            (default ``<scvi.settings.logging_dir>/checkpoints``): Lightning's
            ``step=N.ckpt`` (weights, optimizer and scheduler state, loop position) plus a
            celltx save of the model at that step (``step=N/``, loadable with :meth:`load`).
            The latest is kept. Resume an interrupted run with the same arguments plus
            ``ckpt_path="<checkpoint_dir>/step=N.ckpt"`` (read with
            :func:`celltx.io.read_checkpoint`, then by Lightning with
            ``weights_only=True``; nothing is unpickled, a file holding other objects is
            refused).
        checkpoint_dir
            Directory of the checkpoints of ``checkpoint_every``.
        datamodule
            Train from scvi-tools' :class:`~scvi.dataloaders.TileDBDataModule` over a SOMA
            experiment (``pip install 'celltx[soma]'``) or its
            :class:`~scvi.dataloaders.MappedCollectionDataModule` over a lamindb collection
            instead of the AnnData: its batches, shuffling and train / validation split (SOMA:
            its ``train_size``; lamindb: its ``collection_val``) are used, so ``batch_size``,
            ``train_size``, ``validation_size`` and ``datasplitter_kwargs`` do not apply. Its
            genes are matched to the vocabulary by name (SOMA: ``var`` column
            :attr:`gene_column`; lamindb: the collection's joined ``var_names``). Generative
            objectives only (``gep``, ``mvc``, ``ecs``) on RNA models without batch-aware
            parts.
        batch_tokens
            Token-budget batches for training: the cells are grouped by sequence length into
            batches of at most ``batch_tokens`` padded tokens (``batch_size`` caps the cells
            of a batch), regrouped at random every epoch (:class:`TokenBudgetSplitter`).
            Less padding, so more cells per second on cells of mixed length; the number of
            cells per step varies. Not with DDP or a datamodule. ``None``: batches of
            ``batch_size`` cells.
        **trainer_kwargs
            Passed to Lightning's trainer through :class:`~scvi.train.Trainer`
            (``ckpt_path`` resumes from a checkpoint).

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
        if datamodule is None and self.adata is None:
            raise ValueError(
                "This model was built from a datamodule and has no AnnData: pass "
                "model.train(datamodule=..., max_epochs=...)."
            )
        if datamodule is not None:
            self._check_datamodule_training(datamodule, task, early_stopping)
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1
        ):
            raise ValueError(
                f"max_epochs={max_epochs!r}: training needs at least one epoch (or None for "
                "scvi-tools' default from the number of cells)."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        if trainer_kwargs.get("ckpt_path") is not None:
            check_resume(trainer_kwargs["ckpt_path"])  # nothing unpickled, clear errors
        if task == "cell_text" or (loss_weights or {}).get("text", 0) > 0:
            if not len(self.module.label_text):
                self.set_label_texts()  # each label's Cell Ontology text, then the head
        self._set_objective(task, loss_weights, class_weight, label_smoothing)
        if datamodule is not None:
            other = [p for p, w in self.module.objective.items() if w > 0 and p not in _DM_PARTS]
            if other:
                raise ValueError(
                    f"Training from a datamodule supports the generative parts {list(_DM_PARTS)}; "
                    f"this objective also has {other}. Pass task='generative'."
                )
        plan_kwargs = dict(plan_kwargs or {})
        plan_cls = self._training_plan_cls
        if chunk_size is not None:
            if self.module.weight("contrast") <= 0:
                raise ValueError(
                    "chunk_size is for divide-and-conquer contrastive training: pass "
                    "task='contrastive' (or loss_weights={'contrast': 1.0})."
                )
            plan_cls = ContrastivePlan
            plan_kwargs["chunk_size"] = int(chunk_size)
            if "gradient_clip_val" in trainer_kwargs:  # manual optimisation clips in the plan
                plan_kwargs["gradient_clip_val"] = trainer_kwargs.pop("gradient_clip_val")
        if lr is not None:
            plan_kwargs["lr"] = lr
        if (
            "precision" not in trainer_kwargs
            and accelerator in ("auto", "gpu", "cuda")
            and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported()
        ):
            trainer_kwargs["precision"] = "bf16-mixed"
        data_parallel_defaults(trainer_kwargs)
        splitter_cls = None
        if batch_tokens is not None:
            if (
                isinstance(batch_tokens, bool)
                or int(batch_tokens) != batch_tokens
                or batch_tokens < 2
            ):
                raise ValueError(f"batch_tokens={batch_tokens!r} must be an integer >= 2.")
            if datamodule is not None or "ddp" in str(trainer_kwargs.get("strategy", "")):
                raise ValueError(
                    "batch_tokens is for training on an AnnData in one process; with DDP or a "
                    "datamodule, use batch_size."
                )
            if self.module.multimodal or "rna" not in self.module.modalities:
                raise ValueError("batch_tokens is for RNA models; use batch_size with ATAC data.")
            import scvi

            datasplitter_kwargs = {
                **(datasplitter_kwargs or {}),
                "lengths": self._sequence_lengths(self.adata),
                "batch_tokens": int(batch_tokens),
                "seed": scvi.settings.seed or 0,
            }
            splitter_cls = TokenBudgetSplitter
        mode = self._neighbour_positives() if datamodule is None else None
        if mode is not None:  # neighbour positives: batches that pair each anchor with one
            if splitter_cls is not None or "ddp" in str(trainer_kwargs.get("strategy", "")):
                raise ValueError(
                    f"Neighbour positives (contrast_positives={mode!r}) pair cells within a "
                    "batch on one process: leave out batch_tokens and DDP, or build the model "
                    "with contrast_positives='self'."
                )
            import scvi

            state: dict = {}
            datasplitter_kwargs = {
                **(datasplitter_kwargs or {}),
                "pairs_fn": self._pairs_fn(mode),
                "seed": scvi.settings.seed or 0,
                "state": state,
            }
            splitter_cls = NeighbourSplitter
            if self.module.config.contrast_refresh:
                kw = dict(trainer_kwargs)
                kw["callbacks"] = [
                    *(kw.get("callbacks") or []),
                    self._refresh_callback(state, mode),
                ]
                trainer_kwargs = kw
        if checkpoint_every is not None:
            trainer_kwargs = step_checkpoints(trainer_kwargs, checkpoint_every, checkpoint_dir)
        elif checkpoint_dir is not None:
            raise ValueError("checkpoint_dir needs checkpoint_every=<steps>.")
        if compile and not getattr(self, "_encoder_compiled", False):
            self.module.compile_encoder()
            self._encoder_compiled = True
        if datamodule is not None:
            if not has_validation(datamodule):
                check_val_every_n_epoch = None  # the datamodule has no validation cells
        elif not self._n_validation(train_size, validation_size, batch_size, datasplitter_kwargs):
            # no validation cells (train_size=1.0, or very few cells): train without a
            # validation loop rather than fail inside Lightning
            if early_stopping and "validation" in str(
                trainer_kwargs.get("early_stopping_monitor", "validation")
            ):
                raise ValueError(
                    f"early_stopping monitors the validation loss, but train_size={train_size} "
                    f"leaves no validation cells among {self.adata.n_obs}. Lower train_size "
                    "(e.g. 0.9) or pass early_stopping=False."
                )
            check_val_every_n_epoch = None
        if check_val_every_n_epoch is not None:
            trainer_kwargs["check_val_every_n_epoch"] = check_val_every_n_epoch
        if self.is_trained_ and not isinstance(self.history_, dict):
            # loaded weights (load_pretrained) have no history: let scvi start a fresh one
            self.is_trained_ = False
        if self.module.weight("pert") > 0:
            self._store_controls()
        self.module.set_gradient_checkpointing(gradient_checkpointing)
        frozen = self.module.freeze(freeze_layers)
        if not any(p.requires_grad for p in self.module.parameters()):
            for p in frozen:
                p.requires_grad_(True)
            raise ValueError(
                "Nothing to train: every parameter is frozen (a query model whose reference has "
                "no batch-specific parts embeds the query as it is; or freeze_layers=-1 on a "
                "model without heads to train). Call get_latent_representation() directly."
            )
        # scvi-tools leaves the module in eval mode after training or inference, and Lightning
        # keeps submodules' modes: without this, a second train() call would run without
        # dropout and with batch norms on running statistics
        self.module.train()
        self._training_plan_cls = plan_cls
        if splitter_cls is not None:
            self._data_splitter_cls = splitter_cls
        try:
            panel = (
                self._panel(self.adata)
                if datamodule is None
                else self._datamodule_panel(datamodule)
            )
            with panel:
                out = super().train(
                    max_epochs=max_epochs,
                    accelerator=accelerator,
                    devices=devices,
                    train_size=train_size,
                    validation_size=validation_size,
                    batch_size=batch_size,
                    early_stopping=early_stopping,
                    plan_kwargs=plan_kwargs,
                    datasplitter_kwargs=datasplitter_kwargs,
                    datamodule=datamodule,
                    **trainer_kwargs,
                )
        finally:
            self.module.set_gradient_checkpointing(False)
            self.__dict__.pop("_training_plan_cls", None)  # back to the class's plan
            self.__dict__.pop("_data_splitter_cls", None)
            for p in frozen:
                p.requires_grad_(True)
            self._restore_reference_batches()  # a query model keeps its reference batches
        m = self.module
        if m.weight("contrast") > 0:
            # the centred contrastive loss ignores a constant offset of every cell's <cls>
            # output (cosine ~1 between all cells): store it, so that embeddings are centred
            m.cell_offset.zero_()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                emb = self.get_latent_representation(indices=self.train_indices)
            m.cell_offset.copy_(torch.as_tensor(emb.mean(0), device=m.cell_offset.device))
        if m.weight("cls") > 0:
            m.cls_trained.fill_(True)
        if m.weight("pert") > 0:
            m.pert_trained.fill_(True)
        if m.weight("text") > 0:
            m.text_trained.fill_(True)
        return out
