"""Plain tables of your own: ``interactions.csv`` (or ``.tsv`` / ``.parquet``), with optional ``items`` and
``users`` tables beside it, keyed by ids of any spelling.

The layout most exported logs already have, so a data set needs no conversion first::

    my_data/
      interactions.csv   user_id,item_id,timestamp[,click,like,...,watch_time_ms,rating]   (required)
      items.csv          item_id[,title,text,tags,category,brand,author_id,duration_ms,...] (optional)
      users.csv          user_id[,any feature columns]                                       (optional)

* **Ids** are any text or integers (``"u_831"``, ``"B00004U9V2"``, ``17``); they become dense ids and are kept as
  ``raw_id``. Other column names: ``data.options.user_column`` / ``item_column`` / ``time_column`` (the items and
  users tables use the same id column names).
* **Time** (``time_column``): Unix seconds (``data.options.time_unit=ms`` for milliseconds), or ISO 8601 text
  (``2024-05-01``, ``2024-05-01 13:45:00``, ``2024-05-01T13:45:00.250Z``, ``...+02:00``; without a zone it is read
  as UTC), or a Parquet timestamp column. ``time_column=null`` uses each user's order in the file instead.
* **Feedback**: the canonical 0/1 signals (``click``, ``long_view``, ``like``, ... see
  :data:`onerec.data.schema.SIGNALS`), ``watch_time_ms``, ``rating`` and ``policy`` are kept where present; other
  columns are left out and listed in the data set's ``meta["ignored_columns"]``. Without signals every row is
  a positive (``data.positive=auto``); ``data.positive='rating>=4'`` keeps high ratings. An event log with a type
  column (``event``: ``view``, ``addtocart``, ``transaction``) can be read for some types only:
  ``data.options.keep_events=[transaction,addtocart]`` (``data.options.event_column`` names another column).
* **Items**: ``title``, ``text``, ``category``, ``brand``, ``author_id``, ``duration_ms`` as in the canonical
  table; ``tags`` as a list (Parquet) or as text split on ``data.options.tag_separator`` (default ``|``); every
  other column is kept under its own name. Item text feeds the tokenizer's content vectors.

Files are told apart by their names: ``interactions``, ``items`` and ``users``, each ``.csv`` (comma), ``.tsv``
(tab) or ``.parquet``, one of each at most. ``data.path`` may also name the interactions file itself (any name
with one of those endings); the side tables are then looked for beside it. Bad input stops with one
:class:`~onerec.errors.DataError` naming the file, the line and column, and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    where_fn,
)
from onerec.data.checks import (
    F32_MAX,
    MAX_TIMESTAMP,
    broken_link,
    check_binary,
    check_finite,
    check_header,
    check_id_text,
    check_timestamps,
    fail,
    first_bad_cast,
    first_true,
    optional_file,
)
from onerec.data.schema import ITEM_TYPES, SIGNALS, Dataset, make_dataset
from onerec.errors import DataError
from onerec.io import read_parquet

#: file endings read, with their delimiter (None: Parquet)
ENDINGS = {".csv": ",", ".tsv": "\t", ".parquet": None}
TABLES = ("interactions", "items", "users")
TIME_UNITS = {"s": 1, "ms": 1000}
#: interaction columns kept besides the ids and the time
_KEPT = (*SIGNALS, "watch_time_ms", "rating", "policy")
#: a zone at the end of an ISO 8601 time: Z, +02:00, -0500
_ZONE = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"


def table_files(folder: Path) -> dict[str, Path]:
    """``{"interactions": path, ...}`` for the tables of this layout in ``folder`` (absent ones left out).

    Raises:
        DataError: a table present in two formats (``items.csv`` and ``items.parquet``), or a broken link.
    """
    found: dict[str, Path] = {}
    for kind in TABLES:
        paths = []
        for ending in ENDINGS:
            p = folder / f"{kind}{ending}"
            if p.is_symlink() and not p.exists():
                raise broken_link(p)
            if p.is_file():
                paths.append(p)
        if len(paths) > 1:
            raise DataError(f"the {kind} table is here twice ({', '.join(p.name for p in paths)})", path=str(folder),
                            fix="keep one of the files (move the other out of the folder)")
        if paths:
            found[kind] = paths[0]
    return found


def load_table(path: str | Path, name: str | None = None, *, user_column: str = "user_id",
               item_column: str = "item_id", time_column: str | None = "timestamp", time_unit: str = "s",
               tag_separator: str = "|", keep_unused: bool = False, keep_events: list[str] | str | None = None,
               event_column: str = "event") -> Dataset:
    """Load plain interaction / item / user tables (see the module docstring for the layout).

    Args:
        path: the folder holding ``interactions.csv`` (``.tsv``, ``.parquet``), or that file itself.
        name: the data set's name (default: the folder's name).
        user_column: the user id column, in the interactions and users tables.
        item_column: the item id column, in the interactions and items tables.
        time_column: the interactions' time column; None: the file order within each user.
        time_unit: ``s`` or ``ms``, for a numeric time column.
        tag_separator: what separates the tags of a text ``tags`` column of the items table.
        keep_unused: keep items / users of the side tables that have no interaction.
        keep_events: read only the interactions whose ``event_column`` holds one of these values (an event log's
            ``transaction`` / ``addtocart`` among its ``view`` rows); None: every row.
        event_column: the column ``keep_events`` reads.
    """
    if time_unit not in TIME_UNITS:
        raise DataError(f"time_unit={time_unit!r} is not a unit this reader knows",
                        fix=f"set data.options.time_unit to one of: {', '.join(TIME_UNITS)}")
    if not tag_separator:
        raise DataError("tag_separator is empty", fix="set data.options.tag_separator to a character such as '|'")
    p = Path(path)
    if p.is_file():
        if p.suffix not in ENDINGS:
            raise DataError(f"'{p.name}' is not a table this reader reads", path=str(p),
                            fix=f"give a {', '.join(ENDINGS)} file or its folder")
        files = {**{k: v for k, v in table_files(p.parent).items() if k != "interactions"}, "interactions": p}
        folder = p.parent
    else:
        folder = p
        files = table_files(p)
        if "interactions" not in files:
            raise DataError("no interactions table", path=str(p),
                            fix="name the file interactions.csv (or .tsv, .parquet), or point data.path at it")
    ids = {"user": user_column, "item": item_column}
    inter_path = files["interactions"]
    # event types as text, as the column is compared (a YAML list may give numbers: keep_events=[2, 3])
    events = None if keep_events is None else [str(e) for e in (
        [keep_events] if isinstance(keep_events, (str, int)) else keep_events)]
    inter, ignored, kept = _interactions(inter_path, ids, time_column, time_unit, events, event_column)
    items = _side(files.get("items"), item_column, inter["item_id"], inter_path, keep_unused, tag_separator)
    users = _side(files.get("users"), user_column, inter["user_id"], inter_path, keep_unused, None)
    meta = {"raw_path": str(inter_path), "time": time_column or "file order"}
    if ignored:
        meta["ignored_columns"] = ignored
    ds = make_dataset(name=name or folder.resolve().name, source="table", interactions=inter, items=items,
                      users=users, path=str(inter_path), meta=meta)
    if kept is not None:
        ds.note(kept)
    return ds


# ------------------------------------------------------------------------------ reading
#: the option that names each required column, for the fix of a missing one
_OPTION = {"user": "user_column", "item": "item_column", "time": "time_column"}
#: words that name each role in exported logs (``userId``, ``visitorid``, ``movie_id``, ``product``, ``ts``, ...):
#: a column whose name starts or ends with one (an ``id`` at its end aside) is suggested for the role
_ROLE_WORDS = {
    "user": ("user", "visitor", "customer", "member", "client", "account", "buyer", "reader", "viewer", "listener",
             "uid"),
    "item": ("item", "product", "movie", "video", "song", "track", "book", "article", "asin", "sku", "content",
             "iid", "isbn", "post", "listing", "offer", "news", "app", "game", "recipe", "business", "poi"),
    "time": ("time", "timestamp", "date", "datetime", "ts", "created", "when"),
}


#: names an event-type column goes by in exported logs (the one ``keep_events`` reads)
EVENT_COLUMNS = ("event", "eventtype", "action", "behavior", "behaviour", "type")


def event_type_columns(columns: list[str]) -> list[str]:
    """The columns whose names say they hold an event type (``event``, ``event_type``, ``action``, ...)."""
    return [c for c in columns if c.lower().replace("_", "") in EVENT_COLUMNS]


def _role_candidates(role: str, header: list[str]) -> list[str]:
    """The header's columns whose names say they hold ``role``."""
    out = []
    for h in header:
        n = "".join(ch for ch in h.lower() if ch.isalnum())
        base = n[:-2] if n.endswith("id") and len(n) > 2 else n
        if role in n or any(w in (n, base) or base.startswith(w) or base.endswith(w) for w in _ROLE_WORDS[role]):
            out.append(h)
    return out


