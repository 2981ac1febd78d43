"""A save format that is safe to load from anyone: tensors in safetensors, the rest in JSON.

scvi-tools' :meth:`~scvi.model.base.BaseModelClass.save` pickles the model's state with
``torch.save`` and :meth:`~scvi.model.base.BaseModelClass.load` unpickles it with
``torch.load(weights_only=False)``: loading a directory runs any code its ``model.pt``
carries. :class:`SafeSaveMixin` replaces both with a format whose reader never unpickles:

``{prefix}model.safetensors``
    The module's state dict, under its own names, plus module state that is not in the
    state dict but must survive a save (stored perturbation controls, class weights) under
    ``extra/<name>``. Metadata: ``format`` = ``celltx.model``, ``format_version``.
``{prefix}model.json``
    Everything else: the scvi-tools registry (setup arguments, categorical mappings),
    ``init_params_`` (the vocabulary), ``var_names``, the model's public attributes
    (``history_``, ``is_trained_``, train / validation / test indices,
    ``checkpoint_report_``, ...), the module's objective settings, and the SHA-256 of the
    weight file. Values JSON cannot hold are written as objects with one type tag:
    ``{"__ndarray__": {"dtype", "shape", "data"}}``, ``{"__dataframe__": ...}``,
    ``{"__tuple__": [...]}``, ... Only the tags listed in this module are read back; nothing
    names a class to import.
``{prefix}adata.h5ad`` / ``{prefix}mdata.h5mu``
    With ``save(save_anndata=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from celltx.io import CorruptJSON, UnsupportedValue, from_json, to_json

from ._checks import resolve_device
from ._host import ModelHost

FORMAT = "celltx.model"
FORMAT_VERSION = 1
JSON_FNAME = "model.json"
WEIGHTS_FNAME = "model.safetensors"
PICKLE_FNAME = "model.pt"  # the pickled save of scvi-tools and of earlier celltx
#: data files of ``save(save_anndata=True)`` (scvi-tools' names)
ADATA_FNAME, MDATA_FNAME = "adata.h5ad", "mdata.h5mu"
#: keys of scvi-tools' registry dict (``AnnDataManager.registry``)
MODEL_NAME_KEY, SETUP_ARGS_KEY, SETUP_METHOD_KEY = "model_name", "setup_args", "setup_method_name"
_EXTRA = "extra/"  # safetensors key prefix of module state outside the state dict


# --- files ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _paths(dir_path, prefix: str | None) -> tuple[Path, Path, Path]:
    d, p = Path(dir_path), prefix or ""
    return d / f"{p}{JSON_FNAME}", d / f"{p}{WEIGHTS_FNAME}", d / f"{p}{PICKLE_FNAME}"


def _pickle_refusal(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path} is a pickle (the format of scvi-tools and of celltx before the safe save "
        f"format). {what} would unpickle it, and unpickling runs any code the file "
        "carries: never do it for a directory you did not write yourself. If you trust its "
        "source, pass trust_remote_pickle=True (scvi-tools' loader reads it), then save the "
        "model again: model.save(dir, overwrite=True) writes model.json + model.safetensors, "
        "which load without unpickling."
    )


def _read_meta(dir_path, prefix: str | None, what: str, trust_remote_pickle: bool) -> dict | None:
    """``model.json`` of a save directory, checked.

    ``None`` when the directory holds a pickled scvi-tools save and ``trust_remote_pickle``
    allows reading it.
    """
    jpath, wpath, ppath = _paths(dir_path, prefix)
    if not Path(dir_path).is_dir():
        raise ValueError(f"{dir_path} is not a directory; pass the directory model.save() wrote.")
    if not jpath.is_file():
        if ppath.is_file():
            if trust_remote_pickle:
                return None
            raise _pickle_refusal(ppath, what)
        found = sorted(p.name for p in Path(dir_path).iterdir())[:10]
        raise ValueError(
            f"{dir_path} holds no saved model: expected {jpath.name} and {wpath.name} (written "
            f"by model.save(dir{'' if prefix is None else ', prefix=' + repr(prefix)})); found "
            f"{found}. Check the directory and the prefix."
        )
    try:
        meta = json.loads(jpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(
            f"{jpath} is not valid JSON ({e}); the save is damaged. Save the model again."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f'{jpath} is not a celltx model file (no "format": "{FORMAT}" entry); pass the '
            "directory model.save() wrote."
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{jpath} has format_version {version!r}; this celltx reads version "
            f"{FORMAT_VERSION}. Update celltx to load it."
        )
    missing = [
        k for k in ("model_class", "weights_sha256", "var_names", "attributes") if k not in meta
    ]
    if missing or not isinstance(meta["attributes"], dict):
        raise ValueError(f"{jpath} lacks {missing or ['attributes']}; the save is damaged.")
    try:
        meta["attributes"] = from_json(meta["attributes"])
        meta["var_names"] = from_json(meta["var_names"])
    except (CorruptJSON, TypeError, KeyError, ValueError, AttributeError, RecursionError) as e:
        raise ValueError(f"{jpath} is damaged: {e}. Save the model again.") from None
    if "registry_" not in meta["attributes"] or "init_params_" not in meta["attributes"]:
        raise ValueError(f"{jpath} has no registry_ or init_params_; the save is damaged.")
    return meta


def _read_tensors(wpath: Path, meta: dict, device) -> tuple[dict, dict]:
    """State dict and extra module buffers from the weight file.

    Read after checking that the file is celltx's and belongs to ``model.json``.
    """
    from safetensors import SafetensorError, safe_open

    if not wpath.is_file():
        raise ValueError(
            f"{wpath} is missing; model.json has no weights without it. Save the model again."
        )
    try:
        with safe_open(str(wpath), framework="pt", device="cpu") as f:
            info = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(
            f"{wpath} is not a readable safetensors file ({e}); the save is damaged."
        ) from None
    if info.get("format") != FORMAT:
        raise ValueError(
            f"{wpath} is a safetensors file but not a celltx model's weights (its metadata has "
            f"no format={FORMAT!r}); it does not belong with "
            f"{wpath.with_name(wpath.name.replace(WEIGHTS_FNAME, JSON_FNAME))}. For a "
            "published scGPT checkpoint use ScGPT.load_pretrained."
        )
    if _sha256(wpath) != meta["weights_sha256"]:
        raise ValueError(
            f"{wpath} does not belong to model.json (its SHA-256 differs from the one recorded "
            "at saving): the directory was partly overwritten or damaged. Save the model again."
        )
    with safe_open(str(wpath), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = {k: v.to(device) for k, v in tensors.items() if not k.startswith(_EXTRA)}
    extra = {k[len(_EXTRA) :]: v.to(device) for k, v in tensors.items() if k.startswith(_EXTRA)}
    return state, extra


def _build_model(cls, adata, jpath: Path, attr_dict: dict):
    """The model, built from its saved init parameters, with its saved attributes."""
    init = attr_dict.pop("init_params_", None)
    if not isinstance(init, dict) or "non_kwargs" not in init or "kwargs" not in init:
        raise ValueError(f"{jpath} has no usable init_params_; the save is damaged.")
    kwargs = {k: v for group in init["kwargs"].values() for k, v in group.items()}
    model = cls(adata, **init["non_kwargs"], **kwargs)
    for name, value in attr_dict.items():
        setattr(model, name, value)
    return model


def _warn_if_var_names_differ(model, saved) -> None:
    """Warn, as scvi-tools does, when the data's features are not those of training."""
    now = model.get_var_names(legacy_mudata_format=not isinstance(saved, dict))
    if isinstance(saved, dict):
        same = all(np.array_equal(np.asarray(saved[k]), np.asarray(now.get(k))) for k in saved)
    else:
        same = np.array_equal(np.asarray(saved), np.asarray(now))
    if not same:
        warnings.warn(
            "The var_names of the data passed to load differ from those the model was trained "
            "on; genes are matched to the vocabulary by name, but results on other features "
            "differ from those on the training data.",
            UserWarning,
            stacklevel=3,
        )


