"""Real-feedback rewards for OneRec-V2's alignment (arXiv 2508.20900, Sec. 4): the simulated world plays the users.

V2 aligns to what users actually did with the items it showed them (play time, dislikes), shaped by
:class:`onerec.reward.duration.DurationShaping`, instead of only to a learned reward model. In onerec the
simulated world stands in for the users: each generated item is shown once to its user and one
response is sampled from the world's ground-truth model (:meth:`onerec.data.simulator.World.respond`):
its play time and whether the user disliked it (the world's ``hate`` signal). The percentile reference
is the run's logged exposures. The world's closed-form *expected* responses, which
:mod:`onerec.align.evaluate` scores lists with, are never used here: alignment sees one noisy
sampled response per shown item, as a production system would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from onerec.reward.duration import DurationShaping, from_percentile


@dataclass
class SimulatedFeedback:
    """Sampled responses of the simulated world's users to shown items, shaped into V2's advantages."""

    world: Any  # onerec.data.simulator.World
    shaping: DurationShaping

    @classmethod
    def from_log(cls, world: Any, interactions: pa.Table, *, base: float = 2.0) -> SimulatedFeedback:
        """The shaping's per-bucket reference from a log's exposures (``watch_time_ms`` of every row)."""
        items = interactions["item_id"].to_numpy()
        play = interactions["watch_time_ms"].to_numpy(zero_copy_only=False)
        return cls(world, DurationShaping(play, world.item_duration_ms[items], base=base))

    def __call__(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator, *, top_share: float = 0.25,
                 top_of: str = "batch") -> dict[str, np.ndarray]:
        """Show ``items [B, G]`` (-1: an illegal code, not shown) to ``users [B]``; the shown items are the batch
        of ``top_share`` / ``top_of`` (:meth:`onerec.reward.duration.DurationShaping.advantage`).

        Returns ``[B, G]`` arrays: ``advantage`` (V2's {-1, 0, +1}; NaN where not shown), ``percentile``
        (within the duration bucket; NaN where not shown), ``play_ms`` and ``dislike`` (0 where not shown).
        """
        items = np.asarray(items)
        shown = items >= 0
        u = np.broadcast_to(np.asarray(users)[:, None], items.shape)[shown]
        i = items[shown]
        resp = self.world.respond(u, i, rng)
        play = np.zeros(items.shape)
        dislike = np.zeros(items.shape)
        play[shown], dislike[shown] = resp["watch_time_ms"], resp["hate"]
        dur = self.world.item_duration_ms[i]
        adv = np.full(items.shape, np.nan)
        pct = np.full(items.shape, np.nan)
        pct[shown] = self.shaping.percentile(play[shown], dur)
        adv[shown] = from_percentile(pct[shown], dislike[shown], top_share=top_share, top_of=top_of)
        return {"advantage": adv, "percentile": pct, "play_ms": play, "dislike": dislike}


__all__ = ["SimulatedFeedback"]
