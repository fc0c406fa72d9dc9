"""Item succession counts: how often item ``j`` came right after item ``i`` in the train split.

One primitive, two readers: the :class:`~onerec.baselines.transitions.ItemTransitions` baseline ranks
items by these counts alone, and the generator's ``succession`` pathway (``model.pathways``) reads the
top candidates as encoder tokens, so that it can copy an item that usually follows the user's last
items instead of having to memorise every pair in its weights.

A history is scored from its last ``window`` items, the most recent weighing most::

    score(j) = sum_{d=1..window} decay^(d-1) * count(h[-d] -> j)

Training examples must not see their own future: the example "items[:t] -> items[t]" of a train
sequence is scored without that sequence's pairs that end at position t or later (its own target's pair
among them), which is what a valid or test history sees of the train split too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Succession:
    """Pair counts as CSR arrays: item ``i``'s successors are ``succ[indptr[i]:indptr[i+1]]`` (ascending
    ids) with counts ``counts[...]``; ``n_items`` columns."""

    indptr: np.ndarray  # int64 [N+1]
    succ: np.ndarray  # int64 [P]
    counts: np.ndarray  # float64 [P]
    n_items: int

    @classmethod
    def from_train(cls, train: pa.Table, n_items: int) -> Succession:
        """Count the consecutive pairs of every sequence of the train split's ``items`` column."""
        arr = train["items"].combine_chunks()
        offsets = arr.offsets.to_numpy().astype(np.int64)
        flat = arr.flatten().to_numpy().astype(np.int64)
        src, dst = _pairs(offsets - offsets[0], flat)
        pairs, counts = np.unique(src * n_items + dst, return_counts=True)
        first, succ = np.divmod(pairs, n_items)
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.add.at(indptr, first + 1, 1)
        return cls(np.cumsum(indptr), succ.astype(np.int64), counts.astype(np.float64), n_items)

    @staticmethod
    def _sources(histories: list[np.ndarray], window: int, decay: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each history's last ``window`` items, most recent first, as flat (row, item, weight decay^d) arrays."""
        last = [np.asarray(h[-window:], dtype=np.int64)[::-1] for h in histories]
        rows = np.repeat(np.arange(len(histories)), [len(x) for x in last])
        items = np.concatenate(last) if last else np.empty(0, dtype=np.int64)
        weights = np.concatenate([decay ** np.arange(len(x)) for x in last]) if last else np.empty(0)
        return rows, items, weights

    def contributions(self, histories: list[np.ndarray], window: int,
                      decay: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The terms of every history's score as flat (row, item, value) arrays, one per (history item,
        successor) pair; an item's score is the sum of its terms (see the module doc)."""
        rows, items, weights = self._sources(histories, window, decay)
        # every (row, history item) pair expands into that item's successors
        lo, span = self.indptr[items], self.indptr[items + 1] - self.indptr[items]
        which = np.repeat(np.arange(len(items)), span)
        pos = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span) + lo[which]
        return rows[which], self.succ[pos], weights[which] * self.counts[pos]

    def scores(self, histories: list[np.ndarray], window: int, decay: float) -> np.ndarray:
        """float64 [B, N]: every item's score for each history (see the module doc)."""
        b, n = len(histories), self.n_items
        rows, items, values = self.contributions(histories, window, decay)
        return np.bincount(rows * n + items, weights=values, minlength=b * n).reshape(b, n)

    def sparse_scores(self, histories: list[np.ndarray], window: int, decay: float,
                      own_future: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The scores > 0 only, as (keys ``row * N + item`` ascending, float64 scores): no [B, N] matrix.

        ``own_future``: for training examples, each row's train sequence from its last history item on
        (``items[t-1:]`` for the example ``items[:t] -> items[t]``): the pairs inside it are taken out of
        the counts first (the module doc)."""
        b, n = len(histories), self.n_items
        rows, items, values = self.contributions(histories, window, decay)
        if own_future is not None:  # the same terms with a minus sign, for the pairs the row must not see
            fut = [np.asarray(f, dtype=np.int64) for f in own_future]
            lens = np.array([max(len(f) - 1, 0) for f in fut], dtype=np.int64)
            src = np.concatenate([f[:-1] for f in fut]) if lens.sum() else np.empty(0, dtype=np.int64)
            dst = np.concatenate([f[1:] for f in fut]) if lens.sum() else np.empty(0, dtype=np.int64)
            f_key = np.repeat(np.arange(b), lens) * n + src
            # the weight of a source = the sum of decay^d over the places d it has in the row's window
            w_rows, w_items, w_val = self._sources(histories, window, decay)
            uk, inv = np.unique(w_rows * n + w_items, return_inverse=True)
            w_tot = np.bincount(inv, weights=w_val, minlength=len(uk))
            at = np.searchsorted(uk, f_key)
            found = (at < len(uk)) & (uk[np.minimum(at, len(uk) - 1)] == f_key)
            rows = np.concatenate([rows, f_key[found] // n])
            items = np.concatenate([items, dst[found]])
            values = np.concatenate([values, -w_tot[at[found]]])
        key, inv = np.unique(rows * n + items, return_inverse=True)
        total = np.bincount(inv, weights=values, minlength=len(key))
        keep = total > 1e-9  # pairs taken out exactly leave rounding residues
        return key[keep], total[keep]

    def top(self, keys: np.ndarray, totals: np.ndarray, b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of :meth:`sparse_scores` per row of ``b``: (int64 [B, k], float64 [B, k]), best first,
        ties to the lower id; padding id -1, score 0."""
        r, j = np.divmod(keys, self.n_items)
        order = np.lexsort((j, -totals, r))  # by row, best score first, then lower id
        r, j, total = r[order], j[order], totals[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r)  # place inside its row
        top = rank < k
        out_items = np.full((b, k), -1, dtype=np.int64)
        out_scores = np.zeros((b, k))
        out_items[r[top], rank[top]] = j[top]
        out_scores[r[top], rank[top]] = total[top]
        return out_items, out_scores

    def lookup(self, keys: np.ndarray, totals: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The :meth:`sparse_scores` of given items [B, M] (row r's items in row r): float64 [B, M], 0 for
        items without a score and for padding (-1)."""
        if not len(keys):
            return np.zeros(items.shape)
        want = np.arange(len(items))[:, None] * self.n_items + items
        at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        return np.where((items >= 0) & (keys[at] == want), totals[at], 0.0)

    def candidates(self, histories: list[np.ndarray], k: int, window: int, decay: float,
                   own_future: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scored items of each history with their scores: (int64 [B, k], float64 [B, k]),
        best first, ties to the lower id; fewer than ``k`` items with a score > 0 leave padding (id -1,
        score 0). ``own_future`` as in :meth:`sparse_scores`."""
        return self.top(*self.sparse_scores(histories, window, decay, own_future), len(histories), k)


def _pairs(offsets: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sources, successors) of the consecutive pairs inside each sequence of a flat ragged list."""
    inside = np.ones(max(len(flat) - 1, 0), dtype=bool)
    starts = offsets[1:-1]
    inside[starts[(starts > 0) & (starts < len(flat))] - 1] = False  # no pair across two sequences
    return flat[:-1][inside], flat[1:][inside]


def scores_reference(train: pa.Table, n_items: int, histories: list[np.ndarray], window: int,
                     decay: float) -> np.ndarray:
    """Plain twin of :meth:`Succession.scores` (dicts and loops), for tests."""
    pairs: dict[tuple[int, int], int] = {}
    for seq in train["items"].to_pylist():
        for a, b in itertools.pairwise(seq):
            pairs[a, b] = pairs.get((a, b), 0) + 1
    out = np.zeros((len(histories), n_items))
    for r, h in enumerate(histories):
        for d, a in enumerate(reversed(list(h)[-window:])):
            for (src, dst), c in pairs.items():
                if src == a:
                    out[r, dst] += decay ** d * c
    return out
