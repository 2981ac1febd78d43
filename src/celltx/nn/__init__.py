"""Plain ``torch.nn`` building blocks of the scGPT transformer (no AnnData here)."""

from ._layers import (
    CategoryValueEncoder,
    ClsDecoder,
    ContinuousValueEncoder,
    ExprDecoder,
    GeneEncoder,
    MVCDecoder,
    ScGPTTransformer,
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    generative_attn_mask,
    padding_attn_mask,
)

__all__ = [
    "GeneEncoder",
    "ContinuousValueEncoder",
    "CategoryValueEncoder",
    "SelfAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "ExprDecoder",
    "MVCDecoder",
    "ClsDecoder",
    "ScGPTTransformer",
    "padding_attn_mask",
    "generative_attn_mask",
]
