"""Reading and writing scGPT weights: state-dict layouts and safe loading."""

from ._state_dict import detect_layout, from_scgpt, read_weights, to_scgpt

__all__ = ["detect_layout", "from_scgpt", "to_scgpt", "read_weights"]
