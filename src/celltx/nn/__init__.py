"""Plain ``torch.nn`` building blocks of the scGPT transformer (no AnnData here)."""

from ._config import ScGPTConfig
from ._layers import (
    PERT_PAD,
    AdversarialDiscriminator,
    BatchLabelEncoder,
    CategoryValueEncoder,
    ClsDecoder,
    ContinuousValueEncoder,
    DomainSpecificBatchNorm,
    ExprDecoder,
    GeneEncoder,
    MVCDecoder,
    ScGPTTransformer,
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    generative_attn_mask,
    grad_reverse,
    padding_attn_mask,
)

__all__ = [
    "ScGPTConfig",
    "GeneEncoder",
    "ContinuousValueEncoder",
    "CategoryValueEncoder",
    "SelfAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "ExprDecoder",
    "MVCDecoder",
    "ClsDecoder",
    "AdversarialDiscriminator",
    "DomainSpecificBatchNorm",
    "BatchLabelEncoder",
    "grad_reverse",
    "ScGPTTransformer",
    "padding_attn_mask",
    "PERT_PAD",
    "generative_attn_mask",
]
