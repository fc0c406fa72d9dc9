"""Most-popular baseline: the same list of the most interacted-with items for every user."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from onerec.data.splits import item_counts, list_column


class MostPopular:
    """Rank items by their number of training interactions (``train.items``), ties by lower id.

    Items never seen in training have count 0 and come last (in id order). By default no history is
    excluded (the TIGER protocol: under leave-one-out a user may legitimately re-consume an item);
    ``exclude_seen=True`` leaves each row's ``history`` out of its list.
    """

    name = "popular"

    def __init__(self, exclude_seen: bool = False) -> None:
        self.counts: np.ndarray | None = None  # int64 [N]
        self.ranking: np.ndarray | None = None  # int64 [N], best first
        self.exclude_seen = exclude_seen

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Count item occurrences over every training sequence (``valid`` is unused)."""
        self.counts = item_counts(train, n_items)
        # lexsort: last key is primary -> by descending count, then ascending id.
        self.ranking = np.lexsort((np.arange(n_items), -self.counts)).astype(np.int64)

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """The top-k popular items for every row: int64 [B, k] (``-1``-padded when fewer items are left: k > N,
        or with ``exclude_seen`` k > N minus the row's history)."""
        if self.ranking is None:
            raise RuntimeError("MostPopular.recommend called before fit")
        top = np.full(k, -1, dtype=np.int64)
        top[: min(k, len(self.ranking))] = self.ranking[:k]
        out = np.tile(top, (examples.num_rows, 1))
        if self.exclude_seen:
            for row, seen in enumerate(list_column(examples, "history")):
                head = self.ranking[: k + len(seen)]  # k items remain after dropping the seen ones, if N allows
                keep = head[~np.isin(head, seen)][:k]
                out[row] = -1
                out[row, : len(keep)] = keep
        return out
