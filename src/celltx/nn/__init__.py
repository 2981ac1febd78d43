"""Plain ``torch.nn`` building blocks of the scGPT transformer (no AnnData here)."""

from ._attention import (
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    generative_attn_mask,
    padding_attn_mask,
)
from ._config import PRESETS, ScGPTConfig, preset
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
