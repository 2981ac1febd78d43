"""The steps of :meth:`ScGPT.train`: task and objective, plan, data splitter, validation, runner."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi import settings as scvi_settings
from scvi.dataloaders import DataSplitter
from scvi.train import Trainer, TrainRunner

from celltx.data import (
    NeighbourBatchSampler,
    ShuffledTokenBudgetSampler,
    TokenBudgetSampler,
    atac_lsi,
    first_item,
    input_pca,
    multiome_pairs,
    neighbour_pairs,
    partner_collate,
    token_budget_batches,
)
from celltx.io import read_checkpoint
from celltx.module import PARTS
from celltx.train import ContrastivePlan, EveryNEpochs, StepCheckpoint

from ._datamodule import check_datamodule, has_validation
from ._host import ModelHost
from ._tasks import get_task, provide

logger = logging.getLogger(__name__)

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


def bf16_available() -> bool:
    """Whether a CUDA GPU with bf16 support is present (the default precision there)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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


def default_max_epochs(n_obs: int, cap: int = 400, decay_at: int = 20_000) -> int:
    """scvi-tools' default number of epochs for ``n_obs`` cells (``max_epochs=None``).

    ``cap`` epochs up to ``decay_at`` cells, then ``decay_at / n_obs * cap`` (at least 1) —
    the rule of scvi-tools' ``UnsupervisedTrainingMixin.train``, written here because
    scvi-tools keeps its helper private.
    """
    return max(min(round(decay_at / n_obs * cap), cap), 1)