class SafeSaveMixin(ModelHost):
    """``save`` / ``load`` / ``load_registry`` for scvi-tools models without pickles.

    Put it first among the bases of a :class:`~scvi.model.base.BaseModelClass` subclass.
    The format (see :mod:`celltx.model._save`) stores tensors with safetensors and
    everything else as JSON, so that loading a directory never runs code from it. A
    directory written by scvi-tools' own ``save`` (a pickled ``model.pt``) is refused
    unless ``trust_remote_pickle=True`` says its source is trusted.
    """

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict | None = None,
        legacy_mudata_format: bool = False,
        datamodule=None,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model: weights as safetensors, everything else as JSON (no pickles).

        Writes ``{prefix}model.safetensors`` (the module's state dict, and module state
        outside it such as stored perturbation controls) and ``{prefix}model.json`` (the
        scvi-tools registry, init parameters with the vocabulary, ``var_names``, the
        model's public attributes such as ``history_``, ``is_trained_`` and the data split,
        and the objective). :meth:`load` reads them without unpickling anything.

        Parameters
        ----------
        dir_path
            Directory to write (created if needed).
        prefix
            Prefix of the file names.
        overwrite
            Replace the files of an existing directory (else an existing ``dir_path`` is a
            :class:`ValueError`). A pickled ``{prefix}model.pt`` left there is removed.
        save_anndata
            Also write the AnnData (``{prefix}adata.h5ad``) or MuData
            (``{prefix}mdata.h5mu``), so that ``load(dir_path)`` needs no data.
        save_kwargs
            Options of ``torch.save`` in scvi-tools; the safe format does not use
            ``torch.save``, so passing any is a :class:`ValueError`.
        legacy_mudata_format
            Store a MuData model's ``var_names`` as one flat array (scvi-tools' legacy
            layout) instead of one array per modality.
        datamodule
            Not supported: celltx models are built on an AnnData or MuData.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write` (or ``MuData.write``).

        Notes
        -----
        Under data-parallel training (Lightning DDP) only the process of rank 0 writes; on
        the other ranks ``save`` does nothing, so a training script needs no guard.

        A :class:`ValueError` is raised when ``dir_path`` exists and ``overwrite`` is
        ``False``, for ``save_kwargs`` or ``datamodule``, and when a model attribute ending
        in ``_`` holds a value the format cannot store without a pickle (the message names
        it).

        Examples
        --------
        >>> model.save("my_model/", overwrite=True, save_anndata=True)  # doctest: +SKIP
        >>> model = celltx.model.ScGPT.load("my_model/")  # doctest: +SKIP
        """
        from anndata import AnnData
        from lightning.pytorch.utilities import rank_zero_only
        from mudata import MuData
        from safetensors.torch import save_file

        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # set by Lightning at import
            # a DDP script runs on every rank after training; the weights are the same on
            # all of them, and two processes writing one file would corrupt it
            return
        if save_kwargs:
            raise ValueError(
                f"save_kwargs={save_kwargs!r} are torch.save options; celltx saves with "
                "safetensors and JSON (no torch.save). Leave save_kwargs out."
            )
        if datamodule is not None:
            raise ValueError(
                "save(datamodule=...) is not supported: celltx models are built on an AnnData or MuData."
            )
        jpath, wpath, ppath = _paths(dir_path, prefix)
        if os.path.exists(dir_path) and not overwrite:
            raise ValueError(
                f"{dir_path} already exists. Pass overwrite=True to replace the saved model "
                "in it, or choose another directory."
            )
        attributes = {}
        for name, value in self._get_user_attributes():
            if not name.endswith("_"):
                continue
            try:
                attributes[name] = to_json(value)
            except UnsupportedValue as e:
                raise ValueError(
                    f"Cannot save model attribute {name!r}: it holds {e}, which celltx's save "
                    "format (JSON and safetensors, no pickles) does not store. Delete it "
                    f"(del model.{name}) or convert it to numbers, strings, lists, dicts, numpy "
                    "arrays or DataFrames before saving."
                ) from None
        module = self.module
        # module state outside the state dict (control cells, the objective), asked of it
        buffers, module_attributes = module.saved_state()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        clash = [k for k in tensors if k.startswith(_EXTRA)]
        if clash:  # cannot happen with torch's dotted names; guards the layout
            raise ValueError(
                f"State-dict keys {clash[:3]} clash with the format's {_EXTRA!r} prefix."
            )
        tensors.update({_EXTRA + k: v.detach().to("cpu").contiguous() for k, v in buffers.items()})
        var_names = self.get_var_names(legacy_mudata_format=legacy_mudata_format)

        os.makedirs(dir_path, exist_ok=True)
        if save_anndata:
            suffix = MDATA_FNAME if isinstance(self.adata, MuData) else ADATA_FNAME
            if not isinstance(self.adata, AnnData | MuData):
                raise ValueError("save_anndata=True needs a model with an AnnData or MuData.")
            self.adata.write(
                os.path.join(dir_path, f"{prefix or ''}{suffix}"), **anndata_write_kwargs
            )
        jpath.unlink(missing_ok=True)  # model.json last: its presence marks a complete save
        save_file(
            tensors, str(wpath), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        )
        celltx_version: str | None
        try:
            from celltx import __version__ as celltx_version
        except ImportError:  # pragma: no cover
            celltx_version = None
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_class": type(self).__name__,
            "celltx_version": celltx_version,
            "weights": wpath.name,
            "weights_sha256": _sha256(wpath),
            "var_names": to_json(var_names),
            "module_attributes": module_attributes,
            "module_objective": {k: float(v) for k, v in module.objective.items()},
            "attributes": attributes,
        }
        tmp = jpath.with_name(jpath.name + ".tmp")
        tmp.write_text(json.dumps(meta, allow_nan=False), encoding="utf-8")
        tmp.replace(jpath)
        ppath.unlink(missing_ok=True)  # a stale pickle would be a trap for older readers

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata=None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        datamodule=None,
        allowed_classes_names_list: list[str] | None = None,
        trust_remote_pickle: bool = False,
    ):
        """Load a model saved by :meth:`save`, without unpickling anything.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData (or MuData) organised like the training data; it is set up with the
            saved setup arguments. ``None``: the data saved with ``save_anndata=True``.
        accelerator, device
            Where to put the model (``"auto"``: a GPU when there is one).
        prefix
            Prefix of the file names given to :meth:`save`.
        backup_url
            scvi-tools downloads a missing ``model.pt`` (a pickle) from this URL; only used
            with ``trust_remote_pickle=True``.
        datamodule
            Not supported: celltx models are built on an AnnData or MuData.
        allowed_classes_names_list
            Class names besides this class's whose saves may be loaded.
        trust_remote_pickle
            Allow reading a directory in scvi-tools' pickled format (``model.pt``, also
            written by older celltx). Unpickling runs any code the file carries: only for
            directories from a source you trust. Never needed for directories written by
            this version's :meth:`save`.

        Returns
        -------
        The model with its weights, registry and attributes.

        Raises
        ------
        ValueError
            For a pickled ``model.pt`` without ``trust_remote_pickle=True``; a directory with
            no saved model; damaged or foreign ``model.json`` / ``model.safetensors``; a
            save of another model class; no ``adata`` and no saved data.

        Examples
        --------
        >>> model = celltx.model.ScGPT.load("my_model/", adata=adata)  # doctest: +SKIP
        """
        import anndata
        import mudata

        if (
            backup_url is not None
            and not _paths(dir_path, prefix)[0].is_file()
            and not trust_remote_pickle
        ):
            raise _pickle_refusal(
                _paths(dir_path, prefix)[2],
                f"load(backup_url={backup_url!r}) downloads a model.pt and",
            )
        meta = _read_meta(dir_path, prefix, f"{cls.__name__}.load", trust_remote_pickle)
        if meta is None:
            return super().load(
                str(dir_path),
                adata=adata,
                accelerator=accelerator,
                device=device,
                prefix=prefix,
                backup_url=backup_url,
                datamodule=datamodule,
                allowed_classes_names_list=allowed_classes_names_list,
            )
        if datamodule is not None:
            raise ValueError(
                "load(datamodule=...) is not supported: celltx models are built on an AnnData or MuData."
            )
        torch_device = resolve_device(accelerator, device)
        jpath, wpath, _ = _paths(dir_path, prefix)
        attr_dict = meta["attributes"]
        registry = attr_dict.pop("registry_")
        saved_class = meta["model_class"]
        names = {cls.__name__, *(allowed_classes_names_list or [])}
        if registry.get(MODEL_NAME_KEY, saved_class) not in names or saved_class not in names:
            raise ValueError(
                f"{jpath} holds a {saved_class} model, not a {cls.__name__}; load it with "
                f"{saved_class}.load (or list the class in allowed_classes_names_list)."
            )
        method_name = registry.get(SETUP_METHOD_KEY, "setup_anndata")
        if adata is None:
            is_mudata = method_name == "setup_mudata"
            data_path = (
                Path(dir_path) / f"{prefix or ''}{MDATA_FNAME if is_mudata else ADATA_FNAME}"
            )
            if not data_path.is_file():
                raise ValueError(
                    f"No data to load the model on: adata was not passed and {data_path} does "
                    f"not exist. Pass adata= ({cls.__name__}.load(dir, adata)), or save with "
                    "model.save(dir, save_anndata=True)."
                )
            adata = mudata.read_h5mu(data_path) if is_mudata else anndata.read_h5ad(data_path)
        if SETUP_ARGS_KEY not in registry:
            raise ValueError(
                f"{jpath} has no setup arguments in its registry; the save is damaged."
            )
        if method_name == "setup_datamodule":
            # built from a datamodule (ScGPT(datamodule=...), SOMA or lamindb): no labels,
            # batches or conditions, so the AnnData is set up plainly; genes matched by name
            cls.setup_anndata(adata)
        else:
            getattr(cls, method_name)(adata, source_registry=registry, **registry[SETUP_ARGS_KEY])
        state, extra = _read_tensors(wpath, meta, "cpu")
        model = _build_model(cls, adata, jpath, attr_dict)
        _warn_if_var_names_differ(model, meta["var_names"])
        model.module.on_load(model)
        try:
            model.module.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"The weights in {wpath} do not fit the model that {jpath} describes: "
                f"{str(e).strip().splitlines()[0]} ... The files do not belong together or "
                "were written by another celltx version."
            ) from None
        module = model.module
        module.load_saved_state(
            extra, dict(meta.get("module_attributes") or {}), meta.get("module_objective"), jpath
        )
        model.to_device(torch_device)
        model.module.eval()
        model._validate_anndata(adata)
        return model

    @classmethod
    def load_registry(
        cls,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        trust_remote_pickle: bool = False,
    ) -> dict:
        """The scvi-tools registry saved with a model, read without unpickling.

        The registry holds the setup arguments and field registries.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names.
        trust_remote_pickle
            Allow reading scvi-tools' pickled ``model.pt`` (runs any code it carries; only
            for a trusted source).

        Returns
        -------
        dict
            The registry.
        """
        meta = _read_meta(dir_path, prefix, f"{cls.__name__}.load_registry", trust_remote_pickle)
        if meta is None:
            from scvi.model.base import BaseModelClass

            return BaseModelClass.load_registry(str(dir_path), prefix)
        return meta["attributes"]["registry_"]

    @classmethod
    def view_setup_args(
        cls,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        trust_remote_pickle: bool = False,
    ) -> None:
        """Print the arguments a saved model's data was set up with (see :meth:`load_registry`)."""
        from scvi.data import AnnDataManager

        AnnDataManager.view_setup_method_args(
            cls.load_registry(dir_path, prefix, trust_remote_pickle)
        )

    @classmethod
    def convert_legacy_save(
        cls,
        dir_path,
        output_dir_path,
        overwrite=False,
        prefix=None,
        trust_remote_pickle=False,
        **save_kwargs,
    ):
        """scvi-tools' conversion of saves from before scvi-tools 0.15, which are pickles.

        Refused unless ``trust_remote_pickle=True`` (unpickling runs any code in them).
        """
        if not trust_remote_pickle:
            raise _pickle_refusal(
                Path(dir_path) / f"{prefix or ''}model_params.pt", "convert_legacy_save"
            )
        return super().convert_legacy_save(
            dir_path, output_dir_path, overwrite=overwrite, prefix=prefix, **save_kwargs
        )
