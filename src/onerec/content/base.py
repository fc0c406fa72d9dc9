"""Item content vectors: the backend interface, the registry, and the per-dataset cache.

A backend turns the items table (text fields, later images and frames) into one vector per
item. The tokenizer quantises these vectors into semantic IDs. Later backends (multimodal
LLM + QFormer, the Keye-VL stage of the Technical Report) implement the same Protocol.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file

from onerec.config import ContentConfig
from onerec.errors import DataError
from onerec.io import atomic_path


@runtime_checkable
class ContentBackend(Protocol):
    """Encodes items into vectors. ``fingerprint`` changes whenever the output would."""

    name: str

    def fingerprint(self) -> str: ...

    def encode(self, items: pa.Table) -> np.ndarray:
        """Return float32 ``[N_items, D]`` in item_id order."""
        ...




Factory = Callable[[ContentConfig], ContentBackend]
_BACKENDS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Class decorator registering a backend factory under ``name`` (``content.backend=name``)."""

    def deco(factory: Factory) -> Factory:
        _BACKENDS[name] = factory
        return factory

    return deco


def get_backend(cfg: ContentConfig) -> ContentBackend:
    from onerec.content import tfidf  # noqa: F401  (registers the default backend)

    if cfg.backend not in _BACKENDS:
        raise DataError(f"unknown content backend '{cfg.backend}'", fix=f"use one of {sorted(_BACKENDS)}")
    return _BACKENDS[cfg.backend](cfg)


def items_fingerprint(items: pa.Table, columns: list[str]) -> str:
    """Hash of the item columns a backend reads, so a changed catalogue invalidates the cache."""
    h = hashlib.sha256()
    for col in columns:
        if col in items.column_names:
            h.update(col.encode())
            for chunk in items[col].chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
    return h.hexdigest()[:16]


def check_vectors(vectors: np.ndarray, n_items: int, source: str) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] != n_items:
        raise DataError(f"expected {n_items} item vectors, got shape {vectors.shape}", path=source,
                        fix="recompute the content vectors for this dataset")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(f"NaN or inf in the vector of item {int(np.flatnonzero(bad)[0])}", path=source,
                        row=int(np.flatnonzero(bad)[0]), fix="check that item's content; recompute the vectors")
    return vectors.astype(np.float32, copy=False)


def item_vectors(items: pa.Table, cfg: ContentConfig, cache_dir: str | Path | None = None) -> np.ndarray:
    """Vectors for every item, read from ``cache_dir`` when the items and settings are unchanged."""
    backend = get_backend(cfg)
    key = hashlib.sha256(
        json.dumps([backend.fingerprint(), items_fingerprint(items, items.column_names)]).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"content-{backend.name}-{key}.safetensors" if cache_dir else None
    if path is not None and cfg.cache and path.exists():
        return check_vectors(load_file(str(path))["vectors"].numpy(), items.num_rows, str(path))
    vectors = check_vectors(backend.encode(items), items.num_rows, f"content backend '{backend.name}'")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"vectors": torch.from_numpy(np.ascontiguousarray(vectors))}, str(tmp),
                      metadata={"backend": backend.name, "fingerprint": backend.fingerprint()})
    return vectors


def save_vectors(path: str | Path, vectors: np.ndarray, **metadata: str) -> None:
    with atomic_path(path) as tmp:
        save_file({"vectors": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))}, str(tmp),
                  metadata={k: str(v) for k, v in metadata.items()})


def load_vectors(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise DataError("item vectors not found", path=str(path), fix="run `onerec tokenize` on the run directory")
    return load_file(str(path))["vectors"].numpy()
