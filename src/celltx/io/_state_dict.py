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


#: first bytes of a zip archive (torch.save's default format)
_ZIP_MAGIC = b"PK\x03\x04"


def _sniff(path: Path) -> str:
    """What ``path`` looks like from its first bytes, without parsing it.

    One of ``"zip"`` (a ``torch.save`` archive), ``"pickle"`` (a legacy ``torch.save`` file),
    ``"safetensors"`` or ``"unknown"``.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte header length, then a JSON header
        return "safetensors"
    return "unknown"


_WEIGHTS_HINT = (
    "Pass the weight file of a model directory (best_model.pt or a .safetensors file), and "
    "download it again if it may be damaged."
)
_CKPT_HINT = (
    "Pass a .ckpt written by training with checkpoint_every (celltx pretrain / finetune "
    "--checkpoint-every)."
)


def _not_a_checkpoint(path: Path, why: str, hint: str = _WEIGHTS_HINT) -> ValueError:
    return ValueError(f"{path} is not a valid PyTorch or safetensors checkpoint ({why}). {hint}")


def _torch_reason(e: BaseException) -> str:
    """First line of a torch error, unless it advises disabling the safe loader."""
    line = (str(e).strip().splitlines() or [""])[0]
    return type(e).__name__ if not line or "weights_only" in line else line


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _torch_load_safely(path: Path, kind: str, advice: str, hint: str = _WEIGHTS_HINT, mmap=False):
    """``torch.load(weights_only=True)`` of a zip or pickle file, its failures as ValueErrors.

    ``advice``: what to do with a file that holds pickled objects (refused).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise _not_a_checkpoint(
                path, "its data cannot be read as tensors; it may be damaged", hint
            ) from None
        raise ValueError(
            f"Refused to load {path}: besides tensors it contains pickled objects "
            f"(e.g. {found.group(1)}), and unpickling them could run code from the "
            f"file. celltx never unpickles arbitrary objects; {advice}"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as e:
        if kind == "pickle" and not isinstance(e, EOFError | RuntimeError):
            raise _not_a_checkpoint(path, _torch_reason(e), hint) from None
        raise ValueError(
            f"{path} is corrupt or truncated and cannot be read ({_torch_reason(e)}). "
            "Download or save it again."
        ) from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (a Lightning ``.ckpt``) without executing code from the file.

    ``torch.load(..., weights_only=True)`` (memory-mapped for ``torch.save``'s zip format):
    tensors, numbers, strings and plain containers are rebuilt, nothing else is unpickled,
    whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` or the torch version's default say.

    Parameters
    ----------
    path
        A file written by ``torch.save``, such as the ``step=N.ckpt`` of
        ``ScGPT.train(checkpoint_every=...)``.

    Returns
    -------
    dict
        The checkpoint's contents.

    Raises
    ------
    ValueError
        When the file is absent, empty, not written by ``torch.save``, corrupt, holds
        pickled objects other than tensors and plain values (refused: unpickling them could
        run code from the file), or holds something other than a mapping.

    Examples
    --------
    >>> import tempfile, torch
    >>> from celltx.io import read_checkpoint
    >>> path = tempfile.mkdtemp() + "/step=3.ckpt"
    >>> torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(2)}}, path)
    >>> read_checkpoint(path)["global_step"]
    3
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {path} does not exist (or is not a file). {_CKPT_HINT}")
    kind = _sniff(path)
    if kind not in ("zip", "pickle"):
        why = (
            "the file is empty"
            if path.stat().st_size == 0
            else "it is neither a zip archive written by torch.save nor a pickle"
        )
        raise _not_a_checkpoint(path, why, _CKPT_HINT)
    ckpt = _torch_load_safely(
        path,
        kind,
        "resume only from checkpoints that training wrote (checkpoint_every).",
        _CKPT_HINT,
        mmap=kind == "zip",
    )
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint (a mapping). {_CKPT_HINT}"
        )
    return ckpt


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code from the file.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(..., weights_only=True)``, which reconstructs tensors and plain containers
    only.

    Parameters
    ----------
    path
        A ``.safetensors`` file, or a file written by ``torch.save`` that holds a state
        dict (or a dict with a ``"model_state_dict"`` entry).

    Returns
    -------
    dict
        ``{name: tensor}``.

    Raises
    ------
    ValueError
        When the file is absent; when it is not a PyTorch or safetensors checkpoint at all
        (random bytes, text, another format); when it is corrupt or truncated; when it holds
        pickled objects other than tensors (refused: unpickling them could run code from
        the file); when it holds something other than a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path)
    else:
        kind = _sniff(path)
        if kind == "safetensors":
            sd = _read_safetensors(path)
        elif kind == "unknown":
            why = (
                "the file is empty"
                if path.stat().st_size == 0
                else ("it is neither a zip archive written by torch.save nor a pickle")
            )
            raise _not_a_checkpoint(path, why)
        else:
            sd = _torch_load_safely(
                path,
                kind,
                "re-save the weights as a plain state dict (torch.save(model.state_dict(), "
                "path)) or as .safetensors.",
            )
        if (
            isinstance(sd, dict)
            and "model_state_dict" in sd
            and isinstance(sd["model_state_dict"], dict)
        ):
            sd = sd["model_state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return sd
