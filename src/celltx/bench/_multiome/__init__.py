"""Multiome (RNA + ATAC) benchmark: joint embeddings against RNA PCA, ATAC LSI, WNN, MULTIVI, GLUE.

- ``_mudata``: modalities of a MuData and where their cells sit.
- ``_baselines``: :func:`atac_lsi_embedding`, :func:`multivi_embedding`, RNA PCA and WNN.
- ``_glue``: GLUE (scglue), its guidance graph from coordinates and a budgeted run.
- ``_celltx``: :func:`celltx_multiome_embeddings`, celltx's joint and per-modality
  embeddings.
- ``_metrics``: label silhouette and modality mixing.
- ``_runner``: :func:`multiome`, the benchmark itself.
"""
