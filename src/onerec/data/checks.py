"""Checks on hostile or malformed input, shared by the canonical tables and every adapter.

Each check is vectorised (numpy / pyarrow) over whole columns; only once a problem is found does
it look for the first bad row, so that the :class:`~onerec.errors.DataError` can name the file,
the row (or line) and the column, and say how to fix it.

Positions: a check takes ``where``, a function from the 0-based index of the bad value to a
human position such as ``"line 7"`` (adapters reading text files, which count the header); without
it the message names ``row <index>`` (the canonical Parquet tables).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onerec.errors import DataError

Where = Callable[[int], str] | None

#: Timestamps are Unix seconds in [0, 2^40) (up to the year ~36,800): the per-user (user, time)
#: search keys of the reward model and the features hold 40 bits of time, so a larger value
#: (infinity, 1e300, milliseconds given as seconds) would collide with the next user's keys.
MAX_TIMESTAMP = 2**40 - 1
#: Largest magnitude of other numbers that become int64 (durations, play times): exact in float64.
MAX_VALUE = 2**53
#: Largest float32 (ratings are float32: a larger value would become infinity).
F32_MAX = float(np.finfo(np.float32).max)
#: Deepest JSON nesting any adapter's layout needs is 3; Python's json gives up near 1,000.
_JSON_OPEN = {ord("["), ord("{")}


def as_array(x: pa.Array | pa.ChunkedArray) -> pa.Array:
    return x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x


def first_true(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def fail(problem: str, index: int | None, *, path: str | Path | None, column: str | None, fix: str,
         where: Where = None) -> DataError:
    """A DataError placing value ``index`` by ``where`` (a line) or as ``row <index>``."""
    if index is not None and where is not None:
        return DataError(f"{where(index)}: {problem}", path=None if path is None else str(path), column=column,
                         fix=fix)
    return DataError(problem, path=None if path is None else str(path), row=index, column=column, fix=fix)


def _floats(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN-free zeros (nulls are checked elsewhere)."""
    arr = as_array(col)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return arr.fill_null(0).to_numpy(zero_copy_only=False)
    raise TypeError(arr.type)


def is_numeric(col: pa.Array | pa.ChunkedArray) -> bool:
    return pa.types.is_integer(col.type) or pa.types.is_floating(col.type)


# ------------------------------------------------------------------------- numbers
def check_timestamps(col: pa.Array | pa.ChunkedArray, *, path: str | Path, column: str, where: Where = None,
                     per_second: int = 1) -> None:
    """Refuse infinite, NaN, negative and too large timestamps (nulls pass: callers decide on those).

    ``per_second``: 1000 for a source's millisecond column (the bound scales with it)."""
    if not is_numeric(col):
        return
    vals = _floats(col)
    hi = MAX_TIMESTAMP * per_second
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(vals) | (vals > hi) | (vals < 0)
    i = first_true(bad)
    if i is not None:
        unit = "Unix seconds" if per_second == 1 else "Unix milliseconds"
        raise fail(f"timestamp {as_array(col)[i].as_py()!r} is not a time (must be {unit} in 0..{hi})", i,
                   path=path, column=column, where=where,
                   fix=f"write '{column}' as {unit}" + (" (divide milliseconds by 1000)" if per_second == 1 else "")
                       + "; fix or drop that row")


def check_binary(col: pa.Array | pa.ChunkedArray, *, path: str | Path, column: str, where: Where = None) -> None:
    """Refuse a 0/1 feedback signal holding anything else (e.g. 0/2 coding, -1, 300); nulls pass."""
    if not is_numeric(col):
        return
    vals = _floats(col)
    i = first_true((vals != 0) & (vals != 1))
    if i is not None:
        raise fail(f"signal value {as_array(col)[i].as_py()!r}: a binary signal must be 0 or 1", i, path=path,
                   column=column, where=where,
                   fix=f"recode '{column}' as 0/1 (e.g. 1 where the event happened), or drop the column")


