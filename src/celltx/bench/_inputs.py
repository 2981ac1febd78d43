"""Expression input of the benchmarks, shared by every ``celltx.bench`` function.

Reading the matrix (``.X`` or a layer), telling raw counts from log-normalised values
(on a sample of the stored values, not the whole matrix), making log1p-CP10k values
(scanpy's ``normalize_total`` + ``log1p`` on a copy), and running one method of a
benchmark so that its failure is recorded instead of losing the other methods' results.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from celltx.data import is_counts as is_counts  # the benchmarks import it from here
from celltx.data import sample_values

logger = logging.getLogger(__name__)

#: log1p of any realistic normalised expression stays below this
_LOG_MAX = 30.0


def layer_label(layer: str | None = None, owner: str = "adata") -> str:
    """How messages name the matrix ``layer`` (or ``.X``) of ``owner``.

    Parameters
    ----------
    layer
        A key of ``owner.layers``, or ``None`` for ``.X``.
    owner
        How to name the AnnData, e.g. ``"mdata.mod['rna']"``.

    Returns
    -------
    str
        ``"adata.X"`` or ``"adata.layers['counts']"``.

    Examples
    --------
    >>> from celltx.bench._inputs import layer_label
    >>> layer_label(), layer_label("counts", "mdata.mod['rna']")
    ('adata.X', "mdata.mod['rna'].layers['counts']")
    """
    return f"{owner}.X" if layer is None else f"{owner}.layers[{layer!r}]"


def get_expression(adata: AnnData, layer: str | None = None, where: str = "adata"):
    """The expression matrix of ``adata``: ``layer`` or ``.X`` (not copied).

    Parameters
    ----------
    adata
        Cells × genes.
    layer
        A key of ``adata.layers``, or ``None`` for ``.X``.
    where
        How to name ``adata`` in error messages.

    Returns
    -------
    numpy.ndarray or scipy.sparse matrix
        The stored matrix itself; callers copy before changing it.

    Raises
    ------
    ValueError
        If ``layer`` is not a layer of ``adata`` or ``.X`` is empty.

    Examples
    --------
    >>> import celltx
    >>> from celltx.bench._inputs import get_expression
    >>> get_expression(celltx.datasets.pbmc68k()).shape
    (700, 765)
    """
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(
                f"layer={layer!r} is not in {where}.layers ({list(adata.layers)}); pass an "
                "existing layer, or None for .X."
            )
        return adata.layers[layer]
    if adata.X is None:
        raise ValueError(f"{where}.X is None; pass layer= naming the layer with the expression.")
    return adata.X


def expression_kind(x, where: str = "adata.X") -> str:
    """Whether ``x`` holds raw counts or log-normalised values; refuse anything else.

    Judged on a random sample of up to a million stored non-zero values: non-negative
    integers are ``"counts"``; non-negative non-integers below 30 (the range of ``log1p``
    of normalised expression) are ``"lognorm"``.

    Parameters
    ----------
    x
        A cells × genes matrix.
    where
        How to name ``x`` in error messages (e.g. ``"adata.layers['counts']"``).

    Returns
    -------
    str
        ``"counts"`` or ``"lognorm"``.

    Raises
    ------
    ValueError
        If the values are not finite, negative (scaled / centred data) or non-integers
        above 30 (normalised but not log-transformed).

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench._inputs import expression_kind
    >>> expression_kind(np.array([[0, 3], [1, 0]]))
    'counts'
    """
    v = sample_values(x)
    if not v.size:
        return "lognorm"
    if not np.isfinite(v).all():
        raise ValueError(
            f"{where} has NaN or infinite values; remove or impute them, or pass the layer "
            "with raw counts or log-normalised expression."
        )
    if v.min() < 0:
        raise ValueError(
            f"{where} has negative values (scaled or centred data?); the benchmarks take raw "
            "counts or log-normalised expression (sc.pp.normalize_total + sc.pp.log1p). Pass "
            "layer= naming a layer that holds one of them."
        )
    if np.all(np.mod(v, 1) == 0):
        return "counts"
    if v.max() > _LOG_MAX:
        raise ValueError(
            f"{where} holds non-integer values up to {float(v.max()):.4g}: neither raw counts "
            "nor log-normalised expression (log1p values stay below 30). If it is normalised "
            "but not log-transformed, run sc.pp.log1p on it; otherwise pass layer= with raw "
            "counts."
        )
    return "lognorm"


def log1p_cp10k(x):
    """``log1p`` of counts scaled to 10,000 per cell (what celltypist expects), on a copy.

    scanpy's ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p``, run on a new
    AnnData holding a float32 copy of ``x``; sparse input stays sparse (CSR).

    Parameters
    ----------
    x
        Raw counts, cells × genes.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        float32 log1p-CP10k values; ``x`` is not changed.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench._inputs import log1p_cp10k
    >>> y = log1p_cp10k(np.array([[1, 3], [2, 2]]))
    >>> np.allclose(np.expm1(y).sum(axis=1), 1e4)
    True
    """
    if sparse.issparse(x):
        data = sparse.csr_matrix(x, dtype=np.float32, copy=True)
    else:
        data = np.array(x, dtype=np.float32, copy=True)
    a = AnnData(X=data)
    normalize_log1p(a)
    return a.X


def normalize_log1p(adata: AnnData) -> None:
    """Scale every cell of ``adata`` to 10,000 counts, then ``log1p``, in place.

    scanpy's ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p`` on ``.X``:
    the one place the benchmarks log-normalise counts.

    Parameters
    ----------
    adata
        Raw counts in ``.X``; changed in place (integer counts become float32, as scanpy
        does).

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> from celltx.bench._inputs import normalize_log1p
    >>> a = AnnData(X=np.array([[1.0, 3.0]]))
    >>> normalize_log1p(a)
    >>> bool(np.isclose(np.expm1(a.X).sum(), 1e4))
    True
    """
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)


def log_normalized(x, kind: str | None = None, where: str = "adata.X"):
    """``x`` as log-normalised values.

    Counts become log1p-CP10k (a copy, :func:`log1p_cp10k`); log-normalised values are
    returned as they are.

    Parameters
    ----------
    x
        Raw counts or log-normalised values.
    kind
        ``"counts"`` or ``"lognorm"`` when known (else :func:`expression_kind` decides).
    where
        How to name ``x`` in error messages.

    Returns
    -------
    numpy.ndarray or scipy.sparse matrix
        Log-normalised values.

    Examples
    --------
    >>> import numpy as np
    >>> from celltx.bench._inputs import log_normalized
    >>> float(log_normalized(np.array([[0.5, 1.5]]))[0, 1])
    1.5
    """
    if kind is None:
        kind = expression_kind(x, where)
    return log1p_cp10k(x) if kind == "counts" else x


def lognorm_expression(adata: AnnData, layer: str | None = None):
    """Log-normalised expression of ``.X`` or ``layer`` of ``adata``.

    The matrix is read with :func:`get_expression` and passed through
    :func:`log_normalized`: counts become log1p-CP10k (a copy), log-normalised values are
    used as they are, anything else is refused.

    Parameters
    ----------
    adata, layer
        The cells × genes and the layer to read, as for :func:`get_expression`.

    Returns
    -------
    numpy.ndarray or scipy.sparse matrix
        Log-normalised values (the stored matrix itself when it already holds them).

    Raises
    ------
    ValueError
        If the layer is missing or the values are neither counts nor log-normalised.

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> from celltx.bench._inputs import lognorm_expression
    >>> x = lognorm_expression(AnnData(X=np.array([[1.0, 3.0], [2.0, 2.0]])))
    >>> np.allclose(np.expm1(x).sum(axis=1), 1e4)
    True
    """
    return log_normalized(get_expression(adata, layer), where=layer_label(layer))


def guarded(label: str, fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, str | None]:
    """Run one method of a benchmark; a failure is reported, not raised.

    Parameters
    ----------
    label
        Names the method (and fold) in the warning, e.g. ``"scanvi (fold 2)"``.
    fn
        The method.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    tuple
        ``(result, None)``, or ``(None, "ExceptionType: message")`` after a warning when
        ``fn`` raised an :class:`Exception` (interrupts still propagate).

    Examples
    --------
    >>> import warnings
    >>> from celltx.bench._inputs import guarded
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     guarded("bad", lambda: 1 / 0)
    (None, 'ZeroDivisionError: division by zero')
    """
    try:
        return fn(*args, **kwargs), None
    except Exception as err:  # noqa: BLE001 - one method's failure must not lose the others
        msg = f"{type(err).__name__}: {err}"
        logger.warning("%s failed: %s", label, msg)
        warnings.warn(
            f"{label} failed ({msg}); its row has NaN scores and this message in 'error', and "
            "the other methods' results are kept.",
            UserWarning,
            stacklevel=3,
        )
        return None, msg


def skip_note(method: str, reason: str) -> str:
    """Warn that ``method`` is left out before anything runs; return the ``error`` text.

    Parameters
    ----------
    method
        The method left out.
    reason
        Why (the end of the warning).

    Returns
    -------
    str
        ``"skipped: <reason>"``, the ``error`` entry of the method's rows.
    """
    msg = f"skipped: {reason}"
    logger.warning("%s %s", method, msg)
    warnings.warn(f"{method} is {msg}", UserWarning, stacklevel=3)
    return msg
