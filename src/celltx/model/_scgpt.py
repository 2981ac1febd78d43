"""The user-facing scvi-tools model class :class:`ScGPT`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses rich.pretty unimported)
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalObsField,
    LayerField,
    MuDataCategoricalObsField,
    MuDataWrapper,
)
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.train import TrainRunner

from celltx import io
from celltx.data import (
    GeneMatch,
    GeneVocab,
    check_expression,
    gene_names,
    match_genes,
    modality_presence,
)
from celltx.data._perturbation import condition_name, parse_condition, parse_conditions
from celltx.model._save import SafeSaveMixin
from celltx.module import ScGPTModule
from celltx.module._scgpt import ATAC_KEY, PERTURBATION_KEY
from celltx.train import PretrainingPlan

logger = logging.getLogger(__name__)


class GeneLayerField(LayerField):
    """Expression field whose gene panel may differ between AnnData objects.

    scvi-tools' :class:`~scvi.data.fields.LayerField` requires a query AnnData to have
    exactly the registered number of genes. celltx matches genes to its vocabulary *by
    name*, so a query may hold another order or subset of genes; this field accepts that
    and records the query's own panel.
    """

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        self.validate_field(adata_target)
        return self.register_field(adata_target)


class LabelsField(CategoricalObsField):
    """Cell-type labels in which missing values (NaN) mean *unlabelled*.

    scvi-tools' :class:`~scvi.data.fields.CategoricalObsField` refuses NaN. Here NaN cells
    get code ``-1`` and are left out of classification losses (semi-supervised data
    works). A query AnnData may lack the column or hold labels unseen in training: those
    cells are unlabelled too; the registered categories never change.
    """

    def _values(self, adata: AnnData) -> pd.Series:
        """The column's values as they are coded (subclasses may canonicalize them)."""
        return adata.obs[self._original_attr_key]

    def register_field(self, adata: AnnData) -> dict:
        if self.is_default:
            return super().register_field(adata)
        cat = self._values(adata).astype("category")
        adata.obs[self.attr_key] = cat.cat.codes.to_numpy().astype(np.int64)
        return {
            self.CATEGORICAL_MAPPING_KEY: cat.cat.categories.to_numpy(copy=True),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        if self.is_default:
            return super().transfer_field(state_registry, adata_target, **kwargs)
        mapping = state_registry[self.CATEGORICAL_MAPPING_KEY]
        if self._original_attr_key in adata_target.obs:
            codes = pd.Categorical(self._values(adata_target), categories=mapping).codes
        else:
            codes = np.full(adata_target.n_obs, -1)
        adata_target.obs[self.attr_key] = np.asarray(codes, dtype=np.int64)
        return {
            self.CATEGORICAL_MAPPING_KEY: mapping.copy(),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }


class PerturbationField(LabelsField):
    """Perturbation conditions in GEARS notation (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``) or
    a plain gene column.

    Conditions are parsed and written canonically (``"ctrl+A"`` and ``"A"`` both become
    ``"A+ctrl"``); the codes follow the canonical names. A query AnnData may lack the
    column or hold new conditions: those cells get code ``-1``.
    """

    def __init__(self, registry_key: str, attr_key: str | None, control_value: str = "ctrl", max_genes: int = 2):
        super().__init__(registry_key, attr_key)
        self.control_value = control_value
        self.max_genes = max_genes

    def _values(self, adata: AnnData) -> pd.Series:
        col = adata.obs[self._original_attr_key].astype(object)
        return parse_conditions(col, control_value=self.control_value, max_genes=self.max_genes)[1]


MuDataGeneLayerField = MuDataWrapper(GeneLayerField)
MuDataLabelsField = MuDataWrapper(LabelsField)

#: keys of setup_mudata's ``modalities``
_MODALITY_KEYS = ("rna_layer", "atac_layer", "batch_key", "labels_key")
_PEAK_NAME = r"^(chr)?[0-9A-Za-z_.]+[:_-][0-9,]+[-_:][0-9,]+$"


def _check_modality_kind(adata: AnnData, expected: str, mod: str) -> None:
    """Refuse a modality that holds the other kind of features (swapped modalities)."""
    wrong = None
    if "feature_types" in adata.var.columns:
        kinds = set(adata.var["feature_types"].astype(str).unique())
        if expected == "rna" and kinds == {"Peaks"}:
            wrong = "ATAC peaks (var['feature_types'] is 'Peaks')"
        if expected == "atac" and kinds == {"Gene Expression"}:
            wrong = "genes (var['feature_types'] is 'Gene Expression')"
    if wrong is None and adata.n_vars:
        looks_like_peaks = pd.Index(adata.var_names.astype(str)).str.match(_PEAK_NAME).mean()
        if expected == "rna" and looks_like_peaks > 0.9:
            wrong = "ATAC peaks (its var_names are genomic intervals such as 'chr1:100-600')"
        if expected == "atac" and looks_like_peaks < 0.1 and "chrom" not in adata.var.columns:
            wrong = "no peaks (its var_names are not genomic intervals and var has no 'chrom')"
    if wrong:
        other = "atac_layer" if expected == "rna" else "rna_layer"
        raise ValueError(
            f"Modality {mod!r} is registered as {expected.upper()} but holds {wrong}. Check "
            f"modalities={{'{expected}_layer': ..., '{other}': ...}}: the modality names may be swapped."
        )


def _check_mudata(mdata, rna_layer, atac_layer, batch_key, labels_key, gene_symbols, modalities) -> dict:
    """Bad MuData input for setup_mudata, before registration: clear errors, nothing
    changed. Returns the resolved ``modalities``."""
    from mudata import MuData

    if not isinstance(mdata, MuData):
        raise ValueError(
            f"setup_mudata expects a MuData, not {type(mdata).__name__}; for an AnnData use "
            "setup_anndata (modality='atac' for peaks)."
        )
    if modalities is None:
        modalities = {k: v for k, v in (("rna_layer", "rna"), ("atac_layer", "atac")) if v in mdata.mod}
        if not modalities:
            raise ValueError(
                f"No modality named 'rna' or 'atac' (modalities: {list(mdata.mod)}); pass "
                "modalities={'rna_layer': '<RNA modality>', 'atac_layer': '<ATAC modality>'}."
            )
    modalities = dict(modalities)
    unknown = set(modalities) - set(_MODALITY_KEYS)
    if unknown:
        raise ValueError(f"Unknown keys {sorted(unknown)} in modalities; use {list(_MODALITY_KEYS)}.")
    if not modalities.get("rna_layer") and not modalities.get("atac_layer"):
        raise ValueError(
            "modalities names neither an RNA nor an ATAC modality: pass "
            "modalities={'rna_layer': 'rna', 'atac_layer': 'atac'}."
        )
    for key, mod in modalities.items():
        if mod is not None and mod not in mdata.mod:
            raise ValueError(
                f"modalities[{key!r}]={mod!r} is not a modality of the MuData "
                f"(modalities: {list(mdata.mod)})."
            )
    presence = modality_presence(mdata)
    used = [m for m in (modalities.get("rna_layer"), modalities.get("atac_layer")) if m]
    if not presence[used].all().all():
        counts = presence[used].value_counts().to_dict()
        raise ValueError(
            f"The MuData is a mosaic: not every cell is in every modality ({counts}, "
            "columns " + ", ".join(used) + "). scvi-tools registers fully paired data: "
            "mdata = celltx.data.pad_mosaic(mdata) gives every modality every cell (all-zero "
            "rows where a cell was not measured), then call setup_mudata on it."
        )
    _check_modality_order(mdata, used)
    measured = np.zeros(mdata.n_obs, dtype=bool)
    for kind, key, layer in (("rna", "rna_layer", rna_layer), ("atac", "atac_layer", atac_layer)):
        mod = modalities.get(key)
        if not mod:
            if layer is not None:
                raise ValueError(f"{key}={layer!r} given but modalities has no {key!r} modality.")
            continue
        a = mdata.mod[mod]
        if layer is not None and layer not in a.layers:
            raise ValueError(
                f"{key}={layer!r} is not a layer of modality {mod!r} (layers: {list(a.layers)}); "
                f"pass an existing layer or {key}=None for X."
            )
        _check_modality_kind(a, kind, mod)
        if kind == "rna":
            gene_names(a, gene_symbols)
        else:
            gene_names(a)  # duplicate peak names
        values = a.X if layer is None else a.layers[layer]
        where = f"mdata.mod[{mod!r}]." + ("X" if layer is None else f"layers[{layer!r}]")
        check_expression(values, where)
        row_sums = np.asarray(values.sum(1)).ravel()
        pos = mdata.obs_names.get_indexer(a.obs_names)
        measured[pos[row_sums > 0]] = True
        if kind == "atac":
            from scipy import sparse

            v = values.data if sparse.issparse(values) else np.asarray(values)
            if v.size and v.max() > 1:
                logger.info(
                    "%s holds fragment counts (up to %g); ScGPT binarizes them (open = count > 0) "
                    "unless built with atac_values='binned'.", where, float(v.max())
                )
    if not measured.all():
        raise ValueError(
            f"{int((~measured).sum())} cells have no counts in any registered modality (e.g. "
            f"{mdata.obs_names[~measured][:3].tolist()}): they cannot be embedded. Remove them, "
            "e.g. mdata = mdata[<mask of measured cells>].copy()."
        )
    if modalities.get("rna_layer") and modalities.get("atac_layer"):
        genes = set(gene_names(mdata.mod[modalities["rna_layer"]], gene_symbols))
        clash = [p for p in mdata.mod[modalities["atac_layer"]].var_names if p in genes]
        if clash:
            raise ValueError(
                f"{len(clash)} peak names are also gene names (e.g. {clash[:3]}); rename the peaks "
                "(e.g. to 'chrom:start-end')."
            )
    for key, name in (("batch_key", batch_key), ("labels_key", labels_key)):
        if name is None:
            continue
        where_obs = mdata.obs if modalities.get(key) is None else mdata.mod[modalities[key]].obs
        if name not in where_obs.columns:
            place = "mdata.obs" if modalities.get(key) is None else f"mdata.mod[{modalities[key]!r}].obs"
            raise ValueError(
                f"{key}={name!r} is not a column of {place} (columns: {list(where_obs.columns)[:20]}). "
                "If it lives in a modality, name it in modalities, or call mdata.pull_obs()."
            )
    return modalities


def _check_modality_order(mdata, mods: Sequence[str]) -> None:
    """Refuse modalities whose rows are not ``mdata.obs_names`` in order.

    scvi-tools reads each registered modality by row position, so a modality listing the
    same cells in another order would pair one cell's RNA with another cell's ATAC."""
    for mod in mods:
        names = mdata.mod[mod].obs_names
        if not names.equals(mdata.obs_names):
            same_cells = len(names) == mdata.n_obs and names.isin(mdata.obs_names).all()
            what = "lists the same cells in another order" if same_cells else "does not list mdata.obs_names"
            raise ValueError(
                f"Modality {mod!r} {what}: its rows would be paired with the other modalities' "
                "rows by position, i.e. with other cells. Order every modality like mdata.obs: "
                "mdata = celltx.data.pad_mosaic(mdata) (returns a copy whose modalities all follow "
                "mdata.obs_names), then set it up."
            )


def _check_perturbations(adata: AnnData, key: str, control_value: str, max_genes: int, min_cells: int) -> None:
    """Bad perturbation input, before registration: clear errors, nothing changed."""
    genes, names = parse_conditions(adata.obs[key].astype(object), control_value=control_value, max_genes=max_genes)
    counts = names.value_counts()
    if control_value not in counts.index:
        raise ValueError(
            f"No control cells: no cell of obs[{key!r}] is {control_value!r} (values: "
            f"{list(counts.index[:10])}). Pass control_value= with the label of the control cells."
        )
    few = counts[counts < min_cells]
    if len(few):
        raise ValueError(
            f"{len(few)} condition(s) have fewer than {min_cells} cells: "
            f"{dict(few.head(10))}. Remove them (adata = adata[~adata.obs[{key!r}].isin([...])]."
            "copy()) or lower min_cells_per_condition."
        )


#: loss-weight presets of ScGPT.train(task=...)
TASKS = {
    "generative": {"gep": 1.0, "mvc": 1.0},
    "annotation": {"gep": 0.0, "mvc": 0.0, "cls": 1.0},
    "integration": {"gep": 1.0, "mvc": 1.0, "ecs": 10.0, "dab": 1.0},
    "perturbation": {"gep": 0.0, "mvc": 0.0, "pert": 1.0},
}


def _check_log_normalized(values, where: str) -> None:
    """Perturbation responses are predicted in the data's own units: refuse raw counts."""
    from scipy import sparse

    if not (sparse.issparse(values) or isinstance(values, np.ndarray)):
        values = values[: min(values.shape[0], 5_000)]  # backed data: the first rows suffice
    v = values.data if sparse.issparse(values) else np.asarray(values)
    v = np.asarray(v).ravel()[:1_000_000]
    v = v[v != 0]
    # log-normalized values are (almost) never whole numbers; counts always are, whatever
    # their maximum (a shallow panel can have counts <= 30 everywhere)
    if v.size and np.all(np.mod(v, 1) == 0):
        raise ValueError(
            f"{where} looks like raw counts (whole numbers up to {v.max():.0f}); perturbation "
            "responses are learned and predicted on log-normalized expression, as GEARS: "
            "run sc.pp.normalize_total(adata); sc.pp.log1p(adata) (or put those values in "
            "a layer and pass layer=)."
        )


def _check_obs_key(adata: AnnData, key: str | None, arg: str) -> None:
    if key is not None and key not in adata.obs.columns:
        raise ValueError(
            f"{arg}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]}). "
            f"Pass an existing column or {arg}=None."
        )
    if key is not None and arg == "batch_key" and adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise ValueError(
            f"batch_key={key!r} has {n} missing values (NaN); every cell needs a batch. Fill them, "
            f"e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str) (NaN becomes 'nan'), or drop "
            "those cells."
        )


@contextmanager
def _registration_undone_on_failure(data):
    """Put back scvi-tools' ``_scvi_*`` keys of ``data`` (an AnnData or a MuData and its
    modalities) as they were if the block raises: a failed setup or load leaves the user's
    object as it was."""
    parts = [data, *getattr(data, "mod", {}).values()]
    saved = [
        (
            part,
            {k: part.obs[k].copy() for k in part.obs.columns if str(k).startswith("_scvi")},
            {k: part.uns[k] for k in part.uns if str(k).startswith("_scvi")},
        )
        for part in parts
    ]
    try:
        yield
    except BaseException:
        for part, obs, uns in saved:
            for k in [c for c in part.obs.columns if str(c).startswith("_scvi")]:
                if k in obs:
                    part.obs[k] = obs[k]
                else:
                    del part.obs[k]
            for k in [c for c in part.uns if str(c).startswith("_scvi")]:
                if k not in uns:
                    del part.uns[k]
            part.uns.update(uns)
        raise


def _check_model_args(args: Mapping) -> None:
    """Refuse impossible architecture / tokenizer settings before anything is built."""

    def integer(name, low, allow_none=False):
        v = args[name]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
            none = " or None" if allow_none else ""
            raise ValueError(f"{name}={v!r} must be an integer >= {low}{none}.")

    def fraction(name, allow_none=False):
        v = args[name]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not 0 <= v < 1:
            raise ValueError(f"{name}={v!r} must be a number in [0, 1).")

    for name in ("d_model", "n_heads", "n_layers", "n_layers_cls", "max_peaks"):
        integer(name, 1)
    integer("max_seq_len", 2)
    integer("min_genes", 0)
    integer("d_hid", 1, allow_none=True)
    integer("n_bins", 3, allow_none=True)
    integer("seed", 0)
    for name in ("dropout", "attn_dropout", "atac_zero_fraction"):
        fraction(name)
    fraction("zero_fraction", allow_none=True)
    fraction("min_gene_fraction")
    if args["d_model"] % args["n_heads"]:
        raise ValueError(
            f"d_model={args['d_model']} is not divisible by n_heads={args['n_heads']}: each head "
            "gets d_model / n_heads dimensions (e.g. d_model=64, n_heads=4)."
        )
    for name, ok in (("input_emb_style", ("continuous", "category")), ("activation", ("relu", "gelu")),
                     ("atac_values", ("binary", "binned"))):
        if args[name] not in ok:
            raise ValueError(f"{name}={args[name]!r}; use one of {list(ok)}.")
    for name in ("gep_weight", "mvc_weight"):
        v = args[name]
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name}={v!r} must be a finite number >= 0.")


