"""KuaiRand (Gao et al., CIKM 2022) in its official CSV layout.

The official archive ``KuaiRand-Pure.tar.gz`` unpacks to ``KuaiRand-Pure/data/``::

    log_standard_4_08_to_4_21_pure.csv   exposures logged by Kuaishou's production policy
    log_standard_4_22_to_5_08_pure.csv
    log_random_4_22_to_5_08_pure.csv     exposures of randomly inserted videos
    user_features_pure.csv               user_id, user_active_degree, ... onehot_feat17
    video_features_basic_pure.csv        video_id, author_id, ..., video_duration, ..., tag

(KuaiRand-1K / 27K use the same names with ``_1k`` / ``_27k``; any ``log_standard_*.csv`` /
``log_random_*.csv`` is read.) Log columns: user_id, video_id, date, hourmin, time_ms, is_click,
is_like, is_follow, is_comment, is_forward, is_hate, long_view, play_time_ms, duration_ms,
profile_stay_time, comment_stay_time, is_profile_enter, is_rand, tab.

Mapping to the canonical interactions (one row per exposure):

* ``is_click`` / ``is_like`` / ``is_follow`` / ``is_comment`` / ``is_forward`` / ``is_hate`` /
  ``long_view`` / ``is_profile_enter`` -> click / like / follow / comment / forward / hate /
  long_view / profile_enter;
* ``watch_time_ms`` = ``play_time_ms``; ``complete_play`` = ``play_time_ms >= duration_ms``
  (the video was played to its end at least once; 0 when the duration is unknown or 0);
* ``timestamp`` = ``time_ms // 1000`` (rows are first ordered by ``time_ms``, so order within a
  second is kept);
* ``policy`` = ``"random"`` where ``is_rand`` is 1, else ``"production"`` (from the file name
  when the column is absent).

Items come from ``video_features_basic_*.csv``: ``author_id``, ``duration_ms`` (from
``video_duration``), ``tags`` = ``tag:<id>`` for each comma-separated ``tag``, plus the other
columns as they are. Users come from ``user_features_*.csv`` (every column a feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onerec.data.adapters._common import (
    check_known,
    check_unique,
    find_data_dir,
    floor_int64,
    keep_used,
    list_column,
    read_csv,
    sort_side,
    where_fn,
)
from onerec.data.checks import broken_link, check_binary, check_timestamps
from onerec.data.schema import Dataset, make_dataset
from onerec.errors import DataError

#: The Pure log files, by the policy that logged them.
LOG_FILES = {
    "standard": ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"),
    "random": ("log_random_4_22_to_5_08_pure.csv",),
}
LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
    "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
    "comment_stay_time", "is_profile_enter", "is_rand", "tab",
)
USER_COLUMNS = ("user_id",)
VIDEO_COLUMNS = ("video_id", "author_id", "video_duration", "tag")
SIGNAL_MAP = {
    "is_click": "click", "is_like": "like", "is_follow": "follow", "is_comment": "comment",
    "is_forward": "forward", "is_hate": "hate", "long_view": "long_view", "is_profile_enter": "profile_enter",
}
_INT_COLUMNS = ("user_id", "video_id", "time_ms", *SIGNAL_MAP, "play_time_ms", "duration_ms", "is_rand")
_SUBDIRS = ("data", "KuaiRand-Pure/data", "KuaiRand-1K/data", "KuaiRand-27K/data")
_FIX = "use the CSV files of the official KuaiRand release (onerec.data.download.fetch('kuairand-pure', ...))"


def load_kuairand(path: str | Path, name: str | None = None, *, logs: str | Sequence[str] = "all",
                  keep_unused: bool = False) -> Dataset:
    """Load KuaiRand from its official CSV files.

    Args:
        path: The ``data`` folder, or a folder above it (``KuaiRand-Pure/data`` is found).
        name: Dataset name (default ``kuairand-pure``).
        logs: ``"all"``, ``"standard"`` (production policy only), ``"random"`` (random exposure
            only), or a list of log file names in the folder.
        keep_unused: Keep users / videos of the feature files that have no exposure in the logs.

    Returns:
        The canonical dataset (see the module docstring for the mapping).
    """
    root = find_data_dir(Path(path), "log_*.csv", _SUBDIRS)
    log_paths = _log_paths(root, logs)
    video_path = _side_file(root, "video_features_basic_*.csv")
    user_path = _side_file(root, "user_features_*.csv")
    items = _videos(video_path) if video_path else None
    users = _users(user_path) if user_path else None
    parts = [_read_log(p, items, video_path, users, user_path) for p in log_paths]
    inter = pa.concat_tables(parts, promote_options="default")
    inter = inter.take(pc.sort_indices(inter["time_ms"]))  # stable: keeps log order for equal times
    ts = pc.divide(inter["time_ms"], 1000)  # integer division: non-negative milliseconds
    inter = inter.drop_columns(["time_ms"]).append_column("timestamp", ts)
    if items is not None:
        items = sort_side(keep_used(items, inter["item_id"], keep_unused))
    if users is not None:
        users = sort_side(keep_used(users, inter["user_id"], keep_unused))
    return make_dataset(name=name or "kuairand-pure", source="kuairand", interactions=inter, items=items,
                        users=users, path=str(log_paths[0] if len(log_paths) == 1 else root),
                        meta={"raw_path": str(root), "logs": [p.name for p in log_paths]})


def _log_paths(root: Path, logs: str | Sequence[str]) -> list[Path]:
    if isinstance(logs, str) and logs not in ("all", "standard", "random"):
        logs = [logs]
    if not isinstance(logs, str):
        paths = [root / n for n in logs]
    else:
        kinds = ("standard", "random") if logs == "all" else (logs,)
        paths = [p for k in kinds for p in sorted(root.glob(f"log_{k}_*.csv"))]
        if not paths:
            expected = ", ".join(n for k in kinds for n in LOG_FILES[k])
            raise DataError(f"no KuaiRand log files (expected {expected})", path=str(root), fix=_FIX)
    for p in paths:
        if p.is_symlink() and not p.exists():
            raise broken_link(p)
        if not p.is_file():
            raise DataError("log file not found", path=str(p), fix=f"check data.path; {_FIX}")
    return paths


def _side_file(root: Path, pattern: str) -> Path | None:
    found = sorted(root.glob(pattern))
    if len(found) > 1:
        raise DataError(f"several files match {pattern}: {', '.join(p.name for p in found)}", path=str(root),
                        fix="keep one KuaiRand version (Pure, 1K or 27K) per folder")
    return found[0] if found else None


def _read_log(path: Path, items: pa.Table | None, video_path: Path | None, users: pa.Table | None,
              user_path: Path | None) -> pa.Table:
    t = read_csv(path, required=("user_id", "video_id", "time_ms"), optional=LOG_COLUMNS,
                 types={c: pa.int64() for c in _INT_COLUMNS}, fix=_FIX)
    check_timestamps(t["time_ms"], path=path, column="time_ms", where=where_fn(), per_second=1000)
    for col in (*SIGNAL_MAP, "is_rand"):
        if col in t.column_names:
            check_binary(t[col], path=path, column=col, where=where_fn())
    if items is not None:
        check_known(t["video_id"], items["raw_id"], path, "video_id", video_path)
    if users is not None:
        check_known(t["user_id"], users["raw_id"], path, "user_id", user_path)
    cols = {"user_id": t["user_id"], "item_id": t["video_id"], "time_ms": t["time_ms"]}
    cols.update({canon: t[src].cast(pa.int8()) for src, canon in SIGNAL_MAP.items() if src in t.column_names})
    if "play_time_ms" in t.column_names:
        cols["watch_time_ms"] = t["play_time_ms"]
        if "duration_ms" in t.column_names:
            done = pc.and_(pc.greater(t["duration_ms"], 0), pc.greater_equal(t["play_time_ms"], t["duration_ms"]))
            cols["complete_play"] = done.fill_null(False).cast(pa.int8())
    cols["policy"] = _policy(t, path)
    return pa.table(cols)


def _policy(t: pa.Table, path: Path) -> pa.Array:
    if "is_rand" in t.column_names:
        rand = t["is_rand"].fill_null(0).to_numpy() > 0
    else:
        rand = np.full(t.num_rows, "random" in path.name)
    return pa.array(np.where(rand, "random", "production"), pa.string())


def _videos(path: Path) -> pa.Table:
    t = read_csv(path, required=VIDEO_COLUMNS[:1], optional=None,
                 types={"video_id": pa.int64(), "author_id": pa.int64(), "video_duration": pa.float64(),
                        "tag": pa.string()}, fix=_FIX)
    check_unique(t["video_id"], path, "video_id")
    cols = {"raw_id": t["video_id"]}
    if "author_id" in t.column_names:
        cols["author_id"] = t["author_id"]
    if "video_duration" in t.column_names:
        cols["duration_ms"] = floor_int64(t["video_duration"])
    if "tag" in t.column_names:
        cols["tags"] = list_column([f"tag:{x.strip()}" for x in (v or "").split(",") if x.strip()]
                                   for v in t["tag"].to_pylist())
    rest = {c: t[c] for c in t.column_names if c not in VIDEO_COLUMNS}
    return pa.table({**cols, **rest})


def _users(path: Path) -> pa.Table:
    t = read_csv(path, required=USER_COLUMNS, optional=None, types={"user_id": pa.int64()}, fix=_FIX)
    check_unique(t["user_id"], path, "user_id")
    return t.rename_columns(["raw_id" if c == "user_id" else c for c in t.column_names])
