"""The tutorials are stored executed, with clean outputs that match their code.

The documentation renders the stored notebooks as they are (myst-nb, no execution), so
these fast checks (nothing is executed) keep the stored outputs honest: every code cell
ran, in order, without errors; cells that plot carry a figure; no progress chatter is
left; and the recorded hash of the code cells equals the current one, so a code edit
without ``python scripts/refresh_tutorials.py`` fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

from _helpers import ROOT

TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
REFRESH = "python scripts/refresh_tutorials.py"
PLOTS = re.compile(r"\b(sc|mu|celltx)\.pl\.|\bplt\.")
MAX_BYTES = 2 * 1024 * 1024
MAX_THUMBNAIL_BYTES = 100 * 1024


def _refresh_module():
    spec = importlib.util.spec_from_file_location(
        "refresh_tutorials", ROOT / "scripts" / "refresh_tutorials.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _refresh_module()


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _texts(out) -> list[str]:
    if out.get("output_type") == "stream":
        return [out.get("text", "")]
    data = out.get("data", {})
    return [
        v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text/")
    ]


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 6


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_code_hash_is_current(path):
    nb = _read(path)
    info = nb.metadata.get("celltx", {})
    assert info.get("code_sha256") == refresh.code_sha256(nb), (
        f"{path.name}: its code cells changed since its outputs were stored (or it was "
        f"never refreshed); run `{REFRESH} {path.stem}` and commit the notebook and its "
        f"thumbnail"
    )
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(info.get("executed"))), info
    assert isinstance(info.get("settings"), dict), info


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_code_cell_ran_in_order(path):
    counts = [c.execution_count for c in _code(_read(path))]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts} are not one top-to-bottom run; run `{REFRESH} "
        f"{path.stem}`"
    )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_outputs_are_results_without_noise(path):
    nb = _read(path)
    code = _code(nb)
    assert sum(len(c.outputs) for c in code) >= len(code) // 2, f"{path.name}: few outputs stored"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            where = f"{path.name}, cell {i}"
            assert out.output_type != "error", f"{where}: stored error {out.get('ename')}"
            assert not (out.output_type == "stream" and out.get("name") == "stderr"), (
                f"{where}: stderr stream stored (run `{REFRESH}`, which strips it)"
            )
            assert refresh.WIDGET_MIME not in out.get("data", {}), f"{where}: progress widget"
            for text in _texts(out):
                assert not refresh.ANSI.search(text), f"{where}: raw ANSI escape codes"
                noise = refresh.noise_lines(text)
                assert not noise, f"{where}: progress/log lines stored: {noise[:3]}"
        if PLOTS.search(cell.source):
            assert refresh.figures(cell), f"{path.name}, cell {i} plots but stores no figure"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_what_you_will_see_cell(path):
    nb = _read(path)
    head = [c.source for c in nb.cells[:3] if c.cell_type == "markdown"]
    assert any("What you will see" in s for s in head), (
        f"{path.name}: no 'What you will see' markdown cell among the first three cells"
    )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_size_thumbnail_and_docs_page(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    thumb = ROOT / "docs" / "_static" / "thumbnails" / f"{path.stem}.png"
    assert thumb.exists(), f"{thumb} missing; run `{REFRESH} {path.stem}`"
    assert thumb.stat().st_size < MAX_THUMBNAIL_BYTES
    link = ROOT / "docs" / "tutorials" / f"{path.stem}.nblink"
    assert link.exists(), f"{link} missing: the notebook is not in the documentation"
    assert json.loads(link.read_text())["path"] == f"tutorials/{path.name}"
    gallery = (ROOT / "docs" / "tutorials.md").read_text()
    assert f"tutorials/{path.stem}" in gallery and f"thumbnails/{path.stem}.png" in gallery


def test_hash_ignores_outputs_and_markdown_but_not_code():
    nb = _read(TUTORIALS[0])
    digest = refresh.code_sha256(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
        else:
            cell.source += "\nmore prose"
    assert refresh.code_sha256(nb) == digest
    _code(nb)[0].source += "\nx = 1"
    assert refresh.code_sha256(nb) != digest
