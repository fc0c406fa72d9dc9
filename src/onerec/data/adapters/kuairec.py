"""KuaiRec 2.0 (Gao et al., CIKM 2022) in its official CSV layout.

The official archive ``KuaiRec.zip`` unpacks to ``KuaiRec 2.0/data/``::

    big_matrix.csv / small_matrix.csv   user_id, video_id, play_duration, video_duration, time,
                                        date, timestamp, watch_ratio
    item_categories.csv                 video_id, feat ("[27, 9]": category ids)
    kuairec_caption_category.csv        video_id, manual_cover_text, caption, topic_tag,
                                        first_level_category_id, first_level_category_name,
                                        second_level_..., third_level_... (id and name each)
    user_features.csv                   user_id, user_active_degree, ..., onehot_feat17

``small_matrix`` is the fully observed block (1,411 users x 3,327 videos); ``big_matrix`` the
sparse rest. Mapping to the canonical interactions (one row per play):

* ``watch_time_ms`` = ``play_duration`` (milliseconds);
* ``complete_play`` = ``watch_ratio >= 1.0`` (played at least once to the end);
* ``long_view`` = ``watch_ratio >= 2.0``: KuaiRec has no long-view label, and its authors treat
  ``watch_ratio >= 2`` as the "user likes the video" threshold, which is what OneRec's long
  view stands for;
* ``timestamp`` = ``timestamp`` floored to seconds; rows without one are dropped (their count
  is ``meta["dropped_without_timestamp"]``); rows are first ordered by the exact time.
* no ``policy`` column: the small matrix was collected by forced exposure, the big one by the
  platform, and neither is the random / production split of KuaiRand.

Items: ``title`` = the manual cover text (null when ``UNKNOWN``), ``text`` = the caption,
``category`` = the first-level category name, ``tags`` = the topic tags plus ``feat:<id>`` for
each id of ``item_categories.csv``, ``duration_ms`` = the matrix's ``video_duration``.
The caption file holds bare carriage returns and quoted line breaks inside fields; the reader
copes with both. Users come from ``user_features.csv`` (every column a feature).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from onerec.data.adapters._common import (
    check_known,
    check_unique,
    clean_text,
    find_data_dir,
    floor_int64,
    keep_used,
    list_column,
    read_csv,
    sort_side,
    where_fn,
)
from onerec.data.checks import MAX_VALUE, check_finite, check_timestamps, optional_file
from onerec.data.schema import Dataset, make_dataset
from onerec.errors import DataError

MATRIX_COLUMNS = ("user_id", "video_id", "play_duration", "video_duration", "time", "date", "timestamp",
                  "watch_ratio")
CAPTION_COLUMNS = ("video_id", "manual_cover_text", "caption", "topic_tag", "first_level_category_id",
                   "first_level_category_name", "second_level_category_id", "second_level_category_name",
                   "third_level_category_id", "third_level_category_name")
CATEGORY_COLUMNS = ("video_id", "feat")
USER_COLUMNS = ("user_id",)
CAPTION_FILE = "kuairec_caption_category.csv"
CATEGORY_FILE = "item_categories.csv"
USER_FILE = "user_features.csv"
_SUBDIRS = ("data", "KuaiRec 2.0/data", "KuaiRec/data")
_FIX = "use the CSV files of the official KuaiRec 2.0 release (onerec.data.download.fetch('kuairec', ...))"


def load_kuairec(path: str | Path, name: str | None = None, *, matrix: str = "small",
                 keep_unused: bool = False) -> Dataset:
    """Load KuaiRec 2.0 from its official CSV files.

    Args:
        path: The ``data`` folder, or a folder above it (``KuaiRec 2.0/data`` is found).
        name: Dataset name (default ``kuairec-<matrix>``).
        matrix: ``"small"`` (fully observed block) or ``"big"``.
        keep_unused: Keep users / videos of the side files that have no play in the matrix.

    Returns:
        The canonical dataset (see the module docstring for the mapping).
    """
    if matrix not in ("small", "big"):
        raise DataError(f"unknown KuaiRec matrix '{matrix}'", fix="use matrix='small' or matrix='big'")
    root = find_data_dir(Path(path), f"{matrix}_matrix.csv", _SUBDIRS)
    matrix_path = root / f"{matrix}_matrix.csv"
    raw, dropped = _read_matrix(matrix_path)
    items = _items(root, raw)
    users = _users(root / USER_FILE)
    if items is not None:
        check_known(raw["video_id"], items["raw_id"], matrix_path, "video_id", _item_source(root))
        items = sort_side(keep_used(items, raw["video_id"], keep_unused))
    if users is not None:
        check_known(raw["user_id"], users["raw_id"], matrix_path, "user_id", root / USER_FILE)
        users = sort_side(keep_used(users, raw["user_id"], keep_unused))
    inter = _interactions(raw)
    return make_dataset(name=name or f"kuairec-{matrix}", source="kuairec", interactions=inter, items=items,
                        users=users, path=str(matrix_path),
                        meta={"raw_path": str(matrix_path), "matrix": matrix, "dropped_without_timestamp": dropped})


def _read_matrix(path: Path) -> tuple[pa.Table, int]:
    types = {"user_id": pa.int64(), "video_id": pa.int64(), "play_duration": pa.float64(),
             "video_duration": pa.float64(), "timestamp": pa.float64(), "watch_ratio": pa.float64()}
    t = read_csv(path, required=("user_id", "video_id", "timestamp"), nullable=("timestamp",),
                 optional=("play_duration", "video_duration", "watch_ratio"), types=types, fix=_FIX)
    check_timestamps(t["timestamp"], path=path, column="timestamp", where=where_fn())
    for col in ("play_duration", "video_duration", "watch_ratio"):  # watch_ratio drives long_view / complete_play
        if col in t.column_names:
            check_finite(t[col], path=path, column=col, where=where_fn(), lo=0, hi=MAX_VALUE,
                         what="watch ratio" if col == "watch_ratio" else "duration")
    keep = pc.is_valid(t["timestamp"])
    dropped = t.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
    if dropped == t.num_rows:
        raise DataError("no row has a timestamp", path=str(path), column="timestamp", fix=_FIX)
    t = t.filter(keep)
    return t.take(pc.sort_indices(t["timestamp"])), dropped  # stable: file order among equal times


def _interactions(t: pa.Table) -> pa.Table:
    cols = {"user_id": t["user_id"], "item_id": t["video_id"], "timestamp": floor_int64(t["timestamp"])}
    if "play_duration" in t.column_names:
        cols["watch_time_ms"] = floor_int64(t["play_duration"])
    if "watch_ratio" in t.column_names:
        ratio = t["watch_ratio"].fill_null(0.0)
        cols["long_view"] = pc.greater_equal(ratio, 2.0).cast(pa.int8())
        cols["complete_play"] = pc.greater_equal(ratio, 1.0).cast(pa.int8())
    return pa.table(cols)


def _item_source(root: Path) -> Path:
    return root / CAPTION_FILE if (root / CAPTION_FILE).exists() else root / CATEGORY_FILE


def _items(root: Path, matrix: pa.Table) -> pa.Table | None:
    """Union of the caption and category files, keyed by video_id; None when both are absent."""
    captions = _captions(root / CAPTION_FILE) if optional_file(root / CAPTION_FILE) else {}
    feats = _feats(root / CATEGORY_FILE) if optional_file(root / CATEGORY_FILE) else {}
    if not captions and not feats:
        return None
    ids = sorted(set(captions) | set(feats))
    empty: dict[str, object] = {}
    rows = [captions.get(i, empty) for i in ids]
    table = pa.table({
        "raw_id": pa.array(ids, pa.int64()),
        "title": pa.array([r.get("title") for r in rows], pa.string()),
        "text": pa.array([r.get("text") for r in rows], pa.string()),
        "category": pa.array([r.get("category") for r in rows], pa.string()),
        "tags": list_column([*r.get("tags", []), *(f"feat:{f}" for f in feats.get(i, []))]
                            for i, r in zip(ids, rows)),
    })
    return _with_duration(table, matrix)


def _captions(path: Path) -> dict[int, dict[str, object]]:
    t = read_csv(path, required=("video_id",), optional=CAPTION_COLUMNS, multiline=True,
                 types={"video_id": pa.int64(), **{c: pa.string() for c in CAPTION_COLUMNS[1:4]},
                        "first_level_category_name": pa.string()}, fix=_FIX)
    check_unique(t["video_id"], path, "video_id", multiline=True)
    n = t.num_rows
    col = {c: t[c].to_pylist() if c in t.column_names else [None] * n for c in CAPTION_COLUMNS}
    return {
        vid: {"title": clean_text(col["manual_cover_text"][r]), "text": clean_text(col["caption"][r]),
              "category": clean_text(col["first_level_category_name"][r]), "tags": _topic_tags(col["topic_tag"][r])}
        for r, vid in enumerate(col["video_id"])
    }


def _topic_tags(cell: str | None) -> list[str]:
    """``[tag one,tag two]`` (brackets, no quotes) -> ``["tag one", "tag two"]``."""
    if not cell:
        return []
    inner = cell.strip().removeprefix("[").removesuffix("]")
    return [t for t in (clean_text(x) for x in inner.split(",")) if t]


def _feats(path: Path) -> dict[int, list[int]]:
    t = read_csv(path, required=CATEGORY_COLUMNS, types={"video_id": pa.int64(), "feat": pa.string()}, fix=_FIX)
    check_unique(t["video_id"], path, "video_id")
    out: dict[int, list[int]] = {}
    for r, (vid, cell) in enumerate(zip(t["video_id"].to_pylist(), t["feat"].to_pylist())):
        try:
            out[vid] = [int(x) for x in json.loads(cell or "[]")]
        except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
            raise DataError(f"line {r + 2}: feat is not a list of integer ids: {cell!r}", path=str(path),
                            column="feat", fix="write feat as [8] or [27, 9]") from None
    return out


def _with_duration(items: pa.Table, matrix: pa.Table) -> pa.Table:
    if "video_duration" not in matrix.column_names:
        return items
    per = matrix.group_by("video_id").aggregate([("video_duration", "max")])
    idx = pc.index_in(items["raw_id"], value_set=per["video_id"].combine_chunks())
    dur = floor_int64(per["video_duration_max"].combine_chunks().take(idx))
    return items.append_column("duration_ms", dur)


def _users(path: Path) -> pa.Table | None:
    if optional_file(path) is None:
        return None
    t = read_csv(path, required=USER_COLUMNS, optional=None, types={"user_id": pa.int64()}, fix=_FIX)
    check_unique(t["user_id"], path, "user_id")
    return t.rename_columns(["raw_id" if c == "user_id" else c for c in t.column_names])
