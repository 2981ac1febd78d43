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