def check_finite(col: pa.Array | pa.ChunkedArray, *, path: str | Path, column: str, where: Where = None,
                 lo: float = -np.inf, hi: float = np.inf, what: str = "value") -> None:
    """Refuse NaN / infinite values and values outside [lo, hi] in a numeric column (nulls pass)."""
    if not is_numeric(col):
        return
    arr = as_array(col)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    vals = _floats(arr)
    with np.errstate(invalid="ignore"):
        bad = valid & (~np.isfinite(vals) | (vals < lo) | (vals > hi))
    i = first_true(bad)
    if i is not None:
        rng = "" if (lo, hi) == (-np.inf, np.inf) else f" in {lo:g}..{hi:g}"
        raise fail(f"{what} {arr[i].as_py()!r} is out of range (must be a finite number{rng})", i, path=path,
                   column=column, where=where, fix=f"fix or drop that row of '{column}'")


def first_bad_cast(arr: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> int | None:
    """Index of the first value of ``arr`` that does not cast to ``typ`` (None when all do)."""
    arr = as_array(arr)
    step = 4096
    for start in range(0, len(arr), step):
        chunk = arr.slice(start, step)
        try:
            chunk.cast(typ)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for i in range(len(chunk)):
            try:
                chunk.slice(i, 1).cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return start + i
    return None


# ----------------------------------------------------------------------------- ids
_CONTROL = r"[\x00-\x1f\x7f]"
_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_ODD_INTEGER = r"^\s*\+[0-9]+\s*$|^\s*-?0[0-9]+\s*$|^\s+-?[0-9]+\s*$|^-?[0-9]+\s+$|^\s*-0+\s*$"


def check_id_text(col: pa.Array | pa.ChunkedArray, *, path: str | Path, column: str, where: Where = None) -> None:
    """Refuse string ids holding a NUL or other control character, and integer ids spelled two ways.

    ``"5"`` and ``"05"`` (or ``" 5"``, ``"+5"``) are the same number: keeping them apart would make
    two users or items out of one, merging them would guess. Either way the data are ambiguous, so
    the input is refused. Non-string columns pass (integer columns cannot hold either problem).
    """
    arr = as_array(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return
    uniq = as_array(pc.unique(arr))  # ids repeat: check each distinct id once, then find its row
    if pc.any(pc.match_substring_regex(uniq, _CONTROL)).as_py():
        ctrl = pc.match_substring_regex(arr, _CONTROL).fill_null(False).to_numpy(zero_copy_only=False)
        i = first_true(ctrl)
        raise fail(f"id {arr[i].as_py()!r} holds a control character (NUL, tab, newline, ...)", i, path=path,
                   column=column, where=where, fix="remove the control characters from the ids (they are "
                   "invisible and would make a second id that looks like the first)")
    odd = pc.match_substring_regex(uniq, _ODD_INTEGER).fill_null(False)  # "05", "+5", " 5", "-0"
    if not pc.any(odd).as_py():
        return  # every integer id is written in its one plain spelling: no two can collide
    spellings = uniq.filter(pc.match_substring_regex(uniq, _INTEGER).fill_null(False))
    if pc.count_distinct(_canonical_int(spellings)).as_py() == len(spellings):
        return
    is_int = pc.match_substring_regex(arr, _INTEGER).fill_null(False)
    ints = arr.filter(is_int)
    canon = _canonical_int(ints)
    # error path: the first row whose number was already seen spelled otherwise
    rows = np.flatnonzero(is_int.to_numpy(zero_copy_only=False))
    seen: dict[str, tuple[str, int]] = {}
    for k, (c, s) in enumerate(zip(canon.to_pylist(), ints.to_pylist())):
        if c in seen and seen[c][0] != s:
            first_s, first_row = seen[c]
            at = where(first_row) if where is not None else f"row {first_row}"
            raise fail(f"id {s!r} and id {first_s!r} ({at}) spell the same number", int(rows[k]), path=path,
                       column=column, where=where,
                       fix="write each id one way (e.g. without leading zeros or '+'), so one user or item "
                           "has one id")
        seen.setdefault(c, (s, int(rows[k])))
    raise AssertionError("unreachable: distinct counts differ")  # pragma: no cover


def _canonical_int(spellings: pa.Array) -> pa.Array:
    """Integer spellings -> one spelling per number: no spaces, no '+', no leading zeros, no '-0'."""
    canon = pc.replace_substring_regex(pc.utf8_trim_whitespace(spellings), r"^\+", "")
    canon = pc.replace_substring_regex(canon, r"^(-?)0+([0-9])", r"\1\2")
    return pc.replace_substring_regex(canon, r"^-0$", "0")


def check_header(names: Sequence[str], *, path: str | Path) -> None:
    """Refuse a header naming a column twice (readers would keep one of them silently)."""
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise DataError(f"the header names this column twice (fields {seen[name] + 1} and {k + 1})",
                            path=str(path), column=name, fix="rename or drop one of the two columns")
        seen[name] = k


# ------------------------------------------------------------------------ sorting
def sort_interactions(table: pa.Table) -> tuple[pa.Table, int]:
    """Sort by (user_id, timestamp), stably (ties keep their order); return the table and how many
    rows were out of order (0: the table is returned as it was)."""
    uid = as_array(table["user_id"]).to_numpy(zero_copy_only=False)
    ts = as_array(table["timestamp"]).to_numpy(zero_copy_only=False)
    back = (uid[1:] < uid[:-1]) | ((uid[1:] == uid[:-1]) & (ts[1:] < ts[:-1]))
    n_bad = int(np.count_nonzero(back))
    if not n_bad:
        return table, 0
    order = pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])  # stable
    return table.take(order), n_bad


