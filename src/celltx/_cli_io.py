"""Checks and writes shared by the ``celltx`` verbs: output paths, input files, atomic files.

Every verb checks its outputs with :func:`check_outputs` and its ``.h5ad`` inputs with
:func:`check_h5ad_input` before it reads anything, writes files through
:func:`atomic_output` and gives the user's ``obs`` / ``uns`` back unchanged with
:func:`keep_user_fields`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class UsageError(ValueError):
    """A bad argument of a ``celltx`` verb, found before any work; the CLI exits 2."""


@dataclass(frozen=True)
class Output:
    """A path a verb writes.

    ``kind="file"``: one file, whose name must end in one of ``suffixes``. ``kind="dir"``:
    a folder the verb writes ``writes`` into (names relative to it); with
    ``only_writes=True`` the folder may hold other files (only ``writes`` count as
    existing output), otherwise any content does.
    """

    raw: str | os.PathLike
    option: str
    kind: str = "file"
    suffixes: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    only_writes: bool = False

    @property
    def path(self) -> Path:
        return Path(self.raw)

    def written(self) -> list[Path]:
        """The paths this output replaces."""
        if self.kind == "file":
            return [self.path]
        return [self.path / w for w in self.writes]


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name the same file: the same path after symlinks, or a hardlink."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies inside it (after symlinks)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _local(p: str | os.PathLike) -> Path | None:
    """A local path, or ``None`` for a URI (``s3://``, ``tiledb://``)."""
    text = str(p).removeprefix("soma:")
    return None if "://" in text else Path(text)


def _check_location(o: Output, error: type[ValueError]) -> None:
    """The folder that will hold ``o`` exists or can be created, and is writable."""
    start = o.path if o.kind == "dir" else o.path.parent
    ancestor = start
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(
            f"{o.option} {o.path}: {ancestor} is a file, so {o.path} cannot be created; name "
            "a location in a folder."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(f"{o.option} {o.path}: the folder {ancestor} is not writable.")


def check_outputs(
    outputs: Sequence[Output],
    inputs: Sequence[str | os.PathLike],
    overwrite: bool,
    error: type[ValueError] = UsageError,
) -> None:
    """Refuse, before any work, outputs that cannot or must not be written.

    An output is refused when its name is empty; when a file is expected and a folder is
    there (or the reverse); when its suffix is not one of the accepted ones; when its folder
    cannot be created or written; when it exists and ``overwrite`` is false; and, even with
    ``overwrite``, when it is an input (by path, symlink or hardlink), lies inside an input
    folder, would replace an input or a folder holding one, or overlaps another output.

    Parameters
    ----------
    outputs
        What the verb writes.
    inputs
        Files and folders the verb reads (URIs are skipped).
    overwrite
        Whether existing outputs may be replaced.
    error
        The exception class raised (a ``ValueError``).

    Raises
    ------
    ValueError
        ``error``, naming the output, the problem and the fix.
    """
    local = [p for p in (_local(i) for i in inputs) if p is not None]
    for o in outputs:
        if str(o.raw).strip() == "":
            raise error(f"{o.option} is empty; name a {'folder' if o.kind == 'dir' else 'file'}.")
        if o.kind == "file":
            if o.path.is_dir():
                raise error(f"{o.option} {o.path} is a directory; name a file.")
            if o.suffixes and o.path.suffix.lower() not in o.suffixes:
                raise error(
                    f"{o.option} {o.path}: celltx writes {' or '.join(o.suffixes)} files, not "
                    f"{o.path.suffix or 'a name without a suffix'}; name the output "
                    f"{o.path.stem}{o.suffixes[0]}."
                )
        elif _exists(o.path) and not o.path.is_dir():
            raise error(f"{o.option} {o.path} is a file; name a folder.")
        _check_location(o, error)
        for i in local:
            if o.kind == "file" and _same(o.path, i):
                raise error(
                    f"{o.option} {o.path} is the input file {i} (the same file by path, symlink "
                    "or hardlink); celltx never modifies its inputs, even with --overwrite. "
                    "Name another output."
                )
            if _exists(i) and i.is_dir() and _within(o.path, i):
                where = "is an input" if _within(i, o.path) else f"lies inside the input {i}"
                raise error(
                    f"{o.option} {o.path} {where}; celltx never writes into its inputs. Name "
                    "another location."
                )
            for w in o.written():
                if _same(w, i) or (_exists(i) and _within(i, w)):
                    raise error(
                        f"{o.option} {o.path} would replace {w}, which is an input or holds "
                        f"one ({i}); celltx never modifies its inputs, even with --overwrite. "
                        "Name another output."
                    )
        if not overwrite:
            if o.kind == "file" and _exists(o.path):
                raise error(f"{o.option} {o.path} exists; pass --overwrite to replace it.")
            if o.kind == "dir" and o.path.is_dir():
                if o.only_writes:
                    found = [w for w in o.writes if _exists(o.path / w)]
                    if found:
                        raise error(
                            f"{o.option} {o.path} holds {', '.join(found)} of an earlier run; "
                            "pass --overwrite to replace them, or name another folder."
                        )
                elif any(o.path.iterdir()):
                    raise error(
                        f"{o.option} {o.path} is not empty; pass --overwrite to write into it."
                    )
    for k, a in enumerate(outputs):
        for b in outputs[k + 1 :]:
            if any(_within(x, y) or _within(y, x) for x in a.written() for y in b.written()):
                raise error(
                    f"{a.option} {a.path} and {b.option} {b.path} overlap: {b.option} would "
                    f"write into what {a.option} writes. Name separate locations."
                )


def check_h5ad_input(path: str | os.PathLike, what: str, error=UsageError) -> Path:
    """``path`` is an existing HDF5 (``.h5ad``) file; raise ``error`` naming what it is."""
    import h5py

    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a directory, not an .h5ad file; name the .h5ad file.")
    if not p.is_file():
        raise error(f"{what} {p} does not exist.")
    if not h5py.is_hdf5(p):
        size = p.stat().st_size
        raise error(
            f"{what} {p} is not an .h5ad file: it is {'empty' if size == 0 else 'not HDF5'} "
            "(convert other formats with anndata / scanpy, e.g. sc.read_10x_h5, "
            "anndata.read_csv, then write_h5ad)."
        )
    return p


def check_positive(value: float | None, option: str, error=UsageError) -> None:
    """``value`` is ``None`` or a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise error(f"{option} {value}: must be a number > 0.")


def check_devices(devices: str, error=UsageError) -> None:
    """``--devices``: ``auto``, a count >= 1, ``-1`` (all GPUs) or GPU indices (``0,1``)."""
    text = str(devices).strip()
    parts = [p for p in text.split(",") if p.strip()]
    ok = (
        text == "auto"
        or text == "-1"
        or (text.isdigit() and int(text) >= 1)
        or ("," in text and parts and all(p.strip().isdigit() for p in parts))
    )
    if not ok:
        raise error(
            f"--devices {devices}: use auto, a number of devices >= 1 (2), -1 (all GPUs) or "
            "GPU indices separated by commas (0,1)."
        )


def check_checkpoint_file(path: str | os.PathLike, option: str, error=UsageError) -> Path:
    """``path`` is a non-empty file in PyTorch's checkpoint format (a zip archive)."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise error(f"{option} {p} is not a file (a .ckpt of --checkpoint-every).")
    if p.stat().st_size == 0:
        raise error(f"{option} {p} is empty; name a .ckpt written by --checkpoint-every.")
    if not zipfile.is_zipfile(p):
        raise error(
            f"{option} {p} is not a PyTorch checkpoint (a .ckpt written by --checkpoint-every "
            "is a zip archive); it may be truncated or another kind of file."
        )
    return p


@contextmanager
def atomic_output(dst: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``dst`` that replaces ``dst`` only when the block succeeds.

    Missing folders above ``dst`` are created (and removed again when the block fails). The
    temporary file lies in a hidden folder next to ``dst``, so the rename is atomic and a
    failed or interrupted write leaves ``dst`` (an earlier output) as it was.
    """
    dst = Path(dst)
    created, p = [], dst.parent
    while not _exists(p):
        created.append(p)
        p = p.parent
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        tmp = tmpdir / dst.name
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmpdir, ignore_errors=True)


@contextmanager
def keep_user_fields(adata) -> Iterator[None]:
    """Give ``adata`` its ``obs`` and ``uns`` back when the block ends.

    Registration (``setup_anndata``, loading a model on the data) adds or overwrites
    ``obs["_scvi_batch"]``, ``obs["_scvi_labels"]``, ``uns["_scvi_uuid"]``, ... ; whatever the
    user's file held under those names is restored and what registration added is removed,
    so a written output carries the user's data unchanged.
    """
    obs = adata.obs.copy()
    uns = dict(adata.uns)
    try:
        yield
    finally:
        adata.obs = obs
        for k in list(adata.uns.keys()):
            if k not in uns:
                del adata.uns[k]
        for k, v in uns.items():
            adata.uns[k] = v
