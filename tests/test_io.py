"""Atomic writers: a failed write leaves the old file or folder as it was and no temporary behind."""

from __future__ import annotations

import os

import pytest

from onerec.io import atomic_folder, atomic_path, read_json, write_json


class _Boom(Exception):
    pass


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(_Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise _Boom
    assert read_json(target) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_writes_get_a_plain_files_permissions_or_keep_the_old_ones(tmp_path):
    mask = os.umask(0o022)  # what a shared machine usually has
    try:
        write_json(tmp_path / "new.json", {"v": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644  # not 0o600
        (tmp_path / "new.json").chmod(0o640)  # a user's own choice survives a rewrite
        write_json(tmp_path / "new.json", {"v": 2})
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640 and read_json(tmp_path / "new.json") == {"v": 2}
    finally:
        os.umask(mask)


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        assert tmp.name == "ckpt.tmp" and not any(tmp.iterdir())
        (tmp / "x").write_text("1")
    assert (target / "x").read_text() == "1"
    with pytest.raises(_Boom), atomic_folder(target) as tmp:
        (tmp / "y").write_text("2")
        raise _Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and [p.name for p in target.iterdir()] == ["x"]
    (tmp_path / "ckpt.tmp").mkdir()  # left by a process killed while writing
    (tmp_path / "ckpt.tmp" / "stale").write_text("")
    with atomic_folder(target) as tmp:
        assert not any(tmp.iterdir())  # the stale one is cleared first
        (tmp / "z").write_text("3")
    assert [p.name for p in target.iterdir()] == ["z"] and not (tmp_path / "ckpt.tmp").exists()
