"""Side information for the Technical Report's encoder pathways: item, user and full-log features.

The split tables hold only each user's *positive* events (items, timestamps, signal flags). The
Technical Report's encoder (arXiv 2506.13695, Sec. 2, "Encoder") also reads

* the **static** pathway: user id and user features;
* the **short-term** pathway: the last 20 behaviours of any kind (exposures included);
* the **lifelong** pathway: thousands of behaviours, compressed;

and describes each behaviour by item id, author, tag, timestamp, play time, duration and label.
:class:`SideInfo` gathers those from a :class:`~onerec.data.schema.Dataset`. Every field is
optional: a dataset without authors, tags, durations, watch times or user features (Amazon
reviews) gets the padding value 0 for that feature, and without a log the pathways fall back to
the positive sequence.

Categorical values are stored as small dense ids, 0 = missing/padding (so embedding tables use
``padding_idx=0``); hashed ids (item, author, user) are folded into the model's
``sparse_buckets`` rows by the model (``1 + id % (buckets - 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onerec.data.schema import Dataset, signal_flags

#: bucket count of log2-seconds features (play time, duration, lifelong cluster size)
N_LOG_BUCKETS = 24
TS_BITS = 34  # timestamps (seconds) are offset to [0, 2^34) inside the per-user search key


def log_bucket(x: np.ndarray) -> np.ndarray:
    """1 + floor(log2(1 + x)) clipped to N_LOG_BUCKETS - 1; 0 stays for padding (x < 0)."""
    x = np.asarray(x, dtype=np.float64)
    b = 1 + np.floor(np.log2(1.0 + np.maximum(x, 0)))
    return np.where(x < 0, 0, np.minimum(b, N_LOG_BUCKETS - 1)).astype(np.int64)


def _dense_ids(values: list) -> np.ndarray:
    """Distinct non-empty values -> 1..K in first-seen order; None/"" -> 0."""
    index: dict = {}
    out = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None or v == "":
            continue
        out[i] = index.setdefault(v, len(index) + 1)
    return out


@dataclass
class SideInfo:
    """Per-item, per-user and per-event arrays (see module docstring).

    Attributes:
        item_author: [N_items] author id + 1 (0: unknown).
        item_tag: [N_items] dense id of the first tag, else of the category (0: none).
        item_dur: [N_items] log_bucket(duration seconds) (0: unknown).
        user_cats: [N_users, C] dense ids of the user feature columns, offset per column (0: missing).
        log_offsets/log_items/log_ts/log_flags/log_play: the full interaction log per user (CSR,
            chronological), or None when only positives are known.
    """

    item_author: np.ndarray
    item_tag: np.ndarray
    item_dur: np.ndarray
    user_cats: np.ndarray
    log_offsets: np.ndarray | None = None
    log_items: np.ndarray | None = None
    log_ts: np.ndarray | None = None
    log_flags: np.ndarray | None = None
    log_play: np.ndarray | None = None
    _keys: np.ndarray | None = field(default=None, repr=False)  # (user, ts) search keys, built on first use
    _ts0: int = 0

    @classmethod
    def from_dataset(cls, ds: Dataset, *, with_log: bool = True) -> SideInfo:
        items, n = ds.items, ds.n_items
        cols = items.column_names
        author = (items["author_id"].to_numpy(zero_copy_only=False) + 1 if "author_id" in cols
                  else np.zeros(n, dtype=np.int64))
        author = np.nan_to_num(np.asarray(author, dtype=np.float64), nan=0).astype(np.int64)
        tag_vals: list = [None] * n
        if "tags" in cols:
            tag_vals = [t[0] if t else None for t in items["tags"].to_pylist()]
        if "category" in cols:
            cats = items["category"].to_pylist()
            tag_vals = [t if t is not None else c for t, c in zip(tag_vals, cats)]
        dur = (items["duration_ms"].to_numpy(zero_copy_only=False) if "duration_ms" in cols
               else np.full(n, -1.0))
        dur = np.nan_to_num(np.asarray(dur, dtype=np.float64), nan=-1000.0)
        user_cols = [c for c in ds.users.column_names if c not in ("user_id", "raw_id")]
        cats, offset = [], 0
        for c in user_cols:
            ids = _dense_ids(ds.users[c].to_pylist())
            cats.append(np.where(ids > 0, ids + offset, 0))
            offset += int(ids.max(initial=0))
        user_cats = np.stack(cats, 1) if cats else np.zeros((ds.n_users, 0), dtype=np.int64)
        side = cls(author, _dense_ids(tag_vals), np.where(dur < 0, 0, log_bucket(dur / 1000.0)), user_cats)
        if with_log:
            inter = ds.interactions
            uid = inter["user_id"].to_numpy()
            side.log_offsets = np.zeros(ds.n_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(uid, minlength=ds.n_users), out=side.log_offsets[1:])
            side.log_items = inter["item_id"].to_numpy().astype(np.int64)
            side.log_ts = inter["timestamp"].to_numpy().astype(np.int64)
            side.log_flags = signal_flags(inter).astype(np.int64)
            if "watch_time_ms" in inter.column_names:
                play = np.nan_to_num(inter["watch_time_ms"].to_numpy(zero_copy_only=False).astype(np.float64), nan=-1e3)
                side.log_play = np.where(play < 0, 0, log_bucket(play / 1000.0))
            else:
                side.log_play = np.zeros(len(uid), dtype=np.int64)
        return side

    def log_end(self, users: np.ndarray, request_ts: np.ndarray) -> np.ndarray:
        """Absolute log index one past the last event of each user strictly before request_ts."""
        span = (1 << TS_BITS) - 1
        if self._keys is None:
            self._ts0 = int(self.log_ts.min(initial=0))
            uid = np.repeat(np.arange(len(self.log_offsets) - 1), np.diff(self.log_offsets))
            self._keys = (uid << TS_BITS) + np.clip(self.log_ts - self._ts0, 0, span)
        key = (users.astype(np.int64) << TS_BITS) + np.clip(request_ts - self._ts0, 0, span)
        return np.searchsorted(self._keys, key, side="left")