def _resolve_vocab(vocab) -> GeneVocab:
    if isinstance(vocab, GeneVocab):
        return vocab
    if isinstance(vocab, Mapping):
        return GeneVocab(vocab)
    if isinstance(vocab, str | os.PathLike):
        return GeneVocab.from_file(vocab)
    raise ValueError(f"vocab must be a GeneVocab, a {{token: id}} dict or a path, not {type(vocab)}.")


def _resolve_device(accelerator: str, device: int | str) -> str:
    from scvi.model._utils import parse_device_args

    return parse_device_args(accelerator, device, return_device="torch")[2]


class ScGPT(SafeSaveMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """scGPT foundation model as an scvi-tools model.

    Cells become sequences of gene tokens with per-cell binned expression values; a
    transformer is pretrained with scGPT's attention-masked generative objective, and the
    ``<cls>`` output is the cell embedding.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    vocab
        Gene vocabulary (:class:`~celltx.data.GeneVocab`, ``{token: id}`` dict or path to a
        scGPT ``vocab.json``). ``None`` builds one from the AnnData's genes.
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
        Dropout on attention weights (scGPT uses ``dropout`` here too). Default 0: it
        keeps SDPA on its fused kernels and costs most of a CPU training step.
    max_seq_len
        Tokens per cell including ``<cls>``. Cells with more expressed genes are
        subsampled: at random while training, reproducibly (by a hash of the cell's genes
        and ``seed``) at inference.
    n_bins
        Value bins per cell, bin 0 = not expressed (scGPT: 51).
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
        data, 0.25 when the data has ATAC too, so that cross-modal generation
        (:meth:`predict_rna_from_atac`) learns which genes are off, not only how high the
        expressed ones are.
    mask_ratio
        Held-out ("unknown") fractions for generative pretraining; one drawn per cell.
    gep_weight, mvc_weight
        Weights of the gene-prompt and cell-prompt (MVC) losses.
    seed
        Seed of the reproducible gene choice at inference.
    n_layers_cls
        Depth of the classifier head, built when the AnnData was set up with
        ``labels_key`` (scGPT: 3), and of the batch discriminator.
    dsbn
        Domain-specific batch norm (one batch norm per batch on the token embeddings; needs
        ``batch_key``). Part of scGPT's integration recipe.
    dab
        Adversarial batch discriminator on the cell embedding with gradient reversal
        (needs ``batch_key``); weighted by ``dab`` in :meth:`train`'s ``loss_weights``.
    batch_token
        Batch embedding concatenated to the decoders' input (scGPT's ``use_batch_labels``;
        needs ``batch_key``), so that generation accounts for batch and the cell embedding
        need not.
    min_genes
        Fewest genes of an AnnData that must be in the vocabulary.
    min_gene_fraction
        Smallest fraction of an AnnData's genes that must be in the vocabulary.
    max_peaks
        ATAC tokens per cell (data set up with peaks, :meth:`setup_mudata` or
        ``setup_anndata(modality="atac")``). Cells with more open peaks are subsampled
        like genes. The RNA budget is ``max_seq_len - 1``, so a multiome cell has at most
        ``max_seq_len + max_peaks`` tokens.
    atac_zero_fraction
        Fraction of ``max_peaks`` given to closed peaks (value 0), so that generation
        learns which peaks are open.
    atac_values
        ``"binary"`` (default): open peaks (count > 0) get the top value bin, closed ones
        0; ``"binned"``: per-cell quantile bins of the counts, as RNA.

    Examples
    --------
    >>> import celltx
    >>> adata = celltx.datasets.pbmc68k()
    >>> celltx.model.ScGPT.setup_anndata(adata)
    >>> model = celltx.model.ScGPT(adata, d_model=64, n_layers=2, n_heads=4, max_seq_len=256)
    >>> model.train(max_epochs=5, batch_size=32)  # doctest: +SKIP
    >>> adata.obsm["X_scgpt"] = model.get_latent_representation()
    >>> adata.obsm["X_scgpt"].shape
    (700, 64)
    """

    _module_cls = ScGPTModule
    _training_plan_cls = PretrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
        d_model: int = 256,
        n_heads: int = 8,
        n_layers: int = 4,
        d_hid: int | None = None,
        dropout: float = 0.2,
        attn_dropout: float = 0.0,
        max_seq_len: int = 1200,
        n_bins: int | None = 51,
        pad_value: float = -2.0,
        input_emb_style: str = "continuous",
        norm_first: bool = False,
        activation: str = "relu",
        zero_fraction: float | None = None,
        mask_ratio: Sequence[float] = (0.25, 0.5, 0.75),
        gep_weight: float = 1.0,
        mvc_weight: float = 1.0,
        seed: int = 0,
        min_genes: int = 10,
        min_gene_fraction: float = 0.0,
        n_layers_cls: int = 3,
        dsbn: bool = False,
        dab: bool = False,
        batch_token: bool = False,
        max_peaks: int = 1000,
        atac_zero_fraction: float = 0.5,
        atac_values: str = "binary",
    ):
        if adata is None:
            raise ValueError(
                "ScGPT needs an AnnData registered with ScGPT.setup_anndata(adata) to build "
                "its gene vocabulary."
            )
        _check_model_args(locals())
        super().__init__(adata)
        symbols = self._setup_args(self.adata).get("gene_symbols")
        conditions = self._registered_conditions()
        rna, atac = self._modality(self.adata, REGISTRY_KEYS.X_KEY), self._modality(self.adata, ATAC_KEY)
        modalities = tuple(m for m, a in (("rna", rna), ("atac", atac)) if a is not None)
        peaks = [] if atac is None else [str(p) for p in atac.var_names]
        if vocab is None:
            genes = []
            if rna is not None:
                names = gene_names(rna, symbols)
                genes = list(pd.unique(names[names != ""].to_numpy()))
            # perturbed genes outside the measured panel get tokens of their own
            targets = self._condition_targets(conditions)
            genes += [g for g in targets if g not in set(genes)]
            # peak tokens are built from the data (peaks are dataset-specific)
            vocab = GeneVocab.from_genes(genes + peaks)
            self.n_new_tokens_ = 0
        else:
            vocab = _resolve_vocab(vocab)
            n = len(vocab)
            vocab = vocab.extend(peaks)  # e.g. a checkpoint's genes: peak tokens are new
            self.n_new_tokens_ = len(vocab) - n
        if zero_fraction is None:
            zero_fraction = 0.25 if "atac" in modalities and "rna" in modalities else 0.0
        self.vocab = vocab
        self.min_genes = min_genes
        self.min_gene_fraction = min_gene_fraction
        match = self._match(self.adata, vocab)
        atac_ids = None if atac is None else self._atac_ids(self.adata, vocab)
        setup = self._setup_args(self.adata)
        n_labels = self.summary_stats.n_labels if setup.get("labels_key") else None
        n_batch = self.summary_stats.n_batch if setup.get("batch_key") else 0
        if (dsbn or dab or batch_token) and not n_batch:
            raise ValueError(
                "dsbn, dab and batch_token need batches: set up the AnnData with "
                "ScGPT.setup_anndata(adata, batch_key='<obs column>')."
            )
        self.module = self._module_cls(
            n_tokens=len(vocab),
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            gene_ids=np.zeros(0, dtype=np.int64) if match is None else match.ids,
            d_model=d_model,
            n_heads=n_heads,
            d_hid=d_hid,
            n_layers=n_layers,
            dropout=dropout,
            attn_dropout=attn_dropout,
            input_emb_style=input_emb_style,
            norm_first=norm_first,
            activation=activation,
            max_seq_len=max_seq_len,
            n_bins=n_bins,
            pad_value=pad_value,
            zero_fraction=zero_fraction,
            seed=seed,
            mask_ratio=mask_ratio,
            gep_weight=gep_weight,
            mvc_weight=mvc_weight,
            n_labels=n_labels,
            n_layers_cls=n_layers_cls,
            n_batch=n_batch,
            dsbn=dsbn,
            dab=dab,
            batch_token=batch_token,
            perturbation=conditions is not None,
            modalities=modalities,
            atac_ids=atac_ids,
            max_peaks=max_peaks,
            atac_zero_fraction=atac_zero_fraction,
            atac_values=atac_values,
        )
        if conditions is not None:
            self.module.set_conditions(torch.as_tensor(self._condition_gene_ids(conditions)))
            self.module.pair_by_labels = bool(setup.get("labels_key"))
        n_params = sum(p.numel() for p in self.module.parameters())
        panel = [] if match is None else [f"{match.n_matched}/{rna.n_vars} genes matched"]
        if atac is not None:
            panel.append(f"{int((atac_ids >= 0).sum())} peaks (max_peaks {max_peaks}, {atac_values})")
        self._model_summary_string = (
            f"ScGPT: {n_layers} layers, d_model {d_model}, {n_heads} heads, "
            f"max_seq_len {max_seq_len}, n_bins {n_bins}, vocab {len(vocab)} tokens, "
            f"{', '.join(panel)}, {n_params / 1e6:.2f}M parameters"
        )
        extras = [f"classifier ({n_labels} labels)"] if n_labels else []
        extras += [name for name, on in (("DSBN", dsbn), ("DAB", dab), ("batch token", batch_token)) if on]
        if conditions is not None:
            extras.append(f"perturbation ({len(conditions)} conditions)")
        if extras:
            self._model_summary_string += ", " + ", ".join(extras)
        self.init_params_ = self._get_init_params(locals())
        # store the vocabulary itself, so that ScGPT.load(dir, other_adata) rebuilds it exactly
        self.init_params_["non_kwargs"]["vocab"] = vocab.to_dict()

    # --- registration -----------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols: str | None = None,
        perturbation_key: str | None = None,
        control_value: str = "ctrl",
        max_perturbed_genes: int = 2,
        min_cells_per_condition: int = 2,
        modality: str = "rna",
        **kwargs,
    ) -> None:
        """Register an AnnData with scvi-tools for :class:`ScGPT`.

        Values may be raw counts or log-normalized expression (tokenization bins each cell
        by rank, so both work); they must be non-negative and finite. Nothing is added to
        ``adata`` beyond scvi-tools' registration (``obs['_scvi_*']``, ``uns['_scvi_*']``).

        Parameters
        ----------
        adata
            AnnData with cells × genes.
        layer
            Layer with the expression values; ``None`` uses ``adata.X``.
        batch_key
            ``obs`` column with batches.
        labels_key
            ``obs`` column with cell-type labels.
        gene_symbols
            ``var`` column with gene symbols, when ``var_names`` are not the names the
            vocabulary uses (e.g. Ensembl IDs).
        perturbation_key
            ``obs`` column with genetic perturbations, in GEARS notation (``"ctrl"``,
            ``"GENE+ctrl"``, ``"GENE1+GENE2"``) or one gene symbol per cell. For
            :meth:`predict_perturbation` after ``train(task="perturbation")``; the values
            must be log-normalized expression (as GEARS), not raw counts. ``batch_key``
            and ``labels_key`` (e.g. a cell line) then decide which control cells a
            perturbed cell is paired with.
        control_value
            The value of ``perturbation_key`` that marks control cells.
        max_perturbed_genes
            Most genes one condition may perturb.
        min_cells_per_condition
            Fewest cells a condition must have.
        modality
            ``"rna"`` (genes) or ``"atac"``: cells × peaks with fragment counts or binary
            accessibility, for an ATAC-only model (peaks are tokens whose vocabulary is
            built from the data; see :meth:`setup_mudata` for how peaks are tokenized).

        Examples
        --------
        >>> import celltx
        >>> adata = celltx.datasets.pbmc68k()
        >>> celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")
        """
        if not isinstance(adata, AnnData):
            raise ValueError(
                f"setup_anndata expects an AnnData, not {type(adata).__name__}; for MuData use "
                "setup_mudata."
            )
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
        if adata.is_view:
            raise ValueError(
                "adata is a view of another AnnData (e.g. adata[mask]); scvi-tools registers fields "
                "by writing to it, which would silently copy it. Set up a copy: "
                "adata = adata[mask].copy(); ScGPT.setup_anndata(adata)."
            )
        if layer is not None and layer not in adata.layers:
            raise ValueError(
                f"layer={layer!r} is not in adata.layers (layers: {list(adata.layers)}). "
                "Pass an existing layer, or layer=None to use adata.X."
            )
        if modality not in ("rna", "atac"):
            raise ValueError(f"modality={modality!r}; use 'rna' or 'atac'.")
        if modality == "atac":
            if perturbation_key is not None or gene_symbols is not None:
                raise ValueError("perturbation_key and gene_symbols apply to RNA (modality='rna').")
            _check_modality_kind(adata, "atac", "adata")
        _check_obs_key(adata, batch_key, "batch_key")
        _check_obs_key(adata, labels_key, "labels_key")
        _check_obs_key(adata, perturbation_key, "perturbation_key")
        gene_names(adata, gene_symbols)  # duplicate names / missing symbol column
        values = adata.X if layer is None else adata.layers[layer]
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        check_expression(values, where)
        if perturbation_key is not None:
            _check_perturbations(adata, perturbation_key, control_value, max_perturbed_genes, min_cells_per_condition)
            _check_log_normalized(values, where)
        del values, where  # scvi-tools records the locals of this call as its setup arguments
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            GeneLayerField(REGISTRY_KEYS.X_KEY if modality == "rna" else ATAC_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            LabelsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        if perturbation_key is not None:
            anndata_fields.append(
                PerturbationField(PERTURBATION_KEY, perturbation_key, control_value, max_perturbed_genes)
            )
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        with _registration_undone_on_failure(adata):
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols: str | None = None,
        modalities: Mapping[str, str] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with RNA and / or ATAC for :class:`ScGPT` (joint embedding).

        Uses scvi-tools' MuData fields, as ``MULTIVI.setup_mudata``: expression from the
        RNA modality, peak counts from the ATAC modality, batches and labels from
        ``mdata.obs`` or a modality. A cell becomes one token sequence: ``<cls>``, its
        genes (binned expression, at most ``max_seq_len - 1``) and its peaks (at most
        ``max_peaks``), each token with a modality embedding (see :class:`ScGPT`).

        *Peaks are dataset-specific*: their tokens are built from the ATAC modality's
        ``var_names`` (e.g. ``chr1:100350982-100353664``). Another dataset shares a peak
        token only if it has the same peak name; call peaks on a common peak set (or
        count fragments in the model's peaks) to embed other ATAC data with a trained
        model. Accessibility is binarized (``atac_values="binary"``, the default of
        :class:`ScGPT`): fragment counts are accepted and every count > 0 counts as open
        (a note is logged).

        *Mosaic data* (cells measured in RNA only or ATAC only next to paired cells) must be
        fully paired for scvi-tools: ``mdata = celltx.data.pad_mosaic(mdata)`` gives every
        modality every cell, with all-zero rows where a cell was not measured. A cell's
        all-zero row in a modality means *not measured*: it gets no tokens of that modality.

        Parameters
        ----------
        mdata
            MuData with cells × genes and cells × peaks modalities, fully paired.
        rna_layer, atac_layer
            Layers of the RNA / ATAC modality with the values (``None``: ``X``). RNA
            values may be counts or log-normalized; ATAC values fragment counts or binary.
        batch_key
            Column with batches (in ``mdata.obs`` or the ``modalities["batch_key"]``
            modality).
        labels_key
            Column with cell-type labels (NaN = unlabelled).
        gene_symbols
            RNA ``var`` column with gene symbols, when ``var_names`` are not.
        modalities
            Which modality holds what: ``{"rna_layer": "rna", "atac_layer": "atac",
            "batch_key": None, "labels_key": None}`` (``None``: ``mdata.obs``). Leave
            ``rna_layer`` or ``atac_layer`` out for a single-modality model. Default: the
            modalities named ``"rna"`` and ``"atac"``.

        Examples
        --------
        >>> import celltx
        >>> mdata = celltx.datasets.simulate_multiome(n_cells=200)
        >>> celltx.model.ScGPT.setup_mudata(
        ...     mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}
        ... )
        """
        modalities = _check_mudata(mdata, rna_layer, atac_layer, batch_key, labels_key, gene_symbols, modalities)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = []
        if modalities.get("rna_layer"):
            fields.append(
                MuDataGeneLayerField(
                    REGISTRY_KEYS.X_KEY, rna_layer, mod_key=modalities["rna_layer"], is_count_data=False,
                    mod_required=True,
                )
            )
        if modalities.get("atac_layer"):
            fields.append(
                MuDataGeneLayerField(
                    ATAC_KEY, atac_layer, mod_key=modalities["atac_layer"], is_count_data=False,
                    mod_required=True,
                )
            )
        fields += [
            MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.get("batch_key")),
            MuDataLabelsField(REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=modalities.get("labels_key")),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        with _registration_undone_on_failure(mdata):
            adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    # --- perturbation conditions --------------------------------------------------------
    def _registered_conditions(self) -> list[str] | None:
        """Canonical names of the registered perturbation conditions (``None``: none)."""
        if not self._setup_args(self.adata).get("perturbation_key"):
            return None
        mapping = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        return [str(c) for c in mapping]

    def _parse(self, condition: str) -> tuple[str, ...]:
        setup = self._setup_args(self.adata)
        genes = parse_condition(condition, control_value=setup.get("control_value", "ctrl"), strict=True)
        most = setup.get("max_perturbed_genes", 2)
        if len(genes) > most:
            raise ValueError(
                f"Condition {condition!r} perturbs {len(genes)} genes; this model was set up for at "
                f"most {most} (setup_anndata(max_perturbed_genes=...))."
            )
        return genes

    def _condition_targets(self, conditions: Sequence[str] | None) -> list[str]:
        if not conditions:
            return []
        return list(dict.fromkeys(g for c in conditions for g in self._parse(c)))

    def _condition_gene_ids(self, conditions: Sequence[str]) -> np.ndarray:
        """``(n_conditions, max_perturbed_genes)`` vocabulary ids of the perturbed genes
        (``-1`` = none); raises listing genes absent from the vocabulary."""
        most = self._setup_args(self.adata).get("max_perturbed_genes", 2)
        parsed = [self._parse(c) for c in conditions]
        unknown = sorted({g for p in parsed for g in p if g not in self.vocab})
        if unknown:
            raise ValueError(
                f"{len(unknown)} perturbed gene(s) are not in the model's gene vocabulary: "
                f"{unknown[:20]}. Only genes with a token can be perturbed: use conditions on "
                "vocabulary genes (model.vocab.genes), or build the model on data whose "
                "perturbation column names these genes."
            )
        ids = np.full((len(parsed), max(most, 1)), -1, dtype=np.int64)
        for i, p in enumerate(parsed):
            if p:
                ids[i, : len(p)] = self.vocab.lookup(p)
        return ids

    def _setup_args(self, adata: AnnData) -> dict:
        return self.get_anndata_manager(adata, required=True).registry["setup_args"]

    def _modality(self, adata, key: str) -> AnnData | None:
        """The AnnData (a MuData's modality) registered under ``key``, or ``None``."""
        manager = self.get_anndata_manager(adata, required=True)
        if key not in manager.data_registry:
            return None
        mod = manager.data_registry[key].get("mod_key")
        return adata if mod is None else adata.mod[mod]

    def _match(self, adata, vocab: GeneVocab | None = None) -> GeneMatch | None:
        """Match the genes of ``adata`` (its RNA modality) to the vocabulary; raises if too
        few match. ``None`` without RNA."""
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
            logger.info("%d of %d peaks are not in the vocabulary and are ignored.", int((ids < 0).sum()), len(ids))
        return ids

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        if adata is not None and hasattr(adata, "mod"):
            # a MuData: its modalities must follow mdata.obs_names (checked before scvi-tools
            # transfers the registration onto it)
            registry = self.adata_manager.data_registry
            mods = [registry[k].get("mod_key") for k in (REGISTRY_KEYS.X_KEY, ATAC_KEY) if k in registry]
            _check_modality_order(adata, [m for m in mods if m and m in adata.mod])
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

    def _inputs(self, tensors) -> dict:
        """The module's data inputs of a loader batch (``x``, ``x_atac``), on the model's device."""
        out = {"x": None, "x_atac": None}
        if REGISTRY_KEYS.X_KEY in tensors:
            out["x"] = tensors[REGISTRY_KEYS.X_KEY].to(self.device)
        if ATAC_KEY in tensors:
            out["x_atac"] = tensors[ATAC_KEY].to(self.device)
        return out

    def _autocast(self):
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    # --- published checkpoints ----------------------------------------------------------
    #: load_pretrained overrides that do not change the architecture
    _PRETRAINED_OVERRIDES = (
        "dropout",
        "attn_dropout",
        "max_seq_len",
        "zero_fraction",
        "mask_ratio",
        "gep_weight",
        "mvc_weight",
        "seed",
        "min_genes",
        "n_layers_cls",
        "dsbn",
        "dab",
        "batch_token",
    )

    @classmethod
    def load_pretrained(
        cls,
        model_dir: str | os.PathLike,
        adata: AnnData,
        *,
        gene_symbols: str | None = None,
        min_gene_overlap: float | int = 0.5,
        weights: str | os.PathLike | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        **overrides,
    ) -> ScGPT:
        """Build a model from a published scGPT model directory.

        Reads ``args.json`` (architecture, binning, pad value, sequence length),
        ``vocab.json`` and the weights (``best_model.pt`` via
        ``torch.load(weights_only=True)``, or ``.safetensors``; no code in the file is
        run), in any of the three attention layouts (official flash-attn ``Wqkv``, torch
        ``in_proj_weight``, flash-attn 2 ``_impl.Wqkv``). No flash-attn or GPU is needed.
        The AnnData's genes are matched to the checkpoint's vocabulary by name.

        The returned model embeds cells right away (:meth:`get_latent_representation`) and
        :meth:`train` continues from the loaded weights (fine-tuning).

        Parameters
        ----------
        model_dir
            Directory with ``args.json``, ``vocab.json`` and ``best_model.pt`` (e.g. the
            unpacked ``scGPT_human`` folder).
        adata
            The data. If it is not registered yet, :meth:`setup_anndata` is called on it
            (with ``gene_symbols``); to use a layer, batch or labels, call
            :meth:`setup_anndata` first.
        gene_symbols
            ``var`` column with gene symbols, when ``var_names`` are e.g. Ensembl IDs
            (scGPT vocabularies use HGNC symbols).
        min_gene_overlap
            Fewest of the AnnData's genes that must be in the vocabulary: a fraction
            (``< 1``) or a count (``>= 1``). Below it a :class:`ValueError` says how many
            matched.
        weights
            Weight file inside ``model_dir`` if not ``best_model.pt`` / ``*.safetensors``.
        accelerator, device
            Where to put the model (``"auto"``: a GPU when there is one).
        **overrides
            Settings that do not change the architecture: ``dropout``, ``attn_dropout``,
            ``max_seq_len``, ``zero_fraction``, ``mask_ratio``, ``gep_weight``,
            ``mvc_weight``, ``seed``, ``min_genes``, and the fine-tuning heads
            ``n_layers_cls``, ``dsbn``, ``dab``, ``batch_token`` (new heads, and heads whose
            shape differs from the file's, e.g. a classifier for other classes, start from a
            random initialisation and are listed in ``checkpoint_report_``).

        Returns
        -------
        ScGPT
            With ``checkpoint_report_`` (a :class:`celltx.io.LoadReport`: loaded, skipped and
            initialised parts) and ``gene_match_`` (a :class:`celltx.data.GeneMatch`).

        Examples
        --------
        >>> model = celltx.model.ScGPT.load_pretrained("scGPT_human", adata)  # doctest: +SKIP
        >>> adata.obsm["X_scgpt"] = model.get_latent_representation()  # doctest: +SKIP
        """
        bad = sorted(set(overrides) - set(cls._PRETRAINED_OVERRIDES))
        if bad:
            raise ValueError(
                f"load_pretrained cannot override {bad}: the architecture and binning come from "
                f"the checkpoint's args.json. Allowed overrides: {list(cls._PRETRAINED_OVERRIDES)}."
            )
        from mudata import MuData
        from scvi.data._constants import _SCVI_UUID_KEY

        if not isinstance(adata, AnnData | MuData):
            raise ValueError(
                f"load_pretrained expects an AnnData or a MuData, not {type(adata).__name__}."
            )
        ckpt = io.read_scgpt_dir(model_dir, weights=weights)
        if min_gene_overlap < 0:
            raise ValueError(f"min_gene_overlap={min_gene_overlap} must be >= 0.")
        # a failure below (too few genes, a checkpoint that does not fit) leaves the user's
        # data without the registration this call added
        with _registration_undone_on_failure(adata):
            manager = cls._setup_adata_manager_store.get(adata.uns.get(_SCVI_UUID_KEY))
            if isinstance(adata, MuData):
                if manager is None or manager.adata is not adata:
                    raise ValueError(
                        "Set up the MuData first: ScGPT.setup_mudata(mdata, modalities={'rna_layer': "
                        "'rna', 'atac_layer': 'atac'}); the checkpoint supplies the RNA part, peak "
                        "tokens are new."
                    )
            elif manager is None:
                cls.setup_anndata(adata, gene_symbols=gene_symbols)
            else:
                setup_args = dict(manager.registry["setup_args"])
                registered = setup_args.get("gene_symbols")
                if gene_symbols is not None and gene_symbols != registered:
                    raise ValueError(
                        f"adata is already set up with gene_symbols={registered!r}; pass "
                        f"gene_symbols={gene_symbols!r} to ScGPT.setup_anndata instead."
                    )
                if manager.adata is not adata:  # a copy of registered data: same registration
                    cls.setup_anndata(adata, **setup_args)
            kwargs = {**ckpt.model_kwargs, **overrides}
            if min_gene_overlap < 1:
                kwargs["min_gene_fraction"] = float(min_gene_overlap)
                kwargs.setdefault("min_genes", 1)
            else:
                kwargs["min_genes"] = int(min_gene_overlap)
            model = cls(adata, vocab=ckpt.vocab, **kwargs)
            report = io.load_into(
                model.module.transformer,
                ckpt.state_dict,
                source=f"checkpoint {ckpt.weights_path}",
                new_tokens=model.n_new_tokens_,
            )
        absent = [g for g in report.initialised if g in io.HEAD_GROUPS and g not in report.reasons]
        if absent:
            warnings.warn(
                f"The checkpoint has no {absent} weights; these heads are randomly "
                "initialised (cell embeddings are unaffected; train before using them).",
                UserWarning,
                stacklevel=2,
            )
        model.checkpoint_report_ = report
        cls_keys = [k for k in model.module.transformer.state_dict() if k.startswith("cls_decoder.")]
        model.module.cls_trained.fill_(bool(cls_keys) and set(cls_keys) <= set(report.loaded))
        model.gene_match_ = model._match(model.adata)
        model.is_trained_ = True
        m = model.gene_match_
        logger.info(
            "Loaded %s (%s layout): %s. %s genes matched the vocabulary.",
            ckpt.weights_path,
            ckpt.layout,
            report.summary(),
            "no" if m is None else f"{m.n_matched}/{len(m.ids)}",
        )
        model._model_summary_string += (
            f"\nLoaded from {ckpt.path} ({ckpt.layout} layout): {report.summary()}"
        )
        model.to_device(_resolve_device(accelerator, device))
        return model

    def export_scgpt(
        self,
        out_dir: str | os.PathLike,
        layout: str = "official",
        *,
        safetensors: bool = False,
        overwrite: bool = False,
    ) -> str:
        """Write the model as a scGPT model directory (``args.json``, ``vocab.json``,
        ``best_model.pt``) that the original scGPT package and :meth:`load_pretrained` read.

        Parameters
        ----------
        out_dir
            Directory to create (must be empty unless ``overwrite``).
        layout
            Attention-key names: ``"official"`` (flash-attn ``Wqkv``, as the published
            checkpoints; scGPT with ``use_fast_transformer=True``), ``"torch"``
            (``in_proj_weight``; scGPT without flash-attn) or ``"fa2"``.
        safetensors
            Write ``best_model.safetensors`` instead of a ``torch.save`` state dict.
        overwrite
            Replace files in a non-empty ``out_dir``.

        Returns
        -------
        str
            Path of the weight file.

        Examples
        --------
        >>> model.export_scgpt("my_scgpt", layout="torch")  # doctest: +SKIP
        >>> again = celltx.model.ScGPT.load_pretrained("my_scgpt", adata)  # doctest: +SKIP
        """
        if layout not in ("official", "torch", "fa2"):
            raise ValueError(f"layout={layout!r}; use 'official', 'torch' or 'fa2'.")
        kw = dict(self.init_params_["non_kwargs"])
        if kw.get("activation", "relu") != "relu":
            warnings.warn(
                f"activation={kw['activation']!r}: the original scGPT only builds ReLU layers; "
                "celltx reads the export back, scGPT would compute something else.",
                UserWarning,
                stacklevel=2,
            )
        args = io.kwargs_to_scgpt_args(kw, n_tokens=len(self.vocab))
        path = io.write_scgpt_dir(
            out_dir,
            self.module.transformer.state_dict(),
            self.vocab,
            args,
            layout=layout,
            safetensors=safetensors,
            overwrite=overwrite,
        )
        return str(path)

    # --- training ---------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 32,
        lr: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        check_val_every_n_epoch: int | None = 1,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        task: str | None = None,
        loss_weights: Mapping[str, float] | None = None,
        class_weight: str | Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
        freeze_layers: int = 0,
        **trainer_kwargs,
    ):
        """Pretrain or fine-tune: generative pretraining, cell-type annotation or batch
        integration, from scratch or from loaded weights.

        Runs through scvi-tools' :class:`~scvi.train.TrainRunner` and Lightning, so
        Lightning arguments pass through (``accelerator``, ``devices``, ``strategy="ddp"``,
        ``precision``, ``gradient_clip_val``, ``accumulate_grad_batches``, …). On a GPU with
        bf16 support ``precision="bf16-mixed"`` is the default. Losses per epoch land in
        ``model.history`` (``train_loss``, ``validation_loss``, ``gep_mse_*``,
        ``mvc_mse_*``).

        Parameters
        ----------
        max_epochs
            Epochs; ``None`` uses scvi-tools' heuristic from the number of cells.
        batch_size
            Cells per step (per device).
        lr
            Peak learning rate (default 1e-3, see :class:`~celltx.train.PretrainingPlan`).
        accelerator, devices
            Lightning device selection (``"cpu"``, ``"gpu"``, ``"auto"``).
        train_size, validation_size
            Split of cells into training and validation.
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``"elbo_validation"``, the
            validation loss) stops improving; ``early_stopping_patience`` etc. pass through.
        check_val_every_n_epoch
            Validation frequency (``None``: only with early stopping).
        plan_kwargs
            Arguments of :class:`~celltx.train.PretrainingPlan`.
        datasplitter_kwargs
            Arguments of scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
        task
            Loss preset: ``"generative"`` (gene- and cell-prompt generation, the default
            for a new model), ``"annotation"`` (cross-entropy of the classifier on the
            ``<cls>`` embedding of whole cells; needs ``labels_key``), ``"integration"``
            (generation + elastic cell similarity ×10 + the adversarial batch
            discriminator when built with ``dab=True``; needs ``batch_key``; scGPT's
            recipe). ``None`` keeps the objective of the previous call.
        loss_weights
            Override single weights of the preset: ``gep``, ``mvc``, ``cls``, ``ecs``,
            ``dab``, and ``ecs_threshold`` (default 0.8).
        class_weight
            Classification only: ``"balanced"`` weighs each class by ``n_cells /
            (n_classes × n_class_cells)`` over the labelled training cells, or a
            ``{label: weight}`` dict; ``None``: equal weights.
        label_smoothing
            Classification only: label smoothing of the cross-entropy.
        freeze_layers
            Keep the gene / value embeddings and the first ``freeze_layers`` transformer
            layers fixed during this call (``-1``: all of them, train only the heads).
        **trainer_kwargs
            Passed to Lightning's trainer through :class:`~scvi.train.Trainer`.

        Examples
        --------
        >>> celltx.model.ScGPT.setup_anndata(adata, labels_key="cell_type")  # doctest: +SKIP
        >>> model = celltx.model.ScGPT.load_pretrained("scGPT_human", adata)  # doctest: +SKIP
        >>> model.train(max_epochs=10, task="annotation", lr=1e-4)  # doctest: +SKIP
        >>> adata.obs["predicted"] = model.predict()  # doctest: +SKIP
        """
        if max_epochs is not None and (isinstance(max_epochs, bool) or int(max_epochs) != max_epochs
                                       or max_epochs < 1):
            raise ValueError(
                f"max_epochs={max_epochs!r}: training needs at least one epoch (or None for "
                "scvi-tools' default from the number of cells)."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        self._set_objective(task, loss_weights, class_weight, label_smoothing)
        plan_kwargs = dict(plan_kwargs or {})
        if lr is not None:
            plan_kwargs["lr"] = lr
        if (
            "precision" not in trainer_kwargs
            and accelerator in ("auto", "gpu", "cuda")
            and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported()
        ):
            trainer_kwargs["precision"] = "bf16-mixed"
        if not self._n_validation(train_size, validation_size, batch_size, datasplitter_kwargs):
            # no validation cells (train_size=1.0, or very few cells): train without a
            # validation loop rather than fail inside Lightning
            if early_stopping and "validation" in str(trainer_kwargs.get("early_stopping_monitor", "validation")):
                raise ValueError(
                    f"early_stopping monitors the validation loss, but train_size={train_size} "
                    f"leaves no validation cells among {self.adata.n_obs}. Lower train_size "
                    "(e.g. 0.9) or pass early_stopping=False."
                )
            check_val_every_n_epoch = None
        if check_val_every_n_epoch is not None:
            trainer_kwargs["check_val_every_n_epoch"] = check_val_every_n_epoch
        if self.is_trained_ and not isinstance(self.history_, dict):
            # loaded weights (load_pretrained) have no history: let scvi start a fresh one
            self.is_trained_ = False
        if self.module.pert_weight > 0:
            self._store_controls()
        frozen = self._freeze(freeze_layers)
        # scvi-tools leaves the module in eval mode after training or inference, and Lightning
        # keeps submodules' modes: without this, a second train() call would run without
        # dropout and with batch norms on running statistics
        self.module.train()
        try:
            with self._panel(self.adata):
                out = super().train(
                    max_epochs=max_epochs,
                    accelerator=accelerator,
                    devices=devices,
                    train_size=train_size,
                    validation_size=validation_size,
                    batch_size=batch_size,
                    early_stopping=early_stopping,
                    plan_kwargs=plan_kwargs,
                    datasplitter_kwargs=datasplitter_kwargs,
                    **trainer_kwargs,
                )
        finally:
            for p in frozen:
                p.requires_grad_(True)
        m = self.module
        if m.cls_weight > 0 and m.transformer.cls_decoder is not None:
            m.cls_trained.fill_(True)
        if m.pert_weight > 0 and m.pert_decoder is not None:
            m.pert_trained.fill_(True)
        return out

    def _n_validation(self, train_size, validation_size, batch_size, datasplitter_kwargs) -> int:
        """Number of validation cells scvi-tools' splitter gives for these arguments."""
        kw = {k: v for k, v in (datasplitter_kwargs or {}).items() if k in ("shuffle_set_split", "drop_last")}
        splitter = self._data_splitter_cls(
            self.adata_manager, train_size=train_size, validation_size=validation_size,
            batch_size=batch_size, **kw,
        )
        splitter.setup()
        return len(splitter.val_idx)

    def _control_mask(self, adata: AnnData) -> np.ndarray:
        setup = self._setup_args(self.adata)
        names = parse_conditions(
            adata.obs[setup["perturbation_key"]].astype(object),
            control_value=setup["control_value"],
            max_genes=setup["max_perturbed_genes"],
        )[1]
        return (names == setup["control_value"]).to_numpy()

    def _store_controls(self) -> None:
        """Give the module the training data's control cells, with their pairing groups."""
        from scipy import sparse

        manager = self.adata_manager
        ctrl = np.flatnonzero(self._control_mask(self.adata))
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)[ctrl]
        X = X.toarray() if sparse.issparse(X) else np.asarray(X)
        batch = torch.as_tensor(np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()[ctrl])
        labels = torch.as_tensor(np.asarray(manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()[ctrl])
        m = self.module
        n_batch = self.summary_stats.n_batch if self._setup_args(self.adata).get("batch_key") else 1
        m.set_controls(torch.as_tensor(X, dtype=torch.float32), m.pair_groups(batch, labels), m.n_pair_groups(n_batch))

    def _set_objective(self, task, loss_weights, class_weight, label_smoothing) -> None:
        m = self.module
        if task is None:
            weights = {"gep": m.gep_weight, "mvc": m.mvc_weight, "cls": m.cls_weight,
                       "ecs": m.ecs_weight, "dab": m.dab_weight, "pert": m.pert_weight,
                       "align": m.align_weight}
        elif task in TASKS:
            weights = dict(TASKS[task])
            if m.multimodal and weights.get("gep", 0) > 0:
                weights["align"] = 1.0  # multiome: align the modalities while generating
        else:
            raise ValueError(f"task={task!r}; use one of {list(TASKS)} or None.")
        setup = self._setup_args(self.adata)
        if task == "annotation" and not setup.get("labels_key"):
            raise ValueError(
                "task='annotation' needs labels: ScGPT.setup_anndata(adata, labels_key='<obs "
                "column>'), then build or load the model."
            )
        if task == "perturbation" and not setup.get("perturbation_key"):
            raise ValueError(
                "task='perturbation' needs perturbation conditions: ScGPT.setup_anndata(adata, "
                "perturbation_key='<obs column>', control_value='ctrl'), then build the model."
            )
        if task == "integration":
            if not setup.get("batch_key"):
                raise ValueError(
                    "task='integration' needs batches: ScGPT.setup_anndata(adata, "
                    "batch_key='<obs column>'), then build or load the model (dsbn=True, "
                    "dab=True, batch_token=True for scGPT's full recipe)."
                )
            if m.transformer.grad_reverse_discriminator is None:
                weights["dab"] = 0.0
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
            counts = np.bincount(np.asarray(codes, dtype=int), minlength=self.summary_stats.n_batch)
            mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
            small = [str(mapping[i]) for i in np.flatnonzero(counts < 2)]
            if small:
                raise ValueError(
                    f"Batches {small} have fewer than 2 cells; batch-aware training cannot learn "
                    "them. Drop those cells or merge the batches."
                )
        extra = dict(loss_weights or {})
        threshold = extra.pop("ecs_threshold", getattr(m, "ecs_threshold", 0.8))
        unknown = set(extra) - {"gep", "mvc", "cls", "ecs", "dab", "pert", "align"}
        if unknown:
            raise ValueError(f"Unknown loss weights {sorted(unknown)}; use gep, mvc, cls, ecs, dab, pert, align.")
        weights.update(extra)
        cw = None
        if weights.get("cls", 0) > 0:
            cw = self._class_weights(class_weight)
        elif class_weight is not None or label_smoothing:
            raise ValueError("class_weight and label_smoothing apply to classification (cls > 0).")
        m.set_objective(**weights, ecs_threshold=threshold, label_smoothing=label_smoothing,
                        class_weights=cw)

    def _label_state(self):
        return self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)

    def _class_weights(self, class_weight) -> torch.Tensor | None:
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        cats = list(self._label_state().categorical_mapping)
        counts = np.bincount(codes[codes >= 0].astype(int), minlength=len(cats))
        present = int((counts > 0).sum())
        if present < 2:
            raise ValueError(
                f"Classification needs at least 2 labelled classes; the labelled cells hold {present} "
                f"({[c for c, n in zip(cats, counts, strict=True) if n]})."
            )
        if class_weight is None:
            return None
        if class_weight == "balanced":
            w = np.where(counts > 0, counts.sum() / (len(cats) * np.maximum(counts, 1)), 0.0)
        elif isinstance(class_weight, Mapping):
            unknown = set(class_weight) - set(map(str, cats))
            if unknown:
                raise ValueError(f"class_weight names unknown labels {sorted(unknown)}; labels: {cats}.")
            w = np.array([float(class_weight.get(str(c), 1.0)) for c in cats])
        else:
            raise ValueError(f"class_weight={class_weight!r}; use None, 'balanced' or a dict.")
        return torch.as_tensor(w, dtype=torch.float32)

    def _freeze(self, n: int) -> list[torch.nn.Parameter]:
        """requires_grad=False on embeddings + the first ``n`` layers (``-1``: all)."""
        if n == 0:
            return []
        t = self.module.transformer
        n_layers = len(t.transformer_encoder.layers)
        if n < -1 or n > n_layers:
            raise ValueError(f"freeze_layers={n}; use 0 … {n_layers} or -1 (all layers).")
        n = n_layers if n == -1 else n
        parts = [t.encoder, t.value_encoder, *t.transformer_encoder.layers[:n]]
        if t.dsbn is not None:
            parts.append(t.dsbn)
        params = [p for part in parts for p in part.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        return params

    # --- outputs ----------------------------------------------------------------------
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
        normalize: bool = False,
    ) -> np.ndarray:
        """Cell embeddings: the transformer's ``<cls>`` output.

        Deterministic: the same cell gives the same embedding in any call and batch.
        ``adata`` may have other genes, in another order, than the training data: genes are
        matched to the vocabulary by name and the others ignored (their number is logged).

        Parameters
        ----------
        adata
            AnnData (default: the one the model was built with). Set up automatically from
            the model's registry if it was not.
        indices
            Cells to embed (default all).
        batch_size
            Cells per forward pass (default: scvi-tools' ``settings.batch_size``).
        max_seq_len
            Tokens per cell for this call (e.g. the cells' largest number of expressed genes
            + 1 to use every gene); default: the model's ``max_seq_len``.
        normalize
            Divide each embedding by its L2 norm (as scGPT's ``embed_data``).

        Returns
        -------
        numpy.ndarray
            ``float32`` array ``(n_cells, d_model)``. Cells without any expressed vocabulary
            gene get the embedding of a sequence holding only ``<cls>`` (a warning says how
            many).

        Examples
        --------
        >>> adata.obsm["X_scgpt"] = model.get_latent_representation()  # doctest: +SKIP
        >>> sc.pp.neighbors(adata, use_rep="X_scgpt")  # doctest: +SKIP
        """
        if not self.is_trained_:
            warnings.warn(
                "This model was neither trained nor loaded from a checkpoint: its embeddings come "
                "from random weights. Call model.train() or ScGPT.load_pretrained(...) first.",
                UserWarning,
                stacklevel=2,
            )
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        chunks, n_empty = [], 0
        with self._panel(adata), self._autocast():
            for tensors in loader:
                emb, n_genes = self.module.cell_embedding(
                    **self._inputs(tensors), max_seq_len=max_seq_len, batch=self._batch_codes(tensors)
                )
                n_empty += int((n_genes == 0).sum())
                chunks.append(emb.cpu())
        if n_empty:
            warnings.warn(
                f"{n_empty} cells have no expressed gene of the vocabulary; their embedding is "
                "that of an empty cell (only <cls>). Filter them with "
                "sc.pp.filter_cells(adata, min_genes=1) if unwanted.",
                UserWarning,
                stacklevel=2,
            )
        emb = torch.cat(chunks).numpy().astype(np.float32)
        if normalize:
            emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        return emb

    @torch.inference_mode()
    def predict_rna_from_atac(
        self,
        mdata=None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        chunk_size: int = 512,
    ) -> AnnData:
        """Expression of every gene predicted from a cell's ATAC tokens alone (cross-modal
        generation), e.g. to impute RNA for ATAC-only cells of a mosaic.

        Each cell is encoded from its peaks (its RNA, if any, is not used); every gene of
        the RNA panel that is in the vocabulary is a token to generate, and the gene-prompt
        decoder predicts its value. Trained by ``train()`` on paired cells (the RNA of a
        cell generated from its ATAC, and back).

        Parameters
        ----------
        mdata
            MuData set up with :meth:`setup_mudata` (default: the model's); its RNA modality
            only supplies the gene panel.
        indices
            Cells to predict (default all).
        batch_size
            Cells per forward pass.
        chunk_size
            Genes generated per pass; the result does not depend on it (generated tokens
            never attend to each other), only memory does.

        Returns
        -------
        anndata.AnnData
            Cells × genes (the RNA panel's genes in the vocabulary, ``var`` from the RNA
            modality, ``obs`` from ``mdata.obs``). ``X`` is on the model's value scale: the
            expression bin, ``0`` = not expressed … ``n_bins - 1`` = among the cell's highest
            genes (a per-cell rank scale: compare genes within a cell, or a gene's values
            across cells as a relative level). Cells without ATAC counts get NaN rows.

        Examples
        --------
        >>> imputed = model.predict_rna_from_atac(mdata)  # doctest: +SKIP
        >>> mdata.mod["rna"].obsm["X_rna_from_atac"] = imputed.X  # doctest: +SKIP
        """
        return self._cross_predict(mdata, "rna", indices, batch_size, chunk_size)

    @torch.inference_mode()
    def predict_atac_from_rna(
        self,
        mdata=None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        chunk_size: int = 512,
    ) -> AnnData:
        """Accessibility of every peak predicted from a cell's RNA tokens alone (the reverse
        of :meth:`predict_rna_from_atac`, same parameters).

        Returns
        -------
        anndata.AnnData
            Cells × peaks; with ``atac_values="binary"`` ``X`` is the predicted openness in
            ``[0, 1]`` (the generated value / ``(n_bins - 1)``, clipped), else the predicted
            bin. Cells without RNA counts get NaN rows.
        """
        return self._cross_predict(mdata, "atac", indices, batch_size, chunk_size)

    def _cross_predict(self, mdata, target: str, indices, batch_size, chunk_size) -> AnnData:
        if not self.module.multimodal:
            raise ValueError(
                "Cross-modal prediction needs a model with RNA and ATAC: ScGPT.setup_mudata(mdata, "
                "modalities={'rna_layer': 'rna', 'atac_layer': 'atac'}), then build and train it."
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
        mdata = self._validate_anndata(mdata)
        key = REGISTRY_KEYS.X_KEY if target == "rna" else ATAC_KEY
        target_mod = self._modality(mdata, key)
        loader = self._make_data_loader(adata=mdata, indices=indices, batch_size=batch_size)
        self.module.eval()
        chunks, cols = [], None
        with self._panel(mdata), self._autocast():
            for tensors in loader:
                inp = self._inputs(tensors)
                pred, cols = self.module.predict_modality(
                    inp["x"], inp["x_atac"], target, batch=self._batch_codes(tensors), chunk_size=chunk_size
                )
                source = inp["x_atac"] if target == "rna" else inp["x"]
                pred[~(source > 0).any(1)] = float("nan")
                chunks.append(pred.float().cpu())
        X = torch.cat(chunks).numpy().astype(np.float32)
        top = float(self.module.tokenizer.n_bins - 1) if self.module.tokenizer.n_bins else 1.0
        if target == "atac" and self.module.atac_values == "binary":
            X = np.clip(X / top, 0.0, 1.0)
        rows = np.arange(mdata.n_obs) if indices is None else np.asarray(indices)
        cols = cols.cpu().numpy()
        out = AnnData(X=X, obs=mdata.obs.iloc[rows].copy(), var=target_mod.var.iloc[cols].copy())
        out.uns["celltx"] = {
            "predicted_from": "atac" if target == "rna" else "rna",
            "scale": "expression bin (0 … n_bins-1)" if target == "rna" or self.module.atac_values == "binned"
            else "probability open",
        }
        return out

    def _batch_codes(self, tensors) -> torch.Tensor | None:
        b = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return None if b is None else b.reshape(-1).long().to(self.device)

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type predictions of the classifier head (after ``train(task="annotation")``).

        The classifier knows the labels registered at setup: every cell, including one of
        a type absent from training, gets one of them (a closed-set classifier). Use
        ``soft=True`` and a threshold on the highest probability to flag uncertain cells.
        Cells with an unlabelled (NaN) or new label in ``adata`` are predicted like others.

        Parameters
        ----------
        adata
            AnnData (default: the model's); other gene panels work as for embeddings.
        indices
            Cells to predict (default all).
        soft
            Return class probabilities instead of labels.
        batch_size, max_seq_len
            As for :meth:`get_latent_representation`.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Labels (``object`` array), or a cells × labels DataFrame of probabilities
            indexed by ``obs_names`` with the label names as columns.

        Examples
        --------
        >>> adata.obs["predicted"] = model.predict()  # doctest: +SKIP
        >>> proba = model.predict(soft=True)  # doctest: +SKIP
        """
        if self.module.transformer.cls_decoder is None:
            raise ValueError(
                "This model has no classifier: set up the AnnData with labels_key, build or load "
                "the model, and train(task='annotation')."
            )
        if not bool(self.module.cls_trained):
            raise ValueError(
                "The classifier head of this model was never trained (it is randomly initialised: "
                "a new model, generative-only training, or a checkpoint without a classifier for "
                "these labels). Train it first: model.train(task='annotation', max_epochs=...)."
            )
        adata = self._validate_anndata(adata)
        cats = np.asarray(self._label_state().categorical_mapping)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        chunks = []
        with self._panel(adata), self._autocast():
            for tensors in loader:
                chunks.append(
                    self.module.classify(
                        batch=self._batch_codes(tensors), max_seq_len=max_seq_len, **self._inputs(tensors)
                    ).cpu()
                )
        proba = torch.cat(chunks).numpy()
        if soft:
            names = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
            return pd.DataFrame(proba, index=names, columns=pd.Index(cats.astype(str), name="label"))
        return cats[proba.argmax(1)].astype(object)

    # --- perturbation ------------------------------------------------------------------
    def _controls(self, control_adata: AnnData | None, n_cells: int, seed: int, batch_size: int):
        """Expression, batch codes and the AnnData of ``n_cells`` sampled control cells."""
        if self.module.pert_decoder is None:
            raise ValueError(
                "This model has no perturbation parts: ScGPT.setup_anndata(adata, "
                "perturbation_key='condition'), build the model, train(task='perturbation')."
            )
        if not bool(self.module.pert_trained):
            raise ValueError(
                "The perturbation-response head of this model was never trained (its predictions "
                "would be the control cells unchanged). Train it first: "
                "model.train(task='perturbation', max_epochs=...)."
            )
        if control_adata is None:
            adata = self.adata
            pool = np.flatnonzero(self._control_mask(adata))
        else:
            key = self._setup_args(self.adata)["perturbation_key"]
            if key in control_adata.obs.columns:
                perturbed = ~self._control_mask(control_adata)
                if perturbed.any():
                    raise ValueError(
                        f"control_adata holds {int(perturbed.sum())} perturbed cells (obs[{key!r}] is "
                        f"not the control value, e.g. {control_adata.obs[key][perturbed].astype(str).iloc[0]!r}); "
                        "predictions start from unperturbed cells. Pass only control cells: "
                        f"control_adata[control_adata.obs[{key!r}] == "
                        f"{self._setup_args(self.adata)['control_value']!r}]."
                    )
            adata = self._validate_anndata(control_adata)
            pool = np.arange(adata.n_obs)
        if len(pool) == 0:
            raise ValueError("No control cells to perturb: pass control_adata with control cells.")
        if n_cells < 1:
            raise ValueError(f"n_cells={n_cells} must be >= 1.")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(pool, size=min(n_cells, len(pool)), replace=False))
        loader = self._make_data_loader(adata=adata, indices=pick, batch_size=batch_size)
        xs, bs = [], []
        for tensors in loader:
            xs.append(tensors[REGISTRY_KEYS.X_KEY].float())
            b = self._batch_codes(tensors)
            bs.append(torch.zeros(len(xs[-1]), dtype=torch.long) if b is None else b.reshape(-1).long().cpu())
        return torch.cat(xs), torch.cat(bs), adata, pick

    @torch.inference_mode()
    def _perturb_all(self, conditions, control_adata, n_cells, seed, batch_size):
        if isinstance(conditions, str):
            conditions = [conditions]
        conditions = list(conditions)
        if not conditions:
            raise ValueError("No conditions given.")
        setup = self._setup_args(self.adata)
        ctrl_value = setup["control_value"]
        names = [condition_name(self._parse(c), control_value=ctrl_value) for c in conditions]
        ids = torch.as_tensor(self._condition_gene_ids(names))
        x, batch, adata, pick = self._controls(control_adata, n_cells, seed, batch_size)
        use_batch = self.module._batch(batch) is not None
        self.module.eval()
        dev = self.device
        out = []
        base = x.mean(0).to(dev)  # the changes are added to the sampled control cells' mean
        with self._panel(adata), self._autocast():
            for i in range(len(names)):
                rows = []
                for lo in range(0, len(x), batch_size):
                    xc = x[lo : lo + batch_size].to(dev)
                    b = batch[lo : lo + batch_size].to(dev) if use_batch else None
                    res = self.module.perturb(xc, ids[i].to(dev).expand(len(xc), -1), b, base=base)
                    rows.append(res["pert_pred"].float().cpu())
                    cols = res["columns"].cpu().numpy()
                out.append(torch.cat(rows).numpy())
        return names, np.stack(out), x[:, cols].numpy(), adata, pick, cols

    def predict_perturbation(
        self,
        conditions: str | Sequence[str],
        *,
        control_adata: AnnData | None = None,
        n_cells: int = 100,
        return_type: str = "mean",
        batch_size: int = 32,
        seed: int = 0,
    ) -> AnnData:
        """Predicted expression after genetic perturbations (``train(task="perturbation")``
        first).

        Each of ``n_cells`` control cells is encoded with the condition's genes flagged as
        perturbed, and the response head predicts its expression afterwards. Works for
        conditions seen in training, unseen single genes and unseen combinations, as long
        as every gene has a token in the vocabulary: a model built on the data has tokens
        for every measured gene and for every gene named in the perturbation column, even
        when not measured.

        Parameters
        ----------
        conditions
            One condition or a list, GEARS notation (``"A+ctrl"``, ``"A+B"``) or gene
            symbols (``"A"``).
        control_adata
            Cells to perturb, all of them control cells (default: the control cells of the
            model's AnnData). Other gene panels work as for embeddings.
        n_cells
            Control cells sampled (without replacement; all if there are fewer).
        return_type
            ``"mean"``: one row per condition, the mean prediction over the cells;
            ``"cells"``: one row per (condition, control cell), the predicted response of
            that cell.
        batch_size
            Cells per forward pass (memory: all panel genes are tokens).
        seed
            Seed of the control-cell sample.

        Returns
        -------
        anndata.AnnData
            Predicted expression, in the units of the registered data (log-normalized),
            over the control data's genes that are in the vocabulary. ``obs`` has
            ``condition`` (canonical name), ``n_genes`` (perturbed), ``seen`` (a condition
            of the training data) and, for ``"cells"``, ``control_cell``; ``uns["control_mean"]``
            is the mean of the sampled control cells.

        Examples
        --------
        >>> pred = model.predict_perturbation(["G001+ctrl", "G001+G007"])  # doctest: +SKIP
        >>> pred.to_df().iloc[:, :3]  # doctest: +SKIP
        """
        if return_type not in ("mean", "cells"):
            raise ValueError(f"return_type={return_type!r}; use 'mean' or 'cells'.")
        names, pred, ctrl, adata, pick, cols = self._perturb_all(conditions, control_adata, n_cells, seed, batch_size)
        seen = set(self._registered_conditions() or [])
        var = adata.var.iloc[cols].copy()
        obs = pd.DataFrame(
            {
                "condition": names,
                "n_genes": [len(self._parse(n)) for n in names],
                "seen": [n in seen for n in names],
            }
        )
        if return_type == "mean":
            X = pred.mean(1)
            obs.index = pd.Index(names, dtype=str)
            if obs.index.has_duplicates:
                obs.index = pd.Index([f"{n}-{i}" for i, n in enumerate(names)])
        else:
            n = pred.shape[1]
            X = pred.reshape(len(names) * n, -1)
            obs = obs.loc[obs.index.repeat(n)].reset_index(drop=True)
            obs["control_cell"] = np.tile(adata.obs_names[pick].to_numpy(), len(names))
            obs.index = pd.Index([f"{c}|{cell}" for c, cell in zip(obs["condition"], obs["control_cell"], strict=True)])
        result = AnnData(X=X.astype(np.float32), obs=obs, var=var)
        result.uns["control_mean"] = ctrl.mean(0).astype(np.float32)
        return result

    def get_perturbation_effects(
        self,
        conditions: str | Sequence[str],
        *,
        control_adata: AnnData | None = None,
        n_cells: int = 100,
        top_n: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Predicted change of each gene's expression per condition, against control.

        Parameters
        ----------
        conditions, control_adata, n_cells, batch_size, seed
            As for :meth:`predict_perturbation`.
        top_n
            Keep the ``top_n`` genes with the largest absolute change per condition
            (default: all genes).

        Returns
        -------
        pandas.DataFrame
            Long format, one row per (condition, gene): ``condition``, ``gene``,
            ``control_mean`` (the sampled control cells' mean), ``predicted_mean``,
            ``delta`` (predicted − control), sorted by ``|delta|`` within each condition.

        Examples
        --------
        >>> effects = model.get_perturbation_effects("G001+ctrl", top_n=20)  # doctest: +SKIP
        """
        pred = self.predict_perturbation(
            conditions, control_adata=control_adata, n_cells=n_cells, batch_size=batch_size, seed=seed
        )
        ctrl = pred.uns["control_mean"]
        frames = []
        for i, name in enumerate(pred.obs["condition"]):
            df = pd.DataFrame(
                {
                    "condition": name,
                    "gene": pred.var_names.to_numpy(),
                    "control_mean": ctrl,
                    "predicted_mean": np.asarray(pred.X[i]).ravel(),
                }
            )
            df["delta"] = df["predicted_mean"] - df["control_mean"]
            df = df.reindex(df["delta"].abs().sort_values(ascending=False).index)
            frames.append(df if top_n is None else df.head(top_n))
        return pd.concat(frames, ignore_index=True)

    @torch.inference_mode()
    def get_gene_embeddings(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """Gene token embeddings (embedding + LayerNorm) as a genes × ``d_model`` DataFrame.

        Parameters
        ----------
        genes
            Genes to return (default: every gene of the vocabulary). Unknown genes raise.
        """
        genes = self.vocab.genes if genes is None else [str(g) for g in genes]
        ids = self.vocab.lookup(genes)
        if (ids < 0).any():
            missing = [g for g, i in zip(genes, ids, strict=True) if i < 0]
            raise ValueError(f"{len(missing)} genes are not in the vocabulary, e.g. {missing[:5]}.")
        self.module.eval()
        emb = self.module.transformer.encoder(torch.as_tensor(ids, device=self.device))
        return pd.DataFrame(emb.float().cpu().numpy(), index=pd.Index(genes, name="gene"))

    @torch.inference_mode()
    def score_generation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        reference_indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        """Held-out generation error next to a per-gene mean baseline.

        For each cell of ``indices`` (default: the validation cells) a reproducible
        known / unknown split is drawn (ratios from ``mask_ratio``); the model predicts the
        unknown genes' bins from the known ones. The baseline predicts each unknown gene's
        mean bin over the ``reference_indices`` cells (default: the training cells).

        Returns
        -------
        dict
            ``{"gep_mse", "mvc_mse", "gene_mean_mse", "n_tokens"}``: mean squared error of
            the gene-prompt and cell-prompt predictions and of the baseline over all unknown
            tokens.
        """
        adata = self._validate_anndata(adata)
        if indices is None:
            indices = getattr(self, "validation_indices", None)
            if indices is None or len(indices) == 0:
                indices = np.arange(adata.n_obs)
        if reference_indices is None:
            reference_indices = getattr(self, "train_indices", None)
            if reference_indices is None:
                reference_indices = np.arange(adata.n_obs)
        self.module.eval()
        device = self.device
        n_tok = self.module.transformer.encoder.embedding.num_embeddings
        sums = torch.zeros(n_tok, dtype=torch.float64, device=device)
        counts = torch.zeros_like(sums)
        sq = {"gep": 0.0, "mvc": 0.0, "mean": 0.0}
        heldout = []
        gen = torch.Generator(device=device).manual_seed(seed)
        with self._panel(adata), self._autocast():
            ref = self._make_data_loader(adata, indices=reference_indices, batch_size=batch_size)
            for tensors in ref:
                s, c = self.module.token_value_sums(**self._inputs(tensors))
                sums += s
                counts += c
            global_mean = sums.sum() / counts.sum().clamp(min=1)
            gene_mean = torch.where(counts > 0, sums / counts.clamp(min=1), global_mean)
            for tensors in self._make_data_loader(adata, indices=indices, batch_size=batch_size):
                inputs = self._inputs(tensors)
                out = self.module.heldout_predictions(
                    inputs["x"], gen, self._batch_codes(tensors), x_atac=inputs["x_atac"]
                )
                t = out["target"].double()
                sq["gep"] += float(((out["expr"].double() - t) ** 2).sum())
                sq["mvc"] += float(((out["mvc"].double() - t) ** 2).sum())
                sq["mean"] += float(((gene_mean[out["gene_ids"]] - t) ** 2).sum())
                heldout.append(len(t))
        n = max(sum(heldout), 1)
        return {
            "gep_mse": sq["gep"] / n,
            "mvc_mse": sq["mvc"] / n,
            "gene_mean_mse": sq["mean"] / n,
            "n_tokens": int(sum(heldout)),
        }
