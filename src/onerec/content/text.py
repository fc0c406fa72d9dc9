"""Text backend: a sentence-transformers model loaded from a local folder (``content.backend=sentence``).

Needs the ``text`` extra (``pip install "onerec[text]"``). Nothing is downloaded: point
``content.model_path`` at a folder saved by ``SentenceTransformer.save`` (or a Hugging Face model
snapshot with a ``modules.json``), e.g. all-MiniLM-L6-v2 fetched once with
``huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 --local-dir models/minilm``.

``content.tokens=1`` gives the (normalised) sentence embedding as the item's one token vector;
more tokens pool the model's token embeddings into that many contiguous segments, so the
alignment QFormer sees where in the text a feature came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from onerec.config import ContentConfig
from onerec.content.base import register
from onerec.content.tfidf import item_texts
from onerec.errors import ConfigError, DataError


def require_model_path(cfg: ContentConfig) -> Path:
    if not cfg.model_path:
        raise ConfigError(f"content.backend={cfg.backend} needs content.model_path (a local model folder). "
                          "Fix: download the model once, then pass content.model_path=/path/to/the/folder")
    path = Path(cfg.model_path).expanduser()
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise DataError("no model found (neither config.json nor modules.json)", path=str(path),
                        fix="point content.model_path at the folder a model was saved to")
    return path


def folder_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a model folder's files (cheap; changes when the weights do)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def segment_pool(hidden: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Mean of each of ``n`` contiguous segments of the valid positions of every row.

    hidden [B, L, D], mask [B, L] (True = valid) -> [B, n, D]. A row with fewer than ``n`` valid
    positions repeats them (segment k covers positions floor(k*len/n) .. ceil((k+1)*len/n)).
    """
    b, _, d = hidden.shape
    out = np.zeros((b, n, d), dtype=np.float32)
    for r in range(b):
        h = hidden[r][mask[r].astype(bool)]
        if len(h) == 0:
            continue
        for k in range(n):
            lo = (k * len(h)) // n
            hi = max(lo + 1, -((-(k + 1) * len(h)) // n))
            out[r, k] = h[lo:hi].mean(axis=0)
    return out


class SentenceBackend:
    name = "sentence"

    def __init__(self, cfg: ContentConfig) -> None:
        self.cfg = cfg
        self.path = require_model_path(cfg)
        self.batch_size = cfg.batch_size
        self._model = None

    def fingerprint(self) -> str:
        c = self.cfg
        blob = json.dumps(["sentence-v1", str(self.path.resolve()), folder_fingerprint(self.path), c.tokens,
                           c.text_fields, c.max_text_chars])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def model(self):
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ConfigError('content.backend=sentence needs sentence-transformers. '
                                  'Fix: pip install "onerec[text]"') from e
            self._model = SentenceTransformer(str(self.path), device=self.cfg.device, local_files_only=True)
        return self._model

    def encode_batch(self, items: pa.Table) -> np.ndarray:
        texts = [t[: self.cfg.max_text_chars] for t in item_texts(items, self.cfg.text_fields)]
        model = self.model()
        if self.cfg.tokens <= 1:
            v = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True,
                             show_progress_bar=False)
            return np.asarray(v, dtype=np.float32)[:, None, :]
        per_item = model.encode(texts, batch_size=len(texts), output_value="token_embeddings",
                                show_progress_bar=False)
        out = []
        for h in per_item:
            h = h.float().cpu().numpy()
            out.append(segment_pool(h[None], np.ones((1, len(h)), bool), self.cfg.tokens)[0])
        return np.stack(out).astype(np.float32)


@register("sentence")
def _make(cfg: ContentConfig) -> SentenceBackend:
    return SentenceBackend(cfg)
