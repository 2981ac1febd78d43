"""The module's objective: its parts' weights and settings, and their weighted loss."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput

from ._host import ModuleHost
from ._objectives import PARTS, SPLIT, encoder_pass

if TYPE_CHECKING:
    from ._scgpt import ScGPTModule


class ObjectiveMixin(ModuleHost):
    """Objective of :class:`~celltx.module.ScGPTModule`: one configured copy of every part.

    :attr:`parts` (built by the module from its config) holds each part's weight and
    settings; :meth:`set_objective` sets them, :meth:`loss` sums the active parts' losses.
    """

    def set_objective(
        self,
        ecs_threshold: float | None = None,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        **weights: float,
    ) -> None:
        """Set the objective: a weight per part; parts not named get 0.

        The parts are :data:`~celltx.module.PARTS`: ``gep``, ``mvc``, ``cls``, ``ecs``, ``dab``,
        ``pert``, ``align``, ``contrast``, ``text`` (and registered ones). Raises when a
        weighted part cannot be computed by this module (e.g. ``cls`` without labels).
        ``ecs_threshold`` (default: the config's) and ``label_smoothing`` are settings of
        the ``ecs`` and ``cls`` parts; ``class_weights`` weighs the classes of ``cls`` and
        ``text``.
        """
        unknown = sorted(set(weights) - set(PARTS))
        if unknown:
            raise ValueError(f"Unknown loss weights {unknown}; use {', '.join(PARTS)}.")
        weights = {name: float(weights.get(name, 0.0)) for name in PARTS}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad or sum(weights.values()) <= 0:
            raise ValueError(f"Loss weights must be >= 0 with at least one > 0, got {weights}.")
        for name, w in weights.items():
            # the mixin is ScGPTModule's only
            why = PARTS[name].available(cast("ScGPTModule", self)) if w > 0 else None
            if why:
                raise ValueError(why)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
        for name, w in weights.items():
            self.parts.setdefault(name, PARTS[name].configured(self.config)).weight = w
        self.encoder_pass = encoder_pass(self.objective)
        self.ecs_threshold = self.config.ecs_threshold if ecs_threshold is None else ecs_threshold
        self.label_smoothing = label_smoothing
        if class_weights is None:
            self.class_weights.fill_(1.0)
        else:
            self.class_weights.copy_(torch.as_tensor(class_weights, dtype=torch.float32))

    @property
    def objective(self) -> dict[str, float]:
        """The weight of each active part (weight > 0), in the order losses are summed."""
        return {name: p.weight for name, p in self.parts.items() if p.weight > 0}

    def weight(self, part: str) -> float:
        """The objective's weight of ``part`` (0 when not part of it)."""
        p = self.parts.get(part)
        return p.weight if p is not None and p.weight > 0 else 0.0

    def on_train_end(self) -> None:
        """Mark the heads of the active parts trained (their :attr:`Part.trained_flag`)."""
        for name in self.objective:
            flag = self.parts[name].trained_flag
            if flag is not None:
                getattr(self, flag).fill_(True)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, Any],
        generative_outputs: dict[str, torch.Tensor],
        skip: Iterable[str] = (),
    ) -> LossOutput:
        """Weighted sum of the losses of the objective's parts (:attr:`parts`).

        Parts named in ``skip`` are left out (a divide-and-conquer plan computes them over
        the whole batch itself, ``module(tensors, loss_kwargs={"skip": ...})``). Every part's metrics are logged in every step (NaN when the part is not active), so
        that ``model.history`` keeps all columns across successive ``train()`` calls with
        different tasks.
        """
        cell_emb = inference_outputs["cell_emb"]
        R = cell_emb.shape[0]  # rows: cells, plus the single-modality views of multimodal cells
        rows = inference_outputs.get("rows")
        n_cells = R if rows is None else int(rows.max()) + 1 if len(rows) else 0
        if rows is not None and REGISTRY_KEYS.X_KEY in tensors:
            n_cells = len(tensors[REGISTRY_KEYS.X_KEY])
        if rows is None:
            rows = torch.arange(R, device=cell_emb.device)
        inference = {**inference_outputs, "rows": rows}
        row_loss = cell_emb.new_zeros(R, dtype=torch.float32)
        loss = cell_emb.new_zeros((), dtype=torch.float32)
        metrics: dict[str, Any] = {}
        skip = set(skip) | self.skip_parts
        for name, weight in self.objective.items():
            part = self.parts[name]
            if name in skip:
                continue
            if part.pass_ == SPLIT and inference_outputs.get("known") is None:
                continue  # e.g. an evaluation pass without a split
            out = part(cast("ScGPTModule", self), tensors, inference, generative_outputs)
            loss = loss + weight * out.loss
            if out.rows is not None:
                row_loss = row_loss + weight * out.rows
            metrics.update(out.metrics)
        per_cell = cell_emb.new_zeros(n_cells, dtype=torch.float32).index_add(0, rows, row_loss)
        nan = torch.full((), float("nan"), device=cell_emb.device)
        names = [m for part in PARTS.values() for m in part.metrics]
        if "atac" not in self.modalities:
            multiome = ("rna_mse", "atac_mse", "align_loss", "cross_modal_loss", "cross_modal_nce")
            names = [m for m in names if m not in multiome]
        for key in names:
            if metrics.get(key) is None:
                metrics[key] = nan
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            kl_local=torch.zeros_like(per_cell),
            extra_metrics=metrics,
        )


def _setting_property(part: str, setting: str) -> property:
    def fset(self: ObjectiveMixin, value: object) -> None:
        setattr(self.parts[part], setting, value)

    return property(
        lambda self: getattr(self.parts[part], setting),
        fset,
        doc=f"The ``{setting}`` setting of the ``{part}`` part (``parts[{part!r}].{setting}``).",
    )


# settings that were module attributes before parts owned them (saves keep some of them)
for _name, (_part, _setting) in {
    "ecs_threshold": ("ecs", "threshold"),
    "label_smoothing": ("cls", "label_smoothing"),
    "align_temperature": ("align", "temperature"),
    "contrast_temperature": ("contrast", "temperature"),
}.items():
    setattr(ObjectiveMixin, _name, _setting_property(_part, _setting))
del _name, _setting


def _weight_property(part: str) -> property:
    return property(
        lambda self: self.weight(part),
        doc=f"The objective's weight of ``{part}`` (read-only; kept for compatibility, use "
        f"``weight({part!r})``).",
    )


# ``module.gep_weight`` etc. were attributes before objectives became parts
for _part in PARTS:
    setattr(ObjectiveMixin, f"{_part}_weight", _weight_property(_part))
del _part
