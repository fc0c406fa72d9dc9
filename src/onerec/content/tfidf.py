"""The default content backend: TF-IDF over the item text fields, reduced by truncated SVD.

Needs no downloaded weights. Word uni- and bigrams for alphabetic text; character 1-3 grams
when the text is mostly CJK (e.g. KuaiRec's Chinese captions), where words are not
space-separated. Vectors are L2-normalised (latent semantic analysis).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from onerec.config import ContentConfig
from onerec.content.base import register
from onerec.errors import DataError


def item_texts(items: pa.Table, fields: list[str]) -> list[str]:
    """Join the chosen text fields of each item ('tags' lists are space-joined)."""
    cols = []
    for f in fields:
        if f not in items.column_names:
            continue
        values = items[f].to_pylist()
        if pa.types.is_list(items[f].type):
            values = [" ".join(v) if v else "" for v in values]
        cols.append(["" if v is None else str(v) for v in values])
    if not cols:
        raise DataError(f"the items table has none of the text fields {fields} (has: {', '.join(items.column_names)})",
                        path="items.parquet", fix="set content.text_fields to columns the items table has")
    return [" ".join(parts).strip() for parts in zip(*cols)]


def _mostly_cjk(texts: list[str]) -> bool:
    sample = "".join(texts[:2000])
    cjk = sum(1 for ch in sample if "\u4e00" <= ch <= "\u9fff")
    return cjk > 0.3 * max(1, sum(1 for ch in sample if not ch.isspace()))


class TfidfBackend:
    name = "tfidf"

    def __init__(self, cfg: ContentConfig) -> None:
        self.cfg = cfg

    def fingerprint(self) -> str:
        c = self.cfg
        blob = json.dumps(["tfidf-v1", c.dim, c.max_features, c.text_fields, c.seed])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def encode(self, items: pa.Table) -> np.ndarray:
        texts = item_texts(items, self.cfg.text_fields)
        if not any(texts):
            raise DataError(f"every item has empty text in fields {self.cfg.text_fields}", path="items.parquet",
                            fix="set content.text_fields to columns that hold text")
        if _mostly_cjk(texts):
            vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), max_features=self.cfg.max_features,
                                  sublinear_tf=True, min_df=1)
        else:
            vec = TfidfVectorizer(ngram_range=(1, 2), max_features=self.cfg.max_features, sublinear_tf=True,
                                  min_df=1, token_pattern=r"(?u)\b[\w:]+\b")
        x = vec.fit_transform(texts)
        dim = min(self.cfg.dim, x.shape[1] - 1, x.shape[0] - 1)
        if dim < 1:
            raise DataError("too little text to embed (vocabulary of one term)", path="items.parquet",
                            fix="add text fields or use more items")
        z = TruncatedSVD(n_components=dim, random_state=self.cfg.seed).fit_transform(x).astype(np.float32)
        if dim < self.cfg.dim:  # keep the promised width; the extra columns carry nothing
            z = np.pad(z, ((0, 0), (0, self.cfg.dim - dim)))
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.maximum(norms, 1e-12)


@register("tfidf")
def _make(cfg: ContentConfig) -> TfidfBackend:
    return TfidfBackend(cfg)
