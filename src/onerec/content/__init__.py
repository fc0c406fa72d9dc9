"""Content: item vectors from the items' text, cover images and video frames.

Backends (``content.backend``): ``tfidf`` (the no-weights default), ``sentence`` (a
sentence-transformers model from a local folder, extra ``text``) and ``vlm`` (a Hugging Face
vision-language model from a local folder, extra ``vlm``). :mod:`onerec.content.align` trains the
collaborative-alignment QFormer over their token vectors (``content.align=true``).
"""

from onerec.content.base import (
    BatchedBackend,
    ContentBackend,
    get_backend,
    item_tokens,
    item_vectors,
    load_vectors,
    pool_tokens,
    save_vectors,
)

__all__ = ["BatchedBackend", "ContentBackend", "get_backend", "item_tokens", "item_vectors", "load_vectors",
           "pool_tokens", "save_vectors"]
