"""File I/O shared by every stage: atomic writes, Parquet, JSON and YAML.

Every writer goes through :func:`atomic_path`, which writes to a temporary file in the
same folder and renames it over the target only once the write succeeded, so an
interrupted run never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from onerec.errors import DataError


def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under this process's umask (0o666 & ~umask). Linux tells the
    umask in /proc; elsewhere it is read by setting it and putting it back (a moment another thread could see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content. The file ends with the
    permissions of the one it replaces, or those of a plainly created file (``mkstemp``'s own are 0o600, which
    would hide a run's results and model from the other users of a shared machine or a service's account).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = _new_file_mode()
        if tmp_path.exists():  # a writer may have replaced or removed it
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder ``<path>.tmp`` beside ``path``; on success it takes the place of ``path``
    (an older folder there is removed first). On an exception the temporary folder is removed and
    ``path`` is left as it was. Readers skip names ending in ``.tmp``: a folder only ever appears
    under its own name whole (:func:`whole_folders`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():  # left by a run killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def whole_folders(root: str | os.PathLike[str], pattern: str) -> list[Path]:
    """The folders ``root/<pattern>`` that :func:`atomic_folder` finished (its ``.tmp`` ones left out), in
    name order; none when ``root`` does not exist."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern) if p.is_dir() and not p.name.endswith(".tmp"))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def update_json(path: str | os.PathLike[str], updates: dict[str, Any]) -> None:
    """Set ``updates``' keys in the JSON object at ``path`` (created when missing), keeping its other keys: for
    results files that several writers share. Atomic, as :func:`write_json`."""
    path = Path(path)
    doc = read_json(path) if path.exists() else {}
    doc.update(updates)
    write_json(path, doc)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path), fix="check the path or run the stage that writes it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON at line {e.lineno}: {e.msg}", path=str(path),
                        fix="repair or regenerate the file") from None


def write_yaml(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_yaml(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path), fix="check the path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML: {e}", path=str(path), fix="repair the file") from None


def write_parquet(path: str | os.PathLike[str], table: pa.Table, *, row_group_size: int = 1 << 20) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, turning a missing or truncated file into a :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path),
                        fix="check the path, or run the stage that writes it (e.g. `onerec data`)")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path=str(path),
                        fix="the file is truncated or not Parquet; regenerate it") from None
