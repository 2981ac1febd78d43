"""scEval-style evaluation: metrics and baselines for cell embeddings."""

from ._embedding import embedding_scores, knn_accuracy, leiden_scores

__all__ = ["embedding_scores", "knn_accuracy", "leiden_scores"]
