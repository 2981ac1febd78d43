"""scEval-style evaluation: tasks, metrics and baselines."""

from ._annotation import ANNOTATION_METHODS, CELLTX_DEFAULTS, annotation, summarize
from ._embedding import embedding_scores, knn_accuracy, leiden_scores
from ._integration import (
    INTEGRATION_BASELINES,
    harmony_embedding,
    integration,
    pca_embedding,
    scvi_embedding,
)
from ._multiome import (
    MULTIOME_BASELINES,
    atac_lsi_embedding,
    celltx_multiome_embeddings,
    multiome,
    multivi_embedding,
)
from ._perturbation import (
    CELLTX_PERTURBATION_DEFAULTS,
    PERTURBATION_BASELINES,
    Additive,
    LinearGeneEmbedding,
    NoChange,
    PerturbationBaseline,
    TrainMean,
    celltx_perturbation_model,
    perturbation,
    perturbation_metrics,
    perturbation_split,
    summarize_perturbation,
)

__all__ = [
    "embedding_scores",
    "knn_accuracy",
    "leiden_scores",
    "annotation",
    "summarize",
    "ANNOTATION_METHODS",
    "CELLTX_DEFAULTS",
    "integration",
    "pca_embedding",
    "scvi_embedding",
    "harmony_embedding",
    "INTEGRATION_BASELINES",
]
__all__ += [
    "multiome",
    "multivi_embedding",
    "atac_lsi_embedding",
    "MULTIOME_BASELINES",
    "celltx_multiome_embeddings",
]
__all__ += [
    "perturbation",
    "perturbation_split",
    "perturbation_metrics",
    "summarize_perturbation",
    "PERTURBATION_BASELINES",
    "PerturbationBaseline",
    "NoChange",
    "TrainMean",
    "Additive",
    "LinearGeneEmbedding",
    "celltx_perturbation_model",
    "CELLTX_PERTURBATION_DEFAULTS",
]
