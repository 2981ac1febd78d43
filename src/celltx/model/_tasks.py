"""Training tasks: named objectives, what they require, their plan and their hooks.

A :class:`Task` weights objective parts (:data:`celltx.module.PARTS`), names what it needs
from the AnnData registry (labels, batches, perturbations, two modalities), the neighbour
positives of its contrastive part, its Lightning plan and optional hooks. :meth:`ScGPT.train
<celltx.model.ScGPT.train>` resolves ``task=`` in :data:`TASK_REGISTRY` and runs it; adding an
objective is one part (:func:`celltx.module.register_part`) and one task
(:func:`register_task`), nothing in ``train``.

What a part needs from the model before training, or leaves it to compute after
(:attr:`celltx.module.Part.needs` / :attr:`~celltx.module.Part.after`), is provided here by
name (:data:`BEFORE`, :data:`AFTER`): the label texts of cell–text alignment, the control
cells of perturbation training, the mean offset of contrastive embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from celltx.module import PARTS
from celltx.nn import ScGPTConfig

#: what a task may require, and the error when the model lacks it (``{task}``: its name)
REQUIREMENTS: dict[str, str] = {
    "labels_key": (
        "task={task!r} needs labels: ScGPT.setup_anndata(adata, labels_key='<obs column>'), "
        "then build or load the model."
    ),
    "batch_key": (
        "task={task!r} needs batches: ScGPT.setup_anndata(adata, batch_key='<obs column>'), "
        "then build or load the model (with task='integration_scgpt': dsbn=True, dab=True, "
        "batch_token=True for scGPT's full recipe)."
    ),
    "perturbation_key": (
        "task={task!r} needs perturbation conditions: ScGPT.setup_anndata(adata, "
        "perturbation_key='<obs column>', control_value='ctrl'), then build the model."
    ),
    "multimodal": (
        "task={task!r} needs RNA and ATAC: set up a MuData with ScGPT.setup_mudata(mdata, ...) "
        "and build the model."
    ),
}

Hook = Callable[..., None]


@dataclass(frozen=True, eq=False)
class Task:
    """A training task of :meth:`ScGPT.train <celltx.model.ScGPT.train>`.

    Parameters
    ----------
    name
        ``train(task=name)``.
    weights
        Weight of each objective part (:data:`celltx.module.PARTS`), a number or the name of
        the :class:`~celltx.nn.ScGPTConfig` field that holds it (``"gep_weight"``).
    requires
        What the model must have: ``"labels_key"``, ``"batch_key"`` (every batch with 2 cells
        or more), ``"perturbation_key"``, ``"multimodal"`` (RNA and ATAC).
    optional
        Parts left out (weight 0) when the model cannot compute them (e.g. ``dab`` of a model
        built without ``dab=True``).
    contrast_positives
        The contrastive part's positives for this task when the config leaves them to the
        task (``contrast_positives=None``): ``"self"``, ``"knn"``, ``"mnn"``, ``"knn+mnn"``.
    plan
        Lightning plan class (``None``: the model's :class:`~celltx.train.PretrainingPlan`;
        ``train(chunk_size=...)`` picks :class:`~celltx.train.ContrastivePlan`).
    splitter
        Data splitter class (``None``: scvi-tools' :class:`~scvi.dataloaders.DataSplitter`,
        or the token-budget / neighbour splitter that ``batch_tokens`` and the contrastive
        positives call for).
    datamodule
        Whether the task trains from a datamodule (parts that read only counts).
    prepare
        ``prepare(model, adata)``: run before training, after the objective is set.
    on_train_end
        ``on_train_end(model)``: run after training.

    Examples
    --------
    >>> from celltx.model import Task
    >>> Task("annotation_smooth", {"cls": 1.0, "ecs": 0.1}, requires=("labels_key",)).name
    'annotation_smooth'
    """

    name: str
    weights: Mapping[str, float | str]
    requires: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    contrast_positives: str = "self"
    plan: type | None = None
    splitter: type | None = None
    datamodule: bool = False
    prepare: Hook | None = field(default=None, compare=False)
    on_train_end: Hook | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "requires", tuple(self.requires))
        object.__setattr__(self, "optional", tuple(self.optional))
        unknown = sorted(set(self.weights) - set(PARTS))
        if unknown:
            raise ValueError(
                f"Task {self.name!r} names unknown parts {unknown}; parts: {list(PARTS)} "
                "(add one with celltx.module.register_part)."
            )
        bad = sorted(set(self.requires) - set(REQUIREMENTS))
        if bad:
            raise ValueError(f"Unknown task requirement {bad}; use {list(REQUIREMENTS)}.")
        for part, w in self.weights.items():
            ok = w in ScGPTConfig.field_names() if isinstance(w, str) else float(w) >= 0
            if not ok:
                raise ValueError(
                    f"Task {self.name!r}: the weight of {part!r} is {w!r}; use a number >= 0 "
                    "or the name of a ScGPTConfig field."
                )
        if self.contrast_positives not in ("self", "knn", "mnn", "knn+mnn"):
            raise ValueError(
                f"contrast_positives={self.contrast_positives!r}; use 'self', 'knn', 'mnn' or "
                "'knn+mnn'."
            )

    def declared_weights(self, config: ScGPTConfig | None = None) -> dict[str, float]:
        """The weights, those named by a config field read from ``config`` (default config)."""
        config = ScGPTConfig() if config is None else config
        return {
            p: float(getattr(config, w) if isinstance(w, str) else w)
            for p, w in self.weights.items()
        }

    def weights_for(self, module) -> dict[str, float]:
        """The weights this task gives ``module`` (its config's, optional and joined parts)."""
        weights = self.declared_weights(module.config)
        for name in self.optional:
            if name in weights and PARTS[name].available(module) is not None:
                weights[name] = 0.0
        for name, part in PARTS.items():  # e.g. multiome generation aligns the modalities
            if part.joins and weights.get(part.joins, 0) > 0 and part.available(module) is None:
                weights[name] = 1.0
        return weights

    def check(self, model, setup: Mapping) -> None:
        """Raise a clear ``ValueError`` when ``model`` lacks what the task requires."""
        for need in self.requires:
            has = model.module.multimodal if need == "multimodal" else setup.get(need)
            if not has:
                raise ValueError(REQUIREMENTS[need].format(task=self.name))
        if "batch_key" in self.requires:
            small_batches(model)


def small_batches(model) -> None:
    """Raise when a registered batch has fewer than 2 cells (batch-aware training)."""
    codes = model.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
    counts = np.bincount(np.asarray(codes, dtype=int), minlength=model.summary_stats.n_batch)
    mapping = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    small = [str(mapping[i]) for i in np.flatnonzero(counts < 2)]
    if small:
        raise ValueError(
            f"Batches {small} have fewer than 2 cells; batch-aware training cannot learn "
            "them. Drop those cells or merge the batches."
        )


#: the tasks of :meth:`ScGPT.train <celltx.model.ScGPT.train>`, by name
TASK_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASK_REGISTRY` (its name must be new); returns it.

    Examples
    --------
    >>> from celltx.model import TASK_REGISTRY, Task, register_task
    >>> t = register_task(Task("example_generation", {"gep": 1.0}))
    >>> TASK_REGISTRY["example_generation"] is t
    True
    >>> del TASK_REGISTRY["example_generation"]
    """
    if not isinstance(task, Task):
        raise ValueError(f"{task!r} is not a celltx.model.Task.")
    if task.name in TASK_REGISTRY:
        raise ValueError(f"A task named {task.name!r} is already registered.")
    TASK_REGISTRY[task.name] = task
    return task


def get_task(name: str | None) -> Task | None:
    """The registered task ``name`` (``None`` for ``None``: keep the previous objective)."""
    if name is None:
        return None
    if name not in TASK_REGISTRY:
        raise ValueError(f"task={name!r}; use one of {list(TASK_REGISTRY)} or None.")
    return TASK_REGISTRY[name]


class _TaskWeights(Mapping):
    """``TASKS``: each registered task's weights under the default config (read-only view)."""

    def __getitem__(self, name: str) -> dict[str, float]:
        return TASK_REGISTRY[name].declared_weights()

    def __setitem__(self, name: str, weights: Mapping[str, float]) -> None:
        """Deprecated: ``TASKS[name] = weights`` registers (or re-weights) a task."""
        warnings.warn(
            "Setting celltx.model.TASKS[name] is deprecated: register a task with "
            "celltx.model.register_task(celltx.model.Task(name, weights, ...)).",
            FutureWarning,
            stacklevel=2,
        )
        old = TASK_REGISTRY.get(name)
        TASK_REGISTRY[name] = Task(name, weights) if old is None else replace(old, weights=weights)

    def __iter__(self) -> Iterator[str]:
        return iter(TASK_REGISTRY)

    def __len__(self) -> int:
        return len(TASK_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


class _TaskOptions(Mapping):
    """``TASK_OPTIONS``: the contrastive positives of the tasks that set them."""

    def _options(self) -> dict[str, dict[str, object]]:
        return {
            n: {"contrast_positives": t.contrast_positives}
            for n, t in TASK_REGISTRY.items()
            if t.contrast_positives != "self"
        }

    def __getitem__(self, name: str) -> dict[str, object]:
        return self._options()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options())

    def __len__(self) -> int:
        return len(self._options())

    def __repr__(self) -> str:
        return repr(self._options())


#: each registered task's part weights (default config), derived from :data:`TASK_REGISTRY`
TASKS: Mapping[str, dict[str, float]] = _TaskWeights()
#: the tasks' own settings of their parts, derived from :data:`TASK_REGISTRY`
TASK_OPTIONS: Mapping[str, dict[str, object]] = _TaskOptions()


# --- what the model provides for the parts -----------------------------------------------
def _label_texts(model, adata) -> None:
    if not model.module.has_label_texts:
        model.set_label_texts()  # each label's Cell Ontology text, then the head


def _controls(model, adata) -> None:
    if model.module.has_head("pert"):  # else setting the objective says what is missing
        model._store_controls()


def _cell_offset(model) -> None:
    # the centred contrastive loss ignores a constant offset of every cell's <cls> output
    # (cosine ~1 between all cells): store it, so that embeddings are centred
    model.module.set_cell_offset(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = model.get_latent_representation(indices=model.train_indices)
    model.module.set_cell_offset(torch.as_tensor(emb.mean(0)))


#: what the model provides before training for a part's :attr:`~celltx.module.Part.needs`
BEFORE: dict[str, Callable] = {"label_texts": _label_texts, "controls": _controls}
#: what the model computes after training for a part's :attr:`~celltx.module.Part.after`
AFTER: dict[str, Callable] = {"cell_offset": _cell_offset}


def provide(model, weights: Mapping[str, float], adata) -> None:
    """Run :data:`BEFORE` for the needs of the parts weighted in ``weights``."""
    needs = [n for p, w in weights.items() if w > 0 for n in PARTS[p].needs]
    for need in dict.fromkeys(needs):
        BEFORE[need](model, adata)


def finish(model, task: Task | None) -> None:
    """After training: :data:`AFTER` of the active parts, their head flags, the task's hook."""
    m = model.module
    after = [n for p in m.objective for n in m.parts[p].after]
    for name in dict.fromkeys(after):
        AFTER[name](model)
    m.on_train_end()
    if task is not None and task.on_train_end is not None:
        task.on_train_end(model)


# --- the built-in tasks -------------------------------------------------------------------
for _task in (
    # the generation weights are the config's (gep_weight, mvc_weight): a new model's objective
    Task("generative", {"gep": "gep_weight", "mvc": "mvc_weight"}, datamodule=True),
    Task("annotation", {"cls": 1.0}, requires=("labels_key",)),
    Task("integration", {"contrast": 1.0}, requires=("batch_key",), contrast_positives="mnn"),
    Task(
        "integration_scgpt",
        {"gep": 1.0, "mvc": 1.0, "ecs": 10.0, "dab": 1.0},
        requires=("batch_key",),
        optional=("dab",),
    ),
    Task("perturbation", {"pert": 1.0}, requires=("perturbation_key",)),
    Task("contrastive", {"contrast": 1.0}),
    # multiome: a cell's RNA and ATAC views are a positive pair (celltx.module.CrossModal)
    Task("multiome", {"cross_modal": 1.0}, requires=("multimodal",)),
    Task("cell_text", {"text": 1.0}),
):
    register_task(_task)
del _task
