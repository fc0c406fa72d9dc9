"""Item content vectors: the backend interface, the registry, and the per-dataset cache.

A backend turns the items table (text fields, later images and frames) into one vector per
item. The tokenizer quantises these vectors into semantic IDs. Later backends (multimodal
LLM + QFormer, the Keye-VL stage of the Technical Report) implement the same Protocol.
"""

from __future__ import annotations

import hashlib
import json
import shutil
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


@runtime_checkable
class BatchedBackend(Protocol):
    """A backend that encodes items a batch at a time into a few token vectors each (a neural
    encoder: a sentence transformer, a vision-language model). :func:`item_tokens` runs it with a
    progress bar and an on-disk cache of finished batches, so a killed run resumes where it stopped."""

    name: str
    batch_size: int

    def fingerprint(self) -> str: ...

    def encode_batch(self, items: pa.Table) -> np.ndarray:
        """Return float32 ``[len(items), T, D]`` token vectors for one slice of the items table."""
        ...


Factory = Callable[[ContentConfig], ContentBackend]
_BACKENDS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Class decorator registering a backend factory under ``name`` (``content.backend=name``)."""

    def deco(factory: Factory) -> Factory:
        _BACKENDS[name] = factory
        return factory

    return deco


def get_backend(cfg: ContentConfig) -> ContentBackend | BatchedBackend:
    from onerec.content import text, tfidf, vlm  # noqa: F401  (register the backends)

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


def _cache_key(backend: ContentBackend | BatchedBackend, items: pa.Table) -> str:
    return hashlib.sha256(
        json.dumps([backend.fingerprint(), items_fingerprint(items, items.column_names)]).encode()
    ).hexdigest()[:16]


def _save(path: Path, tensor: np.ndarray, **metadata: str) -> None:
    with atomic_path(path) as tmp:
        save_file({"vectors": torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float32))}, str(tmp),
                  metadata={k: str(v) for k, v in metadata.items()})


def _encode_batched(backend: BatchedBackend, items: pa.Table, partial: Path | None, progress: bool) -> np.ndarray:
    """Run ``backend.encode_batch`` over the items in slices of ``batch_size``; with ``partial`` set,
    each finished slice is written there first and slices already there are read, not recomputed."""
    from tqdm.auto import tqdm

    n, bs = items.num_rows, max(1, int(backend.batch_size))
    parts: list[np.ndarray] = []
    with tqdm(total=n, desc=f"content {backend.name}", unit="item", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, n, bs):
            stop = min(n, start + bs)
            chunk = partial / f"{start:010d}-{stop:010d}.safetensors" if partial is not None else None
            if chunk is not None and chunk.exists():
                part = load_file(str(chunk))["vectors"].numpy()
            else:
                part = np.asarray(backend.encode_batch(items.slice(start, stop - start)), dtype=np.float32)
                if part.ndim != 3 or part.shape[0] != stop - start:
                    raise DataError(f"content backend '{backend.name}' returned shape {part.shape} for "
                                    f"{stop - start} items", fix="encode_batch must return [items, tokens, dim]")
                if chunk is not None:
                    _save(chunk, part)
            parts.append(part)
            bar.update(stop - start)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 1, 1), np.float32)


def item_tokens(items: pa.Table, cfg: ContentConfig, cache_dir: str | Path | None = None, *,
                progress: bool = False) -> np.ndarray:
    """Token vectors ``[N_items, T, D]`` for every item (T = 1 for single-vector backends such as
    TF-IDF), cached in ``cache_dir`` when the items and settings are unchanged. Batched backends
    keep finished batches in ``cache_dir/content-NAME-KEY.partial/`` until the whole catalogue is
    done, so rerunning after a crash or a kill only encodes the missing batches."""
    backend = get_backend(cfg)
    if not isinstance(backend, BatchedBackend):
        return item_vectors(items, cfg, cache_dir)[:, None, :]
    key = _cache_key(backend, items)
    path = Path(cache_dir) / f"content-{backend.name}-{key}.tokens.safetensors" if cache_dir else None
    if path is not None and cfg.cache and path.exists():
        tokens = load_file(str(path))["vectors"].numpy()
    else:
        partial = path.with_name(f"content-{backend.name}-{key}.partial") if path is not None and cfg.cache else None
        tokens = _encode_batched(backend, items, partial, progress)
        if path is not None:
            _save(path, tokens, backend=backend.name, fingerprint=backend.fingerprint())
            if partial is not None and partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    if tokens.ndim != 3:
        raise DataError(f"expected [items, tokens, dim] token vectors, got shape {tokens.shape}", path=str(path),
                        fix="delete the cached file and recompute")
    check_vectors(tokens.reshape(len(tokens), -1), items.num_rows, str(path or backend.name))
    return tokens.astype(np.float32, copy=False)


def pool_tokens(tokens: np.ndarray) -> np.ndarray:
    """One L2-normalised vector per item: the mean of its token vectors."""
    v = tokens.mean(axis=1)
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def item_vectors(items: pa.Table, cfg: ContentConfig, cache_dir: str | Path | None = None, *,
                 progress: bool = False) -> np.ndarray:
    """Vectors ``[N_items, D]`` for every item, read from ``cache_dir`` when the items and settings
    are unchanged (batched backends: the mean of the item's token vectors, L2-normalised)."""
    backend = get_backend(cfg)
    if isinstance(backend, BatchedBackend):
        return pool_tokens(item_tokens(items, cfg, cache_dir, progress=progress))
    key = _cache_key(backend, items)
    path = Path(cache_dir) / f"content-{backend.name}-{key}.safetensors" if cache_dir else None
    if path is not None and cfg.cache and path.exists():
        return check_vectors(load_file(str(path))["vectors"].numpy(), items.num_rows, str(path))
    vectors = check_vectors(backend.encode(items), items.num_rows, f"content backend '{backend.name}'")
    if path is not None:
        _save(path, vectors, backend=backend.name, fingerprint=backend.fingerprint())
    return vectors


def save_vectors(path: str | Path, vectors: np.ndarray, **metadata: str) -> None:
    with atomic_path(path) as tmp:
        save_file({"vectors": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))}, str(tmp),
                  metadata={k: str(v) for k, v in metadata.items()})


def load_vectors(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise DataError("item vectors not found", path=str(path),
                        fix=f"run `onerec tokenize {path.parent.parent}` (the run directory whose tokenizer/ this is)")
    return load_file(str(path))["vectors"].numpy()
