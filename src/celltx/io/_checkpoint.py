"""scGPT model directories (``args.json`` + ``vocab.json`` + weights): read, check, write.

A published scGPT model directory holds

- ``args.json``: the training arguments, among them the architecture (``embsize``,
  ``nheads``, ``nlayers``, ``d_hid``, ``n_bins``, ``pad_token``, ``pad_value``,
  ``input_emb_style``, ``cell_emb_style``, ...);
- ``vocab.json``: ``{token: id}``, ids ``0 … n-1``;
- ``best_model.pt``: a plain state dict (attention keys in one of three layouts, see
  :func:`celltx.io.detect_layout`).

This module turns such a directory into :class:`celltx.nn.ScGPTTransformer` constructor
arguments and a renamed, shape-checked state dict, and writes the reverse.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from celltx.data import PAD_TOKEN, GeneVocab
from celltx.nn import ScGPTConfig

from ._state_dict import Layout, detect_layout, from_scgpt, read_weights, to_scgpt

#: weight file names looked for in a model directory, in this order
WEIGHT_FILES = ("best_model.safetensors", "model.safetensors", "best_model.pt", "model.pt")
#: parameter groups every checkpoint must provide
REQUIRED_GROUPS = ("encoder", "value_encoder", "transformer_encoder")
#: generative output heads: loaded when present, randomly initialised (with a warning) when absent
HEAD_GROUPS = ("decoder", "mvc_decoder")
#: fine-tuning heads: loaded when present with the model's shapes, else randomly initialised
TASK_HEADS = (
    "cls_decoder",
    "grad_reverse_discriminator",
    "dsbn",
    "batch_encoder",
    "pert_encoder",
    "mod_encoder",
)

# Fixed values of the scGPT args.json keys that describe how scGPT itself trained, not the
# architecture: celltx reads only these (others raise) and writes them as they are.
#: value id scGPT's masked-value pretraining used for held-out values
SCGPT_MASK_VALUE = -1
#: scGPT's ``input_style``: per-cell binned values (the only one celltx reproduces)
SCGPT_INPUT_STYLE = "binned"
#: scGPT's ``cell_emb_style``: the ``<cls>`` output is the cell embedding (ditto)
SCGPT_CELL_EMB_STYLE = "cls"

_LAYER = re.compile(r"^transformer_encoder\.layers\.(\d+)\.")


@dataclass
class LoadReport:
    """What happened when a checkpoint's weights were put into a model.

    Attributes
    ----------
    loaded
        celltx parameter names filled from the file.
    skipped
        ``{group: n_tensors}`` of file tensors the model has no place for (e.g.
        ``cls_decoder``, a batch discriminator), left out.
    initialised
        Model head groups absent from the file, kept at their random initialisation.
    reasons
        ``{group: why}`` for heads in ``initialised`` that the file has with other shapes
        (e.g. a classifier for another number of classes).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts, skipped and initialised groups."""
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.skipped:
            parts.append(
                "skipped (not in this model): "
                + ", ".join(f"{g} ({n})" for g, n in sorted(self.skipped.items()))
            )
        if self.initialised:
            parts.append(
                "randomly initialised: "
                + ", ".join(
                    f"{g} ({self.reasons.get(g, 'not in the file')})" for g in self.initialised
                )
            )
        return "; ".join(parts)


@dataclass
class ScGPTCheckpoint:
    """A scGPT model directory read into memory (see :func:`read_scgpt_dir`).

    Attributes
    ----------
    path
        The directory.
    weights_path
        The weight file that was read.
    args
        ``args.json`` as a dict.
    vocab
        The vocabulary.
    state_dict
        Weights renamed to celltx names (:func:`celltx.io.from_scgpt`).
    layout
        Attention-key layout of the file (``"official"``, ``"torch"`` or ``"fa2"``).
    model_kwargs
        :class:`celltx.model.ScGPT` arguments implied by ``args.json``.
    """

    path: Path
    weights_path: Path
    args: dict
    vocab: GeneVocab
    state_dict: dict[str, torch.Tensor]
    layout: Layout
    model_kwargs: dict


def _group(key: str) -> str:
    return key.split(".", 1)[0]


def _arg_error(source: str, key: str, value, expected: str) -> ValueError:
    return ValueError(
        f"{source}: {key!r} is {value!r} ({type(value).__name__}); expected {expected}. "
        f"Fix {key!r} in {source}."
    )


def _int_arg(args: Mapping, key: str, source: str, minimum: int, default=None) -> int:
    """``args[key]`` as an int >= ``minimum``.

    Accepts JSON integers, and floats with an integral value (``4.0``); not ``4.5``, booleans,
    strings, lists or ``null``.
    """
    value = args.get(key, default)
    expected = f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _arg_error(source, key, value, expected)
    if isinstance(value, float) and not value.is_integer():
        raise _arg_error(source, key, value, expected + " (a whole number)")
    if value < minimum:
        raise _arg_error(source, key, value, expected)
    return int(value)


def _float_arg(args: Mapping, key: str, source: str, default: float, low=None, high=None) -> float:
    """``args[key]`` as a finite float, optionally in ``[low, high)``."""
    value = args.get(key, default)
    bounds = "" if low is None else f" in [{low}, {high})"
    expected = f"a number{bounds}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _arg_error(source, key, value, expected)
    if low is not None and not low <= value < high:
        raise _arg_error(source, key, value, expected)
    return float(value)


def _choice_arg(args: Mapping, key: str, source: str, default: str, choices: tuple) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{source} has {key}={value!r}; celltx supports {key} in {list(choices)}. "
            f"Fix {key!r} in {source}."
        )
    return value


def scgpt_args_to_kwargs(args: Mapping, source: str | os.PathLike | None = None) -> dict:
    """Translate scGPT's ``args.json`` into :class:`celltx.model.ScGPT` arguments.

    Only what defines the computation is taken: sizes (classifier depth ``n_layers_cls``
    included), dropout, binning, pad value, value-embedding style, norm placement, sequence
    length and generative mask ratios.
    Every field used is checked: sizes must be whole numbers (``4.0`` is accepted, ``4.5``,
    ``true``, strings, lists and ``null`` are not), ``embsize`` divisible by ``nheads``,
    ``dropout`` in ``[0, 1)``, mask ratios in ``[0, 1)``. Settings celltx cannot reproduce
    (a ``cell_emb_style`` other than ``"cls"``, an ``input_style`` other than
    ``"binned"``, a pad token other than ``<pad>``) raise.

    Parameters
    ----------
    args
        The content of ``args.json``.
    source
        Where ``args`` comes from, named in error messages (default ``"args.json"``).

    Returns
    -------
    dict
        Keyword arguments for :class:`celltx.model.ScGPT`.

    Raises
    ------
    ValueError
        Naming the file, the key, the value and what was expected, for a missing
        architecture key, a value of the wrong type or range, or an unsupported setting.

    Examples
    --------
    >>> from celltx.io import scgpt_args_to_kwargs
    >>> scgpt_args_to_kwargs({"embsize": 512, "nheads": 8, "nlayers": 12, "d_hid": 512})["d_model"]
    512
    """
    src = "args.json" if source is None else str(source)
    missing = [k for k in ("embsize", "nheads", "nlayers") if k not in args]
    if missing:
        raise ValueError(
            f"{src} lacks {missing}; scGPT's args.json names the architecture with "
            "'embsize', 'nheads', 'nlayers' (and 'd_hid'). Add them, or check that this is a "
            "scGPT model directory."
        )
    unsupported = {
        "cell_emb_style": (SCGPT_CELL_EMB_STYLE,),
        "input_style": (SCGPT_INPUT_STYLE,),
        "pad_token": (PAD_TOKEN,),
    }
    for key, ok in unsupported.items():
        if key in args:
            _choice_arg(args, key, src, ok[0], ok)
    embsize = _int_arg(args, "embsize", src, 1)
    nheads = _int_arg(args, "nheads", src, 1)
    if embsize % nheads:
        raise ValueError(
            f"{src}: 'embsize' ({embsize}) is not divisible by 'nheads' ({nheads}); each "
            f"attention head gets embsize / nheads dimensions. Fix them in {src}."
        )
    kwargs = {
        "d_model": embsize,
        "n_heads": nheads,
        "n_layers": _int_arg(args, "nlayers", src, 1),
        "d_hid": _int_arg(args, "d_hid", src, 1, default=embsize),
        "dropout": _float_arg(args, "dropout", src, ScGPTConfig.dropout, 0.0, 1.0),
        "n_bins": _int_arg(args, "n_bins", src, 3, default=ScGPTConfig.n_bins),
        "pad_value": _float_arg(args, "pad_value", src, ScGPTConfig.pad_value),
        "input_emb_style": _choice_arg(
            args, "input_emb_style", src, ScGPTConfig.input_emb_style, ("continuous", "category")
        ),
        "norm_first": _choice_arg(
            args, "norm_scheme", src, "pre" if ScGPTConfig.norm_first else "post", ("post", "pre")
        )
        == "pre",
        "max_seq_len": _int_arg(args, "max_seq_len", src, 2, default=ScGPTConfig.max_seq_len),
        "n_layers_cls": _int_arg(args, "n_layers_cls", src, 1, default=ScGPTConfig.n_layers_cls),
    }
    if "activation" in args:  # written by celltx's export, not by scGPT
        kwargs["activation"] = _choice_arg(
            args, "activation", src, ScGPTConfig.activation, ("relu", "gelu")
        )
    ratio = args.get("mask_ratio")
    if ratio is not None:
        ratios = list(ratio) if isinstance(ratio, list | tuple) else [ratio]
        checked = [_float_arg({"mask_ratio": r}, "mask_ratio", src, 0.0, 0.0, 1.0) for r in ratios]
        if isinstance(ratio, list | tuple) and not ratios:
            raise _arg_error(src, "mask_ratio", ratio, "a number or a list of numbers in [0, 1)")
        # 0 (fine-tuning runs without masking) leaves celltx's default generative ratios
        if all(r > 0 for r in checked):
            kwargs["mask_ratio"] = tuple(checked)
    return kwargs


def config_from_scgpt_args(args: Mapping, source: str | os.PathLike | None = None) -> ScGPTConfig:
    """The :class:`~celltx.nn.ScGPTConfig` that a scGPT ``args.json`` describes.

    Keys the file lacks keep celltx's defaults (which are scGPT's). Checked as
    :func:`scgpt_args_to_kwargs` checks them.

    Examples
    --------
    >>> from celltx.io import config_from_scgpt_args
    >>> config_from_scgpt_args({"embsize": 64, "nheads": 4, "nlayers": 2}).d_hid_resolved
    64
    """
    return ScGPTConfig(**scgpt_args_to_kwargs(args, source))


def scgpt_args_from_config(config: ScGPTConfig, n_tokens: int) -> dict:
    """ScGPT ``args.json`` content for a model with ``config`` and ``n_tokens`` tokens.

    The inverse of :func:`config_from_scgpt_args`.

    Writes the keys scGPT's tutorials and ``load_pretrained`` helpers read, with scGPT's
    values for the training-only settings.

    Examples
    --------
    >>> from celltx.io import scgpt_args_from_config
    >>> from celltx.nn import ScGPTConfig
    >>> scgpt_args_from_config(ScGPTConfig(d_model=64, n_heads=4), n_tokens=100)["embsize"]
    64
    """
    c = config
    return {
        "embsize": c.d_model,
        "nheads": c.n_heads,
        "nlayers": c.n_layers,
        "d_hid": c.d_hid_resolved,
        "dropout": float(c.dropout),
        "n_layers_cls": c.n_layers_cls,
        "n_bins": c.n_bins if c.n_bins is not None else ScGPTConfig.n_bins,
        "pad_token": PAD_TOKEN,
        "pad_value": float(c.pad_value),
        "mask_value": SCGPT_MASK_VALUE,
        "input_style": SCGPT_INPUT_STYLE,
        "input_emb_style": c.input_emb_style,
        "cell_emb_style": SCGPT_CELL_EMB_STYLE,
        "norm_scheme": "pre" if c.norm_first else "post",
        "activation": c.activation,
        "max_seq_len": c.max_seq_len,
        "mask_ratio": list(c.mask_ratio),
        "ntoken": int(n_tokens),
        "USE_MVC": True,  # celltx always builds the cell-prompt (MVC) decoder
        "vocab_path": "vocab.json",
        "data_source": "celltx",
    }


def kwargs_to_scgpt_args(kwargs: Mapping, n_tokens: int) -> dict:
    """ScGPT ``args.json`` content from :class:`~celltx.nn.ScGPTConfig` fields as a dict.

    Kept for compatibility; :func:`scgpt_args_from_config` is the same on a config.
    """
    known = {k: v for k, v in kwargs.items() if k in ScGPTConfig.field_names()}
    return scgpt_args_from_config(ScGPTConfig.from_dict(known), n_tokens)


def find_weights(model_dir: Path, weights: str | os.PathLike | None = None) -> Path:
    """The weight file of a model directory (``weights`` names it explicitly)."""
    if weights is not None:
        path = Path(weights)
        return path if path.is_absolute() or path.exists() else model_dir / path
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise ValueError(
        f"No weights in {model_dir} (looked for {', '.join(WEIGHT_FILES)}; found "
        f"{sorted(p.name for p in model_dir.iterdir())[:10]}). Pass weights='<file>'."
    )


def read_scgpt_dir(
    model_dir: str | os.PathLike, weights: str | os.PathLike | None = None
) -> ScGPTCheckpoint:
    """Read a scGPT model directory: ``args.json``, ``vocab.json`` and the weights.

    Weights are read without unpickling objects (:func:`celltx.io.read_weights`) and
    renamed to celltx names whatever their layout. The vocabulary is checked against the
    embedding matrix.

    Parameters
    ----------
    model_dir
        Directory with ``args.json``, ``vocab.json`` and ``best_model.pt`` (or a
        ``.safetensors`` file).
    weights
        Weight file name inside ``model_dir`` (or a path), if not one of
        ``best_model.safetensors``, ``model.safetensors``, ``best_model.pt``, ``model.pt``.

    Examples
    --------
    >>> ckpt = celltx.io.read_scgpt_dir("scGPT_human")  # doctest: +SKIP
    >>> ckpt.layout, ckpt.model_kwargs["d_model"], len(ckpt.vocab)  # doctest: +SKIP
    ('official', 512, 60697)
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(
            f"{model_dir} is not a directory. Pass the scGPT model directory (the folder with "
            "args.json, vocab.json and best_model.pt)."
        )
    for name in ("args.json", "vocab.json"):
        if not (model_dir / name).is_file():
            raise ValueError(
                f"{model_dir} has no {name}; a scGPT model directory holds args.json, "
                "vocab.json and best_model.pt."
            )
    try:
        args = json.loads((model_dir / "args.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{model_dir / 'args.json'} is not valid JSON: {e}") from e
    if not isinstance(args, dict):
        raise ValueError(f"{model_dir / 'args.json'} must hold a JSON object.")
    kwargs = scgpt_args_to_kwargs(args, source=model_dir / "args.json")
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    wpath = find_weights(model_dir, weights)
    raw = read_weights(wpath)
    layout = detect_layout(raw)
    sd = from_scgpt(raw)
    emb = sd.get("encoder.embedding.weight")
    if emb is None:
        raise ValueError(
            f"{wpath} has no 'encoder.embedding.weight' (gene embedding); this is not a scGPT "
            "checkpoint or it is incomplete."
        )
    if emb.shape[0] != len(vocab):
        raise ValueError(
            f"vocab.json has {len(vocab)} tokens but the gene embedding in {wpath.name} has "
            f"{emb.shape[0]} rows: the vocabulary does not belong to these weights. Use the "
            "vocab.json shipped with the checkpoint."
        )
    return ScGPTCheckpoint(model_dir, wpath, args, vocab, sd, layout, kwargs)


_EMBEDDING = "encoder.embedding.weight"


def load_into(
    transformer: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    new_tokens: int = 0,
) -> LoadReport:
    """Copy checkpoint weights (celltx names) into ``transformer`` with checks.

    - every parameter of the encoder groups (``encoder``, ``value_encoder``,
      ``transformer_encoder``) must be in the file, with the model's shape;
    - output heads (``decoder``, ``mvc_decoder``, and the fine-tuning heads
      ``cls_decoder``, ``grad_reverse_discriminator``, ``dsbn``, ``batch_encoder``,
      ``pert_encoder``) are
      loaded when complete in the file with the model's shapes, and left at their
      initialisation when wholly absent or shaped differently (another number of classes
      or batches; a batch token changes the decoders' input width);
    - file tensors the model has no place for (``cls_decoder``, batch / perturbation parts)
      are skipped and counted in the report;
    - any shape disagreement, a partly present head, or extra transformer layers raise a
      :class:`ValueError` naming the key and both shapes;
    - ``new_tokens``: the model's vocabulary is the file's plus this many tokens appended
      (e.g. ATAC peaks next to a checkpoint's genes): the file's embedding rows fill the
      first rows of ``encoder.embedding``, the new rows keep their initialisation
      (reported under ``initialised``).
    """
    own = transformer.state_dict()
    file_keys = set(state_dict)
    errors = []
    extra_layers = sorted(
        {int(m.group(1)) for k in file_keys if (m := _LAYER.match(k))}
        - {int(m.group(1)) for k in own if (m := _LAYER.match(k))}
    )
    if extra_layers:
        n_file = max(int(m.group(1)) for k in file_keys if (m := _LAYER.match(k))) + 1
        n_own = len({k.split(".")[2] for k in own if _LAYER.match(k)})
        raise ValueError(
            f"The {source} has {n_file} transformer layers but the architecture "
            f"(args.json nlayers) has {n_own}: fix 'nlayers' in args.json."
        )
    report = LoadReport()
    heads = HEAD_GROUPS + TASK_HEADS
    for key, target in own.items():
        group = _group(key)
        if group in heads:
            continue  # judged per group below
        if key not in state_dict:
            errors.append(f"missing required tensor {key!r} (model shape {tuple(target.shape)})")
            continue
        src = state_dict[key]
        if (
            key == _EMBEDDING
            and new_tokens
            and tuple(src.shape) == (target.shape[0] - new_tokens, *target.shape[1:])
        ):
            continue
        if tuple(src.shape) != tuple(target.shape):
            errors.append(
                f"{key!r}: the {source} has shape {tuple(src.shape)}, the architecture from "
                f"args.json needs {tuple(target.shape)}"
            )
    take = set()
    for group in heads:
        keys = [k for k in own if _group(k) == group]
        present = [k for k in keys if k in state_dict]
        if not keys:
            continue
        if not present:
            report.initialised.append(group)
        elif len(present) == len(keys):
            diff = [
                (k, tuple(state_dict[k].shape), tuple(own[k].shape))
                for k in keys
                if tuple(state_dict[k].shape) != tuple(own[k].shape)
            ]
            if diff:
                report.initialised.append(group)
                k, a, b = diff[0]
                report.reasons[group] = f"shapes differ, e.g. {k} {a} in the file vs {b}"
            else:
                take.update(keys)
        else:
            absent = [k for k in keys if k not in state_dict]
            errors.append(
                f"head {group!r} is incomplete in the {source}: missing {absent} (a "
                "different head style, or a damaged file)"
            )
    if errors:
        raise ValueError(
            f"The {source} does not fit the architecture described by args.json:\n  - "
            + "\n  - ".join(errors[:20])
            + (f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else "")
        )
    with torch.no_grad():
        for key, target in own.items():
            if key in state_dict and (_group(key) not in heads or key in take):
                src = state_dict[key].to(target.dtype)
                target[: src.shape[0]].copy_(src)  # the embedding may have new rows at the end
                report.loaded.append(key)
    if new_tokens:
        report.initialised.append("encoder.embedding")
        report.reasons["encoder.embedding"] = f"rows of {new_tokens} new tokens"
    for key in sorted(file_keys - set(own)):
        group = _group(key)
        if group in REQUIRED_GROUPS:
            # e.g. a batch-norm / extra encoder part the model does not build
            group = key.rsplit(".", 1)[0]
        report.skipped[group] = report.skipped.get(group, 0) + 1
    return report


def write_scgpt_dir(
    out_dir: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    vocab: GeneVocab,
    args: Mapping,
    layout: Layout = "official",
    safetensors: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a scGPT model directory (``args.json``, ``vocab.json``, weights).

    ``state_dict`` uses celltx names; it is renamed to ``layout`` and saved as
    ``best_model.pt`` (a plain state dict: ``torch.load(weights_only=True)`` reads it) or
    ``best_model.safetensors``. Returns the weight file's path.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass overwrite=True to replace files.")
    out.mkdir(parents=True, exist_ok=True)
    for name in WEIGHT_FILES:  # a stale weight file could be picked up instead of the new one
        (out / name).unlink(missing_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in to_scgpt(state_dict, layout).items()}
    if safetensors:
        from safetensors.torch import save_file

        wpath = out / "best_model.safetensors"
        save_file(sd, str(wpath))
    else:
        wpath = out / "best_model.pt"
        torch.save(sd, wpath)
    vocab.save(out / "vocab.json")
    (out / "args.json").write_text(json.dumps(dict(args), indent=2), encoding="utf-8")
    return wpath
