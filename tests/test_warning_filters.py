"""Running a benchmark leaves the user's warning filters as they were."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("celltypist")

SCRIPT = """
import warnings
import numpy as np
import celltx

before = list(warnings.filters)
adata = celltx.datasets.pbmc68k()[:200].copy()
celltx.bench.annotation(adata, "cell_type", methods=["celltypist"], n_splits=2)
assert list(warnings.filters) == before, [f for f in warnings.filters if f not in before]
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("default")
    warnings.warn("still heard", UserWarning)
assert [str(w.message) for w in seen] == ["still heard"]
print("ok")
"""


@pytest.mark.slow
def test_celltypist_does_not_silence_the_sessions_warnings():
    # celltypist's import calls warnings.simplefilter("ignore", UserWarning); in a fresh
    # process (celltypist not yet imported) the benchmark must undo that
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
