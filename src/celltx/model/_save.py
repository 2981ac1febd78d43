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

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

FORMAT = "celltx.model"
FORMAT_VERSION = 1
JSON_FNAME = "model.json"
WEIGHTS_FNAME = "model.safetensors"
PICKLE_FNAME = "model.pt"  # the pickled save of scvi-tools and of earlier celltx
_EXTRA = "extra/"  # safetensors key prefix of module state outside the state dict


# --- JSON with type tags ----------------------------------------------------------------
def _tag_types() -> dict:
    from celltx.data._genes import GeneMatch
    from celltx.io import LoadReport

    return {"LoadReport": LoadReport, "GeneMatch": GeneMatch}


_TAGS = (
    "__ndarray__",
    "__npscalar__",
    "__float__",
    "__tuple__",
    "__dict__",
    "__index__",
    "__series__",
    "__dataframe__",
    "__dataclass__",
)


class _UnsupportedValue(ValueError):
    pass


def _looks_like_tag(key) -> bool:
    """Whether a one-key object with this key reads as a type tag (``"__name__"``)."""
    return isinstance(key, str) and len(key) > 4 and key.startswith("__") and key.endswith("__")


def _enc_float(x: float):
    return x if math.isfinite(x) else {"__float__": repr(float(x))}


def _enc_array(a: np.ndarray) -> dict:
    kind = a.dtype.kind
    if kind in "biu":
        data = a.ravel().tolist()
    elif kind == "f":
        data = [v if math.isfinite(v) else repr(v) for v in a.ravel().tolist()]
    elif kind == "U":
        data = a.ravel().tolist()
    elif kind == "O":
        data = [_encode(v) for v in a.ravel().tolist()]
    else:
        raise _UnsupportedValue(f"a numpy array of dtype {a.dtype}")
    return {"__ndarray__": {"dtype": a.dtype.str, "shape": list(a.shape), "data": data}}


def _encode(value):
    """``value`` as JSON-compatible data; raises :class:`_UnsupportedValue` for types the
    format does not hold (arbitrary objects would need a pickle)."""
    if value is None or isinstance(value, bool | str) or type(value) is int:
        return value
    if type(value) is float:
        return _enc_float(value)
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufU":
            raise _UnsupportedValue(f"a numpy scalar of dtype {value.dtype}")
        item = value.item()
        return {"__npscalar__": {"dtype": value.dtype.str, "value": _encode(item)}}
    if isinstance(value, np.ndarray):
        return _enc_array(value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, dict):
        plain = all(type(k) is str for k in value) and not (
            len(value) == 1 and _looks_like_tag(next(iter(value)))
        )
        if plain:
            return {k: _encode(v) for k, v in value.items()}
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, pd.DataFrame):
        if value.columns.has_duplicates:
            raise _UnsupportedValue("a DataFrame with duplicated column names")
        return {
            "__dataframe__": {
                "index": _encode(value.index),
                "columns": _encode(value.columns),
                "data": [_encode(_column_array(value[c])) for c in value.columns],
            }
        }
    if isinstance(value, pd.Series):
        return {
            "__series__": {
                "index": _encode(value.index),
                "name": _encode(value.name),
                "data": _encode(_column_array(value)),
            }
        }
    if isinstance(value, pd.Index):
        if isinstance(value, pd.MultiIndex | pd.CategoricalIndex | pd.IntervalIndex):
            raise _UnsupportedValue(f"a {type(value).__name__}")
        return {
            "__index__": {
                "name": _encode(value.name),
                "data": _enc_array(_column_array(value)),
            }
        }
    for tag, cls in _tag_types().items():
        if type(value) is cls:
            fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(cls)}
            return {"__dataclass__": {"type": tag, "fields": fields}}
    raise _UnsupportedValue(f"a {type(value).__module__}.{type(value).__qualname__}")


def _column_array(values) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "biufUO":
        raise _UnsupportedValue(f"a column of dtype {values.dtype}")
    return a


class _CorruptJSON(ValueError):
    pass


def _dec_array(spec) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise _CorruptJSON("an __ndarray__ needs dtype, shape and data")
    dtype = np.dtype(str(spec["dtype"]))
    if dtype.kind not in "biufUO":
        raise _CorruptJSON(f"arrays of dtype {dtype} are not part of the format")
    shape = tuple(int(s) for s in spec["shape"])
    data = spec["data"]
    if not isinstance(data, list) or len(data) != math.prod(shape):
        raise _CorruptJSON(f"an __ndarray__ of shape {shape} needs {math.prod(shape)} values")
    if dtype.kind == "O":
        out = np.empty(len(data), dtype=object)
        out[:] = [_decode(v) for v in data]
        return out.reshape(shape)
    if dtype.kind == "f":
        data = [float(v) for v in data]  # "nan", "inf", "-inf" are written as strings
    return np.array(data, dtype=dtype).reshape(shape)


