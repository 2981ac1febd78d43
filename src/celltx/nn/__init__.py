"""Plain ``torch.nn`` building blocks of the scGPT transformer (no AnnData here)."""

from ._attention import (
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    generative_attn_mask,
    padding_attn_mask,
)
from ._config import PRESETS as _PRESETS
from ._config import ScGPTConfig, preset
from ._encoders import (
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    DomainSpecificBatchNorm,
    GeneEncoder,
)
from ._heads import (
    AdversarialDiscriminator,
    CellTextHead,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
    grad_reverse,
)
from ._transformer import PERT_PAD, ScGPTTransformer

#: Named model shapes, ``{name: ScGPTConfig settings}``: ``"tiny"`` (tests and smoke runs),
#: ``"small"`` (CPU recipes on thousands of cells), ``"base"`` (:class:`ScGPTConfig`'s own
#: default shape) and ``"scgpt_human"`` (the published scGPT_human checkpoint's). The one
#: table the CLI, benchmarks, tests, tutorials and docs build models from: :func:`preset`,
#: :meth:`ScGPTConfig.preset`.
PRESETS = _PRESETS

__all__ = [
    "ScGPTConfig",
    "PRESETS",
    "preset",
    "GeneEncoder",
    "ContinuousValueEncoder",
    "CategoryValueEncoder",
    "SelfAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "ExprDecoder",
    "MVCDecoder",
    "ClsDecoder",
    "CellTextHead",
    "AdversarialDiscriminator",
    "DomainSpecificBatchNorm",
    "BatchLabelEncoder",
    "grad_reverse",
    "ScGPTTransformer",
    "padding_attn_mask",
    "PERT_PAD",
    "generative_attn_mask",
]
