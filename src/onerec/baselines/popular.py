"""Most-popular baseline: the same list of the most interacted-with items for every user."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from onerec.data.splits import item_counts


class MostPopular:
    """Rank items by their number of training interactions (``train.items``), ties by lower id.

    Items never seen in training have count 0 and come last (in id order). No history is
    excluded: under leave-one-out a user may legitimately re-consume an item.
    """

    name = "popular"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # int64 [N]
        self.ranking: np.ndarray | None = None  # int64 [N], best first

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Count item occurrences over every training sequence (``valid`` is unused)."""
        self.counts = item_counts(train, n_items)
        # lexsort: last key is primary -> by descending count, then ascending id.
        self.ranking = np.lexsort((np.arange(n_items), -self.counts)).astype(np.int64)

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """The top-k popular items for every row: int64 [B, k] (``-1``-padded when k > N)."""
        if self.ranking is None:
            raise RuntimeError("MostPopular.recommend called before fit")
        top = np.full(k, -1, dtype=np.int64)
        top[: min(k, len(self.ranking))] = self.ranking[:k]
        return np.tile(top, (examples.num_rows, 1))