def _decode(value):
    """Inverse of :func:`_encode`; only the tags of this module are understood."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or not _looks_like_tag(next(iter(value))):
        return {k: _decode(v) for k, v in value.items()}
    if next(iter(value)) not in _TAGS:
        raise _CorruptJSON(f"unknown type tag {next(iter(value))!r}")
    tag, body = next(iter(value.items()))
    if tag == "__ndarray__":
        return _dec_array(body)
    if tag == "__npscalar__":
        dtype = np.dtype(str(body["dtype"]))
        if dtype.kind not in "biufU":
            raise _CorruptJSON(f"numpy scalars of dtype {dtype} are not part of the format")
        return np.array(_decode(body["value"]), dtype=dtype)[()]
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise _CorruptJSON(f"__float__ must be 'nan', 'inf' or '-inf', not {body!r}")
        return float(body)
    if tag == "__tuple__":
        return tuple(_decode(v) for v in body)
    if tag == "__dict__":
        return {_decode(k): _decode(v) for k, v in body}
    if tag == "__index__":
        return pd.Index(
            _decode({"__ndarray__": body["data"]["__ndarray__"]}), name=_decode(body["name"])
        )
    if tag == "__series__":
        return pd.Series(
            _decode(body["data"]), index=_decode(body["index"]), name=_decode(body["name"])
        )
    if tag == "__dataframe__":
        columns = _decode(body["columns"])
        data = [_decode(c) for c in body["data"]]
        if len(data) != len(columns):
            raise _CorruptJSON("a __dataframe__ needs one data array per column")
        frame = pd.DataFrame(
            dict(zip(range(len(data)), data, strict=True)), index=_decode(body["index"])
        )
        frame.columns = columns
        return frame
    # __dataclass__
    types = _tag_types()
    if body.get("type") not in types:
        raise _CorruptJSON(f"unknown dataclass {body.get('type')!r}; known: {sorted(types)}")
    return types[body["type"]](**{k: _decode(v) for k, v in body["fields"].items()})


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
    """``model.json`` of a save directory, checked; ``None`` when the directory holds a
    pickled scvi-tools save and ``trust_remote_pickle`` allows reading it."""
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
        meta["attributes"] = _decode(meta["attributes"])
        meta["var_names"] = _decode(meta["var_names"])
    except (_CorruptJSON, TypeError, KeyError, ValueError, AttributeError, RecursionError) as e:
        raise ValueError(f"{jpath} is damaged: {e}. Save the model again.") from None
    if "registry_" not in meta["attributes"] or "init_params_" not in meta["attributes"]:
        raise ValueError(f"{jpath} has no registry_ or init_params_; the save is damaged.")
    return meta


def _read_tensors(wpath: Path, meta: dict, device) -> tuple[dict, dict]:
    """State dict and extra module buffers from the weight file, after checking that it is
    celltx's and belongs to ``model.json``."""
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


