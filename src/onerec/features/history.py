"""User-history features for the generator: split tables -> padded tensors.

v0 builds the *positive-feedback pathway* of the Technical Report: the user's most recent
positive behaviours, each described by its item's semantic ID, its feedback "label" (the
signal bitmask) and its age at request time. The static, short-term and lifelong pathways
arrive with the full encoder.

Layout (H = max_history, D = semantic-ID length): histories are right-aligned, so position
H-1 is the most recent behaviour and padding sits on the left::

    hist_codes [B, H, D] int64   (-1 on padding)
    hist_flags [B, H]    int64   signal bitmask (0 on padding)
    hist_age   [B, H]    int64   bucket of log2(1 + seconds between behaviour and request)
    hist_mask  [B, H]    bool    True on real behaviours
    target     [B, D]    int64   semantic ID of the item to predict (training / validation)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

N_AGE_BUCKETS = 40


def age_bucket(seconds: np.ndarray) -> np.ndarray:
    """log2 buckets of elapsed time: 0 s -> 0, 1 s -> 1, ~1 day -> 17, ~1 year -> 25."""
    s = np.maximum(seconds, 0).astype(np.float64)
    return np.minimum(np.floor(np.log2(1.0 + s)) + (s > 0), N_AGE_BUCKETS - 1).astype(np.int64)


@dataclass
class Ragged:
    """Flat per-row lists: row r is ``values[offsets[r]:offsets[r+1]]``."""

    offsets: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table, items: str, ts: str, flags: str) -> Ragged:
        def flat(col: str) -> tuple[np.ndarray, np.ndarray]:
            arr = table[col].combine_chunks()
            offs = arr.offsets.to_numpy().astype(np.int64)
            return offs - offs[0], arr.flatten().to_numpy()

        offs, it = flat(items)
        _, t = flat(ts)
        _, f = flat(flags)
        return cls(offs, it.astype(np.int64), t.astype(np.int64), f.astype(np.int64))


class HistoryFeaturizer:
    """Turns (row, history end, request time) triples into padded tensors.

    Args:
        codes: [N_items, D] semantic IDs of every item.
        max_history: H, most recent behaviours kept.
    """

    def __init__(self, codes: np.ndarray, max_history: int) -> None:
        self.codes = np.asarray(codes, dtype=np.int64)
        self.h = max_history

    def histories(self, seqs: Ragged, rows: np.ndarray, ends: np.ndarray, request_ts: np.ndarray) -> dict:
        """Histories made of events ``[offsets[row], ends)`` of each chosen row (absolute indexes)."""
        starts = seqs.offsets[rows]
        pos = ends[:, None] - self.h + np.arange(self.h)[None, :]  # [B, H] absolute event index
        mask = pos >= starts[:, None]
        idx = np.where(mask, pos, 0)
        items = np.where(mask, seqs.items[idx], -1)
        codes = np.where(mask[..., None], self.codes[np.maximum(items, 0)], -1)
        age = age_bucket(request_ts[:, None] - seqs.ts[idx])
        return {
            "hist_codes": torch.from_numpy(codes),
            "hist_flags": torch.from_numpy(np.where(mask, seqs.flags[idx], 0)),
            "hist_age": torch.from_numpy(np.where(mask, age, 0)),
            "hist_mask": torch.from_numpy(mask),
        }


class TrainExamples:
    """Every next-item example of the train split: predict ``items[t]`` from ``items[:t]``, t >= 1."""

    def __init__(self, train: pa.Table, featurizer: HistoryFeaturizer) -> None:
        self.seqs = Ragged.from_table(train, "items", "ts", "flags")
        self.f = featurizer
        lens = np.diff(self.seqs.offsets)
        row_of_event = np.repeat(np.arange(len(lens)), lens)
        is_first = np.zeros(len(row_of_event), dtype=bool)
        is_first[self.seqs.offsets[:-1][lens > 0]] = True
        self.target_idx = np.flatnonzero(~is_first)  # every event but each user's first is a target
        self.rows = row_of_event[self.target_idx]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray) -> dict:
        rows, tgt = self.rows[idx], self.target_idx[idx]
        out = self.f.histories(self.seqs, rows, tgt, self.seqs.ts[tgt])
        out["target"] = torch.from_numpy(self.f.codes[self.seqs.items[tgt]])
        return out


class EvalExamples:
    """Examples of a valid/test table: the full history, request time = target_ts."""

    def __init__(self, table: pa.Table, featurizer: HistoryFeaturizer) -> None:
        self.seqs = Ragged.from_table(table, "history", "history_ts", "history_flags")
        self.f = featurizer
        self.request_ts = table["target_ts"].to_numpy().astype(np.int64)
        self.first_target = None  # first target of each row, for the validation loss
        if "targets" in table.column_names:
            tg = table["targets"].combine_chunks()
            offs = tg.offsets.to_numpy() - tg.offsets[0].as_py()
            self.first_target = tg.flatten().to_numpy()[offs[:-1]]

    def __len__(self) -> int:
        return len(self.request_ts)

    def batch(self, idx: np.ndarray, with_target: bool = False) -> dict:
        out = self.f.histories(self.seqs, idx, self.seqs.offsets[idx + 1], self.request_ts[idx])
        if with_target:
            if self.first_target is None:
                raise ValueError("this examples table has no 'targets' column")
            out["target"] = torch.from_numpy(self.f.codes[self.first_target[idx]])
        return out
