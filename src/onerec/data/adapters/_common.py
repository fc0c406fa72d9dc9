"""Helpers shared by the dataset adapters: strict file readers and id checks.

Every reader here turns a bad file into one :class:`~onerec.errors.DataError` that names the
file, where in it the problem is, and the fix, instead of a pyarrow or json traceback.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from onerec.data.checks import (
    DuplicateKey,
    as_array,
    broken_link,
    check_header,
    decode_utf8,
    first_bad_cast,
    first_invalid_utf8,
    loads_json,
    optional_file,
    unique_keys,
    utf8_error,
)
from onerec.errors import DataError

#: Cells read as null, in typed and string columns alike (spelled out so that a pyarrow upgrade
#: cannot change what counts as missing).
NULL_MARKERS = ["", "NULL", "null", "NaN", "nan", "NA", "N/A", "n/a", "-nan", "#N/A"]


# ------------------------------------------------------------------------------ files
def require_file(path: Path, fix: str) -> Path:
    """Return ``path`` if it is a non-empty file, else raise a DataError."""
    if path.is_symlink() and not path.exists():
        raise broken_link(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path), fix=fix)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path=str(path), fix="re-download or regenerate the file")
    return path


def find_data_dir(path: Path, pattern: str, subdirs: Sequence[str]) -> Path:
    """The folder holding files matching ``pattern``: ``path`` or ``path / sub`` (archive layouts)."""
    for cand in (path, *(path / s for s in subdirs)):
        if any(p.is_file() for p in cand.glob(pattern)):
            return cand
    return path


def resolve_file(path: Path, suffix: str, name: str | None, source: str) -> tuple[Path, str]:
    """Find ``<name><suffix>`` in ``path`` (or accept ``path`` as the file); return (file, name).

    ``name`` may be a unique prefix (``Sports`` finds ``Sports_and_Outdoors.txt``); without a name
    the folder must hold exactly one matching file.
    """
    if path.is_file():
        return path, path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem
    if path.is_symlink() and not path.exists():
        raise broken_link(path)
    if not path.is_dir():
        raise DataError("no such file or folder", path=str(path), fix=f"point data.path at the {source} files")
    for p in path.glob(f"*{suffix}"):
        optional_file(p)  # a broken link among the candidates is named, never skipped
    found = sorted(p for p in path.glob(f"*{suffix}") if p.is_file())
    names = [p.name[: -len(suffix)] for p in found]
    if name is not None:
        if name in names:
            return path / f"{name}{suffix}", name
        names = [n for n in names if n.startswith(name)]
        if len(names) == 1:
            return path / f"{names[0]}{suffix}", names[0]
    elif len(names) == 1:
        return found[0], names[0]
    what = f"'{name}{suffix}'" if name else f"a single *{suffix} file"
    have = ", ".join(p.name for p in found) or "none"
    raise DataError(f"cannot find {what} (found: {have})", path=str(path),
                    fix=f"pass the dataset name (data.name=...) matching one of the *{suffix} files")


# ------------------------------------------------------------------------------- JSON
def read_json_strict(path: Path) -> Any:
    """Read JSON, rejecting duplicate object keys (json.loads would silently keep the last)."""
    require_file(path, fix="check data.path and data.name")
    try:
        return loads_json(decode_utf8(path.read_bytes(), path=path), path=path, hook=unique_keys)
    except DuplicateKey as e:
        raise DataError(f"duplicate key '{e.key}'", path=str(path),
                        fix="each user / item may appear once; deduplicate the file") from None


def expect_object(obj: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object {what}, found {type(obj).__name__}", path=str(path),
                        fix="check that this is the right file")
    if not obj:
        raise DataError("the JSON object is empty", path=str(path), fix="check the source file")
    return obj


# -------------------------------------------------------------------------------- CSV
def read_header(path: Path, delimiter: str = ",", data: bytes | None = None) -> list[str]:
    """Column names from the first line of a delimited text file (which must be UTF-8)."""
    if data is None:
        with open(path, "rb") as f:
            first = f.readline()
    else:
        first = data.split(b"\n", 1)[0]
    text = decode_utf8(first.removeprefix(b"\xef\xbb\xbf"), path=path).rstrip("\r\n")
    return next(csv.reader([text], delimiter=delimiter)) if text else []


def read_csv(
    path: Path,
    *,
    required: Sequence[str],
    types: dict[str, pa.DataType] | None = None,
    optional: Sequence[str] | None = (),
    delimiter: str = ",",
    quoted: bool = True,
    multiline: bool = False,
    nullable: Sequence[str] = (),
    fix: str = "use the file from the official release",
) -> pa.Table:
    """Read a delimited file strictly.

    Args:
        path: The file.
        required: Columns that must be in the header (missing -> DataError listing the header).
        types: Types forced on columns; a cell that does not parse names its line.
        optional: Further columns read when present; ``None`` reads every column.
        delimiter: Field separator.
        quoted: Whether ``"`` quotes fields (False for TSV files whose text holds quotes).
        multiline: Allow line breaks inside quoted fields; bare carriage returns inside fields
            (found in KuaiRec's caption file) become spaces, since pyarrow reads them as line ends.
        nullable: Required columns that may hold empty cells.
        fix: Hint appended to a missing-column error.

    Returns:
        The table with the selected columns, in header order.
    """
    require_file(path, fix="check data.path; download the dataset again if the file is missing")
    data = None
    if multiline:
        data = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b" ")
    header = read_header(path, delimiter, data)
    check_header(header, path=path)
    for col in required:
        if col not in header:
            raise DataError(f"missing column '{col}' (header has: {', '.join(header)})", path=str(path),
                            column=col, fix=fix)
    wanted = header if optional is None else [c for c in header if c in {*required, *optional}]
    types = {c: t for c, t in (types or {}).items() if c in wanted}
    table = _read(path, data, wanted, types, delimiter, quoted, multiline, header)
    if quoted:
        _check_quotes_closed(path, data, table, delimiter, multiline)
    for col in table.column_names:  # pyarrow infers binary for an untyped column holding invalid UTF-8
        if pa.types.is_binary(table[col].type) or pa.types.is_large_binary(table[col].type):
            row = first_bad_cast(table[col], pa.string())
            if row is not None:
                raise DataError(f"{_where(row, multiline)}: not UTF-8 text", path=str(path), column=col,
                                fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or fix that line")
    if table.num_rows == 0:
        raise DataError("the file has a header but no rows", path=str(path), fix="check the source file")
    for col in required:
        if col not in nullable:
            _no_nulls(table, col, path, multiline)
    return table


def _read(path: Path, data: bytes | None, wanted: list[str], types: dict[str, pa.DataType],
          delimiter: str, quoted: bool, multiline: bool, header: Sequence[str] = ()) -> pa.Table:
    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                              newlines_in_values=multiline)
    conv = pcsv.ConvertOptions(include_columns=wanted, column_types=types, null_values=NULL_MARKERS,
                               strings_can_be_null=True)
    try:
        return pcsv.read_csv(io.BytesIO(data) if data is not None else path, parse_options=parse,
                             convert_options=conv, read_options=pcsv.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as e:
        raw = data if data is not None else path.read_bytes()
        at = first_invalid_utf8(raw)  # any bad byte first: re-reading typed columns as text would fail on it
        if at is not None:
            raise utf8_error(raw, at, path=path, delimiter=delimiter, header=header) from None
        if "UTF8" in str(e):
            raise DataError(f"not UTF-8 text ({e})", path=str(path), fix="save the file as UTF-8") from None
        if "conversion error" in str(e):
            _raise_bad_cell(path, data, types, delimiter, quoted, multiline)
        raise DataError(f"cannot parse the file ({e})", path=str(path),
                        fix="check for a stray delimiter, an unclosed quote or a truncated last line") from None


def _check_quotes_closed(path: Path, data: bytes | None, table: pa.Table, delimiter: str, multiline: bool) -> None:
    """pyarrow reads a quote that is never closed as one value running to the end of the file, without an error:
    the rows after it vanish and later checks blame something else (ids missing from items.csv, say). That value
    is in the last row: the sign is a line break in one of its values (a file read line by line has none), or, where
    values may hold line breaks, a value ending in the file's final line break (which otherwise ends the row); the
    last record is then read again strictly, and the line named is where it starts."""
    text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if not text or table.num_rows == 0:
        return
    last = [v for v in (table[c][table.num_rows - 1].as_py() for c in text) if v is not None]
    if any(v.endswith("\n") if multiline else "\n" in v for v in last):
        line = unclosed_quote_line(data if data is not None else path.read_bytes(), delimiter)
        if line is not None:
            raise DataError(f"line {line}: a quote opens here and is never closed, so the rest of the file would be "
                            "read as one value", path=str(path),
                            fix='close the quote (a quote inside a quoted value is written twice: "")')


def unclosed_quote_line(raw: bytes, delimiter: str = ",") -> int | None:
    """The line (1-based, the header is line 1) where the file's last record starts when that record ends inside
    an open ``"``-quoted value (a quote never closed); None when it ends well. Records are read as CSV, quoted
    values may hold line breaks; only the last record is read strictly, so other oddities earlier in the file
    (a quote inside an unquoted value, say) do not count."""
    lines = io.StringIO(raw.decode("utf-8", errors="replace"), newline="").readlines()
    reader = csv.reader(lines, delimiter=delimiter)
    start = line = 1
    for _ in reader:
        start, line = line, reader.line_num + 1
    try:
        for _ in csv.reader(lines[start - 1:], delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            return start
    return None


def _raise_bad_cell(path: Path, data: bytes | None, types: dict[str, pa.DataType], delimiter: str,
                    quoted: bool, multiline: bool) -> None:
    """Re-read each typed column as text to name the first cell that does not parse."""
    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                              newlines_in_values=multiline)
    for col, typ in types.items():
        conv = pcsv.ConvertOptions(include_columns=[col], column_types={col: pa.string()},
                                   null_values=NULL_MARKERS, strings_can_be_null=True)
        text = pcsv.read_csv(io.BytesIO(data) if data is not None else path, parse_options=parse,
                             convert_options=conv)[col].combine_chunks()
        bad = first_bad_cast(text, typ)
        if bad is not None:
            kind = "whole numbers" if pa.types.is_integer(typ) else "numbers" if pa.types.is_floating(typ) else typ
            raise DataError(f"{_where(bad, multiline)}: cannot read {text[bad].as_py()!r} as {typ}",
                            path=str(path), column=col, fix=f"'{col}' must hold {kind}; fix or drop that row")
    raise DataError("a cell does not parse", path=str(path), fix="check the file's numeric columns")


def _where(row: int, multiline: bool = False) -> str:
    """Human position of data row ``row`` (0-based) in a file with a header line."""
    return f"record {row + 1}" if multiline else f"line {row + 2}"


def where_fn(multiline: bool = False, first_row: int = 0, rows: np.ndarray | None = None) -> Callable[[int], str]:
    """``where`` for :mod:`onerec.data.checks`: index -> line (or record) of a file with a header. ``rows``: the
    checked table holds only these rows of the file (a filter ran first): its index i is the file's ``rows[i]``."""
    if rows is None:
        return lambda i: _where(i + first_row, multiline)
    return lambda i: _where(int(rows[i]) + first_row, multiline)


def _no_nulls(table: pa.Table, col: str, path: Path, multiline: bool) -> None:
    if table[col].null_count:
        row = int(np.flatnonzero(table[col].is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{_where(row, multiline)}: empty value in a required column", path=str(path),
                        column=col, fix="fill or drop that row")


# -------------------------------------------------------------------------------- ids
def check_unique(ids: pa.ChunkedArray | pa.Array, path: Path, column: str, *, multiline: bool = False,
                 rows: np.ndarray | None = None) -> None:
    """Raise naming the first repeated id and both of its rows.

    ``rows`` maps each position to a 0-based data row when ``ids`` is not in file order.
    """
    arr = pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids
    if pc.count_distinct(arr, mode="all").as_py() == len(arr):
        return
    vals = arr.cast(pa.string()).to_numpy(zero_copy_only=False).astype(str)
    _, first, inverse = np.unique(vals, return_index=True, return_inverse=True)
    seen_before = first[inverse] != np.arange(len(vals))
    j = int(np.flatnonzero(seen_before)[0])
    a, b = int(first[inverse[j]]), j
    if rows is not None:
        a, b = int(rows[a]), int(rows[b])
    raise DataError(f"duplicate id '{vals[j]}' ({_where(a, multiline)} and {_where(b, multiline)})",
                    path=str(path), column=column, fix="each id may appear once in this file; deduplicate it")


def check_known(ids: pa.ChunkedArray | pa.Array, known: pa.Array | pa.ChunkedArray, path: Path, column: str,
                side_path: Path, *, multiline: bool = False) -> None:
    """Raise when an id of ``ids`` (a column of ``path``) is missing from the side file's ``known``."""
    ids = as_array(ids)
    ok_np = pc.is_in(ids, value_set=as_array(known)).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~ok_np.astype(bool))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{_where(row, multiline)}: unknown id {ids[row].as_py()!r}, not in {side_path.name} "
                        f"({len(bad)} of {len(ids)} rows)", path=str(path), column=column,
                        fix=f"add the id to {side_path.name} or drop those rows")


