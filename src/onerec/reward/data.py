"""Logged exposures -> ranking examples for the P-Score model.

Every exposure of the log (clicked or not, from either logging policy) is one ranking example:
the user, the exposed item (with its item features) and the user's *positive* behaviours strictly
before the exposure time, right-aligned (most recent last), up to ``long_len`` of them. Labels are
the logged signals and the watch time.

Train / held-out: a global time cut at the ``1 - test_frac`` quantile of exposure timestamps, so
the P-Score is fitted on the earlier exposures and evaluated on later, never-seen ones (histories
of held-out exposures are the positives logged before them, as a ranker in production would see).

Shapes (B examples, L = long_len)::

    user [B], item [B], cat [B], author [B], dur [B]          int64 (cat = first SID level)
    hist_item / hist_cat / hist_gap / hist_flags [B, L]        int64 (-1 / 0 on padding)
    hist_mask [B, L]                                           bool, True on real behaviours
    labels [B, n_objectives] float32, pref [B] float32         (training / evaluation only)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from onerec.data.schema import positive_mask, signal_flags
from onerec.errors import DataError
from onerec.features.history import N_AGE_BUCKETS, age_bucket

N_DUR_BUCKETS = 24


def duration_bucket(ms: np.ndarray) -> np.ndarray:
    """log2 buckets of a duration in seconds (0 for unknown)."""
    s = np.maximum(np.asarray(ms, dtype=np.float64) / 1000.0, 0.0)
    return np.minimum(np.floor(np.log2(1.0 + s)) + (s > 0), N_DUR_BUCKETS - 1).astype(np.int64)


@dataclass
class ItemSide:
    """Item features the ranker sees: category (first SID level), author and duration bucket."""

    cat: np.ndarray
    author: np.ndarray
    dur: np.ndarray
    n_cats: int
    n_authors: int

    @classmethod
    def build(cls, codes: np.ndarray, items: pa.Table | None = None, *, dense_authors: bool = True) -> ItemSide:
        """The features of every item. ``dense_authors``: authors are numbered 1..A in the order of their ids (0:
        unknown), so the author table has one row per author however large the dataset's ids are (a P-Score
        model saved before this numbering, ``author_ids`` absent from its pscore.json, used the ids + 1)."""
        n = len(codes)
        cat = np.asarray(codes, dtype=np.int64)[:, 0]
        author = np.zeros(n, dtype=np.int64)
        dur = np.zeros(n, dtype=np.int64)
        if items is not None and "author_id" in items.column_names:
            raw = items["author_id"].fill_null(-1).to_numpy().astype(np.int64)
            if dense_authors:
                known = raw >= 0
                author[known] = np.unique(raw[known], return_inverse=True)[1].reshape(-1) + 1
            else:
                author = raw + 1  # 0 = unknown
        if items is not None and "duration_ms" in items.column_names:
            dur = duration_bucket(items["duration_ms"].fill_null(0).to_numpy())
        if len(author) != n or len(dur) != n:
            raise DataError(f"items table has {len(author)} rows but there are {n} item codes",
                            fix="use the items table of the same dataset as the tokenizer")
        return cls(cat, author, dur, int(cat.max()) + 1, int(author.max()) + 1)


@dataclass
class Positives:
    """Each user's positive behaviours in time order (CSR): user u owns ``offsets[u]:offsets[u+1]``."""

    offsets: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray

    @classmethod
    def from_interactions(cls, inter: pa.Table, n_users: int, rule: str = "auto") -> Positives:
        keep = positive_mask(inter, rule)
        user = inter["user_id"].to_numpy()
        ts = inter["timestamp"].to_numpy()
        order = np.lexsort((ts, user))
        keep_o = order[keep[order]]
        counts = np.bincount(user[keep_o], minlength=n_users)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return cls(offsets, inter["item_id"].to_numpy()[keep_o].astype(np.int64), ts[keep_o].astype(np.int64),
                   signal_flags(inter)[keep_o].astype(np.int64))

    def end_before(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Absolute index one past each user's last positive strictly before ``ts``."""
        big = np.int64(1) << 40
        key = np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets)) * big + self.ts
        return np.searchsorted(key, users.astype(np.int64) * big + ts.astype(np.int64), side="left")


