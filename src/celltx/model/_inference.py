"""The one inference loop of the task mixins: loader, gene panel, precision, per-batch call.

Every query of a model (embeddings, predictions, imputation, cross-modal generation, zero-shot
scores, perturbation controls) runs :meth:`InferenceMixin._run_inference`: the cells are
checked, a loader yields them in batches (plain, or by token budget), each batch is passed to
the query's function under the model's gene panel and precision, and the per-batch outputs
come back concatenated on the CPU, in the order of the cells asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import closing, contextmanager

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi import settings as scvi_settings

from celltx.data import (
    DEFAULT_BATCH_TOKENS,
    RowsInOrder,
    TokenBudgetSampler,
    expressed_counts,
    sequence_lengths,
    token_budget_batches,
    trim_heap,
)
from celltx.module import ATAC_KEY

from ._checks import check_batch_size, check_indices
from ._datamodule import inference_loader
from ._host import ModelHost

#: values of :attr:`InferenceMixin.inference_precision`
PRECISIONS = ("auto", "fp32", "bf16")


class InferenceMixin(ModelHost):
    """The loader and the loop behind every query of the model (:meth:`_run_inference`)."""

    # --- the loop -----------------------------------------------------------------------
    def _run_inference(
        self,
        adata: AnnData | None,
        indices,
        batch_size: int | None,
        fn: Callable[[dict], object],
        *,
        batch_tokens: int | str | None = None,
        max_seq_len: int | None = None,
        datamodule=None,
        trim_every: int | None = None,
    ):
        """Call ``fn`` on every batch of the cells ``indices`` of ``adata``; concatenate.

        ``fn`` gets a batch's module inputs (:meth:`_inference_batches`: ``x``, ``x_atac``,
        ``batch``, on the model's device) and returns a tensor with one row per cell, a tuple
        of them (``None`` entries allowed), or ``None`` (a function that accumulates by
        itself). Outputs move to the CPU batch by batch and are concatenated along the
        cells, in the order of ``indices`` whatever the batching; ``None`` when ``fn``
        returns nothing. Arguments as for :meth:`_inference_batches`.
        """
        batches, order = self._inference_batches(
            adata,
            indices,
            batch_size,
            batch_tokens=batch_tokens,
            max_seq_len=max_seq_len,
            datamodule=datamodule,
            trim_every=trim_every,
        )
        outputs = []
        with closing(batches):  # contexts left at once, also when fn raises
            for inputs in batches:
                out = fn(inputs)
                if out is not None:
                    outputs.append(_to_cpu(out))
        if not outputs:
            return None
        if isinstance(outputs[0], tuple):
            return tuple(_concatenate(list(parts), order) for parts in zip(*outputs, strict=True))
        return _concatenate(outputs, order)

    def _inference_batches(
        self,
        adata: AnnData | None,
        indices,
        batch_size: int | None,
        *,
        batch_tokens: int | str | None = None,
        max_seq_len: int | None = None,
        datamodule=None,
        trim_every: int | None = None,
    ) -> tuple[Generator[dict, None, None], np.ndarray | None]:
        """The module inputs of each batch of cells, and the order they come in.

        Checks ``indices`` and ``batch_size`` now (:meth:`_query_loader`, which also
        explains ``batch_tokens`` and the order). The iterator yields dicts ``x``,
        ``x_atac`` (``None`` when the model lacks the modality) and ``batch`` (batch codes
        or ``None``), on the model's device, with the module in eval mode, the data's gene
        panel set (:meth:`_panel`) and the inference precision on (:meth:`_autocast`) for
        as long as it runs; exhaust or close it (``contextlib.closing``).
        ``datamodule``: its batches instead of ``adata``'s (``batch_size`` cells for a
        lamindb one, default 64), genes matched by name, no batch codes. ``trim_every``:
        return the C heap's free pages every that many batches (long runs).
        """
        if datamodule is not None:
            panel = self._datamodule_panel(datamodule)
            loader, order = inference_loader(datamodule, batch_size or 64), None
        else:
            panel = self._panel(adata)
            loader, order = self._query_loader(
                adata, indices, batch_size, batch_tokens, max_seq_len
            )
        batches = self._iterate(loader, panel, datamodule is None, trim_every)
        return batches, order

    def _iterate(self, loader, panel, batch_codes: bool, trim_every: int | None):
        with self._inference_context(panel):
            for i, tensors in enumerate(loader):
                if trim_every and i % trim_every == trim_every - 1:
                    trim_heap()  # freed batches leave the resident set (long runs)
                inputs = self._inputs(tensors)
                inputs["batch"] = self._batch_codes(tensors) if batch_codes else None
                yield inputs

    @contextmanager
    def _inference_context(self, panel):
        """Eval mode, a gene panel (:meth:`_panel`) and the inference precision."""
        self.module.eval()
        with panel, self._autocast():
            yield

    # --- the loader ---------------------------------------------------------------------
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
        ``indices`` each output row belongs to (:meth:`_run_inference` puts them back).
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
        ids = self._gene_ids(adata)
        assert ids is not None  # token budgets are for RNA models (the callers check)
        known = ids >= 0
        x = self.get_anndata_manager(adata).get_from_registry(REGISTRY_KEYS.X_KEY)
        # only the requested cells are read (a caller embedding block by block reads each once)
        expressed = expressed_counts(x, known, rows=rows)
        L = self.config.max_seq_len if max_seq_len is None else int(max_seq_len)
        zero_fraction = self.config.zero_fraction
        assert zero_fraction is not None  # the module's config has it resolved
        return sequence_lengths(expressed, int(known.sum()), L, zero_fraction)

    def _inputs(self, tensors) -> dict:
        """The module's data inputs of a loader batch (``x``, ``x_atac``), on the model's device."""
        out = {"x": None, "x_atac": None}
        if REGISTRY_KEYS.X_KEY in tensors:
            out["x"] = tensors[REGISTRY_KEYS.X_KEY].to(self.device)
        if ATAC_KEY in tensors:
            out["x_atac"] = tensors[ATAC_KEY].to(self.device)
        return out

    def _batch_codes(self, tensors) -> torch.Tensor | None:
        b = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return None if b is None else b.reshape(-1).long().to(self.device)

    # --- precision ----------------------------------------------------------------------
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


def _to_cpu(out):
    if isinstance(out, tuple):
        return tuple(None if t is None else t.cpu() for t in out)
    return out.cpu()


def _concatenate(chunks: list, order: np.ndarray | None):
    """Per-batch outputs as one tensor, its rows in the order of the query's ``indices``."""
    if all(c is None for c in chunks):
        return None
    out = torch.cat(chunks)
    if order is None:
        return out
    restored = torch.empty_like(out)
    restored[torch.as_tensor(order)] = out
    return restored
