"""Type aliases of the data layer, for annotations (imported under ``TYPE_CHECKING`` only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import h5py
    import numpy as np
    from scipy import sparse

#: A cells × features matrix: dense, scipy-sparse or disk-backed (an h5py dataset, or
#: another array-like read by row slices, as anndata's backed sparse datasets).
Matrix: TypeAlias = "np.ndarray | sparse.spmatrix | sparse.sparray | h5py.Dataset"
