"""The interface every baseline (and the generator, via an adapter) offers to the harness."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


@runtime_checkable
class Recommender(Protocol):
    """A model that is fitted on the train split and ranks all items for held-out examples.

    ``train`` is the split's train table (``user_id, items, ts, flags``); ``examples`` is a
    valid/test table (``user_id, history, history_ts, history_flags, targets, target_ts``), see
    :mod:`onerec.data.splits`. A recommender reads the columns it needs (usually ``history``)
    and must never read ``targets`` in :meth:`recommend`.
    """

    name: str

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Learn from the train table; item ids are ``0..n_items-1``; ``valid`` may drive early stopping."""
        ...

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Rank all items for every row of ``examples``.

        Returns:
            int64 [B, k] item ids, best first, ``-1`` = padding (fewer than k items to offer).
        """
        ...
