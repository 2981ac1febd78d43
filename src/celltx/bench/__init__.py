"""scEval-style evaluation: tasks, metrics and baselines.

One private module per task (``_annotation``, ``_integration``, ``_representation``,
``_imputation``, ``_query``, ``_network``, ``_zero_shot``; ``_multiome`` and
``_perturbation`` are subpackages with their split, metrics, baselines and runner in
separate modules). They share ``_runner`` (the one loop: seeds or folds × methods, each
method guarded and timed, rows as they finish), ``_baselines`` (PCA, scVI / scANVI,
Harmony, logistic regression, kNN: written once), ``_embedding`` (the embedding scores),
``_fit`` (the one celltx training recipe) and ``_inputs`` (the one reader of the
expression input: layer or ``.X``, counts or log-normalised values).
"""

from ._annotation import (
    ANNOTATION_METHODS,
    CELLTX_DEFAULTS,
    FEW_LABEL_CELLTX_DEFAULTS,
    annotation,
    summarize,
)
from ._embedding import embedding_scores, knn_accuracy, leiden_scores
from ._genes import gene_program_scores
from ._imputation import IMPUTATION_CELLTX_DEFAULTS, IMPUTATION_METHODS, imputation
from ._integration import (
    INTEGRATION_BASELINES,
    INTEGRATION_CELLTX_DEFAULTS,
    INTEGRATION_METHODS,
    celltx_integration_embedding,
    harmony_embedding,
    integration,
    pca_embedding,
    scanvi_embedding,
    scvi_embedding,
)
from ._multiome._baselines import (
    MULTIOME_BASELINES,
    MULTIOME_METHODS,
    atac_lsi_embedding,
    multivi_embedding,
    wnn_graph,
)
from ._multiome._celltx import (
    MULTIOME_CELLTX_DEFAULTS,
    celltx_multiome_embeddings,
    multiome_recipe_epochs,
)
from ._multiome._metrics import foscttm
from ._multiome._runner import multiome
from ._network import NETWORK_CELLTX_DEFAULTS, NETWORK_METHODS, gene_network
from ._perturbation._baselines import (
    PERTURBATION_BASELINES,
    Additive,
    LinearGeneEmbedding,
    NoChange,
    OwnKnockdown,
    PerturbationBaseline,
    TrainMean,
)
from ._perturbation._cell_eval import (
    cell_eval_command,
    cell_eval_installed,
    run_cell_eval,
    write_cell_eval,
)
from ._perturbation._celltx import (
    CELLTX_PERTURBATION_DEFAULTS,
    CelltxGeneEmbeddingLinear,
    InSilicoProfiles,
    celltx_gene_features,
    celltx_perturbation_model,
)
from ._perturbation._metrics import perturbation_metrics, summarize_perturbation
from ._perturbation._residual import PerturbationResidual
from ._perturbation._runner import perturbation
from ._perturbation._split import (
    perturbation_split,
    read_perturbation_split,
    save_perturbation_split,
)
from ._query import QUERY_CELLTX_DEFAULTS, QUERY_METHODS, query_mapping
from ._representation import EMBED_CELLTX_DEFAULTS, EMBEDDING_METHODS, embedding
from ._tokens import TOKEN_SELECTIONS, token_retention
from ._zero_shot import (
    PBMC68K_SHORT_NAMES,
    ZERO_SHOT_CELLTX_DEFAULTS,
    ZERO_SHOT_METHODS,
    zero_shot,
)

__all__ = [
    "embedding_scores",
    "knn_accuracy",
    "leiden_scores",
    "annotation",
    "summarize",
    "ANNOTATION_METHODS",
    "CELLTX_DEFAULTS",
    "FEW_LABEL_CELLTX_DEFAULTS",
    "integration",
    "pca_embedding",
    "scvi_embedding",
    "harmony_embedding",
    "scanvi_embedding",
    "INTEGRATION_BASELINES",
    "INTEGRATION_METHODS",
    "INTEGRATION_CELLTX_DEFAULTS",
    "celltx_integration_embedding",
]
__all__ += [
    "multiome",
    "multivi_embedding",
    "atac_lsi_embedding",
    "MULTIOME_BASELINES",
    "MULTIOME_METHODS",
    "MULTIOME_CELLTX_DEFAULTS",
    "multiome_recipe_epochs",
    "celltx_multiome_embeddings",
    "foscttm",
    "wnn_graph",
]
__all__ += [
    "perturbation",
    "perturbation_split",
    "read_perturbation_split",
    "save_perturbation_split",
    "OwnKnockdown",
    "PerturbationResidual",
    "CelltxGeneEmbeddingLinear",
    "InSilicoProfiles",
    "celltx_gene_features",
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
    "write_cell_eval",
    "run_cell_eval",
    "cell_eval_command",
    "cell_eval_installed",
]
__all__ += ["query_mapping", "QUERY_METHODS", "QUERY_CELLTX_DEFAULTS"]
__all__ += ["imputation", "IMPUTATION_METHODS", "IMPUTATION_CELLTX_DEFAULTS"]


__all__ += ["gene_program_scores"]
__all__ += ["gene_network", "NETWORK_METHODS", "NETWORK_CELLTX_DEFAULTS"]
__all__ += ["token_retention", "TOKEN_SELECTIONS"]
__all__ += ["embedding", "EMBEDDING_METHODS", "EMBED_CELLTX_DEFAULTS"]
__all__ += ["zero_shot", "ZERO_SHOT_METHODS", "ZERO_SHOT_CELLTX_DEFAULTS", "PBMC68K_SHORT_NAMES"]