def train_budget(
    n_obs: int,
    epochs: int,
    ref_cells: int | None = 1_000,
    exponent: float = 0.5,
    min_epochs: int = 1,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
) -> int:
    """Epochs for ``n_obs`` cells under a budget of cell passes that grows sub-linearly.

    ``epochs`` as given up to ``ref_cells`` cells; above, fewer epochs, so that the cells
    seen in training (``n_obs * epochs``, the cost) grow as ``n_obs ** (1 - exponent)``
    rather than with ``n_obs``:

    ``max_epochs = max(min_epochs, round(epochs * min(1, ref_cells / n_obs) ** exponent))``

    A fixed epoch count makes a recipe's time grow with the data (the imputation recipe's 80
    epochs took over 40 minutes on 2,900 cells); measured, its quality saturates after a
    number of optimisation steps that grows more slowly than the data (docs: "Training
    budgets"). ``exponent=1`` is scvi-tools' rule for ``max_epochs=None``
    (:func:`default_max_epochs`: a constant number of cell passes above its 20,000 cells);
    ``exponent=0.5`` (the default) lets larger data train longer, by the square root of its
    size. Below ``ref_cells`` epochs are never raised: small data (tests, smoke runs) trains
    exactly ``epochs``. ``ref_cells=None`` switches the budget off (``epochs`` as given).

    **Steps form** (``steps`` and ``batch_size``; the multiome recipe's,
    :func:`celltx.bench.multiome_recipe_epochs`): the same rule counted in optimiser steps
    instead of cells, with ``exponent=1``: the size is the steps of an epoch,
    ``ceil(n_obs / batch_size)``, and the reference is ``steps / epochs`` of them, so that
    above it every size trains about ``steps`` steps, below it ``epochs`` epochs. Rounded
    up, so that the budget is reached:

    ``max_epochs = max(min_epochs, min(epochs, ceil(steps / ceil(n_obs / batch_size))))``

    ``ref_cells`` and ``exponent`` do not apply to it.

    Parameters
    ----------
    n_obs
        Number of training cells.
    epochs
        Epochs at ``ref_cells`` cells and below (a recipe's ``epochs``; the steps form's
        most epochs).
    ref_cells
        Cells up to which ``epochs`` apply unchanged; ``None``: no budget.
    exponent
        In ``[0, 1]``: 0 keeps ``epochs`` at any size (linear cost), 1 keeps the number of
        cell passes constant above ``ref_cells``.
    min_epochs
        Never fewer epochs than this.
    steps
        A budget of optimiser steps instead of cell passes (with ``batch_size``).
    batch_size
        Cells per optimiser step (the steps form's).

    Returns
    -------
    int
        The number of epochs (``max_epochs`` of :meth:`~celltx.model.ScGPT.train`).

    Examples
    --------
    >>> from celltx.model import train_budget
    >>> train_budget(700, 20), train_budget(4_000, 20), train_budget(100_000, 20)
    (20, 10, 2)
    >>> train_budget(540, 50, steps=300, batch_size=64)  # 9 steps an epoch
    34
    """
    for name, value in (("n_obs", n_obs), ("epochs", epochs), ("min_epochs", min_epochs)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive whole number.")
    if (steps is None) != (batch_size is None):
        raise ValueError(
            f"steps={steps!r}, batch_size={batch_size!r}: the steps form needs both (a budget "
            "of optimiser steps of batch_size cells), the cell-pass form neither."
        )
    if steps is not None:
        for key, count in (("steps", steps), ("batch_size", batch_size)):
            if isinstance(count, bool) or count is None or int(count) != count or count < 1:
                raise ValueError(f"{key}={count!r} must be a positive whole number.")
    elif ref_cells is not None and (isinstance(ref_cells, bool) or ref_cells < 1):
        raise ValueError(f"ref_cells={ref_cells!r} must be a positive number of cells or None.")
    if not 0 <= exponent <= 1:
        raise ValueError(
            f"exponent={exponent!r} must be in [0, 1] (0: fixed epochs, 1: fixed cell passes)."
        )
    if steps is not None and batch_size is not None:
        # the size counted in steps; exponent 1, exact (a fraction), rounded up
        size = -(-int(n_obs) // int(batch_size))
        ref: Fraction | int | None = Fraction(int(steps), int(epochs))
    else:
        size, ref = int(n_obs), ref_cells
    if ref is None or size <= ref:
        return int(epochs)
    if isinstance(ref, Fraction):
        return max(int(min_epochs), math.ceil(epochs * ref / size))
    return max(int(min_epochs), round(epochs * (ref / size) ** exponent))


def uses_ddp(strategy) -> bool:
    """Whether a Lightning ``strategy`` (a name or an object) is data-parallel (DDP)."""
    from lightning.pytorch.strategies import DDPStrategy

    if isinstance(strategy, str):
        return "ddp" in strategy
    return isinstance(strategy, DDPStrategy)


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


class TrainingMixin(ModelHost):
    """The steps of :meth:`ScGPT.train`: arguments, task, plan, splitter, validation, run."""

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

    def _check_train(self, datamodule, task, max_epochs, batch_size, early_stopping, kw) -> None:
        if datamodule is None and self.adata is None:
            raise ValueError(
                "This model was built from a datamodule and has no AnnData: pass "
                "model.train(datamodule=..., max_epochs=...)."
            )
        if datamodule is not None:
            check_datamodule(datamodule, self.gene_column)
            self._check_datamodule_model()
            picked = get_task(task)  # None for task=None
            if picked is not None and not picked.datamodule:
                raise ValueError(
                    f"task={task!r}: training from a datamodule supports task='generative' "
                    "(labels, batches and perturbations come with an AnnData: "
                    "ScGPT.setup_anndata)."
                )
            if early_stopping and not has_validation(datamodule):
                raise ValueError(
                    "early_stopping monitors the validation loss, but the datamodule has no "
                    "validation cells: build it with train_size < 1 (e.g. 0.9), or a lamindb "
                    "MappedCollectionDataModule with collection_val=...."
                )
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1
        ):
            raise ValueError(
                f"max_epochs={max_epochs!r}: training needs at least one epoch (or None for "
                "scvi-tools' default from the number of cells)."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        if kw.get("ckpt_path") is not None:
            check_resume(kw["ckpt_path"])  # nothing unpickled, clear errors

    def _set_task(self, task, loss_weights, class_weight, label_smoothing, datamodule):
        """Resolve ``task`` and set the module's objective; returns the task (``None``: kept).

        The task's weights (``None``: the current objective), overridden by ``loss_weights``;
        what its parts need from the model (:data:`BEFORE`), then the objective itself.
        """
        m = self.module
        spec = get_task(task)
        setup = self._setup_args(self.adata)
        if spec is None:
            weights = dict(m.objective)
        else:
            spec.check(self, setup)
            weights = spec.weights_for(m)
        extra = dict(loss_weights or {})
        threshold = extra.pop("ecs_threshold", m.ecs_threshold)
        unknown = set(extra) - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown loss weights {sorted(unknown)}; use {', '.join(PARTS)}.")
        weights.update(extra)
        provide(self, weights, self.adata)
        label_parts = weights.get("cls", 0) > 0 or weights.get("text", 0) > 0
        if class_weight is not None and not label_parts:
            raise ValueError(
                "class_weight applies to the label-aware parts: classification (cls > 0) and "
                "cell–text alignment (text > 0)."
            )
        cw = self._class_weights(class_weight) if label_parts else None
        if label_smoothing and not weights.get("cls", 0) > 0:
            raise ValueError(
                f"label_smoothing={label_smoothing}: label smoothing and class weights apply to "
                "classification (cls > 0); class weights also to cell–text alignment (text > 0)."
            )
        m.set_objective(
            **weights, ecs_threshold=threshold, label_smoothing=label_smoothing, class_weights=cw
        )
        if datamodule is not None:
            other = [p for p in m.objective if not m.parts[p].from_datamodule]
            if other:
                parts = [n for n, p in PARTS.items() if p.from_datamodule]
                raise ValueError(
                    f"Training from a datamodule supports the generative parts {parts}; "
                    f"this objective also has {other}. Pass task='generative'."
                )
        if spec is not None or not hasattr(self, "_contrast_positives"):
            own = m.config.contrast_positives
            self._contrast_positives = (
                own
                if own is not None
                else (spec.contrast_positives if spec is not None else "self")
            )
        if "mnn" in self._contrast_positives and not setup.get("batch_key"):
            raise ValueError(
                f"contrast_positives={self._contrast_positives!r} pairs cells across batches: "
                "ScGPT.setup_anndata(adata, batch_key='<obs column>'), or use "
                "contrast_positives='knn'."
            )
        return spec

    def _plan(self, spec, chunk_size, lr, plan_kwargs, trainer_kwargs):
        """The plan class and its arguments: the task's, or divide-and-conquer with ``chunk_size``."""
        plan_kwargs = {**dict(trainer_kwargs.pop("plan_config", None) or {}), **(plan_kwargs or {})}
        plan_cls = self._training_plan_cls if spec is None or spec.plan is None else spec.plan
        if chunk_size is not None:
            if not any(self.module.parts[p].chunked for p in self.module.objective):
                chunked = ", ".join(n for n, p in self.module.parts.items() if p.chunked)
                raise ValueError(
                    "chunk_size is for divide-and-conquer contrastive training, which needs a "
                    f"chunked part ({chunked}) in the objective: pass task='contrastive' (or "
                    "loss_weights={'contrast': 1.0}), or task='multiome' for RNA + ATAC."
                )
            plan_cls = ContrastivePlan
            plan_kwargs["chunk_size"] = int(chunk_size)
            if "gradient_clip_val" in trainer_kwargs:  # manual optimisation clips in the plan
                plan_kwargs["gradient_clip_val"] = trainer_kwargs.pop("gradient_clip_val")
        if lr is not None:
            plan_kwargs["lr"] = lr
        return plan_cls, plan_kwargs

    def _splitter(self, spec, batch_tokens, datamodule, kwargs, trainer_kwargs):
        """The data splitter class and its arguments (task's, token budget, neighbour positives)."""
        import scvi

        ddp = "ddp" in str(trainer_kwargs.get("strategy", ""))
        cls = self._data_splitter_cls if spec is None or spec.splitter is None else spec.splitter
        kwargs = dict(kwargs or {})
        if batch_tokens is not None:
            if (
                isinstance(batch_tokens, bool)
                or int(batch_tokens) != batch_tokens
                or batch_tokens < 2
            ):
                raise ValueError(f"batch_tokens={batch_tokens!r} must be an integer >= 2.")
            if datamodule is not None or ddp:
                raise ValueError(
                    "batch_tokens is for training on an AnnData in one process; with DDP or a "
                    "datamodule, use batch_size."
                )
            if self.module.multimodal or "rna" not in self.module.modalities:
                raise ValueError("batch_tokens is for RNA models; use batch_size with ATAC data.")
            kwargs["lengths"] = self._sequence_lengths(self.adata)
            kwargs.update(batch_tokens=int(batch_tokens), seed=scvi.settings.seed or 0)
            cls = TokenBudgetSplitter
        mode = self._neighbour_positives() if datamodule is None else None
        if mode is not None:  # neighbour positives: batches that pair each anchor with one
            if batch_tokens is not None or ddp:
                raise ValueError(
                    f"Neighbour positives (contrast_positives={mode!r}) pair cells within a "
                    "batch on one process: leave out batch_tokens and DDP, or build the model "
                    "with contrast_positives='self'."
                )
            state: dict = {}
            kwargs.update(pairs_fn=self._pairs_fn(mode), seed=scvi.settings.seed or 0, state=state)
            cls = NeighbourSplitter
            if self.module.config.contrast_refresh:
                callbacks = [*(trainer_kwargs.get("callbacks") or [])]
                trainer_kwargs["callbacks"] = [*callbacks, self._refresh_callback(state, mode)]
        return cls, kwargs

    def _validation(
        self, datamodule, train_size, validation_size, batch_size, ds_kwargs, early_stopping,
        every, trainer_kwargs,
    ) -> None:  # fmt: skip
        """Set ``check_val_every_n_epoch``: left out when there are no validation cells."""
        if datamodule is not None:
            every = every if has_validation(datamodule) else None
        elif not self._n_validation(train_size, validation_size, batch_size, ds_kwargs):
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
            every = None
        if every is not None:
            trainer_kwargs["check_val_every_n_epoch"] = every

    def _freeze(self, freeze_layers: int, gradient_checkpointing: bool) -> list:
        """Freeze layers for this call (raises when nothing is left to train)."""
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
        return frozen

    def _max_epochs(self, max_epochs, datamodule) -> int:
        """``max_epochs``, or scvi-tools' heuristic from the number of cells."""
        if max_epochs is not None:
            return max_epochs
        n_obs = self.adata.n_obs if datamodule is None else getattr(datamodule, "n_obs", None)
        if n_obs is None:
            raise ValueError(
                "If `datamodule` does not have `n_obs` attribute, `max_epochs` must be passed in."
            )
        return default_max_epochs(n_obs)

    def _data_splitter(self, cls, kwargs, train_size, validation_size, batch_size, trainer_kwargs):
        """scvi-tools' data splitter of this training, as its own ``train`` builds it."""
        kwargs = {
            "shuffle_set_split": trainer_kwargs.pop("shuffle_set_split", True),
            "load_sparse_tensor": trainer_kwargs.pop("load_sparse_tensor", False),
            **kwargs,
        }
        return cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size or scvi_settings.batch_size,
            distributed_sampler=uses_ddp(trainer_kwargs.get("strategy", None)),
            **kwargs,
        )

    def _run(self, splitter, plan, max_epochs, accelerator, devices, early_stopping, kw):
        """Build scvi-tools' runner around ``splitter`` and ``plan``, and run it."""
        kw.setdefault("early_stopping", early_stopping)
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            **kw,
        )
        return runner()

    def _neighbour_positives(self) -> str | None:
        """``"knn"`` / ``"mnn"`` when this training pairs neighbours, else ``None``."""
        mode = getattr(self, "_contrast_positives", "self")
        contrastive = self.module.weight("contrast") > 0 or self._cross_modal()
        if not contrastive or mode == "self":
            return None
        return mode

    def _cross_modal(self) -> bool:
        return "cross_modal" in self.module.parts and self.module.weight("cross_modal") > 0

    def _pairs_fn(self, mode: str):
        """Candidate partners of the training cells: neighbours in the input's PCA.

        Within-batch kNN (``"knn"``) plus cross-batch MNN (``"mnn"``), of the cells'
        log-normalised expression (:func:`~celltx.data.input_pca`), computed once when
        the training loader is built.
        """
        k = self.module.config.contrast_k
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if self._cross_modal():
            return self._multiome_pairs_fn(mode, x)
        codes = self._registered_batches()

        def pairs(train_idx):
            idx = np.asarray(train_idx)
            emb = input_pca(x[idx], seed=self.module.config.seed)
            return neighbour_pairs(emb, k, None if codes is None else codes[idx], mode)

        return pairs

    def _multiome_pairs_fn(self, mode: str, x):
        """Candidate partners for the cross-modal part: :func:`~celltx.data.multiome_pairs`.

        RNA PCA (:func:`~celltx.data.input_pca`) of the cells with RNA and ATAC LSI
        (:func:`~celltx.data.atac_lsi`) of the cells with ATAC, computed once when the training loader
        is built; ``contrast_positives="knn"`` only (the pairs cross modalities, not batches).
        """
        if mode != "knn":
            raise ValueError(
                f"contrast_positives={mode!r}: the cross-modal loss (task='multiome') pairs "
                "neighbours across modalities, not batches; use contrast_positives='knn' "
                "(or 'self' for no neighbour positives)."
            )
        k = self.module.config.contrast_k
        seed = self.module.config.seed
        xa = self.adata_manager.get_from_registry(REGISTRY_KEYS.ATAC_X_KEY)

        def rows(m, idx):
            m = m[idx]
            return sp.csr_matrix(m) if sp.issparse(m) else np.asarray(m)

        def measured(m) -> np.ndarray:
            return np.asarray(abs(m).sum(1)).ravel() > 0

        def pairs(train_idx):
            idx = np.asarray(train_idx)
            xr, xat = rows(x, idx), rows(xa, idx)
            has_rna, has_atac = measured(xr), measured(xat)
            rna = np.zeros((len(idx), 1), np.float32)
            atac = np.zeros((len(idx), 1), np.float32)
            if has_rna.sum() > 2:
                e = input_pca(xr[has_rna], seed=seed)
                rna = np.zeros((len(idx), e.shape[1]), np.float32)
                rna[has_rna] = e
            if has_atac.sum() > 2 and measured(xat[has_atac].T).sum() > 2:  # LSI's minimum
                e = atac_lsi(xat[has_atac], seed=seed)
                atac = np.zeros((len(idx), e.shape[1]), np.float32)
                atac[has_atac] = e
            return multiome_pairs(rna, atac, has_rna, has_atac, k)

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