def _missing_column_fix(missing: dict[str, str], header: list[str], delimiter: str | None) -> str:
    """The fix for the required columns (role -> name) that the header lacks: another delimiter when the header
    reads as one field holding one; else one option for every missing role, naming the column whose name says it
    holds the role (``User``, ``userId``, ``visitorid``, ``movie_id``, ``ts``) where there is one, the candidates
    where there are several, and a placeholder where there is none."""
    others = {";": "semicolons", "|": "'|'", "\t": "tabs", ",": "commas"}
    if delimiter is not None and len(header) == 1:
        used = next((d for d in others if d != delimiter and d in header[0]), None)
        if used is not None:
            return (f"the fields look separated by {others[used]}, and onerec reads .csv files as comma-separated "
                    "and .tsv files as tab-separated: save the table as one of those")
    options, placeholder = [], False
    for role in missing:
        names = _role_candidates(role, header)
        if len(names) == 1:
            value = names[0]
        else:
            value = f"<one of {', '.join(names)}>" if names else f"<the column holding the {role}>"
            placeholder = True
        options.append(f"data.options.{_OPTION[role]}={value}")
    fix = f"name the columns with {' '.join(options)} (or rename them to {', '.join(map(repr, missing.values()))})"
    if placeholder and "time" in missing:
        fix += "; without a time column, data.options.time_column=null orders each user's rows as in the file"
    return fix


