"""scGPT state-dict layouts <-> celltx parameter names, and safe weight reading."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

Layout = Literal["official", "torch", "fa2"]

_IN_PROJ = re.compile(r"(^|\.)self_attn\.in_proj_(weight|bias)$")
_FA2 = re.compile(r"(^|\.)self_attn\._impl\.")


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> Layout:
    """Which attention naming a scGPT state dict uses.

    ``"official"`` (flash-attn 1, ``self_attn.Wqkv.*``), ``"torch"``
    (``self_attn.in_proj_weight``) or ``"fa2"`` (``self_attn._impl.Wqkv.*``).
    """
    keys = list(state_dict)
    if any("self_attn._impl." in k for k in keys):
        return "fa2"
    if any(k.endswith("self_attn.in_proj_weight") for k in keys):
        return "torch"
    if any("self_attn.Wqkv." in k for k in keys):
        return "official"
    raise ValueError(
        "No transformer attention weights found (expected keys like "
        "'transformer_encoder.layers.0.self_attn.Wqkv.weight' or '...in_proj_weight'); "
        "this does not look like a scGPT state dict."
    )


def from_scgpt(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a scGPT state dict (any layout) to :class:`celltx.nn.ScGPTTransformer` names.

    Only the attention keys differ; everything else is kept as is.
    """
    out = {}
    for k, v in state_dict.items():
        k2 = _FA2.sub(r"\1self_attn.", k)
        k2 = _IN_PROJ.sub(r"\1self_attn.Wqkv.\2", k2)
        out[k2] = v
    return out


def to_scgpt(
    state_dict: Mapping[str, torch.Tensor], layout: Layout = "official"
) -> dict[str, torch.Tensor]:
    """Rename celltx transformer parameters to a scGPT layout (inverse of :func:`from_scgpt`)."""
    out = {}
    for k, v in state_dict.items():
        if ".self_attn." in k:
            if layout == "torch":
                k = re.sub(r"\.self_attn\.Wqkv\.(weight|bias)$", r".self_attn.in_proj_\1", k)
            elif layout == "fa2":
                k = k.replace(".self_attn.", ".self_attn._impl.")
            elif layout != "official":
                raise ValueError(f"layout={layout!r}; use 'official', 'torch' or 'fa2'.")
        out[k] = v
    return out


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code from the file.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(..., weights_only=True)``, which refuses pickled objects other than
    tensors and plain containers. Corrupt, truncated or foreign files raise
    :class:`ValueError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"Refused to load {path}: it contains pickled objects other than tensors "
                f"({str(e).splitlines()[0]}). celltx never unpickles arbitrary objects; "
                "re-save the weights as a plain state dict or as .safetensors."
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"{path} is corrupt or truncated and cannot be read: {e}") from e
        if isinstance(sd, dict) and "model_state_dict" in sd and isinstance(
            sd["model_state_dict"], dict
        ):
            sd = sd["model_state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return sd
