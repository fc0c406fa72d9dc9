"""Amazon 2014 reviews in the S3Rec / TIGER layout (the paper-comparable benchmark).

Files in the folder, for a category such as ``Beauty``::

    Beauty.txt                    one line per user: ``user_id item_1 ... item_n``
                                  (1-based integer ids, chronological order)
    Beauty_item2attributes.json   {item_id: [attribute ids]} (category and brand ids), optional

and, optionally, in another folder given as ``text_path``::

    Beauty_items.tsv              item_id  asin  title  categories (JSON list of category paths)

The files carry no timestamps: each event's timestamp is its 0-based position in its user's
sequence. Only the order matters to the leave-one-out protocol, but a global time split over
such "timestamps" is meaningless, so use ``data.split=loo`` with this source.
Dense ids follow the integer ids (dense = raw - 1 for both users and items).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from onerec.data.adapters._common import (
    check_unique,
    clean_text,
    expect_object,
    keep_used,
    list_column,
    position_in_sequence,
    read_csv,
    read_json_strict,
    require_file,
    resolve_file,
    sort_side,
)
from onerec.data.checks import broken_link, decode_utf8, optional_file
from onerec.data.schema import Dataset, make_dataset
from onerec.errors import DataError

_LINE_FIX = "each line must be 'user_id item_id item_id ...' with integer ids separated by spaces"


def load_amazon2014(path: str | Path, name: str | None = None, *, text_path: str | Path | None = None,
                    keep_unused: bool = False) -> Dataset:
    """Load one Amazon 2014 category in the S3Rec layout.

    Args:
        path: The folder holding ``<name>.txt`` (or the ``.txt`` file itself).
        name: Category, e.g. ``Beauty``, ``Sports_and_Outdoors`` (a unique prefix such as
            ``Sports`` works); optional when the folder holds one ``.txt`` file.
        text_path: Folder with ``<name>_items.tsv`` (or the file itself) adding titles
            (HTML-unescaped), the first category path (joined by " > ") and the ASIN.
        keep_unused: Keep items listed in the attribute / text files that no user interacted with.

    Returns:
        The canonical dataset; items carry ``tags`` = ``attr:<id>`` for each attribute id.
    """
    txt, name = resolve_file(Path(path), ".txt", name, "amazon2014")
    users, lengths, item_ids = _read_sequences(txt)
    inter = pa.table({
        "user_id": np.repeat(users, lengths),
        "item_id": item_ids,
        "timestamp": position_in_sequence(lengths),
    })
    used = pa.array(np.unique(item_ids))
    attrs = _read_attributes(txt.with_name(f"{name}_item2attributes.json"))
    raw = used if not keep_unused else pa.array(np.union1d(item_ids, np.array(list(attrs), dtype=np.int64)))
    items = pa.table({"raw_id": raw, "tags": list_column([f"attr:{a}" for a in attrs.get(int(i), ())]
                                                         for i in raw.to_numpy())})
    if text_path is not None:
        items = _add_text(items, _text_file(Path(text_path), name), keep_unused)
    items = sort_side(keep_used(items, used, keep_unused))
    users_t = pa.table({"raw_id": np.asarray(users, dtype=np.int64)})
    return make_dataset(name=name, source="amazon2014", interactions=inter, items=items,
                        users=sort_side(users_t), path=str(txt),
                        meta={"raw_path": str(txt), "timestamps": "position in the user's sequence"})


def _read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``user item item ...`` lines; return user ids, sequence lengths and flat item ids."""
    require_file(path, fix="check data.path and data.name")
    text = decode_utf8(path.read_bytes(), path=path)  # names the line of a non-UTF-8 byte
    users: list[int] = []
    lengths: list[int] = []
    items: list[int] = []
    first_line: dict[int, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        parts = line.split()
        if len(parts) < 2:  # blank line, or a user without items: nothing to learn from
            continue
        ids = _ints(parts, path, lineno)
        if ids[0] in first_line:
            raise DataError(f"line {lineno}: user {ids[0]} already has a line (line {first_line[ids[0]]})",
                            path=str(path), fix="each user may have one line; merge or drop the duplicate")
        first_line[ids[0]] = lineno
        users.append(ids[0])
        lengths.append(len(ids) - 1)
        items.extend(ids[1:])
    if not users:
        raise DataError("no user lines", path=str(path), fix=_LINE_FIX)
    return np.array(users, dtype=np.int64), np.array(lengths, dtype=np.int64), np.array(items, dtype=np.int64)


_INT64 = (-(2**63), 2**63 - 1)


def _ints(parts: list[str], path: Path, lineno: int) -> list[int]:
    try:
        out = list(map(int, parts))
    except ValueError:
        bad = next(p for p in parts if not _is_int(p))
        raise DataError(f"line {lineno}: {bad!r} is not an integer id", path=str(path), fix=_LINE_FIX) from None
    if min(out) < _INT64[0] or max(out) > _INT64[1]:
        big = next(p for p, v in zip(parts, out) if not _INT64[0] <= v <= _INT64[1])
        raise DataError(f"line {lineno}: id {big} does not fit in 64 bits", path=str(path),
                        fix="ids must lie within -2^63..2^63-1; renumber the ids")
    return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _read_attributes(path: Path) -> dict[int, list[int]]:
    """``{item: [attribute ids]}``; an absent file means no attributes (a broken link is refused)."""
    if optional_file(path) is None:
        return {}
    obj = expect_object(read_json_strict(path), path, "{item_id: [attribute ids]}")
    out: dict[int, list[int]] = {}
    keys: dict[int, str] = {}
    for key, value in obj.items():
        try:
            item = int(key)
            out[item] = [int(a) for a in value]
        except (TypeError, ValueError):
            raise DataError(f"item '{key}': expected a list of integer attribute ids, found {value!r}",
                            path=str(path), fix="the file maps item ids to lists of integer ids") from None
        if not _INT64[0] <= item <= _INT64[1]:
            raise DataError(f"item '{key}': id does not fit in 64 bits", path=str(path),
                            fix="ids must lie within -2^63..2^63-1; renumber the ids")
        if item in keys:
            raise DataError(f"item keys '{keys[item]}' and '{key}' spell the same number", path=str(path),
                            fix="write each item id once, without leading zeros")
        keys[item] = key
    return out


def _text_file(text_path: Path, name: str) -> Path:
    """``<name>_items.tsv``, else ``<first word of name>_items.tsv`` (``Toys_items.tsv`` for Toys_and_Games)."""
    if text_path.is_symlink() and not text_path.exists():
        raise broken_link(text_path)
    if text_path.is_file():
        return text_path
    for cand in (f"{name}_items.tsv", f"{name.split('_')[0]}_items.tsv"):
        if optional_file(text_path / cand) is not None:
            return text_path / cand
    raise DataError(f"no item text for '{name}' (looked for {name}_items.tsv)", path=str(text_path),
                    fix="point text_path at the folder with <Cat>_items.tsv, or leave it unset")


def _add_text(items: pa.Table, path: Path, keep_unused: bool) -> pa.Table:
    """Join title, category and asin from the text TSV onto ``items`` by integer item id."""
    t = read_csv(path, required=("item_id", "title", "categories"), optional=("asin",),
                 types={"item_id": pa.int64(), "title": pa.string(), "categories": pa.string(), "asin": pa.string()},
                 delimiter="\t", quoted=False, fix="the TSV needs item_id, title and categories columns")
    check_unique(t["item_id"], path, "item_id")
    rows = {int(i): r for r, i in enumerate(t["item_id"].to_numpy())}
    if keep_unused:  # items only the text file knows about join the catalogue
        extra = np.setdiff1d(np.array(list(rows), dtype=np.int64), items["raw_id"].to_numpy())
        items = pa.concat_tables([items, pa.table({"raw_id": extra, "tags": list_column([[]] * len(extra))})])
    titles, cats, asins = t["title"].to_pylist(), t["categories"].to_pylist(), _col(t, "asin")
    out_t, out_c, out_a = [], [], []
    for raw in items["raw_id"].to_numpy():
        r = rows.get(int(raw))
        out_t.append(clean_text(titles[r]) if r is not None else None)
        out_c.append(_first_path(cats[r], path, r) if r is not None else None)
        out_a.append(asins[r] if r is not None else None)
    return items.append_column("title", pa.array(out_t, pa.string())).append_column(
        "category", pa.array(out_c, pa.string())).append_column("asin", pa.array(out_a, pa.string()))


def _col(t: pa.Table, name: str) -> list:
    return t[name].to_pylist() if name in t.column_names else [None] * t.num_rows


def _first_path(cell: str | None, path: Path, row: int) -> str | None:
    """``[["Beauty", "Makeup"], ...]`` -> ``"Beauty > Makeup"`` (the first path)."""
    if not cell:
        return None
    try:
        paths = json.loads(cell)
    except (json.JSONDecodeError, RecursionError):
        raise DataError(f"line {row + 2}: categories is not a JSON list of paths: {cell[:60]!r}", path=str(path),
                        column="categories", fix='write categories as [["Top", "Sub", ...]]') from None
    if not paths or not isinstance(paths, list):
        return None
    first = paths[0] if isinstance(paths[0], list) else paths
    parts = [clean_text(p) for p in first]
    return " > ".join(p for p in parts if p) or None
