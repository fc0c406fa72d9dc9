"""LC-Rec JSON layout (used by LC-Rec, LETTER and other semantic-ID papers).

Files in the folder, for a dataset name such as ``Scientific``::

    Scientific.inter.json   {user_id: [item_id, ...]}  each list in chronological order
    Scientific.item.json    {item_id: {"title", "description", "brand", "categories"}}, optional

Ids are 0-based integers written as JSON keys; dense ids follow them. There are no
timestamps: each event's timestamp is its 0-based position in its user's sequence (use the
leave-one-out split). ``categories`` is one comma-separated path ("A,B,C"); a comma followed by
a space belongs to a category name ("Tapes, Adhesives & Sealants"), so only bare commas split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onerec.data.adapters._common import (
    clean_text,
    expect_object,
    keep_used,
    position_in_sequence,
    read_json_strict,
    resolve_file,
    sort_side,
)
from onerec.data.checks import check_id_text, optional_file
from onerec.data.schema import Dataset, make_dataset
from onerec.errors import DataError

_CATEGORY_SPLIT = re.compile(r",(?! )")
_TEXT_FIELDS = {"title": "title", "text": "description", "brand": "brand"}


def load_lcrec(path: str | Path, name: str | None = None, *, keep_unused: bool = False) -> Dataset:
    """Load an LC-Rec style dataset.

    Args:
        path: The folder holding ``<name>.inter.json`` (or that file itself).
        name: Dataset name, e.g. ``Scientific``; optional when the folder holds one ``.inter.json``.
        keep_unused: Keep items of ``.item.json`` that no user interacted with.

    Returns:
        The canonical dataset; items get title, text (= description), brand and category.
    """
    inter_path, name = resolve_file(Path(path), ".inter.json", name, "lcrec")
    seqs = expect_object(read_json_strict(inter_path), inter_path, "{user_id: [item ids]}")
    users = list(seqs)
    seq_items = [_item_list(seqs[u], u, inter_path) for u in users]
    lengths = np.array([len(s) for s in seq_items], dtype=np.int64)
    ends = np.cumsum(lengths)
    check_id_text(pa.array(users, pa.string()), path=inter_path, column="user_id",
                  where=lambda i: f"user {users[i]!r}")
    check_id_text(pa.array([i for s in seq_items for i in s], pa.string()), path=inter_path, column="item_id",
                  where=lambda k: _flat_where(users, ends, k))
    inter = pa.table({
        "user_id": pa.array(np.repeat(np.array(users, dtype=object), lengths).tolist(), pa.string()),
        "item_id": pa.array([i for s in seq_items for i in s], pa.string()),
        "timestamp": position_in_sequence(lengths),
    })
    item_path = inter_path.with_name(f"{name}.item.json")
    items = None
    if optional_file(item_path) is not None:  # absent: bare items; a broken link is refused, never skipped
        items = keep_used(_items_table(item_path), inter["item_id"], keep_unused)
        _check_items_known(inter, items, inter_path, item_path)
        items = sort_side(items)
    users_t = sort_side(pa.table({"raw_id": pa.array(users, pa.string())}))
    if items is None:  # no item file: bare items, still in integer order
        items = sort_side(pa.table({"raw_id": np.unique(inter["item_id"].to_numpy(zero_copy_only=False))}))
    return make_dataset(name=name, source="lcrec", interactions=inter, items=items, users=users_t,
                        path=str(inter_path),
                        meta={"raw_path": str(inter_path), "timestamps": "position in the user's sequence"})


def _item_list(value: Any, user: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in value):
        raise DataError(f"user '{user}': expected a list of item ids, found {str(value)[:60]}", path=str(path),
                        fix="the file maps each user id to a JSON list of item ids")
    return [str(i) for i in value]


def _items_table(path: Path) -> pa.Table:
    obj = expect_object(read_json_strict(path), path, "{item_id: {title, description, ...}}")
    cols: dict[str, list[Any]] = {"raw_id": [], "title": [], "text": [], "brand": [], "category": []}
    for key, meta in obj.items():
        if not isinstance(meta, dict):
            raise DataError(f"item '{key}': expected an object with title / description / brand / categories, "
                            f"found {str(meta)[:60]}", path=str(path), fix="repair or re-download the file")
        cols["raw_id"].append(key)
        for out, src in _TEXT_FIELDS.items():
            cols[out].append(clean_text(meta.get(src)))
        cols["category"].append(_category(meta.get("categories")))
    keys = cols["raw_id"]
    check_id_text(pa.array(keys, pa.string()), path=path, column="item_id", where=lambda i: f"item {keys[i]!r}")
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _flat_where(users: list[str], ends: np.ndarray, k: int) -> str:
    """Position of flat item ``k``: its user and place in that user's list."""
    u = int(np.searchsorted(ends, k, side="right"))
    return f"user {users[u]!r}, item {k - (int(ends[u - 1]) if u else 0) + 1} of the list"


def _category(value: Any) -> str | None:
    if isinstance(value, list):  # some exports already give the path as a list
        parts = [clean_text(v) for v in value]
    elif isinstance(value, str):
        parts = [clean_text(v) for v in _CATEGORY_SPLIT.split(value)]
    else:
        return None
    return " > ".join(p for p in parts if p) or None


def _check_items_known(inter: pa.Table, items: pa.Table, inter_path: Path, item_path: Path) -> None:
    ok = pc.is_in(inter["item_id"], value_set=items["raw_id"].combine_chunks()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~ok)
    if len(bad):
        r = int(bad[0])
        u, i = inter["user_id"][r].as_py(), inter["item_id"][r].as_py()
        raise DataError(f"user '{u}' has item '{i}', which {item_path.name} does not list", path=str(inter_path),
                        fix=f"add the item to {item_path.name} or drop it from the sequences (ids must be spelled "
                            "the same way in both files)")
