"""Download helper: never touches the network; archives are built in tmp_path and served by file:// URLs."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from onerec.data import download
from onerec.data.adapters import load
from onerec.data.download import REGISTRY, fetch
from onerec.errors import DataError


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def with_md5(monkeypatch: pytest.MonkeyPatch, name: str, value: str | None) -> None:
    monkeypatch.setitem(REGISTRY, name, REGISTRY[name]._replace(md5=value))


@pytest.fixture
def kuairand_tar(tmp_path: Path) -> Path:
    return make_tar(tmp_path / "KuaiRand-Pure.tar.gz", {"KuaiRand-Pure/data/user_features_pure.csv": b"user_id\n0\n"})


def test_registry_entries() -> None:
    assert REGISTRY["kuairand-pure"].md5 == "0820331067a3784d9691136f772b35a7"
    assert REGISTRY["kuairec"].url.endswith("KuaiRec.zip") and REGISTRY["kuairec"].md5 is None
    assert REGISTRY["ml-1m"].kind == "zip"


def test_fetch_verifies_unpacks_and_is_idempotent(tmp_path: Path, kuairand_tar: Path, monkeypatch) -> None:
    with_md5(monkeypatch, "kuairand-pure", md5(kuairand_tar))
    dest = tmp_path / "data"
    out = fetch("kuairand-pure", dest, url=kuairand_tar.as_uri(), progress=False)
    assert out == dest / "kuairand-pure" / "KuaiRand-Pure" / "data"
    assert (out / "user_features_pure.csv").read_bytes() == b"user_id\n0\n"
    assert sorted(p.name for p in dest.iterdir()) == ["kuairand-pure"]  # no temp file or folder left
    kuairand_tar.unlink()  # a second call must not download again
    assert fetch("kuairand-pure", dest, url=kuairand_tar.as_uri(), progress=False) == out


def test_fetch_md5_mismatch(tmp_path: Path, kuairand_tar: Path, monkeypatch) -> None:
    with_md5(monkeypatch, "kuairand-pure", "0" * 32)
    dest = tmp_path / "data"
    with pytest.raises(DataError) as e:
        fetch("kuairand-pure", dest, url=kuairand_tar.as_uri(), progress=False)
    msg = str(e.value)
    assert "KuaiRand-Pure.tar.gz" in msg and "0" * 32 in msg and md5(kuairand_tar) in msg and "Fix:" in msg
    assert list(dest.iterdir()) == []  # nothing half-done left behind


def test_fetch_zip_without_md5_prints_it(tmp_path: Path, monkeypatch, capsys) -> None:
    archive = make_zip(tmp_path / "KuaiRec.zip", {"KuaiRec 2.0/data/small_matrix.csv": b"user_id\n"})
    out = fetch("kuairec", tmp_path / "d", url=archive.as_uri(), progress=False)
    assert (out / "small_matrix.csv").exists()
    err = capsys.readouterr().err
    assert md5(archive) in err and "not verified" in err


@pytest.mark.parametrize("kind", ["tar", "tar-legacy", "zip"])
def test_fetch_refuses_paths_outside(tmp_path: Path, monkeypatch, kind: str) -> None:
    files = {"../evil.txt": b"x", "KuaiRand-Pure/data/a.csv": b"a\n"}
    if kind == "tar-legacy":  # Pythons without tarfile's "data" filter take the hand-written check
        monkeypatch.delattr(download.tarfile, "data_filter", raising=False)
        kind = "tar"
    archive = make_tar(tmp_path / "a.tar.gz", files) if kind == "tar" else make_zip(tmp_path / "a.zip", files)
    monkeypatch.setitem(REGISTRY, "kuairand-pure", REGISTRY["kuairand-pure"]._replace(
        md5=None, kind="tar.gz" if kind == "tar" else "zip"))
    dest = tmp_path / "d"
    with pytest.raises(DataError, match="evil"):
        fetch("kuairand-pure", dest, url=archive.as_uri(), progress=False)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []


def test_fetch_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kuairand-pure"):
        fetch("nope", tmp_path)
    with pytest.raises(DataError, match="download failed"):
        fetch("ml-1m", tmp_path, url=(tmp_path / "missing.zip").as_uri(), progress=False)
    (tmp_path / "ml-1m").mkdir()  # an unrelated folder in the way
    with pytest.raises(DataError, match="lacks 'ml-1m'"):
        fetch("ml-1m", tmp_path)


def test_fetch_then_load(tmp_path: Path, monkeypatch) -> None:
    """The unpacked official layout loads directly."""
    log = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
           "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n"
           "0,5,20220408,1000,1649385600000,1,0,0,0,0,0,1,9000,8000,0,0,0,0,1\n")
    archive = make_tar(tmp_path / "k.tar.gz", {"KuaiRand-Pure/data/log_standard_4_08_to_4_21_pure.csv": log.encode()})
    with_md5(monkeypatch, "kuairand-pure", md5(archive))
    ds = load("kuairand", fetch("kuairand-pure", tmp_path / "d", url=archive.as_uri(), progress=False))
    assert ds.interactions.num_rows == 1 and ds.interactions["complete_play"][0].as_py() == 1
