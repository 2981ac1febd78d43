"""Batch-specific parts of :class:`~celltx.module.ScGPTModule` (query mapping, scArches-style).

The parts with one entry per batch (domain-specific batch norm, the batch embedding): what
the model asks when it maps query data with new batches onto a reference, without naming
the module's submodules or state-dict keys.
"""

from __future__ import annotations

from typing import cast

import torch

from ._host import ModuleHost


class BatchPartsMixin(ModuleHost):
    """Grow, freeze and restore the parts of the module that hold one entry per batch."""

    def _batch_parts(self) -> list[torch.nn.Module]:
        t = self.transformer
        return [part for part in (t.dsbn, t.batch_encoder) if part is not None]

    def _batch_keys(self) -> set[str]:
        """State-dict keys of the batch-specific parts."""
        names = {id(m): n for n, m in self.named_modules()}
        return {f"{names[id(part)]}.{k}" for part in self._batch_parts() for k in part.state_dict()}

    def batch_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of the parts with one entry per batch (empty without such parts)."""
        return [p for part in self._batch_parts() for p in part.parameters()]

    def batch_state(self) -> dict[str, torch.Tensor]:
        """A copy of the batch-specific parts' state (for :meth:`restore_batch_state`)."""
        keys = self._batch_keys()
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in keys}

    def restore_batch_state(self, saved: dict[str, torch.Tensor]) -> None:
        """Put the entries of :meth:`batch_state` back (a grown table: its first rows)."""
        state = self.state_dict()
        with torch.no_grad():
            for key, ref in saved.items():
                target = state[key]
                if target.shape == ref.shape:
                    target.copy_(ref.to(target.device))
                else:  # a grown table: the reference rows come first
                    target[: ref.shape[0]].copy_(ref.to(target.device))

    def load_grown_state(self, reference: BatchPartsMixin) -> None:
        """Load a reference module's state into this module, which has more batches.

        Same-shape tensors are copied, tables with one row per batch grown (reference rows
        first); the batch norms of new batches start at the mean of the reference ones
        (scale and shift; their statistics as initialised). Everything else keeps this
        module's values.
        """
        ref, own = reference.state_dict(), self.state_dict()
        out = {}
        for key, target in own.items():
            if key in ref and ref[key].shape == target.shape:
                out[key] = ref[key]
            elif (
                key in ref
                and ref[key].dim() == target.dim()
                and ref[key].shape[1:] == target.shape[1:]
            ):
                grown = target.clone()
                grown[: ref[key].shape[0]] = ref[key]
                out[key] = grown
            else:
                out[key] = target
        self.load_state_dict(out)
        dsbn, ref_dsbn = self.transformer.dsbn, reference.transformer.dsbn
        if dsbn is None or ref_dsbn is None:
            return
        with torch.no_grad():
            for bn in cast(list[torch.nn.BatchNorm1d], list(dsbn.bns)[len(ref_dsbn.bns) :]):
                for p, name in ((bn.weight, "weight"), (bn.bias, "bias")):
                    peers = [getattr(r, name).float() for r in ref_dsbn.bns]
                    p.copy_(torch.stack(peers).mean(0).to(p.dtype))
