"""Constants and helpers shared by the test modules.

pytest puts ``tests/`` on ``sys.path`` (``pythonpath = ["tests"]`` in pyproject.toml), so
test modules import this as ``from _helpers import FIXTURES, need``. Tests run with
``--import-mode=importlib``, under which ``conftest.py`` is not importable as a module:
fixtures go in conftest.py, plain values and functions here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celltx.nn import preset

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
SHARED = ROOT.parent / "shared"
"""Fixtures and data too large for the repository live beside it, in ``../shared``."""
FIXTURES = SHARED / "fixtures" / "scgpt_reference"
"""Checkpoints and outputs written by the original scGPT package (``ckpt_small``, …)."""
DATA = SHARED / "data"
"""Real data sets (``.h5ad`` / ``.h5mu``) used by the slower tests and the tutorials."""

SMALL = preset("small", d_model=32, max_seq_len=128)
"""Model size of the small models the tests train: the ``"small"`` preset at half width and
half length (``{"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 128}``)."""


class Evil:
    """A pickle payload: unpickling it creates the file ``marker``.

    Plant it in a file (``torch.save({"x": Evil(marker)}, path)``); a loader that runs code
    from files leaves ``marker`` behind.
    """

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def need(path: Path) -> Path:
    """Return ``path``; skip the test with a clear reason when it is absent."""
    if not path.exists():
        pytest.skip(
            f"{path} is absent (shared fixtures/data live beside the project, in ../shared)"
        )
    return path


def run_checked(cmd, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run the command ``cmd`` (a list) in a fresh process; fail the test with its stderr if
    it fails. Returns the completed process (``stdout`` / ``stderr`` as text)."""
    import subprocess

    proc = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
