"""Rule rewards of the OneRec Technical Report (arXiv 2506.13695, Sec. 4): format and industrial.

* Format reward: a generated semantic ID that maps to no item is illegal. Without a reward for
  legality, RL drives the share of legal generations below 50% (the report's observation).
* Industrial reward: the reward of items of a targeted class (e.g. content farms) is scaled down
  once the class's share of a user's list passes ``f``, so alignment does not crowd it in.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


class CodeIndex:
    """Exact lookup from a D-level code to its item id (-1 when no item has it), vectorised.

    Codes are packed into one int64 key (mixed radix over the codebook sizes) and looked up by
    binary search in the sorted keys of the catalogue.
    """

    def __init__(self, codes: np.ndarray, codebook_sizes: list[int]) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        self.sizes = np.asarray(codebook_sizes, dtype=np.int64)
        if float(np.prod(self.sizes.astype(np.float64))) >= 2.0**62:
            raise ValueError(f"codebook sizes {codebook_sizes} overflow a 62-bit key")
        self.codes = codes
        keys = self._pack(codes)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def _pack(self, codes: np.ndarray) -> np.ndarray:
        key = np.zeros(codes.shape[:-1], dtype=np.int64)
        for t, v in enumerate(self.sizes):
            key = key * v + codes[..., t]
        return key

    def lookup(self, codes: np.ndarray | Tensor) -> np.ndarray:
        """codes [..., D] -> item ids [...] (-1 for illegal codes, including out-of-range codes)."""
        c = codes.cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        c = c.astype(np.int64)
        in_range = ((c >= 0) & (c < self.sizes)).all(axis=-1)
        key = self._pack(np.clip(c, 0, self.sizes - 1))
        pos = np.clip(np.searchsorted(self.keys, key), 0, len(self.keys) - 1)
        hit = in_range & (self.keys[pos] == key)
        return np.where(hit, self.order[pos], -1)

    def lookup_reference(self, codes: np.ndarray) -> np.ndarray:
        """Dictionary version of :meth:`lookup` (the check of the vectorised one)."""
        table = {tuple(int(x) for x in row): i for i, row in enumerate(self.codes)}
        c = np.asarray(codes)
        flat = [table.get(tuple(int(x) for x in row), -1) for row in c.reshape(-1, c.shape[-1])]
        return np.array(flat, dtype=np.int64).reshape(c.shape[:-1])


def format_reward(items: np.ndarray) -> np.ndarray:
    """1 for a legal generation (its code maps to an item), 0 otherwise; ``items`` from :meth:`CodeIndex.lookup`."""
    return (np.asarray(items) >= 0).astype(np.float64)


def industrial_reward(reward: np.ndarray, item_class: np.ndarray, target_class: int, f: float,
                      scale: float) -> np.ndarray:
    """Scale down the reward of targeted items past a share ``f`` of each row.

    Args:
        reward: [B, K] rewards of the K items of each user's list (in list order).
        item_class: [B, K] class of each item (-1 for illegal items, never targeted).
        target_class: the class whose exposure is limited.
        f: allowed share; within each row, targeted items beyond the first ``floor(f * K)`` (in
            list order) get ``reward * scale``. ``f >= 1`` leaves rewards unchanged.
        scale: multiplier in [0, 1].
    """
    reward = np.asarray(reward, dtype=np.float64)
    hit = np.asarray(item_class) == target_class
    allowed = int(np.floor(f * reward.shape[-1]))
    over = hit & (np.cumsum(hit, axis=-1) > allowed)
    return np.where(over, reward * scale, reward)


def group_advantages(reward: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO / ECPO advantages: (r - mean) / std within each group (row) of G samples: [B, G] -> [B, G]."""
    mean = reward.mean(dim=-1, keepdim=True)
    std = reward.std(dim=-1, keepdim=True, unbiased=False)
    return (reward - mean) / (std + eps)


__all__ = ["CodeIndex", "format_reward", "group_advantages", "industrial_reward"]
