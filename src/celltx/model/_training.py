"""Objective selection, class weights, the validation split and the DDP defaults of :meth:`ScGPT.train`."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter
from scvi.train import Trainer, TrainRunner

from celltx.data import (
    NeighbourBatchSampler,
    ShuffledTokenBudgetSampler,
    TokenBudgetSampler,
    first_item,
    input_pca,
    neighbour_pairs,
    partner_collate,
    token_budget_batches,
)
from celltx.io import read_checkpoint
from celltx.module import PARTS, TASK_OPTIONS, TASKS
from celltx.train import EveryNEpochs, StepCheckpoint

_DDP_FIND_UNUSED = {
    "ddp": "ddp_find_unused_parameters_true",
    "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
    "ddp_notebook": "ddp_notebook_find_unused_parameters_true",
    "ddp_fork": "ddp_fork_find_unused_parameters_true",
}


def data_parallel_defaults(trainer_kwargs: dict) -> None:
    """Adapt Lightning's DDP strategy names to celltx's objectives (in place).

    An objective uses some heads and not others (annotation leaves the expression decoders
    idle), which plain DDP refuses: the named DDP strategies become their
    ``find_unused_parameters`` variants. Validation runs under ``torch.no_grad`` instead of
    inference mode, whose tensors gloo's in-place all-reduce of the logged metrics rejects.
    """
    strategy = trainer_kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in _DDP_FIND_UNUSED:
        trainer_kwargs["strategy"] = _DDP_FIND_UNUSED[strategy]
    if isinstance(trainer_kwargs.get("strategy"), str) and "ddp" in trainer_kwargs["strategy"]:
        trainer_kwargs.setdefault("inference_mode", False)


#: ckpt_path values Lightning resolves itself (to checkpoints of this run's callbacks)
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_resume(ckpt_path) -> None:
    """Read ``ckpt_path`` safely before Lightning does: clear errors, nothing unpickled.

    A file holding pickled objects other than tensors and plain values is refused (celltx's
    :func:`~celltx.io.read_checkpoint`); so are absent, empty and damaged files and files
    that are no Lightning checkpoint. Lightning's own read then runs with
    ``weights_only=True`` as well (:class:`SafeTrainer`).
    """
    if isinstance(ckpt_path, str) and ckpt_path in _LIGHTNING_CKPT_NAMES:
        return
    if not isinstance(ckpt_path, str | os.PathLike):
        raise ValueError(
            f"ckpt_path={ckpt_path!r} must be the path of a .ckpt (of checkpoint_every)."
        )
    ckpt = read_checkpoint(ckpt_path)
    missing = [k for k in ("state_dict", "loops") if k not in ckpt]
    if missing:
        raise ValueError(
            f"{ckpt_path} is not a Lightning checkpoint (no {missing}); resume from a .ckpt "
            "that training with checkpoint_every wrote. To start from a model's weights "
            "instead, load it (ScGPT.load, ScGPT.load_pretrained) and train it."
        )


class SafeTrainer(Trainer):
    """scvi-tools' :class:`~scvi.train.Trainer` that resumes with ``weights_only=True``.

    Explicit, so that neither torch's default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` makes
    Lightning unpickle a checkpoint.
    """

    def fit(self, *args, **kwargs):
        kwargs["weights_only"] = True
        return super().fit(*args, **kwargs)


class SafeTrainRunner(TrainRunner):
    """scvi-tools' :class:`~scvi.train.TrainRunner` with :class:`SafeTrainer`."""

    _trainer_cls = SafeTrainer


def step_checkpoints(trainer_kwargs: dict, every: int, directory) -> dict:
    """Trainer arguments that write a :class:`~celltx.train.StepCheckpoint` every ``every`` steps."""
    import scvi

    if isinstance(every, bool) or int(every) != every or every < 1:
        raise ValueError(f"checkpoint_every={every!r} must be a number of steps >= 1.")
    if directory is None:
        directory = os.path.join(scvi.settings.logging_dir, "checkpoints")
    kw = dict(trainer_kwargs)
    callbacks = list(kw.pop("callbacks", None) or [])
    callbacks.append(StepCheckpoint(dirpath=str(directory), every_n_train_steps=int(every)))
    kw["callbacks"] = callbacks
    kw["enable_checkpointing"] = True
    return kw


class TokenBudgetSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` with token-budget batches.

    Same split of the cells; the training loader groups them into batches of at most
    ``batch_tokens`` padded tokens, regrouped every epoch
    (:class:`~celltx.data.ShuffledTokenBudgetSampler`), and the validation loader into fixed
    ones. ``batch_size`` caps the cells of a batch. ``lengths``: every cell's token count.
    """

    def __init__(self, adata_manager, *, lengths, batch_tokens: int, seed: int = 0, **kwargs):
        super().__init__(adata_manager, **kwargs)
        self.lengths = np.asarray(lengths)
        self.batch_tokens, self.seed = int(batch_tokens), int(seed)

    def _loader(self, indices, sampler):
        skip = ("batch_size", "distributed_sampler", "shuffle", "drop_last")
        kw = {k: v for k, v in self.data_loader_kwargs.items() if k not in skip}
        return self.data_loader_cls(
            self.adata_manager,
            indices=indices,
            sampler=sampler,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            collate_fn=first_item,
            **kw,
        )

    def train_dataloader(self):
        cap = self.data_loader_kwargs.get("batch_size")
        sampler = ShuffledTokenBudgetSampler(
            self.lengths[self.train_idx], self.batch_tokens, cap, self.seed
        )
        return self._loader(self.train_idx, sampler)

    def val_dataloader(self):
        if len(self.val_idx) == 0:
            return None
        cap = self.data_loader_kwargs.get("batch_size")
        batches = token_budget_batches(self.lengths[self.val_idx], self.batch_tokens, cap)
        return self._loader(self.val_idx, TokenBudgetSampler(batches))


class NeighbourSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` whose training batches pair neighbours.

    Same split of the cells; the training loader's batches hold ``batch_size // 2`` anchor
    cells and one neighbour of each (:class:`~celltx.data.NeighbourBatchSampler`), marked
    for the contrastive loss (:data:`~celltx.data.PARTNER_KEY`). ``pairs_fn(train_idx)``
    gives each training cell's candidate partners as positions in ``train_idx``; the
    sampler is kept in :attr:`sampler` so that its pairs can be refreshed.
    """

    def __init__(self, adata_manager, *, pairs_fn, seed: int = 0, state=None, **kwargs):
        super().__init__(adata_manager, **kwargs)
        self.pairs_fn, self.seed, self.sampler = pairs_fn, int(seed), None
        if state is not None:  # where a refresh callback finds this splitter
            state["splitter"] = self

    def train_dataloader(self):
        kw = self.data_loader_kwargs
        if self.sampler is None:
            self.sampler = NeighbourBatchSampler(
                self.pairs_fn(self.train_idx), kw.get("batch_size", 128), self.seed
            )
        skip = ("batch_size", "distributed_sampler", "shuffle", "drop_last")
        return self.data_loader_cls(
            self.adata_manager,
            indices=self.train_idx,
            sampler=self.sampler,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            collate_fn=partner_collate,
            **{k: v for k, v in kw.items() if k not in skip},
        )


class TrainingMixin:
    """Objective selection, class weights and the validation split of :meth:`ScGPT.train`."""

    def _n_validation(self, train_size, validation_size, batch_size, datasplitter_kwargs) -> int:
        """Number of validation cells scvi-tools' splitter gives for these arguments."""
        kw = {
            k: v
            for k, v in (datasplitter_kwargs or {}).items()
            if k in ("shuffle_set_split", "drop_last")
        }
        splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            **kw,
        )
        splitter.setup()
        return len(splitter.val_idx)

    def _set_objective(self, task, loss_weights, class_weight, label_smoothing) -> None:
        m = self.module
        if task is None:
            weights = dict(m.objective)
        elif task in TASKS:
            weights = dict(TASKS[task])
            if m.multimodal and weights.get("gep", 0) > 0:
                weights["align"] = 1.0  # multiome: align the modalities while generating
        else:
            raise ValueError(f"task={task!r}; use one of {list(TASKS)} or None.")
        setup = self._setup_args(self.adata)
        if task == "annotation" and not setup.get("labels_key"):
            raise ValueError(
                "task='annotation' needs labels: ScGPT.setup_anndata(adata, labels_key='<obs "
                "column>'), then build or load the model."
            )
        if task == "perturbation" and not setup.get("perturbation_key"):
            raise ValueError(
                "task='perturbation' needs perturbation conditions: ScGPT.setup_anndata(adata, "
                "perturbation_key='<obs column>', control_value='ctrl'), then build the model."
            )
        if task in ("integration", "integration_scgpt"):
            if not setup.get("batch_key"):
                raise ValueError(
                    f"task={task!r} needs batches: ScGPT.setup_anndata(adata, "
                    "batch_key='<obs column>'), then build or load the model (with "
                    "task='integration_scgpt': dsbn=True, dab=True, batch_token=True for "
                    "scGPT's full recipe)."
                )
            if not m.has_head("dab"):
                weights["dab"] = 0.0
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
            counts = np.bincount(np.asarray(codes, dtype=int), minlength=self.summary_stats.n_batch)
            mapping = self.adata_manager.get_state_registry(
                REGISTRY_KEYS.BATCH_KEY
            ).categorical_mapping
            small = [str(mapping[i]) for i in np.flatnonzero(counts < 2)]
            if small:
                raise ValueError(
                    f"Batches {small} have fewer than 2 cells; batch-aware training cannot learn "
                    "them. Drop those cells or merge the batches."
                )
        extra = dict(loss_weights or {})
        threshold = extra.pop("ecs_threshold", getattr(m, "ecs_threshold", 0.8))
        unknown = set(extra) - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown loss weights {sorted(unknown)}; use {', '.join(PARTS)}.")
        weights.update(extra)
        cw = None
        if weights.get("cls", 0) > 0 or weights.get("text", 0) > 0:
            cw = self._class_weights(class_weight)
        elif class_weight is not None:
            raise ValueError(
                "class_weight applies to the label-aware parts: classification (cls > 0) and "
                "cell–text alignment (text > 0)."
            )
        if label_smoothing and not weights.get("cls", 0) > 0:
            raise ValueError(
                f"label_smoothing={label_smoothing}: label smoothing and class weights apply to "
                "classification (cls > 0); class weights also to cell–text alignment (text > 0)."
            )
        m.set_objective(
            **weights, ecs_threshold=threshold, label_smoothing=label_smoothing, class_weights=cw
        )
        if task is not None or not hasattr(self, "_contrast_positives"):
            own = m.config.contrast_positives
            task_opt = TASK_OPTIONS.get(task, {}).get("contrast_positives", "self")
            self._contrast_positives = own if own is not None else task_opt
        if "mnn" in self._contrast_positives and not setup.get("batch_key"):
            raise ValueError(
                f"contrast_positives={self._contrast_positives!r} pairs cells across batches: ScGPT.setup_anndata(adata, "
                "batch_key='<obs column>'), or use contrast_positives='knn'."
            )

    def _neighbour_positives(self) -> str | None:
        """``"knn"`` / ``"mnn"`` when this training pairs neighbours, else ``None``."""
        mode = getattr(self, "_contrast_positives", "self")
        if self.module.weight("contrast") <= 0 or mode == "self":
            return None
        return mode

    def _pairs_fn(self, mode: str):
        """Candidate partners of the training cells: neighbours in the input's PCA.

        Within-batch kNN (``"knn"``) plus cross-batch MNN (``"mnn"``), of the cells'
        log-normalised expression (:func:`~celltx.data.input_pca`), computed once when
        the training loader is built.
        """
        k = self.module.config.contrast_k
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        codes = self._registered_batches()

        def pairs(train_idx):
            idx = np.asarray(train_idx)
            emb = input_pca(x[idx], seed=self.module.config.seed)
            return neighbour_pairs(emb, k, None if codes is None else codes[idx], mode)

        return pairs

    def _registered_batches(self):
        if not self._setup_args(self.adata).get("batch_key"):
            return None
        return np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()

    def _refresh_callback(self, splitter_state: dict, mode: str) -> EveryNEpochs:
        """Recompute the neighbour pairs from the current embedding (NNCLR-style)."""
        import warnings

        k = self.module.config.contrast_k
        codes = self._registered_batches()

        def refresh():
            splitter = splitter_state.get("splitter")
            if splitter is None or splitter.sampler is None:
                return
            idx = np.asarray(splitter.train_idx)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                emb = self.get_latent_representation(indices=idx)
            emb = emb - emb.mean(0, keepdims=True)
            splitter.sampler.pairs = neighbour_pairs(
                emb, k, None if codes is None else codes[idx], mode
            )

        return EveryNEpochs(refresh, self.module.config.contrast_refresh)

    def _label_state(self):
        return self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)

    def _class_weights(self, class_weight) -> torch.Tensor | None:
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        cats = list(self._label_state().categorical_mapping)
        counts = np.bincount(codes[codes >= 0].astype(int), minlength=len(cats))
        present = int((counts > 0).sum())
        if present < 2:
            raise ValueError(
                f"Classification needs at least 2 labelled classes; the labelled cells hold {present} "
                f"({[c for c, n in zip(cats, counts, strict=True) if n]})."
            )
        if class_weight is None:
            return None
        if class_weight == "balanced":
            w = np.where(counts > 0, counts.sum() / (len(cats) * np.maximum(counts, 1)), 0.0)
        elif isinstance(class_weight, Mapping):
            unknown = set(class_weight) - set(map(str, cats))
            if unknown:
                raise ValueError(
                    f"class_weight names unknown labels {sorted(unknown)}; labels: {cats}."
                )
            w = np.array([float(class_weight.get(str(c), 1.0)) for c in cats])
        else:
            raise ValueError(f"class_weight={class_weight!r}; use None, 'balanced' or a dict.")
        return torch.as_tensor(w, dtype=torch.float32)
