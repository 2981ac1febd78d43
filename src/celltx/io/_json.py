"""JSON with explicit type tags for the values a saved model carries (no pickle).

Values JSON cannot hold are written as objects with one type tag:
``{"__ndarray__": {"dtype", "shape", "data"}}``, ``{"__dataframe__": ...}``,
``{"__tuple__": [...]}``, ... Only the tags listed here are read back, and the only classes
ever built are the two dataclasses named in :func:`_tag_types`; nothing in a file names a
class to import.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from celltx.data import GeneMatch


# ----------------------------------------------------------------
def _tag_types() -> dict:
    from ._checkpoint import LoadReport

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


class UnsupportedValue(ValueError):
    """A value of a type the format does not hold (it would need a pickle)."""


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
        data = [to_json(v) for v in a.ravel().tolist()]
    else:
        raise UnsupportedValue(f"a numpy array of dtype {a.dtype}")
    return {"__ndarray__": {"dtype": a.dtype.str, "shape": list(a.shape), "data": data}}


def to_json(value):
    """``value`` as JSON-compatible data.

    Raises :class:`UnsupportedValue` for types the format does not hold (arbitrary objects
    would need a pickle).
    """
    if value is None or isinstance(value, bool | str) or type(value) is int:
        return value
    if type(value) is float:
        return _enc_float(value)
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufU":
            raise UnsupportedValue(f"a numpy scalar of dtype {value.dtype}")
        item = value.item()
        return {"__npscalar__": {"dtype": value.dtype.str, "value": to_json(item)}}
    if isinstance(value, np.ndarray):
        return _enc_array(value)
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, dict):
        plain = all(type(k) is str for k in value) and not (
            len(value) == 1 and _looks_like_tag(next(iter(value)))
        )
        if plain:
            return {k: to_json(v) for k, v in value.items()}
        return {"__dict__": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, pd.DataFrame):
        if value.columns.has_duplicates:
            raise UnsupportedValue("a DataFrame with duplicated column names")
        return {
            "__dataframe__": {
                "index": to_json(value.index),
                "columns": to_json(value.columns),
                "data": [to_json(_column_array(value[c])) for c in value.columns],
            }
        }
    if isinstance(value, pd.Series):
        return {
            "__series__": {
                "index": to_json(value.index),
                "name": to_json(value.name),
                "data": to_json(_column_array(value)),
            }
        }
    if isinstance(value, pd.Index):
        if isinstance(value, pd.MultiIndex | pd.CategoricalIndex | pd.IntervalIndex):
            raise UnsupportedValue(f"a {type(value).__name__}")
        return {
            "__index__": {
                "name": to_json(value.name),
                "data": _enc_array(_column_array(value)),
            }
        }
    for tag, cls in _tag_types().items():
        if type(value) is cls:
            fields = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(cls)}
            return {"__dataclass__": {"type": tag, "fields": fields}}
    raise UnsupportedValue(f"a {type(value).__module__}.{type(value).__qualname__}")


def _column_array(values) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "biufUO":
        raise UnsupportedValue(f"a column of dtype {values.dtype}")
    return a


class CorruptJSON(ValueError):
    """JSON that does not decode into the format's values (an unknown tag, a bad shape)."""


def _dec_array(spec) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise CorruptJSON("an __ndarray__ needs dtype, shape and data")
    dtype = np.dtype(str(spec["dtype"]))
    if dtype.kind not in "biufUO":
        raise CorruptJSON(f"arrays of dtype {dtype} are not part of the format")
    shape = tuple(int(s) for s in spec["shape"])
    data = spec["data"]
    if not isinstance(data, list) or len(data) != math.prod(shape):
        raise CorruptJSON(f"an __ndarray__ of shape {shape} needs {math.prod(shape)} values")
    if dtype.kind == "O":
        out = np.empty(len(data), dtype=object)
        out[:] = [from_json(v) for v in data]
        return out.reshape(shape)
    if dtype.kind == "f":
        data = [float(v) for v in data]  # "nan", "inf", "-inf" are written as strings
    return np.array(data, dtype=dtype).reshape(shape)


def from_json(value):
    """Inverse of :func:`to_json`; only the tags of this module are understood."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or not _looks_like_tag(next(iter(value))):
        return {k: from_json(v) for k, v in value.items()}
    if next(iter(value)) not in _TAGS:
        raise CorruptJSON(f"unknown type tag {next(iter(value))!r}")
    tag, body = next(iter(value.items()))
    if tag == "__ndarray__":
        return _dec_array(body)
    if tag == "__npscalar__":
        dtype = np.dtype(str(body["dtype"]))
        if dtype.kind not in "biufU":
            raise CorruptJSON(f"numpy scalars of dtype {dtype} are not part of the format")
        return np.array(from_json(body["value"]), dtype=dtype)[()]
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise CorruptJSON(f"__float__ must be 'nan', 'inf' or '-inf', not {body!r}")
        return float(body)
    if tag == "__tuple__":
        return tuple(from_json(v) for v in body)
    if tag == "__dict__":
        return {from_json(k): from_json(v) for k, v in body}
    if tag == "__index__":
        return pd.Index(
            from_json({"__ndarray__": body["data"]["__ndarray__"]}), name=from_json(body["name"])
        )
    if tag == "__series__":
        return pd.Series(
            from_json(body["data"]), index=from_json(body["index"]), name=from_json(body["name"])
        )
    if tag == "__dataframe__":
        columns = from_json(body["columns"])
        data = [from_json(c) for c in body["data"]]
        if len(data) != len(columns):
            raise CorruptJSON("a __dataframe__ needs one data array per column")
        frame = pd.DataFrame(
            dict(zip(range(len(data)), data, strict=True)), index=from_json(body["index"])
        )
        frame.columns = columns
        return frame
    # __dataclass__
    types = _tag_types()
    if body.get("type") not in types:
        raise CorruptJSON(f"unknown dataclass {body.get('type')!r}; known: {sorted(types)}")
    return types[body["type"]](**{k: from_json(v) for k, v in body["fields"].items()})
