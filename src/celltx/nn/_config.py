"""One configuration object for every hyperparameter of the model (as nanoGPT's ``GPTConfig``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any


@dataclass(frozen=True)
class ScGPTConfig:
    """Shape, tokenizer and objective settings of a celltx scGPT model.

    ``nn``, ``module``, ``io`` and ``model`` all read their settings from this one object, so
    each default is written here and nowhere else. What depends on the data (vocabulary
    size, number of labels or batches, modalities) is not part of it.

    Parameters
    ----------
    d_model
        Model width (scGPT_human: 512).
    n_heads
        Attention heads (scGPT_human: 8).
    n_layers
        Transformer layers (scGPT_human: 12).
    d_hid
        Feed-forward width; ``None`` = ``d_model`` (as scGPT).
    dropout
        Dropout rate (value encoder, residual and feed-forward paths).
    attn_dropout
        Dropout on attention weights (scGPT uses ``dropout`` here too). Default 0: it keeps
        SDPA on its fused kernels and costs most of a CPU training step.
    max_seq_len
        Tokens per cell including ``<cls>``. Cells with more expressed genes are subsampled
        as ``gene_selection`` says.
    gene_selection
        Which expressed genes fill a cell's ``max_seq_len - 1`` tokens when it has more:
        ``"random"`` (scGPT: at random while training, reproducibly by a hash of the cell's
        genes and ``seed`` at inference), ``"rank"`` (rank-value selection as Geneformer /
        LangCell: the genes with the highest expression relative to the gene's non-zero
        median over the training cells, the same in training and inference; the medians are
        stored with the model, and both they and the ranking are on a depth-normalised
        linear scale, so counts and log-normalised values of a cell give the same tokens) or ``"hvg"`` (HVG-aware rank-value selection: a cell's
        expressed highly variable genes first — ``n_hvg`` genes chosen over the training
        cells by :func:`celltx.data.highly_variable`, stored with the model — then its other
        genes, each group in rank order).
    n_hvg
        Highly variable genes of ``gene_selection="hvg"``.
    random_token_fraction
        With ``"rank"`` or ``"hvg"``: the fraction of training cells whose genes are drawn
        in random order instead of by rank (``"hvg"``: still highly variable genes first),
        mixing scGPT's random choice into rank-value training. Inference stays
        deterministic.
    n_bins
        Value bins per cell, bin 0 = not expressed (scGPT: 51); ``None``: raw values.
    pad_value
        Input value of ``<cls>`` and padding tokens (scGPT: -2).
    input_emb_style
        ``"continuous"`` (scGPT's value MLP) or ``"category"`` (bin embedding).
    norm_first
        Pre-norm layers (scGPT uses post-norm).
    activation
        Feed-forward activation, ``"relu"`` or ``"gelu"``.
    zero_fraction
        Fraction of the RNA tokens given to non-expressed genes (see
        :class:`~celltx.data.Tokenizer`). ``None``: 0 (scGPT's pretraining) for RNA-only
        data, 0.25 when the data has ATAC too, so that cross-modal generation learns which
        genes are off, not only how high the expressed ones are.
    mask_ratio
        Held-out ("unknown") fractions for generative pretraining; one drawn per cell.
    gep_weight, mvc_weight
        Weights of the gene-prompt and cell-prompt (MVC) losses of the generative task
        (``task="generative"`` reads them here; a new model starts with that objective).
    contrast_temperature
        Temperature of the contrastive loss between two views of a cell (``task=
        "contrastive"``).
    contrast_thinning
        Augmentation of the contrastive views: each view's counts are binomially thinned
        with a keep probability drawn uniformly from ``[1 - contrast_thinning, 1]``
        (:func:`~celltx.data.thin_counts`), before its tokens are chosen. 0: off.
    contrast_gene_dropout
        Augmentation of the contrastive views: each expressed gene is dropped from a view
        with this probability before its tokens are chosen (:func:`~celltx.data.drop_genes`).
        0: off.
    contrast_positives
        Positives of the contrastive loss besides a cell's own second view: ``"self"``
        (none), ``"knn"`` (nearest neighbours within the cell's batch, NNCLR-style),
        ``"mnn"`` (mutual nearest neighbours across batches, CLAIRE-style; a cell without
        any keeps its within-batch neighbours; needs a ``batch_key``), ``"knn+mnn"``
        (both for every cell). ``None``: the task's choice (``"integration"``: ``"mnn"``; else
        ``"self"``). For the cross-modal part (``task="multiome"``) ``"knn"`` means
        neighbours from RNA PCA and ATAC LSI: a paired cell's neighbours in both
        modalities, and on a mosaic a cell of the other modality reached through the paired
        cells (:func:`~celltx.data.multiome_pairs`); ``"mnn"`` is refused there.
    contrast_k
        Neighbours per cell of ``contrast_positives``.
    contrast_filter
        Guard against false positives: in each step, this fraction of the neighbour pairs
        with the lowest cosine similarity of their current embeddings is left out (CLAIRE's
        refinement). 0: off.
    contrast_refresh
        Recompute the neighbours from the model's embedding every this many epochs
        (NNCLR-style); 0: keep the neighbours of the input's PCA for the whole run.
    seed
        Seed of the reproducible gene choice at inference.
    n_layers_cls
        Depth of the classifier head (built when the data has labels; scGPT: 3) and of the
        batch discriminator.
    dsbn
        Domain-specific batch norm (one batch norm per batch on the token embeddings; needs
        batches). Part of scGPT's integration recipe.
    dab
        Adversarial batch discriminator on the cell embedding with gradient reversal (needs
        batches).
    batch_token
        Batch embedding concatenated to the decoders' input (scGPT's ``use_batch_labels``;
        needs batches), so that generation accounts for batch and the cell embedding need
        not.
    max_peaks
        ATAC tokens per cell. Cells with more open peaks are subsampled as
        ``peak_selection`` says. The RNA budget is ``max_seq_len - 1``, so a multiome cell
        has at most ``max_seq_len + max_peaks`` tokens.
    peak_selection
        Which open peaks fill a cell's open-peak tokens when it has more: ``"random"`` (at
        random while training, by a hash of the cell at inference) or ``"idf"`` (TF-IDF
        rank: the open peaks that are rarest across the training cells first, i.e. the
        highest ``value × IDF`` with ``IDF = log(1 + n / (1 + n_open))``
        (:func:`celltx.data.peak_idf`), the same in training and inference; the IDF is
        stored with the model). Closed-peak tokens are drawn as with ``"random"``.
    atac_zero_fraction
        Fraction of ``max_peaks`` given to closed peaks (value 0), so that generation learns
        which peaks are open.
    atac_values
        ``"binary"``: open peaks (count > 0) get the top value bin, closed ones 0;
        ``"binned"``: per-cell quantile bins of the counts, as RNA.
    text_encoder
        Sentence encoder of cell–text alignment (``task="cell_text"``,
        :meth:`~celltx.model.ScGPT.predict_zero_shot`): ``"all-MiniLM-L6-v2"`` (bundled with
        ``celltx[text]``) or the path of a local sentence-transformers model directory.
    text_dim
        Width of the encoder's text embeddings; ``None`` until the model has a cell–text
        head (set by the first ``train(task="cell_text")``).
    ecs_threshold
        Threshold of scGPT's elastic cell similarity (``ecs``, ``task="integration_scgpt"``):
        cosines of cell pairs are pulled towards it. A number in ``[0, 1]``;
        ``train(loss_weights={"ecs_threshold": ...})`` overrides it (kept by later calls).
    align_temperature
        Temperature of the cross-modal alignment of multiome models (``align``).
    text_temperature
        Initial temperature of the cell–text head's learnable logit scale
        (:class:`~celltx.nn.CellTextHead`, ``task="cell_text"``).

    Examples
    --------
    >>> from celltx.nn import ScGPTConfig
    >>> cfg = ScGPTConfig(d_model=64, n_heads=4, n_layers=2)
    >>> cfg.d_hid_resolved, cfg.max_seq_len
    (64, 1200)
    >>> ScGPTConfig(d_model=30, n_heads=4)
    Traceback (most recent call last):
    ...
    ValueError: d_model=30 is not divisible by n_heads=4: each head gets d_model / n_heads dimensions (e.g. d_model=64, n_heads=4).
    """

    d_model: int = 256
    n_heads: int = 8
    n_layers: int = 4
    d_hid: int | None = None
    dropout: float = 0.2
    attn_dropout: float = 0.0
    max_seq_len: int = 1200
    gene_selection: str = "random"
    n_hvg: int = 2000
    random_token_fraction: float = 0.0
    n_bins: int | None = 51
    pad_value: float = -2.0
    input_emb_style: str = "continuous"
    norm_first: bool = False
    activation: str = "relu"
    zero_fraction: float | None = None
    mask_ratio: tuple[float, ...] = (0.25, 0.5, 0.75)
    gep_weight: float = 1.0
    mvc_weight: float = 1.0
    contrast_temperature: float = 0.1
    contrast_thinning: float = 0.0
    contrast_gene_dropout: float = 0.0
    contrast_positives: str | None = None
    contrast_k: int = 10
    contrast_filter: float = 0.0
    contrast_refresh: int = 0
    seed: int = 0
    n_layers_cls: int = 3
    dsbn: bool = False
    dab: bool = False
    batch_token: bool = False
    max_peaks: int = 1000
    peak_selection: str = "random"
    atac_zero_fraction: float = 0.5
    atac_values: str = "binary"
    text_encoder: str = "all-MiniLM-L6-v2"
    text_dim: int | None = None
    ecs_threshold: float = 0.8
    align_temperature: float = 0.1
    text_temperature: float = 0.07

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_ratio", tuple(float(r) for r in self.mask_ratio))
        _validate(self)

    @property
    def d_hid_resolved(self) -> int:
        """The feed-forward width (``d_hid``, or ``d_model`` when ``None``)."""
        return self.d_model if self.d_hid is None else self.d_hid

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the settings, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (JSON-ready; ``mask_ratio`` as a list)."""
        out = asdict(self)
        out["mask_ratio"] = list(self.mask_ratio)
        return out

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ScGPTConfig:
        """The config of a named shape in ``celltx.nn.PRESETS``, with ``overrides``.

        Names: ``"tiny"``, ``"small"``, ``"base"``, ``"scgpt_human"``.

        Examples
        --------
        >>> from celltx.nn import ScGPTConfig
        >>> ScGPTConfig.preset("small", dropout=0.1).d_model
        64
        """
        return cls(**preset(name, **overrides))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScGPTConfig:
        """Build from a dict of settings; unknown keys raise, naming the known ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"Unknown settings {unknown}; ScGPTConfig knows {list(cls.field_names())}."
            )
        return cls(**values)


#: Named model shapes: the one table the CLI (``--size``), the benchmarks' recipes, the tests,
#: tutorials and docs build models from (``ScGPTConfig.preset("small", dropout=0.1)``).
#: ``"tiny"`` is for tests and smoke runs (seconds on a CPU), ``"small"`` for CPU recipes on
#: thousands of cells, ``"base"`` is :class:`ScGPTConfig`'s own default shape and
#: ``"scgpt_human"`` the published scGPT_human checkpoint's.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 64},
    "small": {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 256},
    "base": {"d_model": 256, "n_layers": 4, "n_heads": 8, "max_seq_len": 1200},
    "scgpt_human": {
        "d_model": 512,
        "n_layers": 12,
        "n_heads": 8,
        "max_seq_len": 1200,
        "dropout": 0.2,
        "n_layers_cls": 3,
    },
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The settings of the named shape in ``celltx.nn.PRESETS``, with ``overrides`` on top.

    A plain dict (for ``ScGPT(adata, **preset("small"))`` and the benchmarks' ``model``
    recipes); :meth:`ScGPTConfig.preset` builds the config itself.

    Examples
    --------
    >>> from celltx.nn import preset
    >>> preset("small", dropout=0.1)
    {'d_model': 64, 'n_layers': 2, 'n_heads': 4, 'max_seq_len': 256, 'dropout': 0.1}
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; use one of {list(PRESETS)}.")
    unknown = sorted(set(overrides) - set(ScGPTConfig.field_names()))
    if unknown:
        raise ValueError(
            f"Unknown settings {unknown}; ScGPTConfig knows {list(ScGPTConfig.field_names())}."
        )
    return {**PRESETS[name], **overrides}


def config_default(value: Any, name: str) -> Any:
    """``value``, or when it is ``None`` the default of the :class:`ScGPTConfig` field ``name``.

    How the building blocks of :mod:`celltx.nn` fill a hyperparameter that a caller leaves
    out: the number is written once, in :class:`ScGPTConfig`, and read from there.
    """
    return getattr(ScGPTConfig, name) if value is None else value


def _is_int(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, Integral)


def _is_number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, Real)


def _validate(c: ScGPTConfig) -> None:
    """Refuse impossible settings before anything is built."""
    minimum = {
        "d_model": 1,
        "n_heads": 1,
        "n_layers": 1,
        "n_layers_cls": 1,
        "max_peaks": 1,
        "max_seq_len": 2,
        "seed": 0,
    }
    for name, low in minimum.items():
        v = getattr(c, name)
        if not _is_int(v) or v < low:
            raise ValueError(f"{name}={v!r} must be an integer >= {low}.")
    if not isinstance(c.text_encoder, str) or not c.text_encoder:
        raise ValueError(f"text_encoder={c.text_encoder!r} must be a model name or a path.")
    for name, low in (("d_hid", 1), ("n_bins", 3), ("text_dim", 1)):
        v = getattr(c, name)
        if v is not None and (not _is_int(v) or v < low):
            raise ValueError(f"{name}={v!r} must be an integer >= {low} or None.")
    if isinstance(c.n_hvg, bool) or not isinstance(c.n_hvg, int) or c.n_hvg < 1:
        raise ValueError(f"n_hvg={c.n_hvg!r} must be an integer >= 1.")
    r = c.random_token_fraction
    if not _is_number(r) or not 0 <= r <= 1:
        raise ValueError(f"random_token_fraction={r!r} must be a number in [0, 1].")
    if r and c.gene_selection == "random":
        raise ValueError(
            "random_token_fraction mixes random choices into gene_selection='rank' or 'hvg'; "
            "with gene_selection='random' every training cell is drawn at random already."
        )
    for name in ("dropout", "attn_dropout", "atac_zero_fraction", "zero_fraction"):
        v = getattr(c, name)
        if v is None and name == "zero_fraction":
            continue
        if not _is_number(v) or not 0 <= v < 1:
            raise ValueError(f"{name}={v!r} must be a number in [0, 1).")
    if c.d_model % c.n_heads:
        raise ValueError(
            f"d_model={c.d_model} is not divisible by n_heads={c.n_heads}: each head gets "
            "d_model / n_heads dimensions (e.g. d_model=64, n_heads=4)."
        )
    for name, ok in (
        ("input_emb_style", ("continuous", "category")),
        ("activation", ("relu", "gelu")),
        ("atac_values", ("binary", "binned")),
        ("gene_selection", ("random", "rank", "hvg")),
        ("peak_selection", ("random", "idf")),
    ):
        if getattr(c, name) not in ok:
            raise ValueError(f"{name}={getattr(c, name)!r}; use one of {list(ok)}.")
    if c.input_emb_style == "category" and c.n_bins is None:
        raise ValueError("input_emb_style='category' needs n_bins.")
    if c.atac_values == "binned" and c.n_bins is None:
        raise ValueError("atac_values='binned' needs n_bins.")
    if not c.mask_ratio or not all(0.0 < r < 1.0 for r in c.mask_ratio):
        raise ValueError(f"mask_ratio={c.mask_ratio} must be fractions strictly in (0, 1).")
    for name in ("contrast_thinning", "contrast_gene_dropout", "contrast_filter"):
        v = getattr(c, name)
        if not _is_number(v) or not 0 <= v < 1:
            raise ValueError(f"{name}={v!r} must be a number in [0, 1).")
    if c.contrast_positives not in (None, "self", "knn", "mnn", "knn+mnn"):
        raise ValueError(
            f"contrast_positives={c.contrast_positives!r}; use None, 'self', 'knn', 'mnn' or "
            "'knn+mnn'."
        )
    for name, low in (("contrast_k", 1), ("contrast_refresh", 0)):
        v = getattr(c, name)
        if not _is_int(v) or v < low:
            raise ValueError(f"{name}={v!r} must be an integer >= {low}.")
    for name in ("contrast_temperature", "align_temperature", "text_temperature"):
        t = getattr(c, name)
        if not _is_number(t) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"{name}={t!r} must be a finite number > 0.")
    if not _is_number(c.ecs_threshold) or not 0 <= c.ecs_threshold <= 1:
        raise ValueError(f"ecs_threshold={c.ecs_threshold!r} must be a number in [0, 1].")
    for name in ("gep_weight", "mvc_weight"):
        v = getattr(c, name)
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}={v!r} must be a finite number >= 0.")
