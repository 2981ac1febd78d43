"""Former home of the scGPT building blocks, kept so that old imports keep working.

The blocks now live in files named for what they hold: ``_encoders`` (gene, value and
batch encoders, domain-specific batch norm), ``_attention`` (self-attention, encoder
layers, attention masks), ``_heads`` (decoders, classifier, batch discriminator, cell–text
head) and ``_transformer`` (:class:`~celltx.nn.ScGPTTransformer`). Import them from
:mod:`celltx.nn`.
"""

from ._attention import (
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    generative_attn_mask,
    padding_attn_mask,
)
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
    "PERT_PAD",
    "AdversarialDiscriminator",
    "BatchLabelEncoder",
    "CategoryValueEncoder",
    "CellTextHead",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "DomainSpecificBatchNorm",
    "ExprDecoder",
    "GeneEncoder",
    "MVCDecoder",
    "ScGPTTransformer",
    "SelfAttention",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "generative_attn_mask",
    "grad_reverse",
    "padding_attn_mask",
]
