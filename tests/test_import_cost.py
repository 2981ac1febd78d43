"""Import cost: ``import celltx`` and a whole-process ``celltx embed`` load only what they use.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds
everything) and lists the modules loaded at its end. The task packages above the model
(``celltx.bench``, ``tl``, ``pl``, ``text``, ``datasets``) and the third-party packages only
they need are imported on first use, not with the package or by an embedding run.
scikit-learn and matplotlib are not listed: scvi-tools (``scvi.dataloaders``) and
torchmetrics (through Lightning) import them themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import pytest

from _helpers import FIXTURES, need

#: modules an embedding never needs (celltx's task packages and what only they import)
NOT_FOR_EMBEDDING = (
    "celltx.bench",
    "celltx.datasets",
    "celltx.pl",
    "celltx.text",
    "celltx.tl",
    "celltypist",
    "harmonypy",
    "igraph",
    "leidenalg",
    "muon",
    "pooch",
    "pynndescent",
    "scanpy",
    "scib_metrics",
    "seaborn",
    "sentence_transformers",
    "umap",
)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Module names loaded in one fresh interpreter: after ``import celltx``, after a
    whole-process ``celltx embed`` (published-format checkpoint, progress bar on, the
    default) and after touching ``celltx.tl``."""
    ckpt = need(FIXTURES / "ckpt_small")
    d = tmp_path_factory.mktemp("import_cost")
    ad.read_h5ad(need(FIXTURES / "pbmc68k_tiefree.h5ad"))[:40].copy().write_h5ad(d / "in.h5ad")
    argv = ["embed", str(ckpt), str(d / "in.h5ad"), str(d / "out.h5ad"), "--device", "cpu"]
    script = f"""
import json, sys
def snap(name):
    print(name + "=" + json.dumps(sorted(sys.modules)), flush=True)
import celltx
snap("import")
from celltx.cli import main
main({argv!r} + ["--batch-size", "16"])
snap("embed")
celltx.tl
snap("tl")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (d / "out.h5ad").is_file()
    found = {}
    for line in proc.stdout.splitlines():
        name, sep, mods = line.partition("=")
        if sep and name in ("import", "embed", "tl"):
            found[name] = set(json.loads(mods))
    return found


def _unneeded(loaded: set[str]) -> list[str]:
    return sorted(
        m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_FOR_EMBEDDING)
    )


def test_import_celltx_loads_the_core_only(snapshots):
    loaded = snapshots["import"]
    assert {"celltx.model", "celltx.nn", "celltx.data"} <= loaded
    assert _unneeded(loaded) == []


def test_embed_whole_process_loads_only_what_it_uses(snapshots):
    loaded = snapshots["embed"]
    assert _unneeded(loaded) == []
    assert {"celltx.cli", "celltx.model"} <= loaded


def test_task_packages_load_on_first_use(snapshots):
    assert "celltx.tl" in snapshots["tl"]  # the lazy attribute imports it
    assert "celltx.bench" not in snapshots["tl"]
