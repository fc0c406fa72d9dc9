"""The canonical tables every stage reads: interactions, items, users.

A dataset is a folder holding three Parquet files and a ``dataset.json``::

    interactions.parquet   one row per exposure or interaction, sorted by (user_id, timestamp)
    items.parquet          one row per item, item_id = 0..n_items-1
    users.parquet          one row per user, user_id = 0..n_users-1
    dataset.json           name, source, counts, schema_version

Ids are dense integers (the adapters map each source's raw ids to 0..N-1 and keep the raw
id as ``raw_id``), so later stages index arrays directly.

interactions (required: user_id, item_id, timestamp)

    =================  ========  =========================================================
    user_id            int64     dense user index
    item_id            int64     dense item index
    timestamp          int64     Unix seconds; sources without time use the event's
                                 position in the user's sequence (order is what matters)
    click ... hate     int8      optional 0/1 feedback signals, see ``SIGNALS``
    watch_time_ms      int64     optional play time of the exposure
    rating             float32   optional explicit rating
    policy             string    optional: which policy logged the exposure
                                 ("random", "production")
    =================  ========  =========================================================

items (required: item_id, raw_id; all text columns optional)

    =================  ==============  ===================================================
    item_id            int64           dense item index
    raw_id             string          the source's id
    title              string          short title
    text               string          caption / description
    tags               list<string>    tags or keywords
    category           string          category (a path joined by " > " where nested)
    brand              string          brand
    author_id          int64           author / uploader
    duration_ms        int64           video length
    =================  ==============  ===================================================

users (required: user_id, raw_id; any other columns are user features)
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onerec.data.checks import (
    F32_MAX,
    broken_link,
    check_binary,
    check_finite,
    check_header,
    check_id_text,
    check_timestamps,
    decode_utf8,
    first_bad_cast,
    loads_json,
    optional_file,
    sort_interactions,
)
from onerec.errors import DataError
from onerec.io import read_parquet, write_json, write_parquet

SCHEMA_VERSION = 1

#: Feedback signals, in the order of the bits of :func:`signal_flags`.
SIGNALS: tuple[str, ...] = (
    "click", "long_view", "complete_play", "like", "follow",
    "comment", "forward", "hate", "profile_enter",
)
#: Signals that make an event "positive" under ``positive="auto"`` when the table has them
#: (OneRec V1 trains on the positive-behaviour history). Hate vetoes positivity.
AUTO_POSITIVE: tuple[str, ...] = ("long_view", "like", "follow", "comment", "forward")

INTERACTION_TYPES: dict[str, pa.DataType] = {
    "user_id": pa.int64(), "item_id": pa.int64(), "timestamp": pa.int64(),
    **{s: pa.int8() for s in SIGNALS},
    "watch_time_ms": pa.int64(), "rating": pa.float32(), "policy": pa.string(),
}
ITEM_TYPES: dict[str, pa.DataType] = {
    "item_id": pa.int64(), "raw_id": pa.string(), "title": pa.string(), "text": pa.string(),
    "tags": pa.list_(pa.string()), "category": pa.string(), "brand": pa.string(),
    "author_id": pa.int64(), "duration_ms": pa.int64(),
}
USER_TYPES: dict[str, pa.DataType] = {"user_id": pa.int64(), "raw_id": pa.string()}

REQUIRED = {
    "interactions": ("user_id", "item_id", "timestamp"),
    "items": ("item_id", "raw_id"),
    "users": ("user_id", "raw_id"),
}
FILES = {"interactions": "interactions.parquet", "items": "items.parquet", "users": "users.parquet"}


def conform(table: pa.Table, kind: str, *, path: str) -> pa.Table:
    """Check required columns and values, and cast known columns to their canonical types.

    Refused (one :class:`DataError` naming the row and column): a column named twice, a missing
    or null required value, a value that does not fit its canonical type, a feedback signal other
    than 0/1, an infinite / NaN / beyond-2^53 timestamp, and a non-finite rating."""
    known = {"interactions": INTERACTION_TYPES, "items": ITEM_TYPES, "users": USER_TYPES}[kind]
    check_header(table.column_names, path=path)
    if table.num_rows == 0:
        raise DataError(f"the {kind} table is empty", path=path,
                        fix="check the source file; a dataset needs at least one row")
    for col in REQUIRED[kind]:
        if col not in table.column_names:
            raise DataError(f"missing required column '{col}' (has: {', '.join(table.column_names)})",
                            path=path, column=col, fix=f"add the column or map the source's column to '{col}'")
    for col in REQUIRED[kind]:
        nulls = table[col].null_count
        if nulls:
            row = int(np.flatnonzero(table[col].is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{nulls} missing values in a required column", path=path, row=row,
                            column=col, fix="drop or fill those rows")
    if kind == "interactions":
        for s in SIGNALS:
            if s in table.column_names:
                check_binary(table[s], path=path, column=s)
        check_timestamps(table["timestamp"], path=path, column="timestamp")
        if "rating" in table.column_names:
            check_finite(table["rating"], path=path, column="rating", what="rating",
                         lo=-F32_MAX, hi=F32_MAX)
    cols = []
    for name in table.column_names:
        col = table[name]
        want = known.get(name)
        if want is not None and col.type != want:
            try:
                col = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                row = first_bad_cast(col, want)
                shown = f"'{col[row].as_py()!r}' " if row is not None else ""
                raise DataError(f"cannot read {shown}as {want} ({e})", path=path, row=row, column=name,
                                fix=f"make '{name}' a {want} column; fix or drop that row") from None
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _check_dense_ids(table: pa.Table, col: str, path: str) -> int:
    ids = table[col].to_numpy()
    n = len(ids)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(ids == dup)[:2]
        raise DataError(f"duplicate id {dup} (rows {rows[0]} and {rows[1]})", path=path, column=col,
                        fix="each id must appear once; deduplicate the table")
    if n and (uniq[0] != 0 or uniq[-1] != n - 1):
        raise DataError(f"ids must be 0..{n - 1} (dense); found range {uniq[0]}..{uniq[-1]}", path=path,
                        column=col, fix="build the tables with onerec.data.schema.make_dataset (it densifies ids)")
    if not np.array_equal(ids, np.arange(n)):
        raise DataError("rows must be sorted by id", path=path, column=col, fix="sort the table by its id column")
    return n


@dataclass
class Dataset:
    """The three canonical tables plus metadata. ``interactions`` is sorted by (user_id, timestamp).

    :meth:`validate` sorts an unsorted table (stably: ties keep their order) and says so in
    ``meta["normalised"]``, which :meth:`save` writes to dataset.json; every other defect of the
    input is refused with a :class:`DataError` (see :mod:`onerec.data.checks`)."""

    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.users.num_rows

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    def note(self, text: str) -> None:
        """Record a normalisation of the input in ``meta["normalised"]`` (saved in dataset.json)."""
        notes = self.meta.setdefault("normalised", [])
        if text not in notes:
            notes.append(text)

    def validate(self, root: str | Path = "<memory>", *, source: str | None = None) -> Dataset:
        """Check the contracts above; raise :class:`DataError` naming the file and problem.

        ``root`` is the dataset folder; ``source`` (an adapter's input file) replaces the file
        names in messages when the tables were built from a raw source rather than read."""
        root = Path(root)
        paths = {k: source or str(root / f) for k, f in FILES.items()}
        self.interactions = conform(self.interactions, "interactions", path=paths["interactions"])
        self.interactions, n_back = sort_interactions(self.interactions)
        if n_back:  # splits read each user's events as one chronological run: sort, and say so
            self.note(f"interactions sorted by (user_id, timestamp), ties in file order: {n_back} of "
                      f"{self.interactions.num_rows} rows were out of order in {paths['interactions']}")
        self.items = conform(self.items, "items", path=paths["items"])
        self.users = conform(self.users, "users", path=paths["users"])
        for kind in ("items", "users"):
            check_id_text(getattr(self, kind)["raw_id"], path=paths[kind], column="raw_id")
        n_items = _check_dense_ids(self.items, "item_id", paths["items"])
        n_users = _check_dense_ids(self.users, "user_id", paths["users"])
        for col, n, kind in (("user_id", n_users, "users"), ("item_id", n_items, "items")):
            ids = self.interactions[col].to_numpy()
            bad = np.flatnonzero((ids < 0) | (ids >= n))
            if len(bad):
                raise DataError(f"unknown id {ids[bad[0]]}: not in {kind}.parquet ({n} rows)",
                                path=paths["interactions"], row=int(bad[0]), column=col,
                                fix=f"every {col} must exist in the {kind} table")
        return self

    def save(self, root: str | Path) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for kind, fname in FILES.items():
            write_parquet(root / fname, getattr(self, kind))
        meta = {
            **self.meta,
            "schema_version": SCHEMA_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.interactions.num_rows,
        }
        meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        write_json(root / "dataset.json", meta)
        self.meta = meta
        return root

    @classmethod
    def load(cls, root: str | Path, *, validate: bool = True) -> Dataset:
        root = Path(root)
        meta_path = root / "dataset.json"
        if optional_file(meta_path) is None:
            raise DataError("not a dataset folder (no dataset.json)", path=str(root),
                            fix="point at a folder written by `onerec data` (a run directory's data/ folder)")
        meta = read_meta(meta_path)
        for kind, fname in FILES.items():
            _check_parquet(root / fname, meta, kind)
        tables = {k: read_parquet(root / f) for k, f in FILES.items()}
        ds = cls(meta=meta, **tables)
        if "schema_version" not in meta:
            ds.note(f"dataset.json has no schema_version: read as version {SCHEMA_VERSION}")
        return ds.validate(root) if validate else ds


def read_meta(path: Path) -> dict[str, Any]:
    """dataset.json: a JSON object whose ``schema_version`` (when present) this code reads."""
    raw = path.read_bytes()
    text = decode_utf8(raw, path=path)
    meta = loads_json(text, path=path, what="dataset.json")
    if not isinstance(meta, dict):
        raise DataError(f"expected a JSON object, found {type(meta).__name__}", path=str(path),
                        fix="rewrite the folder with `onerec data` (dataset.json holds name, source, counts)")
    v = meta.get("schema_version")
    if v is not None and (type(v) is not int or v != SCHEMA_VERSION):
        raise DataError(f"schema_version {v!r} is not one this version of onerec reads ({SCHEMA_VERSION})",
                        path=str(path), column="schema_version",
                        fix="rebuild the dataset with this onerec's `onerec data`, or use the onerec that wrote it")
    for key in ("n_users", "n_items", "n_interactions"):
        n = meta.get(key)
        if n is not None and (type(n) is not int or n < 0):
            raise DataError(f"{key} must be a count (a whole number >= 0), found {n!r}", path=str(path),
                            column=key, fix="rewrite the folder with `onerec data`, or delete the key")
    return meta


_COUNT_KEY = {"interactions": "n_interactions", "items": "n_items", "users": "n_users"}


def _check_parquet(path: Path, meta: dict[str, Any], kind: str) -> None:
    """Before reading a table: the file exists, names each column once, and holds as many rows as
    dataset.json says (a footer read, so a crafted or mismatched file is refused before the
    table is allocated)."""
    if path.is_symlink() and not path.exists():
        raise broken_link(path)
    if not path.is_file():
        return  # read_parquet names the missing file
    try:
        md = pq.read_metadata(path)
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path=str(path),
                        fix="the file is truncated or not Parquet; regenerate it with `onerec data`") from None
    check_header(names, path=path)
    want = meta.get(_COUNT_KEY[kind])
    if want is not None and md.num_rows != want:
        raise DataError(f"holds {md.num_rows} rows but dataset.json says {_COUNT_KEY[kind]}={want}",
                        path=str(path), column=_COUNT_KEY[kind],
                        fix="the folder mixes files of two datasets; rewrite it with `onerec data`")


def make_dataset(
    *,
    name: str,
    source: str,
    interactions: pa.Table,
    items: pa.Table | None = None,
    users: pa.Table | None = None,
    path: str = "<memory>",
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Build a canonical :class:`Dataset` from tables keyed by the source's raw ids.

    ``interactions`` needs ``user_id``, ``item_id`` (raw ids of any type) and ``timestamp``.
    ``items`` / ``users``, when given, need ``raw_id`` (same values as the raw ids in the
    interactions) and any feature columns; ids that appear only in ``interactions`` are an
    error when the side table is given (unknown ids), and get a bare row when it is not.
    Rows keep their log order among equal timestamps.
    """
    for col in ("user_id", "item_id", "timestamp"):
        if col not in interactions.column_names:
            raise DataError(f"missing required column '{col}' (has: {', '.join(interactions.column_names)})",
                            path=path, column=col, fix=f"map the source's column to '{col}'")
    if interactions.num_rows == 0:
        raise DataError("no interactions", path=path, fix="check the source file")
    for col in ("user_id", "item_id"):
        check_id_text(interactions[col], path=path, column=col)
    user_raw = interactions["user_id"].cast(pa.string())
    item_raw = interactions["item_id"].cast(pa.string())
    users_t = _side_table(users, user_raw, "user_id", path)
    items_t = _side_table(items, item_raw, "item_id", path)
    uid = pc.index_in(user_raw, value_set=users_t["raw_id"]).to_numpy(zero_copy_only=False)
    iid = pc.index_in(item_raw, value_set=items_t["raw_id"]).to_numpy(zero_copy_only=False)
    for col, ids, kind in (("user_id", uid, "users"), ("item_id", iid, "items")):
        bad = np.flatnonzero(np.isnan(ids)) if ids.dtype.kind == "f" else np.array([], dtype=int)
        if len(bad):
            raw = (user_raw if col == "user_id" else item_raw)[int(bad[0])].as_py()
            raise DataError(f"unknown id '{raw}' not in the {kind} table", path=path, row=int(bad[0]),
                            column=col, fix=f"add it to the {kind} table or drop those interactions")
    uid = uid.astype(np.int64)
    iid = iid.astype(np.int64)
    ts = interactions["timestamp"]
    check_timestamps(ts, path=path, column="timestamp")
    try:
        ts_np = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = first_bad_cast(ts, pa.int64())
        raise DataError("timestamps must be integers (Unix seconds)", path=path, row=row, column="timestamp",
                        fix="convert the timestamps to Unix seconds") from None
    order = np.lexsort((np.arange(len(uid)), ts_np, uid))
    rest = [c for c in interactions.column_names if c not in ("user_id", "item_id", "timestamp")]
    inter = pa.table(
        {"user_id": uid[order], "item_id": iid[order], "timestamp": ts_np[order],
         **{c: interactions[c].take(pa.array(order)) for c in rest}}
    )
    ds = Dataset(inter, items_t, users_t, meta={"name": name, "source": source, **(meta or {})})
    return ds.validate(source=path)


def _side_table(side: pa.Table | None, raw_ids: pa.ChunkedArray, id_col: str, path: str) -> pa.Table:
    if side is None:
        uniq = pc.unique(raw_ids)
        uniq = uniq.take(pc.sort_indices(uniq))
        return pa.table({id_col: np.arange(len(uniq), dtype=np.int64), "raw_id": uniq})
    if "raw_id" not in side.column_names:
        raise DataError("side table needs a 'raw_id' column", path=path, column="raw_id",
                        fix="name the source's id column raw_id")
    raw = side["raw_id"].cast(pa.string())
    if raw.null_count:
        row = int(np.flatnonzero(raw.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("missing id", path=path, row=row, column="raw_id",
                        fix="every row of the side table needs an id")
    if pc.count_distinct(raw).as_py() != side.num_rows:
        vals = raw.to_numpy(zero_copy_only=False)
        _, first, counts = np.unique(vals, return_index=True, return_counts=True)
        dup = vals[first[counts > 1][0]]
        rows = np.flatnonzero(vals == dup)[:2]
        raise DataError(f"duplicate id '{dup}' (rows {rows[0]} and {rows[1]})", path=path, column="raw_id",
                        fix="each id must appear once in the side table")
    cols = {id_col: np.arange(side.num_rows, dtype=np.int64), "raw_id": raw}
    cols.update({c: side[c] for c in side.column_names if c not in ("raw_id", id_col)})
    return pa.table(cols)


def signal_flags(interactions: pa.Table) -> np.ndarray:
    """Bitmask (int16) of the SIGNALS present per row; 0 where the table has no signals."""
    flags = np.zeros(interactions.num_rows, dtype=np.int16)
    for bit, s in enumerate(SIGNALS):
        if s in interactions.column_names:
            flags |= (interactions[s].fill_null(0).to_numpy().astype(np.int16) & 1) << bit
    return flags


def _positive_terms(interactions: pa.Table, rule: str) -> list[str]:
    """The terms of ``rule`` (not ``all``), any of which makes a row positive: ``auto``'s signals the table has, or
    the rule's own '|'-joined terms; none: every row is positive."""
    if rule == "auto":
        return [s for s in AUTO_POSITIVE if s in interactions.column_names]
    return [t.strip() for t in rule.split("|") if t.strip()]


def describe_positive(interactions: pa.Table, rule: str = "auto") -> str:
    """What :func:`positive_mask` counts as positive under ``rule``, in words (``onerec data`` prints it)."""
    if rule == "all":
        return "every row (data.positive=all)"
    found = _positive_terms(interactions, rule)
    if rule != "auto":
        return f"rows with any of: {', '.join(found)}"
    if not found:
        hint = ("; data.positive='rating>=4' would keep only high ratings"
                if "rating" in interactions.column_names else "")
        return ("every row (data.positive=auto, and the table has none of the signals "
                f"{', '.join(AUTO_POSITIVE)}{hint})")
    veto = ", without hate" if "hate" in interactions.column_names else ""
    return f"rows with any of: {', '.join(found)}{veto} (data.positive=auto)"


#: a threshold term of ``data.positive``: a numeric column, ``>=`` or ``>``, a number (``rating>=4``)
_THRESHOLD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(>=|>)(-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)$")


def positive_mask(interactions: pa.Table, rule: str = "auto") -> np.ndarray:
    """Which rows are positive behaviour.

    ``all``: every row (implicit-feedback datasets such as Amazon reviews).
    ``auto``: any of AUTO_POSITIVE present in the table and not ``hate``; ``all`` when the
    table has none of those columns. Otherwise a '|'-joined list of terms, any of which makes a row positive: a
    0/1 signal column (``like``), or a numeric column over a threshold (``rating>=4``, ``watch_time_ms>30000``;
    empty values are not positive).
    """
    cols = interactions.column_names
    if rule == "all":
        return np.ones(interactions.num_rows, dtype=bool)
    terms = _positive_terms(interactions, rule)
    if not terms:
        return np.ones(interactions.num_rows, dtype=bool)
    mask = np.zeros(interactions.num_rows, dtype=bool)
    for s in terms:
        m = _THRESHOLD.match(s.replace(" ", ""))
        name = m.group(1) if m else s
        if name not in cols:
            raise DataError(f"positive rule names '{name}', which the interactions table lacks "
                            f"(has: {', '.join(cols)})", column=name,
                            fix="use data.positive=auto, all, or signals the table has (e.g. 'like|follow'), or "
                                "a numeric column over a threshold (e.g. 'rating>=4')")
        col = interactions[name]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            what = "compares" if m else "names as a 0/1 signal"
            raise DataError(f"positive rule '{s}' {what} column '{name}', which holds {col.type}, not numbers",
                            column=name, fix="compare a numeric column (e.g. 'rating>=4'), or name 0/1 signals")
        if m is None:
            mask |= col.fill_null(0).to_numpy().astype(bool)
            continue
        value, threshold = col.to_numpy(zero_copy_only=False).astype(np.float64), float(m.group(3))
        with np.errstate(invalid="ignore"):  # empty values (NaN) are not positive
            mask |= (value >= threshold) if m.group(2) == ">=" else (value > threshold)
    if rule == "auto" and "hate" in cols:
        mask &= ~interactions["hate"].fill_null(0).to_numpy().astype(bool)
    return mask
