"""Download and unpack public datasets from their official sources.

:func:`fetch` streams the archive into a temporary file (with a progress bar), checks its md5
where one is known, unpacks it into a temporary folder and only then renames that folder into
place, so an interrupted download never leaves a half-unpacked dataset behind. A dataset
already in place is not downloaded again. Archives are unpacked safely: members with absolute
paths or ``..`` components, and links pointing outside the folder, are refused.

Example::

    root = fetch("kuairand-pure", "~/data")          # ~/data/kuairand-pure/KuaiRand-Pure/data
    ds = onerec.data.adapters.load("kuairand", root)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from tqdm import tqdm

from onerec.errors import DataError

_CHUNK = 1 << 20


class Remote(NamedTuple):
    """Where a dataset lives and what its archive holds."""

    url: str
    md5: str | None  # None: not published; the computed md5 is printed instead
    kind: str  # "tar.gz" or "zip"
    folder: str  # the data folder inside the unpacked archive


REGISTRY: dict[str, Remote] = {
    "kuairand-pure": Remote("https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz",
                            "0820331067a3784d9691136f772b35a7", "tar.gz", "KuaiRand-Pure/data"),
    "kuairec": Remote("https://zenodo.org/records/18164998/files/KuaiRec.zip", None, "zip", "KuaiRec 2.0/data"),
    "ml-1m": Remote("https://files.grouplens.org/datasets/movielens/ml-1m.zip", None, "zip", "ml-1m"),
}


def fetch(name: str, dest_dir: str | Path, *, url: str | None = None, progress: bool = True) -> Path:
    """Download and unpack a registered dataset into ``dest_dir / name``.

    Args:
        name: A key of :data:`REGISTRY` (``kuairand-pure``, ``kuairec``, ``ml-1m``).
        dest_dir: Parent folder; the archive unpacks into ``dest_dir / name``.
        url: Another address for the same archive (a mirror, or a ``file://`` URL).
        progress: Show a progress bar on stderr.

    Returns:
        The data folder inside the unpacked archive, e.g. ``dest_dir/kuairand-pure/KuaiRand-Pure/data``.
    """
    remote = REGISTRY.get(name)
    if remote is None:
        raise DataError(f"unknown dataset '{name}'", fix=f"use one of: {', '.join(REGISTRY)}")
    dest_dir = Path(dest_dir).expanduser()
    target = dest_dir / name
    if target.exists():
        return _existing(target, remote)
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = url or remote.url
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".{remote.kind}.part", dir=dest_dir)
    os.close(fd)
    archive = Path(tmp)
    try:
        digest = _download(url, archive, desc=name, progress=progress)
        _verify(name, url, remote.md5, digest)
        _unpack_into_place(archive, remote.kind, target, url)
    finally:
        archive.unlink(missing_ok=True)
    return _existing(target, remote)


def _existing(target: Path, remote: Remote) -> Path:
    data = target / remote.folder
    if not data.is_dir():
        raise DataError(f"the folder exists but lacks '{remote.folder}'", path=str(target),
                        fix=f"delete {target} and fetch again (or unpack {remote.url} there by hand)")
    return data


def _download(url: str, out: Path, *, desc: str, progress: bool) -> str:
    """Stream ``url`` into ``out``; return the md5 of the bytes written."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(out, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"download failed ({e})", path=url,
                        fix=f"check the network connection, or download {url} by hand and unpack it") from None
    return md5.hexdigest()


def _verify(name: str, url: str, expected: str | None, actual: str) -> None:
    file = url.rsplit("/", 1)[-1]
    if expected is None:
        print(f"{file}: md5 {actual} (not verified: no published checksum for '{name}')", file=sys.stderr)
        return
    if actual.lower() != expected.lower():
        raise DataError(f"md5 mismatch for {file}: expected {expected}, got {actual}", path=url,
                        fix="the download is corrupt or incomplete; fetch again, or check the file against "
                            "the md5 published with the dataset")


def _unpack_into_place(archive: Path, kind: str, target: Path, url: str) -> None:
    """Unpack into a temporary sibling folder, then rename it to ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unpack", dir=target.parent))
    try:
        if kind == "zip":
            _unzip(archive, tmp, url)
        else:
            _untar(archive, tmp, url)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unsafe(name: str) -> bool:
    """Absolute paths, drive letters and ``..`` components could write outside the folder."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def _unzip(archive: Path, dest: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if _unsafe(member):
                    raise DataError(f"archive member '{member}' would unpack outside the folder", path=url,
                                    fix="the archive is not the official one; download it from the registry URL")
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise DataError(f"not a readable zip archive ({e})", path=url, fix="download it again") from None


def _untar(archive: Path, dest: Path, url: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the library's own safe filter
                tf.extractall(dest, filter="data")
            else:
                members = tf.getmembers()
                for m in members:
                    _check_tar_member(m, url)
                tf.extractall(dest, members=members)
    except tarfile.TarError as e:  # FilterError (unsafe member) is a TarError too
        raise DataError(f"cannot unpack the archive safely ({e})", path=url,
                        fix="the archive is corrupt or not the official one; download it again") from None


def _check_tar_member(m: tarfile.TarInfo, url: str) -> None:
    bad = _unsafe(m.name) or not (m.isfile() or m.isdir() or m.issym() or m.islnk())
    if (m.issym() or m.islnk()) and not bad:
        link = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
        bad = _unsafe(link) or os.path.normpath(link).startswith("..")
    if bad:
        raise DataError(f"archive member '{m.name}' would unpack outside the folder or is not a plain file",
                        path=url, fix="the archive is not the official one; download it from the registry URL")
