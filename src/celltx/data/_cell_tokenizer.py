"""The tokenizer of a cell model: panel, selection statistics, ATAC handling, modality join.

:class:`CellTokenizer` is the one place where a sequence that reaches the transformer is
assembled; a model's module owns one and asks it for tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from ._genes import highly_variable, nonzero_medians
from ._peaks import peak_idf
from ._sequences import fixed_gene_tokens, join_modalities, perturbation_tokens
from ._tokenizer import MOD_ATAC, MOD_CLS, MOD_RNA, Sample, Ties, TokenizedBatch, Tokenizer

if TYPE_CHECKING:
    import numpy as np

    from ._types import Matrix

#: view codes of multimodal training rows (:meth:`CellTokenizer.generative_views`): the
#: cell itself, its RNA alone, its ATAC alone
VIEW_JOINT, VIEW_RNA, VIEW_ATAC = 0, 1, 2


class _TokenizerSettings(Protocol):
    """The fields of :class:`celltx.nn.ScGPTConfig` that a :class:`CellTokenizer` reads."""

    @property
    def max_seq_len(self) -> int: ...

    @property
    def gene_selection(self) -> str: ...

    @property
    def n_hvg(self) -> int: ...

    @property
    def random_token_fraction(self) -> float: ...

    @property
    def n_bins(self) -> int | None: ...

    @property
    def pad_value(self) -> float: ...

    @property
    def zero_fraction(self) -> float | None: ...

    @property
    def mask_ratio(self) -> Sequence[float]: ...

    @property
    def seed(self) -> int: ...

    @property
    def max_peaks(self) -> int: ...

    @property
    def peak_selection(self) -> str: ...

    @property
    def atac_zero_fraction(self) -> float: ...

    @property
    def atac_values(self) -> str: ...


class CellTokenizer(torch.nn.Module):
    """Cells (expression rows, peak rows) to token sequences, as one model tokenizes them.

    Holds, as buffers (so that they move with the model and are saved with its weights
    where they are learned from the training data):

    - the panel: the vocabulary id of each data column (``gene_ids``; ``atac_ids`` for
      peaks; ``-1`` outside the vocabulary), swapped for other data with :meth:`panel`;
    - the selection statistics: each vocabulary gene's non-zero median (rank-value
      selection, ``gene_selection="rank"`` / ``"hvg"``), its highly-variable flag
      (``"hvg"``) and each peak's IDF (``peak_selection="idf"``), learned with :meth:`fit`;
    - the generative split's mask ratios.

    A call tokenizes a batch of cells (:meth:`forward`): RNA tokens by :class:`Tokenizer`,
    ATAC tokens by a second one (peaks binarised: open = the top value bin), joined into
    ``<cls>``, RNA tokens, ATAC tokens (:func:`join_modalities`).

    Parameters
    ----------
    config
        A :class:`celltx.nn.ScGPTConfig` (or any object with its tokenizer fields:
        ``max_seq_len``, ``n_bins``, ``pad_value``, ``zero_fraction``, ``seed``,
        ``mask_ratio``, ``gene_selection``, ``n_hvg``, ``random_token_fraction``,
        ``max_peaks``, ``peak_selection``, ``atac_zero_fraction``, ``atac_values``).
    n_tokens
        Vocabulary size.
    pad_id, cls_id
        Vocabulary ids of ``<pad>`` and ``<cls>``.
    gene_ids
        Vocabulary id of each RNA column.
    modalities
        ``("rna",)``, ``("rna", "atac")`` or ``("atac",)``.
    atac_ids
        Vocabulary id of each ATAC column (needed with an ATAC part).

    Examples
    --------
    >>> import torch
    >>> from celltx.data import CellTokenizer
    >>> from celltx.nn import ScGPTConfig
    >>> tok = CellTokenizer(ScGPTConfig(max_seq_len=4, n_bins=5), 10, 0, 1, [2, 3, 4, -1]).eval()
    >>> t = tok(torch.tensor([[0.0, 3.0, 1.0, 9.0]]))
    >>> t.gene_ids.shape, sorted(t.gene_ids[0, 1:].tolist())
    (torch.Size([1, 3]), [3, 4])
    """

    # buffers (registered in __init__)
    mask_ratio: torch.Tensor
    gene_ids: torch.Tensor
    atac_ids: torch.Tensor
    gene_medians: torch.Tensor
    rank_linear: torch.Tensor
    peak_idf: torch.Tensor
    gene_hvg: torch.Tensor

    def __init__(
        self,
        config: _TokenizerSettings,
        n_tokens: int,
        pad_id: int,
        cls_id: int,
        gene_ids: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        modalities: Sequence[str] = ("rna",),
        atac_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ):
        super().__init__()
        modalities = tuple(modalities)
        if "atac" in modalities and atac_ids is None:
            raise ValueError("An ATAC part needs atac_ids (the vocabulary id of each peak column).")
        c = config
        self.modalities = modalities
        self.gene_selection = c.gene_selection
        self.n_hvg = int(c.n_hvg)
        self.random_token_fraction = float(c.random_token_fraction)
        self.peak_selection = c.peak_selection
        self.atac_values = c.atac_values
        zero_fraction = c.zero_fraction
        if zero_fraction is None:
            zero_fraction = self.default_zero_fraction(modalities)
        #: the RNA tokenizer (gene choice, binning, ``<cls>``, padding)
        self.rna = Tokenizer(
            max_seq_len=c.max_seq_len,
            pad_id=pad_id,
            cls_id=cls_id,
            n_bins=c.n_bins,
            pad_value=c.pad_value,
            zero_fraction=zero_fraction,
            seed=c.seed,
        )
        #: the ATAC tokenizer (``None`` without an ATAC part)
        self.atac: Tokenizer | None = None
        if "atac" in modalities:
            self.atac = Tokenizer(
                max_seq_len=c.max_peaks + 1,
                pad_id=pad_id,
                cls_id=cls_id,
                n_bins=c.n_bins if c.atac_values == "binned" else None,
                pad_value=c.pad_value,
                zero_fraction=c.atac_zero_fraction,
                seed=c.seed,
            )
        self.register_buffer("mask_ratio", torch.tensor(list(c.mask_ratio)), persistent=False)
        self.register_buffer(
            "gene_ids", torch.as_tensor(gene_ids, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "atac_ids",
            torch.as_tensor([] if atac_ids is None else atac_ids, dtype=torch.long),
            persistent=False,
        )
        # rank-value gene selection: each vocabulary gene's non-zero median (saved with the
        # weights of models that use it; 1 = rank by the expression itself)
        ranked = self.gene_selection in ("rank", "hvg")
        self.register_buffer("gene_medians", torch.ones(n_tokens), persistent=ranked)
        # whether the medians are of depth-normalised linear values and cells are ranked on
        # that scale (counts and log values of the same cells: the same tokens); saves from
        # before this flag keep their medians of the values as they were
        self.register_buffer("rank_linear", torch.ones((), dtype=torch.bool), persistent=ranked)
        # TF-IDF peak selection: each vocabulary peak's IDF over the training cells
        self.register_buffer(
            "peak_idf", torch.ones(n_tokens), persistent=self.peak_selection == "idf"
        )
        # HVG-aware selection: 1 for each vocabulary gene that is highly variable over the
        # training cells
        self.register_buffer(
            "gene_hvg", torch.zeros(n_tokens), persistent=self.gene_selection == "hvg"
        )

    @staticmethod
    def default_zero_fraction(modalities: Sequence[str]) -> float:
        """``zero_fraction`` when the config leaves it ``None``: 0.25 for multiome, else 0."""
        return 0.25 if len(tuple(modalities)) > 1 else 0.0

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if self.gene_selection in ("rank", "hvg"):
            # a checkpoint without medians / HVGs (a published scGPT one) keeps the data's
            if prefix + "gene_medians" in state_dict:
                state_dict.setdefault(prefix + "rank_linear", torch.zeros((), dtype=torch.bool))
            state_dict.setdefault(prefix + "gene_medians", self.gene_medians.clone())
            state_dict.setdefault(prefix + "rank_linear", self.rank_linear.clone())
        if self.gene_selection == "hvg":
            state_dict.setdefault(prefix + "gene_hvg", self.gene_hvg.clone())
        if self.peak_selection == "idf":
            state_dict.setdefault(prefix + "peak_idf", self.peak_idf.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the RNA tokenizer's settings ---------------------------------------------------
    @property
    def max_seq_len(self) -> int:
        """Longest RNA sequence, ``<cls>`` included (settable)."""
        return self.rna.max_seq_len

    @max_seq_len.setter
    def max_seq_len(self, value: int) -> None:
        self.rna.max_seq_len = int(value)

    @property
    def pad_id(self) -> int:
        """Vocabulary id of ``<pad>``."""
        return self.rna.pad_id

    @property
    def cls_id(self) -> int:
        """Vocabulary id of ``<cls>``."""
        return self.rna.cls_id

    @property
    def n_bins(self) -> int | None:
        """Number of value bins (``None``: values unbinned)."""
        return self.rna.n_bins

    @property
    def pad_value(self) -> float:
        """Input value at ``<cls>`` and padding."""
        return self.rna.pad_value

    @property
    def zero_fraction(self) -> float:
        """Fraction of the RNA budget given to non-expressed genes."""
        return self.rna.zero_fraction

    @property
    def seed(self) -> int:
        """Seed of the reproducible gene choice."""
        return self.rna.seed

    @property
    def multimodal(self) -> bool:
        """Whether cells have RNA and ATAC parts."""
        return len(self.modalities) > 1

    # --- the panel and its statistics ---------------------------------------------------
    @contextmanager
    def panel(
        self, gene_ids: torch.Tensor | None, atac_ids: torch.Tensor | None = None
    ) -> Iterator[CellTokenizer]:
        """Temporarily use another column -> vocabulary-id mapping (other data)."""
        old, old_atac = self.gene_ids, self.atac_ids
        if gene_ids is not None:
            self.gene_ids = torch.as_tensor(gene_ids, dtype=torch.long, device=old.device)
        if atac_ids is not None:
            self.atac_ids = torch.as_tensor(atac_ids, dtype=torch.long, device=old.device)
        try:
            yield self
        finally:
            self.gene_ids, self.atac_ids = old, old_atac

    @property
    def learns_from(self) -> tuple[str, ...]:
        """The modalities whose training cells :meth:`fit` learns statistics from."""
        rna = ("rna",) if self.gene_selection in ("rank", "hvg") else ()
        return rna + (("atac",) if self.peak_selection == "idf" else ())

    def fit(self, x: Matrix | None = None, x_atac: Matrix | None = None) -> None:
        """Learn the selection statistics of the panel's columns from training cells.

        ``x`` (cells × RNA columns) gives the genes' non-zero medians (``gene_selection``
        ``"rank"`` / ``"hvg"``, on the depth-normalised linear scale) and highly variable
        genes (``"hvg"``, ``n_hvg`` of them); ``x_atac`` (cells × ATAC columns) the peaks'
        IDF (``peak_selection="idf"``). Dense or sparse; selections that need no statistics
        ignore their input.
        """
        ids = self.gene_ids
        if x is not None and self.gene_selection in ("rank", "hvg"):
            medians = nonzero_medians(x, seed=self.seed, linear=True)
            self.set_gene_medians(ids, torch.as_tensor(medians))
            if self.gene_selection == "hvg":
                hvg = highly_variable(x, n_top=self.n_hvg, seed=self.seed)
                self.set_gene_hvg(ids, hvg)
        if x_atac is not None and self.peak_selection == "idf":
            self.set_peak_idf(self.atac_ids, torch.as_tensor(peak_idf(x_atac)))

    def set_gene_medians(self, ids: torch.Tensor, medians: torch.Tensor) -> None:
        """Store the non-zero medians of the genes ``ids`` (rank-value gene selection)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.gene_medians.device)
        med = torch.as_tensor(medians, dtype=torch.float32, device=self.gene_medians.device)
        keep = (ids >= 0) & (med > 0) & torch.isfinite(med)
        self.gene_medians[ids[keep]] = med[keep]

    def set_peak_idf(self, ids: torch.Tensor, idf: torch.Tensor) -> None:
        """Store the IDF of the peaks ``ids`` (TF-IDF peak selection)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.peak_idf.device)
        val = torch.as_tensor(idf, dtype=torch.float32, device=self.peak_idf.device)
        keep = (ids >= 0) & torch.isfinite(val)
        self.peak_idf[ids[keep]] = val[keep]

    def set_gene_hvg(self, ids: torch.Tensor, mask: np.ndarray | torch.Tensor) -> None:
        """Mark the genes ``ids`` whose ``mask`` is true as highly variable (the others not)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.gene_hvg.device)
        flag = torch.as_tensor(mask, dtype=torch.float32, device=self.gene_hvg.device)
        keep = ids >= 0
        self.gene_hvg.zero_()
        self.gene_hvg[ids[keep]] = flag[keep]

    def peak_scale(self) -> torch.Tensor:
        """Per ATAC panel column: the peak's IDF (0 outside the vocabulary)."""
        ids = self.atac_ids
        return torch.where(ids >= 0, self.peak_idf[ids.clamp(min=0)], 0.0)

    def hvg_priority(self) -> torch.Tensor:
        """Per panel column: 1 for the highly variable genes of HVG-aware selection, else 0."""
        ids = self.gene_ids
        return torch.where(ids >= 0, self.gene_hvg[ids.clamp(min=0)], 0.0)

    def rank_scale(self) -> torch.Tensor:
        """Per panel column: 1 / the gene's non-zero median (0 outside the vocabulary)."""
        ids = self.gene_ids
        med = self.gene_medians[ids.clamp(min=0)]
        return torch.where(ids >= 0, 1.0 / med, 0.0)

    def atac_input(self, x_atac: torch.Tensor) -> torch.Tensor:
        """Peak values as the ATAC tokenizer takes them.

        Open = top bin, closed = 0 (``atac_values="binary"``), or the counts (``"binned"``).
        """
        if self.atac_values == "binned":
            return x_atac.float()
        top = float(self.n_bins - 1) if self.n_bins is not None else 1.0
        return (x_atac > 0).float() * top

    # --- sequences ------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor | None,
        gene_ids: torch.Tensor | None = None,
        *,
        sample: str | None = None,
        max_seq_len: int | None = None,
        x_atac: torch.Tensor | None = None,
        **rna_kwargs: Any,
    ) -> TokenizedBatch:
        """Tokenize ``x`` ``(B, G)`` (and ``x_atac`` ``(B, P)`` for an ATAC part).

        ``sample`` (see :class:`Tokenizer`): random genes while training, reproducible
        (``"hash"``) otherwise; with ``gene_selection`` ``"rank"`` / ``"hvg"`` both rank
        by the stored medians (training draws ``random_token_fraction`` of its cells at
        random). With ATAC, the sequence is ``<cls>``, RNA tokens, ATAC tokens, with
        modality codes; a cell with an all-zero row in a modality was not measured in it
        and gets no tokens of it.

        ``gene_ids`` and further keyword arguments (the call of :class:`Tokenizer`, which
        this tokenizer's place took on the module) are deprecated: use :attr:`rna`.
        """
        if gene_ids is not None or rna_kwargs:
            warnings.warn(
                "Calling the module's tokenizer as a Tokenizer (with gene_ids or Tokenizer "
                "options) is deprecated; call module.tokenizer.rna(x, gene_ids, ...) instead.",
                FutureWarning,
                stacklevel=2,
            )
            ids = self.gene_ids if gene_ids is None else gene_ids
            if x is None:
                raise ValueError("Pass the expression (x) to tokenize.")
            return self.rna(
                x,
                ids,
                sample=cast(Sample, sample or "random"),
                max_seq_len=max_seq_len,
                **rna_kwargs,
            )
        if sample is None:
            sample = "random" if self.training else "hash"
        rank: dict[str, Any] = {}
        if self.gene_selection in ("rank", "hvg") and sample in ("random", "hash"):
            rank = {
                "scale": self.rank_scale(),
                "priority": self.hvg_priority() if self.gene_selection == "hvg" else None,
                "random_fraction": self.random_token_fraction if sample == "random" else 0.0,
                "linear": bool(self.rank_linear),
            }
            sample = "rank"
        how = cast(Sample, sample)  # the Tokenizer refuses other values with a ValueError
        if "atac" not in self.modalities:
            if x is None:
                raise ValueError("This model tokenizes RNA: pass the expression (x).")
            return self.rna(x, self.gene_ids, sample=how, max_seq_len=max_seq_len, **rank)
        if x_atac is None:
            raise ValueError("This model has an ATAC part: pass the peak counts (x_atac).")
        if self.atac is None:  # built with every model that has an ATAC part
            raise ValueError("This tokenizer has no ATAC part.")
        xa = self.atac_input(x_atac)
        peak_sample = how
        peak_rank: dict[str, Any] = {}
        if self.peak_selection == "idf" and sample in ("random", "hash", "rank"):
            # TF-IDF rank: a cell's rarest open peaks first (reproducible, as gene ranks)
            peak_sample, peak_rank = "rank", {"scale": self.peak_scale()}
        atac = self.atac(xa, self.atac_ids, sample=peak_sample, **peak_rank)
        has_atac = (xa[:, self.atac_ids >= 0] > 0).any(1)
        rna = has_rna = None
        if "rna" in self.modalities:
            if x is None:
                raise ValueError("This model has an RNA part: pass the expression (x).")
            rna = self.rna(x, self.gene_ids, sample=how, max_seq_len=max_seq_len, **rank)
            has_rna = (x[:, self.gene_ids >= 0] > 0).any(1)
        return join_modalities(
            rna, atac, has_rna, has_atac, pad_id=self.pad_id, pad_value=self.pad_value
        )

    def fixed_genes(
        self, x: torch.Tensor, columns: torch.Tensor, include_zeros: bool = True
    ) -> TokenizedBatch:
        """The panel columns ``columns`` of ``x`` as every cell's tokens, in this order.

        See :func:`fixed_gene_tokens` (gene–gene attention inspection).
        """
        return fixed_gene_tokens(self.rna, x, self.gene_ids, columns, include_zeros=include_zeros)

    def perturbation(
        self, x: torch.Tensor, pert_ids: torch.Tensor, ties: str = "hash"
    ) -> tuple[TokenizedBatch, torch.Tensor]:
        """Tokens of cells ``x`` under the perturbation of genes ``pert_ids`` ``(B, P)``.

        The whole panel, nothing sampled; see :func:`perturbation_tokens`. Returns the
        tokens and the panel columns they stand for.
        """
        return perturbation_tokens(self.rna, x, self.gene_ids, pert_ids, ties=cast(Ties, ties))

    # --- the generative split -------------------------------------------------------------
    def split_known(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the known / unknown split: ``(B, L)`` bool, True at ``<cls>`` and known genes.

        Per cell a ratio is drawn from ``mask_ratio`` and ``round(ratio × n_genes)``
        of its gene tokens become unknown (at random).
        """
        pad = tokens.padding_mask
        B, L = pad.shape
        genes = ~pad
        genes[:, 0] = False  # <cls>
        n_genes = genes.sum(1)
        pick = torch.randint(len(self.mask_ratio), (B,), device=pad.device, generator=generator)
        n_unknown = torch.round(self.mask_ratio[pick] * n_genes).long()
        score = torch.rand(B, L, device=pad.device, generator=generator)
        score = torch.where(genes, score, 2.0)  # non-genes rank last
        rank = score.argsort(1).argsort(1)
        unknown = (rank < n_unknown[:, None]) & genes
        return ~unknown & ~pad

    def generative_views(
        self, tokens: TokenizedBatch, generator: torch.Generator | None = None
    ) -> tuple[TokenizedBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training rows of a multimodal batch and their known / unknown split.

        Every cell gives a row with a random split over all its tokens
        (:meth:`split_known`). A cell with tokens of both modalities gives two more: its
        RNA tokens known and all its ATAC tokens to generate, and the reverse.

        Returns the rows' tokens, ``known`` ``(R, L)``, the cell of each row ``(R,)`` and
        the view code of each row (:data:`VIEW_JOINT`, :data:`VIEW_RNA`, :data:`VIEW_ATAC`).
        """
        mod, pad = tokens.modality, tokens.padding_mask
        B = pad.shape[0]
        dev = pad.device
        has_rna = ((mod == MOD_RNA) & ~pad).any(1)
        has_atac = ((mod == MOD_ATAC) & ~pad).any(1)
        paired = torch.nonzero(has_rna & has_atac).squeeze(1)
        known = self.split_known(tokens, generator)
        cells = torch.arange(B, device=dev)
        rows = torch.cat([cells, paired, paired])
        view = torch.cat(
            [
                torch.full((B,), VIEW_JOINT, device=dev),
                torch.full((len(paired),), VIEW_RNA, device=dev),
                torch.full((len(paired),), VIEW_ATAC, device=dev),
            ]
        )
        out = tokens.select(rows)
        m = out.modality
        visible = torch.where(view == VIEW_RNA, MOD_RNA, MOD_ATAC)[:, None]
        view_known = ((m == visible) | (m == MOD_CLS)) & ~out.padding_mask
        known = torch.where((view == VIEW_JOINT)[:, None], known[rows], view_known)
        return out, known, rows, view
