"""Re-execute the tutorial notebooks and store them with their outputs.

The documentation renders ``tutorials/*.ipynb`` as stored (myst-nb with
``nb_execution_mode = "off"``), so the stored outputs must come from the current code.
This script, for each notebook:

1. executes it top to bottom in a fresh kernel (nbclient), in a temporary working
   directory, with the settings in :data:`SETTINGS` (environment variables the notebooks
   read; the same for every run, so a refresh is reproducible);
2. strips the noise from the outputs: stderr streams (Lightning banners, warnings, tqdm
   bars), progress widgets, "GPU available" / "Tip" lines, ANSI escape codes, timing
   metadata;
3. records in ``metadata.celltx`` the SHA-256 of its code cells (``code_sha256``, checked
   by ``tests/test_tutorial_outputs.py``), the date, the settings and the wall time;
4. writes the thumbnail of the documentation's tutorial gallery,
   ``docs/_static/thumbnails/<notebook>.png``, from the figure of the cell tagged
   ``thumbnail`` (else the notebook's first figure).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/refresh_tutorials.py
    .venv/bin/python scripts/refresh_tutorials.py 02_annotation  # only some notebooks
    .venv/bin/python scripts/refresh_tutorials.py --no-execute   # re-clean, thumbnails only

Each notebook's *What you will see* section (its second cell) is written by hand from the
stored run's outputs: after a refresh, compare it with the new outputs and update its
numbers. Markdown edits need no refresh (only code cells enter the hash).

Real data and the reference checkpoint are read from ``../shared`` beside the repository
(``CELLTX_DATA_DIR``, ``CELLTX_SCGPT_DIR``) when present; without them the notebooks fall
back to their stand-ins, and the run says so.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
THUMBNAILS = ROOT / "docs" / "_static" / "thumbnails"
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
CHECKPOINT = SHARED / "fixtures" / "scgpt_reference" / "ckpt_small"

#: Environment of each notebook's stored run. Chosen so that each notebook finishes in a
#: few minutes on 2 CPU cores while its models still visibly learn; every notebook's
#: "What you will see" cell repeats these settings next to the numbers they gave.
SETTINGS: dict[str, dict[str, str]] = {
    # the notebook's full setting: 40 generative epochs
    "01_quickstart": {"CELLTX_TUTORIAL_EPOCHS": "40"},
    # the default 5 fine-tuning epochs, from ../shared's reference checkpoint when present
    "01b_pretrained_checkpoints": {"CELLTX_TUTORIAL_EPOCHS": "5"},
    # 15 generative + 15 annotation epochs, 2 benchmark folds (full: 20 + 40, 5 folds);
    # with 8 + 8 the classifier still predicted one class for every query cell
    "02_annotation": {"CELLTX_TUTORIAL_EPOCHS": "15"},
    # quick variant (400 cells, 2 layers, fast metrics, no scVI) for 15 epochs (full: 30)
    "03_integration": {"CELLTX_TUTORIAL_EPOCHS": "15"},
    # quick screen (60 genes, 20 + 6 conditions) for 30 + 30 epochs (full: 200 genes, 10 + 20)
    "04_perturbation": {"CELLTX_TUTORIAL_EPOCHS": "30"},
    # quick mosaic (200 cells, no MULTIVI) for 40 epochs (full: 600 cells, 30, MULTIVI)
    "05_multiome": {"CELLTX_TUTORIAL_EPOCHS": "40"},
    # the notebook's full setting: 30 cell–text epochs for each of its three models
    "06_zero_shot": {},
    # the notebook's full setting: 20 epochs for each of its three small models
    "07_genes": {"CELLTX_TUTORIAL_EPOCHS": "20"},
}
#: Set for every notebook: one thread per library (2-core CI and development machines).
COMMON_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: Lines of printed output that are progress or environment chatter, not results.
NOISE = re.compile(
    r"(GPU available:|TPU available:|HPU available:|IPU available:|LOCAL_RANK:|"
    r"💡 Tip:|Tip: For seamless|`Trainer\.fit` stopped|Trainer\.fit. stopped|"
    r"Missing logger folder|You are using a CUDA device|"
    r"^\s*Epoch \d+/\d+|it/s\]|s/it\]|\d+%\||"
    r"^(INFO|DEBUG) {2,})"  # scvi-tools' log records, printed through rich
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
THUMBNAIL_SIZE = (480, 320)  # px; every card of the gallery has the same shape


def code_sha256(nb) -> str:
    """SHA-256 of a notebook's code cells (their sources, in order).

    Markdown cells and outputs do not enter it: editing prose needs no re-execution, any
    code edit does (``tests/test_tutorial_outputs.py`` compares this with the stored
    ``metadata.celltx.code_sha256``).
    """
    sources = [
        c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def noise_lines(text: str) -> list[str]:
    """The lines of ``text`` that are progress / environment chatter."""
    # split on newlines only: a carriage return inside a line is a redrawn progress bar
    return [line for line in text.split("\n") if NOISE.search(line) or "\r" in line]


def _scrub_paths(text: str) -> str:
    # absolute paths of this machine read as the repository-relative paths they stand for
    return text.replace(str(SHARED), "../shared").replace(str(ROOT) + os.sep, "")


def _clean_text(text: str) -> str:
    text = _scrub_paths(ANSI.sub("", text))
    # a carriage return redraws the line (progress bars): keep what was drawn last
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(line for line in lines if not NOISE.search(line))


def clean(nb):
    """Strip the noise from a notebook's outputs, in place; return it."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-cell timestamps: churn in every diff
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                if out.get("name") == "stderr":
                    continue
                if kept and kept[-1].get("output_type") == "stream":
                    kept[-1]["text"] += out.get("text", "")  # one stream, split in chunks
                    continue
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if WIDGET_MIME in data:  # a progress widget
                    continue
                for mime in ("text/plain", "text/html"):
                    if mime in data:
                        text = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
                        data[mime] = _scrub_paths(ANSI.sub("", text))
                plain = data.get("text/plain", "")
                if list(data) == ["text/plain"] and (
                    not plain.strip() or plain.startswith("<Figure size")
                ):
                    continue  # an empty repr (rich printed it), or a figure's repr
            kept.append(out)
        for out in kept:
            if out.get("output_type") == "stream":
                text = _clean_text(out.get("text", "")).strip("\n")
                out["text"] = text + "\n" if text.strip() else ""
        cell["outputs"] = [o for o in kept if o.get("output_type") != "stream" or o["text"]]
    return nb


