"""Item-to-item transition baseline: the items that followed the user's last items in training.

A succession-count model in the spirit of the simple baselines of Ludewig & Jannach ("Evaluation of
session-based recommendation algorithms", 2018): count, over every training sequence, how often item
``j`` came right after item ``i`` (:class:`onerec.features.succession.Succession`, which the generator's
``succession`` pathway reads too). A user is scored from the last ``window`` items of their history, the
most recent weighing most::

    score(j) = sum_{d=1..window} decay^(d-1) * count(h[-d] -> j)

and items no rule reaches follow in order of training popularity (which also breaks ties). It has no
parameters to train and takes seconds, so it shows how much of a dataset's next-item signal is plain
succession: the generator and SASRec have to learn the same pairs.

``window`` and ``decay`` are chosen on the valid split when ``fit`` gets it (best NDCG@10 over
:data:`WINDOWS` x :data:`DECAYS`), never on test.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from onerec.data.splits import item_counts, list_column
from onerec.eval.metrics import per_user_metrics, topk_from_scores
from onerec.features.succession import Succession

WINDOWS = (1, 2, 3, 5, 10, 20)
DECAYS = (0.1, 0.5, 1.0)


class ItemTransitions:
    """Scores items by the transitions from the user's last ``window`` items (see the module doc)."""

    name = "transitions"

    def __init__(self, window: int | None = None, decay: float | None = None, exclude_seen: bool = False) -> None:
        self.window, self.decay = window, decay  # None: chosen on valid (defaults 1 and 1.0 without it)
        self.exclude_seen = exclude_seen  # leave each row's history out of its list (also when choosing on valid)
        self.chosen: dict[str, float] | None = None  # the valid NDCG@10 of every setting tried
        self.n_items = 0

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Count the train split's transitions; pick ``window`` / ``decay`` on ``valid`` where unset
        (without ``valid``: the last item only)."""
        self.n_items = n_items
        self.succession = Succession.from_train(train, n_items)
        pop = item_counts(train, n_items).astype(np.float64)
        self.pop = pop / (pop.max() + 1.0)  # in [0, 1): below one count of the weakest rule, once scaled
        windows = (self.window,) if self.window else WINDOWS
        decays = (self.decay,) if self.decay else DECAYS
        # one item: the decay does not matter
        grid = [(w, dc) for w in windows for dc in decays if w > 1 or dc == decays[-1]]
        if valid is None or len(grid) == 1:
            self.window, self.decay = self.window or 1, self.decay or 1.0
            return
        targets = list_column(valid, "targets")
        self.chosen = {}
        for w, dc in grid:
            self.window, self.decay = w, dc
            ndcg = per_user_metrics(self.recommend(valid, 10), targets, (10,))["ndcg@10"].mean()
            self.chosen[f"window={w},decay={dc}"] = round(float(ndcg), 6)
        self.window, self.decay = max(grid, key=lambda g: self.chosen[f"window={g[0]},decay={g[1]}"])

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """float64 [B, N] scores of every item for each history (see the module doc)."""
        # popularity: orders the items no rule reaches and breaks ties (below the smallest rule weight)
        return self.succession.scores(histories, self.window, self.decay) + self.pop * self.decay ** (self.window - 1)

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Top-k items per row by :meth:`scores` (ties by lower id): int64 [B, k]; with ``exclude_seen`` none of
        the row's history (``-1`` where fewer items are left)."""
        if not self.n_items:
            raise RuntimeError("ItemTransitions.recommend called before fit")
        histories = list_column(examples, "history")
        out = np.empty((len(histories), k), dtype=np.int64)
        for s in range(0, len(histories), 256):
            chunk = histories[s:s + 256]
            exclude = chunk if self.exclude_seen else None
            out[s:s + 256] = topk_from_scores(torch.from_numpy(self.scores(chunk)), k, exclude).numpy()
        return out

