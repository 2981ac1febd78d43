"""The package's import surface: what ``import celltx`` loads, and what it defers."""

import subprocess
import sys

import pytest

LAZY = ("bench", "datasets", "pl", "text", "tl")


def test_task_packages_are_imported_on_first_use():
    # a fresh interpreter: this test process may have imported them already
    code = (
        "import sys, celltx\n"
        f"lazy = {LAZY!r}\n"
        "loaded = [n for n in lazy if f'celltx.{n}' in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert celltx.bench.knn_accuracy and celltx.tl.embed and celltx.pl.training_curves\n"
        "assert all(f'celltx.{n}' in sys.modules for n in ('bench', 'tl', 'pl'))\n"
        "from celltx import text, datasets\n"
        "assert set(lazy) <= set(dir(celltx))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    import celltx

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        celltx.nope  # noqa: B018
