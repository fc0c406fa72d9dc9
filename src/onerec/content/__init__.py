"""Content: item vectors from the items' text (later: images and video frames)."""

from onerec.content.base import ContentBackend, get_backend, item_vectors, load_vectors, save_vectors

__all__ = ["ContentBackend", "get_backend", "item_vectors", "load_vectors", "save_vectors"]