def _read(path: Path, required: dict[str, str]) -> pa.Table:
    """A whole table; ``required`` maps role (user, item, time) -> column, read as text from a delimited file
    (so ids keep their spelling)."""
    delimiter = ENDINGS[path.suffix]
    require_file(path, fix="check data.path")
    if delimiter is None:
        table = read_parquet(path)
        header = table.column_names
    else:
        header = read_header(path, delimiter)
    check_header(header, path=path)
    missing = {role: col for role, col in required.items() if col not in header}
    if missing:
        col = next(iter(missing.values()))
        raise DataError(f"missing column '{col}' (header has: {', '.join(header)})", path=str(path), column=col,
                        fix=_missing_column_fix(missing, header, delimiter))
    if delimiter is None:  # read_csv checks a delimited file's rows, by line
        if table.num_rows == 0:
            raise DataError("the file has no rows", path=str(path), fix="check the source file")
        for col in required.values():
            _no_nulls(table[col], path, col)
        return table.combine_chunks()
    return read_csv(path, required=list(required.values()), types={c: pa.string() for c in required.values()},
                    optional=None, delimiter=delimiter)


def _keep_events(t: pa.Table, path: Path, events: list[str], column: str) -> tuple[pa.Table, str, np.ndarray]:
    """The rows whose ``column`` holds one of ``events``, the note that says what was kept, and their indices."""
    if column not in t.column_names:
        raise DataError(f"data.options.keep_events needs the event column '{column}' (header has: "
                        f"{', '.join(t.column_names)})", path=str(path), column=column,
                        fix="name the column that holds the event type with data.options.event_column=...")
    values = t[column].cast(pa.string())
    counts = {r["values"]: r["counts"] for r in pc.value_counts(values).to_pylist() if r["values"] is not None}
    found = ", ".join(f"{v} ({n:,})" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])[:12])
    missing = [e for e in events if e not in counts]
    if missing:
        raise DataError(f"data.options.keep_events names {', '.join(map(repr, missing))}, which column '{column}' "
                        f"never holds (it holds: {found})", path=str(path), column=column,
                        fix="name event types the column holds, spelt as there")
    mask = pc.fill_null(pc.is_in(values, pa.array(events, pa.string())), False)
    kept = t.filter(mask)
    return kept, (f"kept the {kept.num_rows:,} of {t.num_rows:,} interactions whose {column} is "
                  f"{' or '.join(events)} (data.options.keep_events)"), np.flatnonzero(mask.to_numpy(
                      zero_copy_only=False))


