"""Reading and writing scGPT weights and model directories.

State-dict layouts, safe loading, ``args.json`` translation.
"""

from ._checkpoint import (
    HEAD_GROUPS,
    TASK_HEADS,
    LoadReport,
    ScGPTCheckpoint,
    config_from_scgpt_args,
    kwargs_to_scgpt_args,
    load_into,
    read_scgpt_dir,
    scgpt_args_from_config,
    scgpt_args_to_kwargs,
    write_scgpt_dir,
)
from ._json import CorruptJSON, UnsupportedValue, from_json, to_json
from ._state_dict import detect_layout, from_scgpt, read_checkpoint, read_weights, to_scgpt

__all__ = [
    "to_json",
    "from_json",
    "UnsupportedValue",
    "CorruptJSON",
    "HEAD_GROUPS",
    "TASK_HEADS",
    "detect_layout",
    "from_scgpt",
    "to_scgpt",
    "read_weights",
    "read_checkpoint",
    "read_scgpt_dir",
    "write_scgpt_dir",
    "load_into",
    "scgpt_args_to_kwargs",
    "config_from_scgpt_args",
    "scgpt_args_from_config",
    "kwargs_to_scgpt_args",
    "ScGPTCheckpoint",
    "LoadReport",
]
