"""OneRec-V2's duration-aware reward shaping of real user feedback (arXiv 2508.20900, Sec. 4).

Raw play time favours long videos: 20 s of a 15 s clip (a replay) is a better outcome than 20 s of a
5-minute video, yet a reward proportional to play time ranks them the other way. V2 therefore
compares a play time only with play times of videos of similar length:

1. videos are bucketed on a log scale of their duration: ``bucket = floor(log_base(duration in s))``;
2. a play time's percentile ``q`` is taken among the play times of its duration bucket;
3. the advantage is ``A = +1`` for the top 25% of the samples by ``q``, ``A = -1`` for an explicit
   dislike (it wins over a high ``q``), and ``A = 0`` otherwise.

Choices the paper leaves open (made here, as a careful reimplementation would):

* "the top 25%" is, by default (``top_of="batch"``), a share of the samples scored together (a round's
  shown items), ranked by ``q``: ``q >`` their 75th percentile (strictly: samples tied at the cut, such as
  many skips, are not lifted into the top); ``top_of="log"`` reads it as the top quarter of the *logged*
  plays instead (``q > 0.75``), so the share of positives grows as the policy beats the log;

* the distribution each bucket's percentile is taken against is the *logged* exposures of that bucket
  (every exposure, unplayed ones count as 0 ms), so ``q`` says how good a play is against what the
  logging policy's users usually watch of videos that long; a bucket the log never saw uses the
  nearest bucket that it did;
* ``q`` is the mid-rank empirical CDF, ``(#below + #equal / 2) / n``: tied plays share one percentile,
  and a play that equals every reference value scores 0.5, never the top; an unplayed item (0 ms) has
  ``q = 0`` in every bucket: a skip is the worst outcome whatever the length (its tie with the log's many
  skips would otherwise lift it to half their share, which differs by bucket).

Shapes: N = samples (any shape; arrays are broadcast element-wise), R = logged reference exposures.
"""

from __future__ import annotations

import numpy as np

TOP_OF = ("batch", "log")


class DurationShaping:
    """V2's duration-aware advantages, with the per-bucket play-time reference of a log.

    Args:
        ref_play_ms: [R] logged play time of each exposure (0 for an unplayed one).
        ref_duration_ms: [R] the duration of each exposure's video.
        base: log base of the duration buckets (2.0: each bucket spans a doubling of the length).

    The advantages take ``top_share``, the share that earns ``A = +1`` (the paper's 25%), and ``top_of``:
    ``"batch"``: a share of the samples scored together, ranked by ``q``; ``"log"``: of the logged plays.

    Example (base 2, one bucket of durations 8-16 s)::

        >>> s = DurationShaping(np.array([0, 2000, 4000, 8000]), np.full(4, 10_000))
        >>> play = np.array([0, 5000, 8000, 9000])
        >>> s.percentile(play, np.full(4, 12_000)).tolist()
        [0.0, 0.75, 0.875, 1.0]
        >>> s.advantage(play, np.full(4, 12_000), np.array([0, 0, 0, 1]), top_of="log").tolist()
        [0.0, 0.0, 1.0, -1.0]
    """

    def __init__(self, ref_play_ms: np.ndarray, ref_duration_ms: np.ndarray, *, base: float = 2.0) -> None:
        play = np.asarray(ref_play_ms, dtype=np.float64)
        dur = np.asarray(ref_duration_ms, dtype=np.float64)
        if play.shape != dur.shape or play.ndim != 1 or not len(play):
            raise ValueError(f"reference play times {play.shape} and durations {dur.shape} must be two equal, "
                             "non-empty 1-d arrays")
        if not base > 1.0:
            raise ValueError(f"duration bucket base must be > 1, got {base}")
        self.base = float(base)
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
        """Mid-rank percentile in [0, 1] of each play time among the logged play times of its duration bucket
        (0 for an unplayed item)."""
        play = np.asarray(play_ms, dtype=np.float64)
        b = self._nearest_seen(self.bucket(np.broadcast_to(duration_ms, play.shape)))
        q = np.empty(play.shape, dtype=np.float64)
        for bucket in np.unique(b):
            ref, m = self.ref[int(bucket)], b == bucket
            below = np.searchsorted(ref, play[m], side="left")
            upto = np.searchsorted(ref, play[m], side="right")
            q[m] = (below + 0.5 * (upto - below)) / len(ref)
        return np.where(play > 0, q, 0.0)

    def advantage(self, play_ms: np.ndarray, duration_ms: np.ndarray, dislike: np.ndarray, *,
                  top_share: float = 0.25, top_of: str = "batch") -> np.ndarray:
        """A in {-1, 0, +1} of a batch of samples: +1 for the top ``top_share`` by within-bucket percentile,
        -1 for a dislike."""
        return from_percentile(self.percentile(play_ms, duration_ms), dislike, top_share=top_share, top_of=top_of)


def top_cut(q: np.ndarray, *, top_share: float = 0.25, top_of: str = "batch") -> float:
    """The percentile above which a sample is in the top share: of the batch ``q`` or of the log."""
    if not 0.0 < top_share < 1.0:
        raise ValueError(f"top_share must be in (0, 1), got {top_share}")
    if top_of not in TOP_OF:
        raise ValueError(f"top_of must be one of {TOP_OF}, got {top_of!r}")
    if top_of == "log" or not np.size(q):
        return 1.0 - top_share
    return float(np.quantile(q, 1.0 - top_share))


def from_percentile(q: np.ndarray, dislike: np.ndarray, *, top_share: float = 0.25,
                    top_of: str = "batch") -> np.ndarray:
    """:meth:`DurationShaping.advantage` from the percentiles ``q`` of a batch (:meth:`DurationShaping.percentile`)."""
    # arXiv 2508.20900 (Sec. 4): top 25% by within-bucket percentile -> A = +1; explicit dislikes -> A = -1
    top = np.where(np.asarray(q) > top_cut(q, top_share=top_share, top_of=top_of), 1.0, 0.0)
    return np.where(np.asarray(dislike).astype(bool), -1.0, top)


__all__ = ["TOP_OF", "DurationShaping", "from_percentile", "top_cut"]