def _interactions(path: Path, ids: dict[str, str], time_column: str | None, time_unit: str,
                  events: list[str] | None = None, event_column: str = "event"
                  ) -> tuple[pa.Table, dict[str, list[str]], str | None]:
    user, item = ids["user"], ids["item"]
    t = _read(path, {"user": user, "item": item, **({"time": time_column} if time_column else {})})
    kept, rows = None, None
    if events is not None:  # the checks below name the file's own lines: through the kept rows' indices
        t, kept, rows = _keep_events(t, path, list(events), event_column)
    where = where_fn(rows=rows) if ENDINGS[path.suffix] is not None else None
    for col in (user, item):
        check_id_text(t[col], path=path, column=col, where=where)
    cols: dict[str, pa.Array | pa.ChunkedArray] = {"user_id": t[user], "item_id": t[item]}
    if time_column:
        cols["timestamp"] = _seconds(t[time_column], path, time_column, time_unit, where)
    else:  # no time: file order stands in for time (make_dataset keeps it within each user)
        cols["timestamp"] = pa.array(np.arange(t.num_rows, dtype=np.int64))
    for col in _KEPT:
        if col not in t.column_names:
            continue
        value = t[col] if col == "policy" else _number(t[col], path, col, where)
        if col in SIGNALS:
            check_binary(value, path=path, column=col, where=where)
        elif col == "rating":
            check_finite(value, path=path, column=col, where=where, what="rating", lo=-F32_MAX, hi=F32_MAX)
        elif col == "watch_time_ms":
            check_finite(value, path=path, column=col, where=where, what="watch time", lo=0, hi=2.0**53)
        cols[col] = value
    ignored = [c for c in t.column_names if c not in {user, item, time_column, *_KEPT}
               and not (events is not None and c == event_column)]
    return pa.table(cols), ({"interactions": ignored} if ignored else {}), kept


def _no_nulls(col: pa.ChunkedArray, path: Path, name: str) -> None:
    """A Parquet table's required column has no empty value (a delimited file's is checked by ``read_csv``)."""
    if col.null_count:
        raise fail("empty value in a required column", first_true(col.is_null().to_numpy(zero_copy_only=False)),
                   path=path, column=name, fix="fill or drop that row")


