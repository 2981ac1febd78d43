"""Type aliases of the data layer, for annotations (imported under ``TYPE_CHECKING``)."""

from __future__ import annotations

from typing import TypeAlias

import h5py
import numpy as np
from scipy import sparse

#: A cells × features matrix: dense, scipy-sparse (a sparse matrix or array) or disk-backed
#: (an h5py dataset, or another array-like read by row slices, as anndata's backed sparse
#: datasets).
Matrix: TypeAlias = np.ndarray | sparse.spmatrix | h5py.Dataset
