"""Training and embedding from a lamindb collection (scvi-tools' MappedCollectionDataModule).

lamindb is not part of the test extra: it brings Django, boto3 and supabase and pins older
fsspec and python-dateutil than the rest of the stack, so this test skips where lamindb is
not installed (``pip install 'celltx[lamindb]'`` to run it). The work happens in a fresh
process (``tests/lamindb_worker.py``, in two steps) with its own ``HOME``: lamindb configures Django once
per process and keeps its instance settings under ``~/.lamin``.
"""

import json
import os
import sys

import pytest

from _helpers import ROOT, run_checked

pytest.importorskip("lamindb", reason="lamindb is not installed (pip install 'celltx[lamindb]')")


def test_train_and_embed_from_a_lamindb_collection(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    for step in ("init", "run"):
        # lamindb refuses HOME as its working directory
        worker = ROOT / "tests" / "lamindb_worker.py"
        run_checked([sys.executable, worker, tmp_path, step], env, tmp_path / "work")
    res = json.loads((tmp_path / "result.json").read_text())
    # the vocabulary is the collection's joined genes (the second artifact lacks 5)
    assert res["genes"] == res["shared"] and len(res["shared"]) == 760
    for key in ("train_loss", "validation_loss"):  # collection_val gives a validation loss
        assert len(res["history"][key]) == 1 and res["history"][key][0] > 0, key
    assert res["shape"] == [700, 32] and res["finite"] and res["spread"] > 1e-3
    # the same weights on the AnnData path give the same embeddings, in the collection's order
    assert res["max_abs_difference"] < 1e-5
    errors = res["errors"]
    assert "join='inner'" in errors["join_none"]
    assert "task='generative'" in errors["annotation"]
    assert "collection_val" in errors["early_stopping"]
