"""RecBole atomic files: ``<name>.inter``, ``<name>.item``, ``<name>.user``.

Each file is tab-separated with a typed header such as ``user_id:token  rating:float``.
Types: ``token`` (a string id or label), ``float``, ``token_seq`` (space-separated tokens) and
``float_seq`` (space-separated numbers). Mapping to the canonical tables:

* ``.inter``: ``user_id``, ``item_id``, ``rating`` (float32) and ``timestamp`` (floored to whole
  seconds). Without a timestamp field, the row number is the timestamp (file order). Other
  fields are dropped.
* ``.item`` (optional): ``item_id`` -> raw_id; ``movie_title`` / ``title`` / ``item_name`` -> title
  (kept as one string even when typed ``token_seq``); ``description`` / ``text`` -> text;
  ``brand``; a ``category`` / ``categories`` token -> category; every other ``token_seq`` field
  (e.g. MovieLens ``class``, the genres) is split and added to ``tags``; the remaining fields
  are kept as extra columns under their own names.
* ``.user`` (optional): ``user_id`` -> raw_id; every other field is a user feature column.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from onerec.data.adapters._common import (
    check_known,
    check_unique,
    floor_int64,
    keep_used,
    read_csv,
    read_header,
    require_file,
    resolve_file,
    sort_side,
    where_fn,
)
from onerec.data.checks import F32_MAX, check_finite, check_header, check_id_text, check_timestamps, optional_file
from onerec.data.schema import Dataset, make_dataset
from onerec.errors import DataError

_TYPES = {"token": pa.string(), "float": pa.float64(), "token_seq": pa.string(), "float_seq": pa.string()}
_ALIASES = {
    "title": ("title", "movie_title", "item_name", "name"),
    "text": ("text", "description", "plot"),
    "brand": ("brand",),
    "category": ("category", "categories"),
}


def load_recbole(path: str | Path, name: str | None = None, *, keep_unused: bool = False) -> Dataset:
    """Load a RecBole atomic-file dataset.

    Args:
        path: The folder holding ``<name>.inter`` (or that file itself).
        name: Dataset name, e.g. ``ml-100k``; optional when the folder holds one ``.inter``.
        keep_unused: Keep items / users of the side files that have no interaction.

    Returns:
        The canonical dataset (see the module docstring for the column mapping).
    """
    inter_path, name = resolve_file(Path(path), ".inter", name, "recbole")
    inter, fields = _read_atomic(inter_path, ("user_id", "item_id"))
    inter = _interactions(inter, fields, inter_path)
    items = _side(inter_path.with_name(f"{name}.item"), "item_id", inter, inter_path, keep_unused, _item_columns)
    users = _side(inter_path.with_name(f"{name}.user"), "user_id", inter, inter_path, keep_unused, _user_columns)
    return make_dataset(name=name, source="recbole", interactions=inter, items=items, users=users,
                        path=str(inter_path), meta={"raw_path": str(inter_path)})


def _read_atomic(path: Path, required: tuple[str, ...]) -> tuple[pa.Table, dict[str, str]]:
    """Read an atomic file; return the table with bare column names and {name: recbole type}."""
    require_file(path, fix="check data.path and data.name")
    header = read_header(path, "\t")
    check_header([h.split(":", 1)[0] for h in header], path=path)  # 'id:token' and 'id:float' name one field
    fields = {h.split(":", 1)[0]: (h.split(":", 1)[1] if ":" in h else "token") for h in header}
    for col in required:
        if col not in fields:
            raise DataError(f"missing field '{col}' (header has: {', '.join(header)})", path=str(path), column=col,
                            fix=f"add a '{col}:token' column to the header")
    full = {h.split(":", 1)[0]: h for h in header}
    types = {full[n]: _TYPES.get(t, pa.string()) for n, t in fields.items()}
    table = read_csv(path, required=[full[c] for c in required], types=types, optional=None, delimiter="\t",
                     quoted=False, fix="RecBole headers look like 'user_id:token'")
    return table.rename_columns([h.split(":", 1)[0] for h in table.column_names]), fields


def _interactions(t: pa.Table, fields: dict[str, str], path: Path) -> pa.Table:
    for col in ("user_id", "item_id"):
        check_id_text(t[col], path=path, column=col, where=where_fn())
    cols = {"user_id": t["user_id"], "item_id": t["item_id"]}
    if "timestamp" in fields:
        check_timestamps(t["timestamp"], path=path, column="timestamp", where=where_fn())
        cols["timestamp"] = floor_int64(t["timestamp"])
    else:  # no time: file order stands in for time (make_dataset keeps it within each user)
        cols["timestamp"] = pa.array(range(t.num_rows), pa.int64())
    if "rating" in fields:
        check_finite(t["rating"], path=path, column="rating", where=where_fn(), what="rating",
                     lo=-F32_MAX, hi=F32_MAX)
        cols["rating"] = t["rating"].cast(pa.float32())
    return pa.table(cols)


def _side(path: Path, id_col: str, inter: pa.Table, inter_path: Path, keep_unused: bool,
          columns: Callable[[pa.Table, dict[str, str]], pa.Table]) -> pa.Table | None:
    """Read a side file, check its ids, map its columns and keep the rows in use."""
    if optional_file(path) is None:  # absent: fine; a broken link is refused, never skipped
        return None
    t, fields = _read_atomic(path, (id_col,))
    check_id_text(t[id_col], path=path, column=id_col, where=where_fn())
    check_unique(t[id_col], path, id_col)
    check_known(inter[id_col], t[id_col], inter_path, id_col, path)
    side = columns(t.rename_columns(["raw_id" if c == id_col else c for c in t.column_names]), fields)
    return sort_side(keep_used(side, inter[id_col], keep_unused))


def _split(col: pa.ChunkedArray, kind: str) -> pa.ChunkedArray:
    tokens = pc.utf8_split_whitespace(col.fill_null(""))
    return tokens if kind == "token_seq" else tokens.cast(pa.list_(pa.float64()))


def _item_columns(t: pa.Table, fields: dict[str, str]) -> pa.Table:
    cols: dict[str, pa.ChunkedArray] = {"raw_id": t["raw_id"]}
    used = {"raw_id"}
    for canon, names in _ALIASES.items():
        src = next((n for n in names if n in t.column_names and n not in used), None)
        if src is None or (canon == "category" and fields[src] == "token_seq"):
            continue
        cols[canon] = t[src]
        used.add(src)
    tag_fields = [c for c in t.column_names if c not in used and fields.get(c) == "token_seq"]
    if tag_fields:
        lists = [_split(t[c], "token_seq").to_pylist() for c in tag_fields]
        cols["tags"] = pa.array([[tok for per in row for tok in per] for row in zip(*lists)], pa.list_(pa.string()))
        used.update(tag_fields)
    for c in t.column_names:
        if c not in used:
            cols[c] = _split(t[c], fields[c]) if fields.get(c, "").endswith("_seq") else t[c]
    return pa.table(cols)


def _user_columns(t: pa.Table, fields: dict[str, str]) -> pa.Table:
    return pa.table({c: _split(t[c], fields[c]) if fields.get(c, "").endswith("_seq") else t[c]
                     for c in t.column_names})