def _number(col: pa.ChunkedArray, path: Path, name: str, where) -> pa.ChunkedArray:
    """A numeric column (text that reads as numbers is converted); anything else names its first bad cell."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
        return col.cast(pa.int8()) if pa.types.is_boolean(col.type) else col
    bad = first_bad_cast(col, pa.float64())
    if bad is not None:
        fix = (f"'{name}' is a 0/1 signal: write 1 or 0 (true / false also read)" if name in SIGNALS
               else f"'{name}' must hold numbers; fix or drop that row")
        raise fail(f"cannot read {col[bad].as_py()!r} as a number", bad, path=path, column=name, fix=fix, where=where)
    return col.cast(pa.int64() if first_bad_cast(col, pa.int64()) is None else pa.float64())


def _seconds(col: pa.ChunkedArray, path: Path, name: str, unit: str, where) -> pa.Array:
    """Unix seconds (int64) from a numeric column in ``unit``, ISO 8601 text or a timestamp column."""
    if pa.types.is_timestamp(col.type):  # a Parquet timestamp: its unit, floored to seconds
        per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
        return pa.array(np.floor_divide(col.cast(pa.int64()).to_numpy(zero_copy_only=False), per_s))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        bad = first_bad_cast(col, pa.float64())
        if bad is None:
            col = col.cast(pa.float64())
        elif bad > 0:  # the column starts with numbers: a cell that is not one is the error, not ISO text
            raise fail(f"cannot read {col[bad].as_py()!r} as a time: the rows above hold numbers (Unix time)", bad,
                       path=path, column=name, fix="fix or drop that row", where=where)
        else:
            return _iso_seconds(col, path, name, where)
    per = TIME_UNITS[unit]
    if unit == "s" and len(col):
        top = pc.max(col).as_py()
        if top is not None and MAX_TIMESTAMP < top <= MAX_TIMESTAMP * 1000:
            row = int(np.argmax(col.to_numpy(zero_copy_only=False)))
            raise fail(f"timestamp {top!r} is too large for Unix seconds: it looks like milliseconds", row,
                       path=path, column=name, fix="set data.options.time_unit=ms (or divide the column by 1000)",
                       where=where)
    check_timestamps(col, path=path, column=name, where=where, per_second=per)
    if per == 1:
        return floor_int64(col)
    return floor_int64(pc.divide(col.cast(pa.float64()), float(per)))


def _iso_seconds(col: pa.Array, path: Path, name: str, where) -> pa.Array:
    """ISO 8601 text -> Unix seconds, floored; a time without a zone is UTC."""
    zoned = pc.match_substring_regex(col, _ZONE).fill_null(False).to_numpy(zero_copy_only=False)
    out = np.empty(len(col), dtype=np.int64)
    for mask, typ in ((zoned, pa.timestamp("ns", "UTC")), (~zoned, pa.timestamp("ns"))):
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        part = col.take(pa.array(rows))
        bad = first_bad_cast(part, typ)
        if bad is not None:
            raise fail(f"cannot read {part[bad].as_py()!r} as a time", int(rows[bad]), path=path, column=name,
                       fix=f"write '{name}' as Unix seconds or ISO 8601 (2024-05-01 13:45:00, 2024-05-01T13:45:00Z); "
                           "fix or drop that row", where=where)
        ns = part.cast(typ).cast(pa.int64()).to_numpy(zero_copy_only=False)
        out[rows] = np.floor_divide(ns, 1_000_000_000)
    if (out < 0).any():
        row = int(np.flatnonzero(out < 0)[0])
        raise fail(f"time {col[row].as_py()!r} is before 1970", row, path=path, column=name,
                   fix="fix or drop that row", where=where)
    return pa.array(out)


# ------------------------------------------------------------------------------ side tables
def _side(path: Path | None, id_col: str, used: pa.ChunkedArray, inter_path: Path, keep_unused: bool,
          tag_separator: str | None) -> pa.Table | None:
    """An items (``tag_separator`` given) or users table: its ids checked, its columns mapped, its used rows."""
    if path is None or optional_file(path) is None:
        return None
    t = _read(path, {"item" if tag_separator is not None else "user": id_col})
    where = where_fn() if ENDINGS[path.suffix] is not None else None
    check_id_text(t[id_col], path=path, column=id_col, where=where)
    check_unique(t[id_col], path, id_col)
    check_known(used.cast(pa.string()), t[id_col].cast(pa.string()), inter_path, id_col, path)
    cols: dict[str, pa.Array | pa.ChunkedArray] = {"raw_id": t[id_col].cast(pa.string())}
    for c in t.column_names:
        if c == id_col:
            continue
        if c == "raw_id":
            raise DataError("a column named 'raw_id' besides the id column", path=str(path), column=c,
                            fix="rename it (onerec keeps the id column as raw_id)")
        cols[c] = t[c]
    if tag_separator is not None:  # items: canonical columns to their types, text tags to lists
        for c in ("author_id", "duration_ms"):
            if c in cols:
                cols[c] = floor_int64(_number(t[c], path, c, where))
        if "tags" in cols and not pa.types.is_list(t["tags"].type):
            tags = pc.split_pattern(t["tags"].cast(pa.string()).fill_null(""), tag_separator)
            cols["tags"] = pa.array([[s.strip() for s in row if s.strip()] for row in tags.to_pylist()],
                                    ITEM_TYPES["tags"])
    side = pa.table(cols)
    return keep_used(side, used, keep_unused)
