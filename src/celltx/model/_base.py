"""Shared plumbing of the task mixins: registry look-ups, gene panels, loader inputs, autocast."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi import settings as scvi_settings

from celltx.data import (
    DEFAULT_BATCH_TOKENS,
    GeneMatch,
    GeneVocab,
    RowsInOrder,
    TokenBudgetSampler,
    check_expression,
    expressed_counts,
    gene_names,
    match_genes,
    sequence_lengths,
    token_budget_batches,
)
from celltx.module import ATAC_KEY

from ._datamodule import check_datamodule_config, datamodule_panel
from ._validation import check_batch_size, check_indices, check_modality_order

logger = logging.getLogger(__name__)


#: values of :attr:`DataMixin.inference_precision`
PRECISIONS = ("auto", "fp32", "bf16")


class DataMixin:
    """Shared plumbing of the task mixins: registry look-ups, gene panels, loader inputs, autocast."""

    def _setup_args(self, adata: AnnData) -> dict:
        if adata is None and self.adata is None:
            # built from a datamodule: no AnnData setup (no labels, batches, perturbations)
            return {}
        return self.get_anndata_manager(adata, required=True).registry["setup_args"]

    def _modality(self, adata, key: str) -> AnnData | None:
        """The AnnData (a MuData's modality) registered under ``key``, or ``None``."""
        manager = self.get_anndata_manager(adata, required=True)
        if key not in manager.data_registry:
            return None
        mod = manager.data_registry[key].get("mod_key")
        return adata if mod is None else adata.mod[mod]

    def _match(self, adata, vocab: GeneVocab | None = None) -> GeneMatch | None:
        """Match the genes of ``adata`` (its RNA modality) to the vocabulary.

        Raises if too few match. ``None`` without RNA.
        """
        rna = self._modality(adata, REGISTRY_KEYS.X_KEY)
        if rna is None:
            return None
        return match_genes(
            rna,
            self.vocab if vocab is None else vocab,
            self._setup_args(adata).get("gene_symbols"),
            min_genes=min(self.min_genes, rna.n_vars),
            min_fraction=self.min_gene_fraction,
        )

    def _gene_ids(self, adata) -> np.ndarray | None:
        """Vocabulary id of each gene of ``adata`` (-1 if absent); raises if too few match."""
        match = self._match(adata)
        return None if match is None else match.ids

    def _cells(self, adata, indices) -> np.ndarray:
        """The cells a query reads: ``indices`` checked (:func:`check_indices`), all if ``None``.

        The one check of ``indices`` behind every inference method: integer positions in any
        order, repeats allowed, negative from the end; or a boolean mask over all cells.
        """
        rows = check_indices(indices, adata.n_obs)
        return np.arange(adata.n_obs) if rows is None else rows

    def _query_loader(self, adata, indices, batch_size, batch_tokens=None, max_seq_len=None):
        """A loader over ``indices`` of ``adata`` and the order its cells come in.

        ``indices`` and ``batch_size`` are checked (:meth:`_cells`, :func:`check_batch_size`).
        Each batch holds exactly the cells it names, in that order, also from disk-backed
        data (:class:`celltx.data.RowsInOrder`; scvi-tools' own loader returns a backed
        batch's rows sorted).

        ``batch_tokens="auto"``: :data:`celltx.data.DEFAULT_BATCH_TOKENS` for RNA models,
        ``None`` otherwise. Without ``batch_tokens``: ``batch_size`` cells at a time, in the
        order of ``indices`` (the order is ``None``). With it: cells sorted by sequence length
        and grouped into batches of at most ``batch_tokens`` padded tokens
        (:func:`celltx.data.token_budget_batches`); the order says which position of
        ``indices`` each output row belongs to (:meth:`_restore_order`).
        """
        rows = self._cells(adata, indices)
        batch_size = check_batch_size(batch_size)
        rna_only = not self.module.multimodal and "rna" in self.module.modalities
        if isinstance(batch_tokens, str):
            if batch_tokens != "auto":
                raise ValueError(
                    f"batch_tokens={batch_tokens!r}; use 'auto', an integer >= 2 or None."
                )
            batch_tokens = DEFAULT_BATCH_TOKENS if rna_only else None
        order = None
        if batch_tokens is None:
            step = scvi_settings.batch_size if batch_size is None else batch_size
            batches = [np.arange(lo, min(lo + step, len(rows))) for lo in range(0, len(rows), step)]
        else:
            if (
                isinstance(batch_tokens, bool)
                or int(batch_tokens) != batch_tokens
                or batch_tokens < 2
            ):
                raise ValueError(f"batch_tokens={batch_tokens!r} must be an integer >= 2.")
            if not rna_only:
                raise ValueError("batch_tokens is for RNA models; use batch_size with ATAC data.")
            lengths = self._sequence_lengths(adata, None if indices is None else rows, max_seq_len)
            batches = token_budget_batches(lengths, int(batch_tokens), max_cells=batch_size)
            # a batch's cells in data order: read as they lie (no reordering copy)
            batches = [b[np.argsort(rows[b], kind="stable")] for b in batches]
            order = np.concatenate(batches)
        dataset = RowsInOrder(self.get_anndata_manager(adata).create_torch_dataset(), rows)
        # each sampler item is a whole batch (positions into rows); batch_size=None passes it
        # to the dataset as it is
        loader = torch.utils.data.DataLoader(
            dataset,
            sampler=TokenBudgetSampler(batches),
            batch_size=None,
            num_workers=scvi_settings.dl_num_workers,
            persistent_workers=scvi_settings.dl_persistent_workers,
        )
        return loader, order

    def _sequence_lengths(self, adata, rows=None, max_seq_len=None) -> np.ndarray:
        """Tokens of each cell (``rows``: only these) under the tokenizer's rules."""
        known = self._gene_ids(adata) >= 0
        x = self.get_anndata_manager(adata).get_from_registry(REGISTRY_KEYS.X_KEY)
        # only the requested cells are read (a caller embedding block by block reads each once)
        expressed = expressed_counts(x, known, rows=rows)
        L = self.module.tokenizer.max_seq_len if max_seq_len is None else int(max_seq_len)
        return sequence_lengths(expressed, int(known.sum()), L, self.module.tokenizer.zero_fraction)

    @staticmethod
    def _restore_order(rows: np.ndarray, order: np.ndarray | None) -> np.ndarray:
        """Rows of a :meth:`_query_loader` pass back in the order of its ``indices``."""
        if order is None:
            return rows
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def _atac_ids(self, adata, vocab: GeneVocab | None = None) -> np.ndarray | None:
        """Vocabulary id of each peak of ``adata`` (its ATAC modality; -1 if absent)."""
        atac = self._modality(adata, ATAC_KEY)
        if atac is None:
            return None
        vocab = self.vocab if vocab is None else vocab
        names = gene_names(atac)
        ids = vocab.lookup(names)
        if not (ids >= 0).any():
            raise ValueError(
                f"None of the {atac.n_vars} peaks (e.g. {names[:3].tolist()}) is in the model's "
                "vocabulary. Peak tokens are dataset-specific: the data must use the model's peak "
                "set (same names 'chrom:start-end'); count its fragments in those peaks."
            )
        if (ids < 0).any():
            logger.info(
                "%d of %d peaks are not in the vocabulary and are ignored.",
                int((ids < 0).sum()),
                len(ids),
            )
        return ids

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        if self.adata is None:
            raise ValueError(
                "This model was built from a datamodule and has no AnnData. Pass the "
                "datamodule (train(datamodule=...), get_latent_representation(datamodule=...)), "
                "or save it and load it onto an AnnData: model.save(dir); "
                "ScGPT.load(dir, adata)."
            )
        if adata is not None and hasattr(adata, "mod"):
            # a MuData: its modalities must follow mdata.obs_names (checked before scvi-tools
            # transfers the registration onto it)
            registry = self.adata_manager.data_registry
            mods = [
                registry[k].get("mod_key") for k in (REGISTRY_KEYS.X_KEY, ATAC_KEY) if k in registry
            ]
            check_modality_order(adata, [m for m in mods if m and m in adata.mod])
        adata = super()._validate_anndata(adata, copy_if_view=copy_if_view)
        manager = self.get_anndata_manager(adata, required=True)
        if adata is not self.adata:
            for key in (REGISTRY_KEYS.X_KEY, ATAC_KEY):
                a = self._modality(adata, key)
                if a is not None:
                    layer = manager.data_registry[key].attr_key
                    check_expression(a.X if layer is None else a.layers[layer])
        return adata

    @contextmanager
    def _panel(self, adata):
        with self.module.gene_panel(self._gene_ids(adata), self._atac_ids(adata)):
            yield

    def _check_datamodule_model(self) -> None:
        """Raise unless this model can take a datamodule's batches (genes only, no batches)."""
        if self.module.multimodal or "rna" not in self.module.modalities:
            raise ValueError("A datamodule feeds RNA models (genes), not models with ATAC.")
        check_datamodule_config(self.config)

    @contextmanager
    def _datamodule_panel(self, datamodule):
        """Map the columns of a datamodule's batches to the vocabulary (genes matched by name)."""
        self._check_datamodule_model()
        match = self._match_panel(datamodule_panel(datamodule, self.gene_column))
        with self.module.gene_panel(match.ids):
            yield

    def _match_panel(self, panel: AnnData, vocab: GeneVocab | None = None) -> GeneMatch:
        """Match the genes of a cell-less panel (a datamodule's columns) to the vocabulary."""
        return match_genes(
            panel,
            self.vocab if vocab is None else vocab,
            min_genes=min(self.min_genes, panel.n_vars),
            min_fraction=self.min_gene_fraction,
        )

    @property
    def gene_column(self) -> str:
        """The ``var`` column with gene names in SOMA data (``ScGPT(datamodule=..., gene_column=...)``).

        Default ``"var_id"``, where ``tiledbsoma.io.from_h5ad`` puts an AnnData's
        ``var_names``; CELLxGENE Census keeps gene symbols in ``"feature_name"``. Settable.
        """
        return self.__dict__.get("gene_column_", "var_id")

    @gene_column.setter
    def gene_column(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"gene_column={value!r} must be the name of a var column.")
        self.__dict__["gene_column_"] = value

    def _inputs(self, tensors) -> dict:
        """The module's data inputs of a loader batch (``x``, ``x_atac``), on the model's device."""
        out = {"x": None, "x_atac": None}
        if REGISTRY_KEYS.X_KEY in tensors:
            out["x"] = tensors[REGISTRY_KEYS.X_KEY].to(self.device)
        if ATAC_KEY in tensors:
            out["x_atac"] = tensors[ATAC_KEY].to(self.device)
        return out

    @property
    def inference_precision(self) -> str:
        """Numeric precision of embeddings, predictions and the other queries.

        ``"auto"`` (default): bf16 autocast on a GPU that supports it, float32 elsewhere;
        ``"bf16"``: bf16 autocast on any device (CPUs with AVX-512 BF16 or AMX run it
        faster; ``benchmarks/inference_precision.py`` measures speed and the deviation from
        float32); ``"fp32"``: float32 everywhere. Outputs are float32 in every case. Training
        precision is Lightning's ``precision`` argument of :meth:`train`.

        Examples
        --------
        >>> model.inference_precision = "bf16"  # doctest: +SKIP
        >>> emb = model.get_latent_representation()  # doctest: +SKIP
        """
        return self.__dict__.get("_inference_precision", "auto")

    @inference_precision.setter
    def inference_precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"inference_precision={value!r}; use one of {list(PRECISIONS)}.")
        self.__dict__["_inference_precision"] = value

    def _autocast(self):
        p, dev = self.inference_precision, self.device.type
        if p == "bf16" or (p == "auto" and dev == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.autocast(dev, dtype=torch.bfloat16)
        return torch.autocast(dev, enabled=False)

    def _batch_codes(self, tensors) -> torch.Tensor | None:
        b = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return None if b is None else b.reshape(-1).long().to(self.device)

    def _summary(self, config, match, rna, atac_ids, n_labels, conditions) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        panel = [] if match is None else [f"{match.n_matched}/{rna.n_vars} genes matched"]
        if atac_ids is not None:
            panel.append(
                f"{int((atac_ids >= 0).sum())} peaks (max_peaks {config.max_peaks}, {config.atac_values})"
            )
        text = (
            f"ScGPT: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
            f"max_seq_len {config.max_seq_len}, n_bins {config.n_bins}, vocab {len(self.vocab)} tokens, "
            f"{', '.join(panel)}, {n_params / 1e6:.2f}M parameters"
        )
        extras = [f"classifier ({n_labels} labels)"] if n_labels else []
        extras += [
            name
            for name, on in (
                ("DSBN", config.dsbn),
                ("DAB", config.dab),
                ("batch token", config.batch_token),
            )
            if on
        ]
        if conditions is not None:
            extras.append(f"perturbation ({len(conditions)} conditions)")
        return text + (", " + ", ".join(extras) if extras else "")
