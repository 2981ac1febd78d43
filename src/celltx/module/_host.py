"""What the mixins of :class:`~celltx.module.ScGPTModule` use of the module, declared.

Each mixin (``_attention``, ``_batches``, ``_objective_mixin``, ``_perturbation``,
``_queries``, ``_tokens``) derives from :class:`ModuleHost`, which declares, for the type
checker, the submodules, buffers, settings and methods of the module they work on. At run
time it is an empty class: the attributes are set by ``ScGPTModule.__init__``, and the
methods declared here are defined by the module or by another mixin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from celltx.data import CellTokenizer, TokenizedBatch
    from celltx.nn import CellTextHead, ExprDecoder, ScGPTConfig, ScGPTTransformer

    from ._objectives import Part

    _Module = torch.nn.Module
else:
    _Module = object


class ModuleHost(_Module):
    """The attributes of :class:`~celltx.module.ScGPTModule` its mixins use."""

    # settings and parts (set in ScGPTModule.__init__)
    config: ScGPTConfig
    modalities: tuple[str, ...]
    tokenizer: CellTokenizer
    transformer: ScGPTTransformer
    pert_decoder: ExprDecoder | None
    text_head: CellTextHead | None
    parts: dict[str, Part]
    skip_parts: set[str]
    n_labels: int
    pair_by_labels: bool
    encoder_pass: str
    ecs_threshold: float
    label_smoothing: float
    # buffers (registered in ScGPTModule.__init__)
    label_text: torch.Tensor
    class_weights: torch.Tensor
    condition_genes: torch.Tensor
    ctrl_x: torch.Tensor
    ctrl_start: torch.Tensor
    ctrl_count: torch.Tensor
    ctrl_mean: torch.Tensor
    cell_offset: torch.Tensor
    cls_trained: torch.Tensor
    pert_trained: torch.Tensor
    text_trained: torch.Tensor

    if TYPE_CHECKING:  # defined by ScGPTModule or another mixin

        @property
        def multimodal(self) -> bool: ...

        @property
        def panel_gene_ids(self) -> torch.Tensor: ...

        @property
        def panel_atac_ids(self) -> torch.Tensor: ...

        def _batch(self, batch: torch.Tensor | None) -> torch.Tensor | None: ...

        def inference(
            self,
            x: torch.Tensor | None,
            batch: torch.Tensor | None = None,
            generative: bool | None = None,
            generator: torch.Generator | None = None,
            sample: str | None = None,
            max_seq_len: int | None = None,
            condition: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            x_atac: torch.Tensor | None = None,
        ) -> dict[str, Any]: ...

        def tokenize(
            self,
            x: torch.Tensor | None,
            sample: str | None = None,
            max_seq_len: int | None = None,
            x_atac: torch.Tensor | None = None,
        ) -> TokenizedBatch: ...
