"""Reading and writing scGPT weights and model directories: state-dict layouts, safe
loading, ``args.json`` translation."""

from ._checkpoint import (
    HEAD_GROUPS,
    TASK_HEADS,
    LoadReport,
    ScGPTCheckpoint,
    kwargs_to_scgpt_args,
    load_into,
    read_scgpt_dir,
    scgpt_args_to_kwargs,
    write_scgpt_dir,
)
from ._state_dict import detect_layout, from_scgpt, read_weights, to_scgpt

__all__ = [
    "HEAD_GROUPS",
    "TASK_HEADS",
    "detect_layout",
    "from_scgpt",
    "to_scgpt",
    "read_weights",
    "read_scgpt_dir",
    "write_scgpt_dir",
    "load_into",
    "scgpt_args_to_kwargs",
    "kwargs_to_scgpt_args",
    "ScGPTCheckpoint",
    "LoadReport",
]
