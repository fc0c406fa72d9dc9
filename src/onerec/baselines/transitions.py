"""Item-to-item transition baseline: the items that followed the user's last items in training.

A succession-count model in the spirit of the simple baselines of Ludewig & Jannach ("Evaluation of
session-based recommendation algorithms", 2018): count, over every training sequence, how often item
``j`` came right after item ``i``. A user is scored from the last ``window`` items of their history, the
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

WINDOWS = (1, 2, 3, 5, 10, 20)
DECAYS = (0.1, 0.5, 1.0)


def transition_counts(train: pa.Table, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of consecutive pairs ``i -> j`` over the train split's sequences, as CSR arrays
    ``(indptr int64 [N+1], successors int64 [P], counts float64 [P])``: item ``i``'s successors are
    ``successors[indptr[i]:indptr[i+1]]`` (ascending ids)."""
    arr = train["items"].combine_chunks()
    flat = arr.flatten().to_numpy().astype(np.int64)
    offsets = arr.offsets.to_numpy()
    # a pair (flat[p], flat[p+1]) is inside one sequence unless p+1 starts the next one
    src, dst = flat[:-1], flat[1:]
    inside = np.ones(len(src), dtype=bool)
    starts = offsets[1:-1]
    inside[starts[(starts > 0) & (starts < len(flat))] - 1] = False
    key = src[inside] * n_items + dst[inside]
    pairs, counts = np.unique(key, return_counts=True)
    succ_src, succ = np.divmod(pairs, n_items)
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.add.at(indptr, succ_src + 1, 1)
    return np.cumsum(indptr), succ.astype(np.int64), counts.astype(np.float64)


class ItemTransitions:
    """Scores items by the transitions from the user's last ``window`` items (see the module doc)."""

    name = "transitions"

    def __init__(self, window: int | None = None, decay: float | None = None) -> None:
        self.window, self.decay = window, decay  # None: chosen on valid (defaults 1 and 1.0 without it)
        self.chosen: dict[str, float] | None = None  # the valid NDCG@10 of every setting tried
        self.n_items = 0

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Count the train split's transitions; pick ``window`` / ``decay`` on ``valid`` where unset
        (without ``valid``: the last item only)."""
        self.n_items = n_items
        self.indptr, self.succ, self.counts = transition_counts(train, n_items)
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
        b, n = len(histories), self.n_items
        last = [np.asarray(h[-self.window:], dtype=np.int64)[::-1] for h in histories]  # most recent first
        rows = np.repeat(np.arange(b), [len(x) for x in last])
        items = np.concatenate(last) if b else np.empty(0, dtype=np.int64)
        weights = np.concatenate([self.decay ** np.arange(len(x)) for x in last]) if b else np.empty(0)
        # every (row, history item) pair expands into that item's successors
        lo, span = self.indptr[items], self.indptr[items + 1] - self.indptr[items]
        which = np.repeat(np.arange(len(items)), span)
        pos = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span) + lo[which]
        out = np.bincount(rows[which] * n + self.succ[pos], weights=weights[which] * self.counts[pos],
                          minlength=b * n).reshape(b, n)
        # popularity: orders the items no rule reaches and breaks ties (below the smallest rule weight)
        return out + self.pop * self.decay ** (self.window - 1)

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Top-k items per row by :meth:`scores` (ties by lower id): int64 [B, k]."""
        if not self.n_items:
            raise RuntimeError("ItemTransitions.recommend called before fit")
        histories = list_column(examples, "history")
        out = np.empty((len(histories), k), dtype=np.int64)
        for s in range(0, len(histories), 256):
            out[s:s + 256] = topk_from_scores(torch.from_numpy(self.scores(histories[s:s + 256])), k).numpy()
        return out


def scores_reference(train: pa.Table, n_items: int, histories: list[np.ndarray], window: int,
                     decay: float) -> np.ndarray:
    """Plain twin of :meth:`ItemTransitions.scores` (dicts and loops), for tests."""
    pairs: dict[tuple[int, int], int] = {}
    for seq in list_column(train, "items"):
        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
            pairs[a, b] = pairs.get((a, b), 0) + 1
    pop = item_counts(train, n_items).astype(np.float64)
    out = np.tile(pop / (pop.max() + 1.0) * decay ** (window - 1), (len(histories), 1))
    for r, h in enumerate(histories):
        for d, a in enumerate(reversed(h.tolist()[-window:])):
            for (src, dst), c in pairs.items():
                if src == a:
                    out[r, dst] += decay ** d * c
    return out