# ------------------------------------------------------------------------ text files
def decode_utf8(data: bytes, *, path: str | Path, delimiter: str | None = None, header: Sequence[str] = ()) -> str:
    """``data`` as text; invalid UTF-8 raises naming the line (and the column of a delimited file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise utf8_error(data, e.start, path=path, delimiter=delimiter, header=header) from None


def utf8_error(data: bytes, offset: int, *, path: str | Path, delimiter: str | None = None,
               header: Sequence[str] = ()) -> DataError:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = None
    if delimiter is not None and line > 1:
        field = data[line_start:offset].count(delimiter.encode())
        column = header[field] if field < len(header) else f"field {field + 1}"
    return DataError(f"line {line}: not UTF-8 text (byte 0x{data[offset]:02x} at character "
                     f"{offset - line_start + 1} of the line)", path=str(path), column=column,
                     fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or fix that line")


def first_invalid_utf8(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return None


class DuplicateKey(Exception):
    """A JSON object that names ``key`` twice (``json.loads`` alone would keep the last value silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads`` that raises :class:`DuplicateKey` for a key given twice."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def loads_json(text: str, *, path: str | Path, hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
               what: str = "the file") -> Any:
    """json.loads with parse errors and too-deep nesting turned into a DataError naming the position."""
    try:
        return json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", path=str(path),
                        fix=f"repair {what} or download it again") from None
    except RecursionError:
        line, col, depth = _deepest(text)
        raise DataError(f"invalid JSON at line {line}, column {col}: nested {depth} levels deep, more than "
                        "Python's JSON reader can follow", path=str(path),
                        fix=f"{what} is not in the expected layout (at most a few levels deep); repair it or "
                            "download it again") from None


def _deepest(text: str) -> tuple[int, int, int]:
    """Line and column where the nesting of ``text`` first reaches its maximum depth (strings skipped)."""
    blank = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: " " * len(m.group()), text)
    codes = np.frombuffer(blank.encode("utf-32-le"), dtype=np.uint32)
    step = np.zeros(len(codes), dtype=np.int64)
    step[np.isin(codes, list(_JSON_OPEN))] = 1
    step[np.isin(codes, [ord("]"), ord("}")])] = -1
    depth = np.cumsum(step)
    if not len(depth):
        return 1, 1, 0
    k = int(np.argmax(depth))
    line = text.count("\n", 0, k) + 1
    return line, k - (text.rfind("\n", 0, k) + 1) + 1, int(depth[k])


# ----------------------------------------------------------------------------- files
def broken_link(path: Path) -> DataError:
    return DataError(f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)",
                     path=str(path), fix="restore the file it points to, or delete the link")


def optional_file(path: Path) -> Path | None:
    """``path`` when it is a file, None when nothing is there; a broken link or a folder raises
    (neither may be skipped as if the optional file were simply absent)."""
    if path.is_symlink() and not path.exists():
        raise broken_link(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise DataError("expected a file, found a folder or device", path=str(path),
                        fix="move it away or replace it with the file")
    return path