class RankFeaturizer:
    """Builds P-Score batches for (user, item, request time) triples from the users' positives."""

    def __init__(self, positives: Positives, side: ItemSide, long_len: int) -> None:
        self.pos, self.side, self.L = positives, side, long_len

    def batch(self, users: np.ndarray, items: np.ndarray, request_ts: np.ndarray,
              ends: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        request_ts = np.asarray(request_ts, dtype=np.int64)
        if ends is None:
            ends = self.pos.end_before(users, request_ts)
        starts = self.pos.offsets[users]
        idx = ends[:, None] - self.L + np.arange(self.L)[None, :]
        mask = idx >= starts[:, None]
        safe = np.where(mask, idx, 0)
        h_item = np.where(mask, self.pos.items[safe] if len(self.pos.items) else 0, -1)
        h_safe = np.maximum(h_item, 0)
        gap = age_bucket(request_ts[:, None] - (self.pos.ts[safe] if len(self.pos.ts) else 0))
        s = self.side
        return {
            "user": torch.from_numpy(users), "item": torch.from_numpy(items),
            "cat": torch.from_numpy(s.cat[items]), "author": torch.from_numpy(s.author[items]),
            "dur": torch.from_numpy(s.dur[items]),
            "hist_item": torch.from_numpy(h_item),
            "hist_cat": torch.from_numpy(np.where(mask, s.cat[h_safe], -1)),
            "hist_gap": torch.from_numpy(np.where(mask, np.minimum(gap, N_AGE_BUCKETS - 1), 0)),
            "hist_flags": torch.from_numpy(np.where(mask, self.pos.flags[safe] if len(self.pos.flags) else 0, 0)),
            "hist_mask": torch.from_numpy(mask),
        }


@dataclass
class Exposures:
    """Exposures of one split with their labels; ``batch(idx)`` featurizes a subset."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    labels: np.ndarray  # [E, n_objectives] float32
    pref: np.ndarray  # [E] float32, the fusion target
    watch_ms: np.ndarray
    featurizer: RankFeaturizer
    objectives: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.user)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = self.featurizer.batch(self.user[idx], self.item[idx], self.ts[idx])
        out["labels"] = torch.from_numpy(self.labels[idx])
        out["pref"] = torch.from_numpy(self.pref[idx])
        return out


def preference_target(watch_ms: np.ndarray, cap_s: float) -> np.ndarray:
    """The fusion head's target in [0, 1]: play time capped at ``cap_s`` seconds, divided by the cap.

    The Technical Report's P-Score fuses the towers into one preference score without publishing
    the fusion target; here the fusion is fitted to (capped) watch time, the quantity alignment is
    meant to raise, so the P-Score is an estimate of it.
    """
    return np.minimum(np.asarray(watch_ms, dtype=np.float64) / (1000.0 * cap_s), 1.0).astype(np.float32)


def exposure_splits(inter: pa.Table, n_users: int, codes: np.ndarray, items: pa.Table | None, *,
                    objectives: list[str] | tuple[str, ...], long_len: int, test_frac: float,
                    pref_cap_s: float, positive: str = "auto") -> tuple[dict[str, Exposures], RankFeaturizer]:
    """Train / held-out exposures split by a global time cut (see the module docstring)."""
    missing = [c for c in (*objectives, "watch_time_ms") if c not in inter.column_names]
    if missing:
        raise DataError(f"the interactions table lacks {missing}, which the P-Score model predicts",
                        column=missing[0], fix="use a log with feedback signals (the simulator, KuaiRand) or set "
                                               "reward.objectives to columns the table has")
    if not 0.0 < test_frac < 1.0:
        raise DataError(f"reward.test_frac={test_frac} must be in (0, 1)", fix="e.g. reward.test_frac=0.2")
    feat = RankFeaturizer(Positives.from_interactions(inter, n_users, positive), ItemSide.build(codes, items),
                          long_len)
    user = inter["user_id"].to_numpy().astype(np.int64)
    item = inter["item_id"].to_numpy().astype(np.int64)
    ts = inter["timestamp"].to_numpy().astype(np.int64)
    labels = np.stack([inter[o].fill_null(0).to_numpy().astype(np.float32) for o in objectives], axis=1)
    watch = inter["watch_time_ms"].fill_null(0).to_numpy().astype(np.float64)
    cut = np.quantile(ts, 1.0 - test_frac)
    out = {}
    for name, sel in (("train", ts < cut), ("test", ts >= cut)):
        out[name] = Exposures(user[sel], item[sel], ts[sel], labels[sel], preference_target(watch[sel], pref_cap_s),
                              watch[sel], feat, tuple(objectives))
    return out, feat