def numeric_order(raw: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Distinct ids, sorted numerically when they are all integers, else in first-seen order.

    Dense ids follow this order, so sources with integer ids keep their own item order.
    """
    uniq = pc.unique(raw)
    if isinstance(uniq, pa.ChunkedArray):
        uniq = uniq.combine_chunks()
    if pa.types.is_integer(uniq.type):
        return uniq.take(pc.sort_indices(uniq))
    as_str = uniq.cast(pa.string())
    try:
        as_int = as_str.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return as_str
    return as_str.take(pc.sort_indices(as_int))


def sort_side(table: pa.Table, id_col: str = "raw_id") -> pa.Table:
    """Sort a side table by its ids numerically when they are all integers, else keep file order."""
    ids = table[id_col]
    if not pa.types.is_integer(ids.type):
        try:
            ids = ids.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return table
    return table.take(pc.sort_indices(ids))


def keep_used(side: pa.Table, used: pa.Array | pa.ChunkedArray, keep_unused: bool) -> pa.Table:
    """Rows of ``side`` whose raw_id occurs in ``used`` (all rows with ``keep_unused``)."""
    if keep_unused:
        return side
    used_s = pc.unique(as_array(used).cast(pa.string()))
    mask = pc.is_in(side["raw_id"].cast(pa.string()), value_set=used_s)
    return side.filter(mask)


# ------------------------------------------------------------------------------- text
def clean_text(value: Any) -> str | None:
    """Strip, HTML-unescape, and map empty or UNKNOWN markers to None."""
    if value is None:
        return None
    text = html.unescape(str(value)).strip()
    return None if text in ("", "UNKNOWN", "nan", "None") else text


def list_column(values: Iterable[list[str] | None]) -> pa.Array:
    return pa.array([list(v) if v else [] for v in values], type=pa.list_(pa.string()))


def floor_int64(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Float -> int64, flooring; NaN becomes null (a float cast would fail on it)."""
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    col = col.cast(pa.float64())
    col = pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col)
    return pc.floor(col).cast(pa.int64())


def position_in_sequence(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """0, 1, ..., n-1 for each sequence, concatenated: the timestamp of sources without time."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) - starts