class SafeSaveMixin:
    """``save`` / ``load`` / ``load_registry`` for scvi-tools models without pickles.

    Put it first among the bases of a :class:`~scvi.model.base.BaseModelClass` subclass.
    The format (see :mod:`celltx.model._save`) stores tensors with safetensors and
    everything else as JSON, so that loading a directory never runs code from it. A
    directory written by scvi-tools' own ``save`` (a pickled ``model.pt``) is refused
    unless ``trust_remote_pickle=True`` says its source is trusted.
    """

    #: module buffers outside the state dict that a save keeps (those the module has)
    _saved_module_buffers: tuple[str, ...] = (
        "condition_genes",
        "ctrl_x",
        "ctrl_start",
        "ctrl_count",
        "ctrl_mean",
        "class_weights",
    )
    #: plain module attributes (numbers, booleans) that a save keeps: the objective
    _saved_module_attributes: tuple[str, ...] = (
        "gep_weight",
        "mvc_weight",
        "cls_weight",
        "ecs_weight",
        "dab_weight",
        "pert_weight",
        "align_weight",
        "ecs_threshold",
        "label_smoothing",
        "pair_by_labels",
        "align_temperature",
    )

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

        Raises
        ------
        ValueError
            When ``dir_path`` exists and ``overwrite`` is ``False``, for ``save_kwargs`` or
            ``datamodule``, and when a model attribute ending in ``_`` holds a value the
            format cannot store without a pickle (the message names it).

        Examples
        --------
        >>> model.save("my_model/", overwrite=True, save_anndata=True)  # doctest: +SKIP
        >>> model = celltx.model.ScGPT.load("my_model/")  # doctest: +SKIP
        """
        from anndata import AnnData
        from mudata import MuData
        from safetensors.torch import save_file
        from scvi.model.base._constants import SAVE_KEYS

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
                attributes[name] = _encode(value)
            except _UnsupportedValue as e:
                raise ValueError(
                    f"Cannot save model attribute {name!r}: it holds {e}, which celltx's save "
                    "format (JSON and safetensors, no pickles) does not store. Delete it "
                    f"(del model.{name}) or convert it to numbers, strings, lists, dicts, numpy "
                    "arrays or DataFrames before saving."
                ) from None
        module = self.module
        buffers = {
            name: getattr(module, name)
            for name in self._saved_module_buffers
            if isinstance(getattr(module, name, None), torch.Tensor)
        }
        module_attributes = {
            name: getattr(module, name)
            for name in self._saved_module_attributes
            if isinstance(getattr(module, name, None), bool | int | float)
        }
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
            suffix = (
                SAVE_KEYS.MDATA_FNAME if isinstance(self.adata, MuData) else SAVE_KEYS.ADATA_FNAME
            )
            if not isinstance(self.adata, AnnData | MuData):
                raise ValueError("save_anndata=True needs a model with an AnnData or MuData.")
            self.adata.write(
                os.path.join(dir_path, f"{prefix or ''}{suffix}"), **anndata_write_kwargs
            )
        jpath.unlink(missing_ok=True)  # model.json last: its presence marks a complete save
        save_file(
            tensors, str(wpath), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        )
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
            "var_names": _encode(var_names),
            "module_attributes": module_attributes,
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
        from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY, _SETUP_METHOD_NAME
        from scvi.model._utils import parse_device_args
        from scvi.model.base._constants import SAVE_KEYS
        from scvi.model.base._save_load import _initialize_model, _validate_var_names

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
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        jpath, wpath, _ = _paths(dir_path, prefix)
        attr_dict = meta["attributes"]
        registry = attr_dict.pop("registry_")
        saved_class = meta["model_class"]
        names = {cls.__name__, *(allowed_classes_names_list or [])}
        if registry.get(_MODEL_NAME_KEY, saved_class) not in names or saved_class not in names:
            raise ValueError(
                f"{jpath} holds a {saved_class} model, not a {cls.__name__}; load it with "
                f"{saved_class}.load (or list the class in allowed_classes_names_list)."
            )
        method_name = registry.get(_SETUP_METHOD_NAME, "setup_anndata")
        if adata is None:
            is_mudata = method_name == "setup_mudata"
            data_path = (
                Path(dir_path)
                / f"{prefix or ''}{SAVE_KEYS.MDATA_FNAME if is_mudata else SAVE_KEYS.ADATA_FNAME}"
            )
            if not data_path.is_file():
                raise ValueError(
                    f"No data to load the model on: adata was not passed and {data_path} does "
                    f"not exist. Pass adata= ({cls.__name__}.load(dir, adata)), or save with "
                    "model.save(dir, save_anndata=True)."
                )
            adata = mudata.read_h5mu(data_path) if is_mudata else anndata.read_h5ad(data_path)
        if _SETUP_ARGS_KEY not in registry:
            raise ValueError(
                f"{jpath} has no setup arguments in its registry; the save is damaged."
            )
        _validate_var_names(adata, meta["var_names"])
        if method_name == "setup_datamodule":
            raise ValueError(
                f"{jpath} was set up with a datamodule, which celltx does not support."
            )
        getattr(cls, method_name)(adata, source_registry=registry, **registry[_SETUP_ARGS_KEY])
        state, extra = _read_tensors(wpath, meta, "cpu")
        model = _initialize_model(cls, adata, registry, attr_dict, None)
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
        with torch.no_grad():
            for name, tensor in extra.items():
                if name in cls._saved_module_buffers and isinstance(
                    getattr(module, name, None), torch.Tensor
                ):
                    setattr(module, name, tensor.to(getattr(module, name).device))
        for name, value in dict(meta.get("module_attributes") or {}).items():
            if name in cls._saved_module_attributes and hasattr(module, name):
                if not isinstance(value, bool | int | float):
                    raise ValueError(
                        f"{jpath}: module attribute {name!r} is {value!r}, not a number; the save is damaged."
                    )
                setattr(module, name, value)
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
        """The scvi-tools registry saved with a model (setup arguments, field registries),
        read without unpickling.

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
        """scvi-tools' conversion of saves from before scvi-tools 0.15, which are pickles:
        refused unless ``trust_remote_pickle=True`` (unpickling runs any code in them)."""
        if not trust_remote_pickle:
            raise _pickle_refusal(
                Path(dir_path) / f"{prefix or ''}model_params.pt", "convert_legacy_save"
            )
        return super().convert_legacy_save(
            dir_path, output_dir_path, overwrite=overwrite, prefix=prefix, **save_kwargs
        )
