"""Published scGPT checkpoints: :meth:`load_pretrained` and :meth:`export_scgpt`."""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Literal, cast

from anndata import AnnData

from celltx import io
from celltx.module import SCVI_UUID_KEY

from ._checks import registration_undone_on_failure, resolve_device
from ._host import ModelHost

logger = logging.getLogger(__name__)


if TYPE_CHECKING:
    from ._scgpt import ScGPT


class PretrainedMixin(ModelHost):
    """Published scGPT checkpoints: :meth:`load_pretrained` and :meth:`export_scgpt`."""

    #: load_pretrained overrides that do not change the architecture (ScGPTConfig fields, and
    #: ``min_genes``)
    PRETRAINED_OVERRIDES: tuple[str, ...] = (
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
        bad = sorted(set(overrides) - set(cls.PRETRAINED_OVERRIDES))
        if bad:
            raise ValueError(
                f"load_pretrained cannot override {bad}: the architecture and binning come from "
                f"the checkpoint's args.json. Allowed overrides: {list(cls.PRETRAINED_OVERRIDES)}."
            )
        from mudata import MuData

        if not isinstance(adata, AnnData | MuData):
            raise ValueError(
                f"load_pretrained expects an AnnData or a MuData, not {type(adata).__name__}."
            )
        ckpt = io.read_scgpt_dir(model_dir, weights=weights)
        if min_gene_overlap < 0:
            raise ValueError(f"min_gene_overlap={min_gene_overlap} must be >= 0.")
        # a failure below (too few genes, a checkpoint that does not fit) leaves the user's
        # data without the registration this call added
        with registration_undone_on_failure(adata):
            manager = cls._setup_adata_manager_store.get(adata.uns.get(SCVI_UUID_KEY))
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
                model.module.network,
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
        model.module.mark_loaded_heads(report.loaded)
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
        model.to_device(resolve_device(accelerator, device))
        return cast("ScGPT", model)

    def export_scgpt(
        self,
        out_dir: str | os.PathLike,
        layout: Literal["official", "torch", "fa2"] = "official",
        *,
        safetensors: bool = False,
        overwrite: bool = False,
    ) -> str:
        """Write the model as a scGPT model directory.

        The directory (``args.json``, ``vocab.json``, ``best_model.pt``) is read by the original
        scGPT package and :meth:`load_pretrained`.

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
        config = self.module.config
        if config.activation != "relu":
            warnings.warn(
                f"activation={config.activation!r}: the original scGPT only builds ReLU layers; "
                "celltx reads the export back, scGPT would compute something else.",
                UserWarning,
                stacklevel=2,
            )
        args = io.scgpt_args_from_config(config, n_tokens=len(self.vocab))
        path = io.write_scgpt_dir(
            out_dir,
            self.module.network.state_dict(),
            self.vocab,
            args,
            layout=layout,
            safetensors=safetensors,
            overwrite=overwrite,
        )
        return str(path)

    # --- training ---------------------------------------------------------------------
