"""OneRec-V2's duration-aware reward shaping of real user feedback (arXiv 2508.20900, Sec. 4).

Raw play time favours long videos: 20 s of a 15 s clip (a replay) is a better outcome than 20 s of a
5-minute video, yet a reward proportional to play time ranks them the other way. V2 therefore
compares a play time only with play times of videos of similar length:

1. videos are bucketed on a log scale of their duration: ``bucket = floor(log_base(duration in s))``;
2. a play time's percentile ``q`` is taken among the play times of its duration bucket;
3. the advantage is ``A = +1`` for the top 25% by ``q`` (``q >= 1 - top_share``), ``A = -1`` for an
   explicit dislike (it wins over a high ``q``), and ``A = 0`` otherwise.

Choices the paper leaves open (made here, as a careful reimplementation would):

* the distribution each bucket's percentile is taken against is the *logged* exposures of that bucket
  (every exposure, unplayed ones count as 0 ms), so ``q`` says how good a play is against what the
  logging policy's users usually watch of videos that long; a bucket the log never saw uses the
  nearest bucket that it did;
* ``q`` is the mid-rank empirical CDF, ``(#below + #equal / 2) / n``: ties (many 0 ms plays) share
  one percentile, and a play that equals every reference value scores 0.5, never the top.

Shapes: N = samples (any shape; arrays are broadcast element-wise), R = logged reference exposures.
"""

from __future__ import annotations

import numpy as np


class DurationShaping:
    """V2's duration-aware advantages, with the per-bucket play-time reference of a log.

    Args:
        ref_play_ms: [R] logged play time of each exposure (0 for an unplayed one).
        ref_duration_ms: [R] the duration of each exposure's video.
        base: log base of the duration buckets (2.0: each bucket spans a doubling of the length).
        top_share: share of percentiles that earn ``A = +1`` (the paper's 25%).

    Example (base 2, one bucket of durations 8-16 s)::

        >>> s = DurationShaping(np.array([0, 2000, 4000, 8000]), np.full(4, 10_000), top_share=0.25)
        >>> s.percentile(np.array([0, 5000, 9000]), np.full(3, 12_000)).tolist()
        [0.125, 0.75, 1.0]
        >>> s.advantage(np.array([0, 5000, 9000]), np.full(3, 12_000), np.array([0, 0, 1])).tolist()
        [0.0, 1.0, -1.0]
    """

    def __init__(self, ref_play_ms: np.ndarray, ref_duration_ms: np.ndarray, *, base: float = 2.0,
                 top_share: float = 0.25) -> None:
        play = np.asarray(ref_play_ms, dtype=np.float64)
        dur = np.asarray(ref_duration_ms, dtype=np.float64)
        if play.shape != dur.shape or play.ndim != 1 or not len(play):
            raise ValueError(f"reference play times {play.shape} and durations {dur.shape} must be two equal, "
                             "non-empty 1-d arrays")
        if not base > 1.0:
            raise ValueError(f"duration bucket base must be > 1, got {base}")
        if not 0.0 < top_share < 1.0:
            raise ValueError(f"top_share must be in (0, 1), got {top_share}")
        self.base, self.top_share = float(base), float(top_share)
        buckets = self.bucket(dur)
        self._seen = np.unique(buckets)
        self.ref = {int(b): np.sort(play[buckets == b]) for b in self._seen}  # bucket -> sorted play times

    def bucket(self, duration_ms: np.ndarray) -> np.ndarray:
        """Duration bucket on a log scale: floor(log_base(duration in s)), durations under 1 s in bucket 0."""
        sec = np.maximum(np.asarray(duration_ms, dtype=np.float64) / 1000.0, 1.0)
        # arXiv 2508.20900 (Sec. 4): play time is bucketed on a log scale by video duration
        return np.floor(np.log(sec) / np.log(self.base) + 1e-9).astype(np.int64)

    def _nearest_seen(self, b: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self._seen, b), 0, len(self._seen) - 1)
        left = self._seen[np.maximum(pos - 1, 0)]
        right = self._seen[pos]
        return np.where(np.abs(b - left) < np.abs(right - b), left, right)

    def percentile(self, play_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
        """Mid-rank percentile in [0, 1] of each play time among the logged play times of its duration bucket."""
        play = np.asarray(play_ms, dtype=np.float64)
        b = self._nearest_seen(self.bucket(np.broadcast_to(duration_ms, play.shape)))
        q = np.empty(play.shape, dtype=np.float64)
        for bucket in np.unique(b):
            ref, m = self.ref[int(bucket)], b == bucket
            below = np.searchsorted(ref, play[m], side="left")
            upto = np.searchsorted(ref, play[m], side="right")
            q[m] = (below + 0.5 * (upto - below)) / len(ref)
        return q

    def advantage(self, play_ms: np.ndarray, duration_ms: np.ndarray, dislike: np.ndarray) -> np.ndarray:
        """A in {-1, 0, +1}: +1 in the top ``top_share`` of its duration bucket's play times, -1 for a dislike."""
        return self.from_percentile(self.percentile(play_ms, duration_ms), dislike)

    def from_percentile(self, q: np.ndarray, dislike: np.ndarray) -> np.ndarray:
        """:meth:`advantage` from percentiles already computed by :meth:`percentile`."""
        # arXiv 2508.20900 (Sec. 4): top 25% by within-bucket percentile -> A = +1; explicit dislikes -> A = -1
        top = np.where(q >= 1.0 - self.top_share, 1.0, 0.0)
        return np.where(np.asarray(dislike).astype(bool), -1.0, top)


__all__ = ["DurationShaping"]