def errors(nb) -> list[str]:
    """Error outputs of a notebook, as ``cell N: Name: message``."""
    return [
        f"cell {i}: {o.get('ename')}: {ANSI.sub('', str(o.get('evalue')))}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def figures(cell) -> list[bytes]:
    """The PNG images a code cell displayed."""
    return [
        base64.b64decode(o["data"]["image/png"])
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]


def _first_row_height(gray) -> int:
    """Where to cut a figure of several rows of panels to keep the first row.

    In the middle of the widest band of white rows in the middle of the figure (axes
    frames cross every row of a single-row figure, so it has none); the whole height when
    there is no such band.
    """
    import numpy as np

    top, bottom = int(0.3 * len(gray)), int(0.7 * len(gray))
    white = np.flatnonzero((gray[top:bottom] > 245).all(axis=1))
    if not white.size:
        return len(gray)
    runs = np.split(white, np.flatnonzero(np.diff(white) > 1) + 1)
    band = max(runs, key=len)
    return int(top + band[len(band) // 2]) if len(band) >= 10 else len(gray)


def _first_panel_width(gray) -> int:
    """Where to cut a figure of panels side by side to keep the first one, legend included.

    Between the first panel's right spine and the second panel's left spine lie the first
    panel's legend and the second panel's axis labels, separated by white gaps; the cut
    goes in the middle of the last wide gap (at least 0.6 of the widest one), which comes
    before the second panel's labels. The whole width when no frames are found.
    """
    import numpy as np

    body = gray[int(0.15 * len(gray)) : int(0.85 * len(gray))]  # no titles, no x labels
    spine = np.flatnonzero((body < 100).mean(axis=0) > 0.5)  # axes frames: long dark lines
    groups = np.split(spine, np.flatnonzero(np.diff(spine) > 3) + 1) if spine.size else []
    if len(groups) < 3:
        return gray.shape[1]
    left, right = groups[1][-1] + 1, groups[2][0]
    blank = np.r_[(body[:, left:right] > 245).all(axis=0), False]
    runs, start = [], None  # (start, width) of each white gap
    for x, white in enumerate(blank):
        if white and start is None:
            start = x
        elif not white and start is not None:
            runs.append((start, x - start))
            start = None
    if not runs:
        return gray.shape[1]
    widest = max(w for _, w in runs)
    start, width = [r for r in runs if r[1] >= 0.6 * widest][-1]
    return int(left + start + width // 2)


def write_thumbnail(nb, dest: Path) -> Path | None:
    """Save a small PNG of the notebook's gallery figure to ``dest``.

    The figure is the first one of the cell tagged ``thumbnail`` (else the notebook's
    first figure), fitted into :data:`THUMBNAIL_SIZE` on a white card; of a figure with
    several panels, the first (top left) one.
    """
    import numpy as np
    from PIL import Image

    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "thumbnail" in c.metadata.get("tags", [])]
    pngs = [png for c in tagged + code for png in figures(c)]
    if not pngs:
        return None
    img = Image.open(io.BytesIO(pngs[0])).convert("RGB")
    img = img.crop((0, 0, img.width, _first_row_height(np.asarray(img.convert("L")))))
    if img.width > 2.2 * img.height:  # panels side by side: show the first one
        img = img.crop((0, 0, _first_panel_width(np.asarray(img.convert("L"))), img.height))
    img.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    card = Image.new("RGB", THUMBNAIL_SIZE, "white")
    card.paste(img, ((THUMBNAIL_SIZE[0] - img.width) // 2, (THUMBNAIL_SIZE[1] - img.height) // 2))
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps a plot sharp at a fraction of the RGB size
    card.quantize(256, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
    return dest


def environment(name: str) -> dict[str, str]:
    """The environment variables a notebook's stored run sets (see :data:`SETTINGS`)."""
    env = dict(COMMON_ENV)
    env.update(SETTINGS.get(name, {}))
    if DATA.exists():
        env["CELLTX_DATA_DIR"] = str(DATA)
    if (CHECKPOINT / "args.json").exists():
        env["CELLTX_SCGPT_DIR"] = str(CHECKPOINT)
    return env


def execute(nb, name: str, timeout: int) -> float:
    """Run ``nb`` in place in a fresh kernel; return the wall time in seconds."""
    from nbclient import NotebookClient

    env = environment(name)
    # knobs that this notebook's settings leave unset take the notebook's defaults
    unset = [k for k in os.environ if k.startswith("CELLTX_") and k not in env]
    saved = {k: os.environ.get(k) for k in [*env, *unset, "MPLBACKEND"]}
    os.environ.update(env)
    for k in [*unset, "MPLBACKEND"]:  # the kernel's inline backend displays the figures
        os.environ.pop(k, None)
    try:
        with tempfile.TemporaryDirectory(prefix=f"celltx-{name}-") as tmp:
            start = time.perf_counter()
            NotebookClient(
                nb,
                timeout=timeout,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": tmp}},
            ).execute()
            return time.perf_counter() - start
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def refresh(path: Path, run: bool = True, timeout: int = 1800) -> dict:
    """Execute (unless ``run=False``), clean and stamp one notebook; write it back."""
    import nbformat

    name = path.stem
    nb = nbformat.read(path, as_version=4)
    info = dict(nb.metadata.get("celltx", {}))
    if run:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        wall = execute(nb, name, timeout)
        env = environment(name)
        info = {
            "code_sha256": code_sha256(nb),
            "executed": _dt.date.today().isoformat(),
            "settings": {k: v for k, v in env.items() if k not in COMMON_ENV},
            "data": "../shared" if DATA.exists() else "stand-ins (../shared absent)",
            "wall_time_s": round(wall),
        }
        # relative paths only: the stored notebook must not name this machine's folders
        info["settings"] = {
            k: os.path.relpath(v, ROOT) if os.path.isabs(v) else v
            for k, v in info["settings"].items()
        }
    clean(nb)
    failed = errors(nb)
    if failed:
        raise RuntimeError(f"{path.name} raised during execution:\n" + "\n".join(failed))
    nb.metadata["celltx"] = info
    nbformat.validate(nb)
    nbformat.write(nb, path)
    thumb = write_thumbnail(nb, THUMBNAILS / f"{name}.png")
    return {
        "notebook": path.name,
        "wall_time_s": info.get("wall_time_s"),
        "size_kb": round(path.stat().st_size / 1024),
        "thumbnail": str(thumb.relative_to(ROOT)) if thumb else None,
        "thumbnail_kb": round(thumb.stat().st_size / 1024) if thumb else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="notebooks to refresh (stems such as 02_annotation); default all"
    )
    parser.add_argument(
        "--no-execute",
        action="store_true",
        help="only re-clean the stored outputs and rewrite the thumbnails (keeps the recorded hash)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        wanted = {Path(n).stem for n in args.names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            parser.error(f"no such notebook in tutorials/: {sorted(unknown)}")
        paths = [p for p in paths if p.stem in wanted]
    if not DATA.exists() or not (CHECKPOINT / "args.json").exists():
        print(f"note: {SHARED} is incomplete; notebooks use their stand-ins", file=sys.stderr)
    for path in paths:
        print(f"{path.name}: {'executing' if not args.no_execute else 'cleaning'} ...", flush=True)
        print(json.dumps(refresh(path, run=not args.no_execute, timeout=args.timeout)), flush=True)
    if not args.no_execute:
        print(
            "now compare each refreshed notebook's 'What you will see' section (its numbers, "
            "settings and wall time) with the new outputs",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
