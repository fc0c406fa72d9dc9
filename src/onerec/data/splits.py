"""Train / valid / test splits over the users' positive-behaviour sequences.

Both protocols work on each user's chronological sequence of *positive* events
(:func:`onerec.data.schema.positive_mask`): OneRec learns from the positive-behaviour history.

``loo`` (leave-one-out, the TIGER protocol): for a sequence ``s_1..s_n`` the test target is
``s_n`` with history ``s_1..s_{n-1}``; the valid target is ``s_{n-1}`` with history
``s_1..s_{n-2}``; training sees ``s_1..s_{n-2}``. Users with fewer than ``min_positives``
positive events are left out.

``time`` (global time split): two cut-offs at the ``1-valid_frac-test_frac`` and
``1-test_frac`` quantiles of all positive-event timestamps. Training sees every event before the
first cut-off. A user with history before a window and positives inside it gets one example
per window: history = all their positives before the window, targets = the distinct items
they engaged with positively inside it.

On disk (Parquet) and in memory::

    train:  user_id int64, items list<int64>, ts list<int64>, flags list<int16>
    valid / test:
            user_id int64, history list<int64>, history_ts list<int64>,
            history_flags list<int16>, targets list<int64>, target_ts int64

``flags`` are the bitmask of feedback signals of each event (:func:`signal_flags`), the
"label" behaviour feature of the Technical Report. Histories are complete: models truncate
them to their own maximum length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from onerec.data.checks import sort_interactions
from onerec.data.schema import Dataset, positive_mask, signal_flags
from onerec.errors import DataError
from onerec.io import read_parquet, write_json, write_parquet

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Sequences:
    """Ragged per-user sequences in CSR form: user ``u``'s events are ``offsets[u]:offsets[u+1]``."""

    offsets: np.ndarray  # [U+1] int64
    items: np.ndarray  # [E] int64
    ts: np.ndarray  # [E] int64
    flags: np.ndarray  # [E] int16

    @classmethod
    def from_interactions(cls, inter: pa.Table, n_users: int, rule: str = "auto") -> Sequences:
        _, n_back = sort_interactions(inter.select(["user_id", "timestamp"]))
        if n_back:  # each user's events must be one chronological run, or histories mix users and run backwards
            raise DataError(f"interactions are not sorted by (user_id, timestamp): {n_back} rows out of order",
                            column="timestamp", fix="build the Dataset with Dataset.validate() or "
                            "onerec.data.adapters.load, which sort it (stably) before splitting")
        keep = positive_mask(inter, rule)
        uid = inter["user_id"].to_numpy()[keep]
        counts = np.bincount(uid, minlength=n_users)
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, inter["item_id"].to_numpy()[keep].astype(np.int64),
                   inter["timestamp"].to_numpy()[keep].astype(np.int64), signal_flags(inter)[keep])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _list_array(values: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def _gather(seq: Sequences, users: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Concatenate slices [starts, ends) of each chosen user's sequence (absolute event indexes)."""
    lens = ends - starts
    offs = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    idx = np.repeat(starts - offs[:-1], lens) + np.arange(offs[-1])
    return offs, seq.items[idx], seq.ts[idx], seq.flags[idx]


def _train_table(seq: Sequences, users: np.ndarray, ends: np.ndarray) -> pa.Table:
    starts = seq.offsets[users]
    offs, it, ts, fl = _gather(seq, users, starts, ends)
    return pa.table({"user_id": users.astype(np.int64), "items": _list_array(it, offs, pa.int64()),
                     "ts": _list_array(ts, offs, pa.int64()), "flags": _list_array(fl, offs, pa.int16())})


def _eval_table(seq: Sequences, users: np.ndarray, hist_end: np.ndarray,
                tgt_start: np.ndarray, tgt_end: np.ndarray) -> pa.Table:
    offs, it, ts, fl = _gather(seq, users, seq.offsets[users], hist_end)
    t_offs, t_items, t_ts, _ = _gather(seq, users, tgt_start, tgt_end)
    targets, target_ts = [], np.empty(len(users), dtype=np.int64)
    for j in range(len(users)):  # distinct targets, first-occurrence order
        chunk = t_items[t_offs[j]:t_offs[j + 1]]
        _, first = np.unique(chunk, return_index=True)
        targets.append(chunk[np.sort(first)])
        target_ts[j] = t_ts[t_offs[j]]
    t_len = np.array([len(t) for t in targets], dtype=np.int64)
    t_o = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(t_len, out=t_o[1:])
    flat = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)
    return pa.table({
        "user_id": users.astype(np.int64),
        "history": _list_array(it, offs, pa.int64()),
        "history_ts": _list_array(ts, offs, pa.int64()),
        "history_flags": _list_array(fl, offs, pa.int16()),
        "targets": _list_array(flat, t_o, pa.int64()),
        "target_ts": target_ts,
    })


def leave_one_out(seq: Sequences, *, min_positives: int = 3) -> dict[str, pa.Table]:
    """TIGER protocol: last positive is test, second last valid, the rest train."""
    lens = seq.lengths()
    users = np.flatnonzero(lens >= max(min_positives, 3))
    if len(users) == 0:
        raise DataError(f"no user has {max(min_positives, 3)} or more positive events",
                        fix="check data.positive (which events count) or lower data.min_positives")
    end = seq.offsets[users + 1]
    return {
        "train": _train_table(seq, users, end - 2),
        "valid": _eval_table(seq, users, end - 2, end - 2, end - 1),
        "test": _eval_table(seq, users, end - 1, end - 1, end),
    }


def time_split(seq: Sequences, *, valid_frac: float = 0.1, test_frac: float = 0.1,
               min_positives: int = 1) -> dict[str, pa.Table]:
    """Global time split at two timestamp quantiles (see module docstring)."""
    if not (valid_frac > 0 and test_frac > 0 and valid_frac + test_frac < 1):
        raise DataError(f"valid_frac={valid_frac} and test_frac={test_frac} must be > 0 and sum below 1",
                        fix="set data.valid_frac / data.test_frac, e.g. 0.1 each")
    t1, t2 = np.quantile(seq.ts, [1 - valid_frac - test_frac, 1 - test_frac]).astype(np.int64)
    users = np.arange(len(seq.offsets) - 1)
    starts, ends = seq.offsets[:-1], seq.offsets[1:]
    # searchsorted per user on their sorted timestamps (sequences are chronological)
    cut1 = np.array([s + np.searchsorted(seq.ts[s:e], t1, "left") for s, e in zip(starts, ends)], dtype=np.int64)
    cut2 = np.array([s + np.searchsorted(seq.ts[s:e], t2, "left") for s, e in zip(starts, ends)], dtype=np.int64)
    out = {}
    has_train = (cut1 - starts) >= max(min_positives, 1)
    out["train"] = _train_table(seq, users[has_train], cut1[has_train])
    for name, h_end, w_end in (("valid", cut1, cut2), ("test", cut2, ends)):
        ok = ((h_end - starts) >= max(min_positives, 1)) & (w_end > h_end)
        out[name] = _eval_table(seq, users[ok], h_end[ok], h_end[ok], w_end[ok])
    if out["test"].num_rows == 0:
        raise DataError("the time split leaves no test example (no user has history before and positives after "
                        "the cut-off)", fix="use data.split=loo or a larger data.test_frac")
    return out


def make_splits(ds: Dataset, *, protocol: str = "loo", positive: str = "auto", min_positives: int = 3,
                valid_frac: float = 0.1, test_frac: float = 0.1) -> dict[str, pa.Table]:
    seq = Sequences.from_interactions(ds.interactions, ds.n_users, positive)
    if protocol == "loo":
        return leave_one_out(seq, min_positives=min_positives)
    if protocol == "time":
        return time_split(seq, valid_frac=valid_frac, test_frac=test_frac, min_positives=min_positives)
    raise DataError(f"unknown split protocol '{protocol}'", fix="use data.split=loo or data.split=time")


def save_splits(splits: dict[str, pa.Table], folder: str | Path) -> None:
    folder = Path(folder)
    for name in SPLIT_NAMES:
        write_parquet(folder / f"{name}.parquet", splits[name])
    write_json(folder / "split.json", {n: splits[n].num_rows for n in SPLIT_NAMES})


def load_splits(folder: str | Path, n_items: int | None = None) -> dict[str, pa.Table]:
    """Read the three split tables; with ``n_items`` check every item id is known."""
    folder = Path(folder)
    out = {name: read_parquet(folder / f"{name}.parquet") for name in SPLIT_NAMES}
    if n_items is not None:
        for name, t in out.items():
            for col in ("items", "history", "targets"):
                if col in t.column_names:
                    flat = t[col].combine_chunks().flatten().to_numpy()
                    bad = np.flatnonzero((flat < 0) | (flat >= n_items))
                    if len(bad):
                        raise DataError(f"unknown item id {flat[bad[0]]} (the dataset has {n_items} items)",
                                        path=str(folder / f"{name}.parquet"), column=col,
                                        fix="the split was made from another dataset; rerun "
                                            f"`onerec data --out {folder.parent.parent}`")
    return out


def item_counts(train: pa.Table, n_items: int) -> np.ndarray:
    """How often each item occurs in the train split's ``items`` lists: int64 [n_items]."""
    flat = train["items"].combine_chunks().flatten().to_numpy().astype(np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise DataError(f"train items must be ids in 0..{n_items - 1}; found {flat.min()}..{flat.max()}",
                        column="items", fix="pass the dataset's n_items")
    return np.bincount(flat, minlength=n_items).astype(np.int64)


def list_column(table: pa.Table, col: str) -> list[np.ndarray]:
    """A list<int> column as a list of numpy arrays (views into one flat buffer)."""
    arr = table[col].combine_chunks()
    flat = arr.flatten().to_numpy()
    offs = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    return [flat[offs[i]:offs[i + 1]] for i in range(len(arr))]
