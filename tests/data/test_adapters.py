"""Dataset adapters: exact counts on the real data at hand, official layouts on tiny fixtures.

Real-data tests use the ``dataset`` fixture (tests/conftest.py), which skips with a message
when ../shared/datasets (or $ONEREC_DATASETS), or the folder a test reads, is absent. KuaiRand /
KuaiRec logs are not at hand: their tests write a few rows in the official layout into tmp_path.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from onerec.data.adapters import ADAPTERS, load, load_amazon2014, load_kuairand, load_kuairec
from onerec.data.adapters._common import read_header
from onerec.data.adapters.kuairand import LOG_COLUMNS, VIDEO_COLUMNS
from onerec.data.adapters.kuairec import CAPTION_COLUMNS, CATEGORY_COLUMNS, MATRIX_COLUMNS
from onerec.errors import DataError

KUAIRAND_USER_HEADER = [
    "user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
    "friend_user_num_range", "register_days", "register_days_range", *(f"onehot_feat{i}" for i in range(18)),
]
KUAIRAND_VIDEO_HEADER = [
    "video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
    "server_width", "server_height", "music_id", "music_type", "tag",
]


def write_csv(path: Path, header: list[str] | tuple[str, ...], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def log_row(user: int, video: int, time_ms: int, *, click: int = 1, long_view: int = 0, play: int = 5000,
            duration: int = 10000, rand: int = 0) -> list:
    """One KuaiRand log row in the official column order."""
    return [user, video, 20220408, 1000, time_ms, click, 0, 0, 0, 0, 0, long_view, play, duration, 0, 0, 0, rand, 1]


def user_row(user: int) -> list:
    onehot = [1, 3, 2, 1160, 4.0, 0, 0, 31, 283, 6, 2, 2, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    return [user, "full_active", 0, 0, 0, 5, "(0,10]", 0, "0", 0, "0", 100, "61-90", *onehot]


def pick(row: dict, expected: dict) -> dict:
    """The entries of ``row`` under ``expected``'s keys, for a readable subset assertion."""
    return {k: row.get(k) for k in expected}


def video_row(video: int, tag: str = "39") -> list:
    return [video, 1000 + video, "NORMAL", "2022-04-10", "Kmovie", 0.0, 87433.0, 720.0, 1280.0, 9155, 9.0, tag]


def write_kuairand(root: Path) -> Path:
    """A KuaiRand-Pure folder in the official layout: 3 users, 3 videos, both policies."""
    data = root / "KuaiRand-Pure" / "data"
    t0 = 1_649_385_600_000
    write_csv(data / "log_standard_4_08_to_4_21_pure.csv", LOG_COLUMNS, [
        log_row(0, 1, t0 + 2500, long_view=1, play=12000, duration=10000),
        log_row(0, 0, t0 + 1200, click=0),
        log_row(1, 2, t0 + 3000),
    ])
    write_csv(data / "log_standard_4_22_to_5_08_pure.csv", LOG_COLUMNS, [log_row(1, 0, t0 + 90_000)])
    write_csv(data / "log_random_4_22_to_5_08_pure.csv", LOG_COLUMNS, [log_row(2, 1, t0 + 95_000, rand=1)])
    write_csv(data / "user_features_pure.csv", KUAIRAND_USER_HEADER, [user_row(u) for u in (2, 0, 1, 7)])
    write_csv(data / "video_features_basic_pure.csv", KUAIRAND_VIDEO_HEADER,
              [video_row(2, "20,43"), video_row(0), video_row(1, "7")])
    return data


def write_kuairec(root: Path) -> Path:
    """A KuaiRec 2.0 folder in the official layout, caption file with a quoted multi-line field and a bare CR."""
    data = root / "KuaiRec 2.0" / "data"
    rows = [
        [0, 10, 5000, 10000, "2020-07-05 05:27:48.378", 20200705, 1593898068.378, 0.5],
        [0, 11, 25000, 10000, "2020-07-05 05:28:00.000", 20200705, 1593898080.0, 2.5],
        [1, 10, 10000, 10000, "2020-07-05 06:00:00.000", 20200705, 1593900000.0, 1.0],
        [1, 11, 100, 10000, "", "", "", 0.01],
    ]
    write_csv(data / "small_matrix.csv", MATRIX_COLUMNS, rows)
    write_csv(data / "big_matrix.csv", MATRIX_COLUMNS, [*rows, [2, 12, 1, 3000, "x", 20200706, 1593990000.0, 0.0]])
    write_csv(data / "item_categories.csv", CATEGORY_COLUMNS, [[10, "[8]"], [11, "[27, 9]"], [12, "[1]"]])
    with open(data / "kuairec_caption_category.csv", "w", newline="", encoding="utf-8") as f:
        f.write(",".join(CAPTION_COLUMNS) + "\n")
        f.write('10,UNKNOWN,"精神小伙\n第二行",[],8,颜值,673,颜值随拍,-124,UNKNOWN\n')
        f.write("11,兄妹扭腰,开启一段\r王朝 #原相机,\"[原相机,隔岸扭胯舞]\",1,舞蹈,723,舞蹈日常,-124,UNKNOWN\n")
        f.write("12,UNKNOWN,,[],27,高新数码,-124,UNKNOWN,-124,UNKNOWN\n")
    write_csv(data / "user_features.csv", KUAIRAND_USER_HEADER, [user_row(u) for u in (0, 1, 2)])
    return data


# ------------------------------------------------------------------------ real data
def test_amazon2014_beauty_exact_counts_and_text(dataset) -> None:
    ds = load("amazon2014", dataset("amazon2014_s3rec"), "Beauty", text_path=dataset("amazon2014_text"))
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (22_363, 12_101, 198_502)
    assert ds.items["raw_id"].to_pylist()[:3] == ["1", "2", "3"]  # dense ids follow the S3Rec ids
    assert ds.users["raw_id"].to_pylist()[-1] == "22363"
    titles = ds.items["title"].to_pylist()
    assert None not in titles and not any("&amp;" in t for t in titles)
    assert ds.items["category"][0].as_py() == "Beauty > Makeup > Nails > Nail Polish"
    assert ds.items["tags"][0].as_py()[0].startswith("attr:")
    first = ds.interactions.slice(0, 5)  # user 1: "1 1 2 3 4 5", timestamps = positions
    assert first["item_id"].to_pylist() == [0, 1, 2, 3, 4] and first["timestamp"].to_pylist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("name", "counts"), [("Sports", (35_598, 18_357, 296_337)),
                                              ("Toys_and_Games", (19_412, 11_924, 167_597))])
def test_amazon2014_other_categories(dataset, name: str, counts: tuple[int, int, int]) -> None:
    ds = load_amazon2014(dataset("amazon2014_s3rec"), name)
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == counts


def test_amazon2014_toys_text_file_found_by_short_name(dataset) -> None:
    ds = load_amazon2014(dataset("amazon2014_s3rec"), "Toys_and_Games", text_path=dataset("amazon2014_text"))
    assert ds.items["title"].null_count == 0 and ds.items["category"][0].as_py().startswith("Toys & Games")


def test_lcrec_scientific(dataset) -> None:
    ds = load("lcrec", dataset("amazon2018_scientific_lcrec"), "Scientific")
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (8_317, 4_344, 58_492)
    assert ds.items["raw_id"].to_pylist()[:3] == ["0", "1", "2"]
    row = ds.items.slice(0, 1).to_pylist()[0]
    assert row["title"].startswith("SUPCO") and row["brand"] and row["text"]
    assert row["category"] == "Industrial & Scientific > Industrial Electrical > Passive Components > Capacitors"
    cats = [c for c in ds.items["category"].to_pylist() if c and "Tapes" in c]
    assert cats and "Tapes, Adhesives & Sealants" in cats[0]  # a comma inside a name does not split


def test_recbole_ml100k(dataset) -> None:
    ds = load("recbole", dataset("movielens_100k"), "ml-100k")
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (943, 1_682, 100_000)
    first = {"raw_id": "1", "title": "Toy Story", "tags": ["Animation", "Children's", "Comedy"]}
    assert pick(ds.items.slice(0, 1).to_pylist()[0], first) == first
    assert set(ds.users.column_names) >= {"age", "gender", "occupation", "zip_code"}
    assert ds.interactions["rating"].type.bit_width == 32
    ts = ds.interactions["timestamp"].to_numpy()
    assert ts.min() > 8e8  # real Unix seconds


def test_kuairand_real_side_file_headers(dataset) -> None:
    side = dataset("kuairand_pure_side")
    assert read_header(side / "video_features_basic_pure.csv") == KUAIRAND_VIDEO_HEADER
    assert read_header(side / "user_features_pure.csv") == KUAIRAND_USER_HEADER
    assert set(VIDEO_COLUMNS) <= set(KUAIRAND_VIDEO_HEADER)


def test_kuairand_real_side_files_load(dataset, tmp_path: Path) -> None:
    side = dataset("kuairand_pure_side")
    for f in ("video_features_basic_pure.csv", "user_features_pure.csv"):
        (tmp_path / f).symlink_to(side / f)  # read in place, never copied
    write_csv(tmp_path / "log_random_4_22_to_5_08_pure.csv", LOG_COLUMNS,
              [log_row(0, 0, 1_650_000_000_000, rand=1), log_row(1, 7582, 1_650_000_001_000, rand=1)])
    ds = load_kuairand(tmp_path, keep_unused=True)
    assert (ds.n_users, ds.n_items) == (27_285, 7_583)
    first = {"raw_id": "0", "author_id": 7349781, "duration_ms": 87433, "tags": ["tag:39"]}
    assert pick(ds.items.slice(0, 1).to_pylist()[0], first) == first


def test_kuairec_real_side_files(dataset, tmp_path: Path) -> None:
    side = dataset("kuairec_side")
    assert tuple(read_header(side / "kuairec_caption_category.csv")) == CAPTION_COLUMNS
    assert tuple(read_header(side / "item_categories.csv")) == CATEGORY_COLUMNS
    assert read_header(side / "user_features.csv") == KUAIRAND_USER_HEADER
    for f in ("kuairec_caption_category.csv", "item_categories.csv", "user_features.csv"):
        (tmp_path / f).symlink_to(side / f)
    write_csv(tmp_path / "small_matrix.csv", MATRIX_COLUMNS,
              [[0, 1378, 1, 2, "t", 20200705, 1593898068.0, 1.2], [14, 1381, 1, 2, "t", 20200705, 1593898069.0, 0.1]])
    ds = load_kuairec(tmp_path, keep_unused=True)
    assert (ds.n_users, ds.n_items) == (7_176, 10_728)
    row = ds.items.slice(1378, 1).to_pylist()[0]  # its caption holds a bare carriage return
    assert row["raw_id"] == "1378" and row["category"] == "明星娱乐" and "\r" not in row["text"]
    tags = ds.items.slice(1381, 1).to_pylist()[0]["tags"]
    assert {"主播中心", "快手创作者中心", "热门"} <= set(tags)


# ------------------------------------------------------------------- official layouts
def test_kuairand_fixture(tmp_path: Path) -> None:
    write_kuairand(tmp_path)
    ds = load("kuairand", tmp_path)  # finds KuaiRand-Pure/data below the given folder
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (3, 3, 5)
    assert ds.users["raw_id"].to_pylist() == ["0", "1", "2"]  # user 7 has no exposure: dropped
    inter = ds.interactions.to_pylist()
    u0 = [r for r in inter if r["user_id"] == 0]
    assert [r["item_id"] for r in u0] == [0, 1]  # ordered by time_ms
    assert u0[0]["timestamp"] == 1_649_385_601 and u0[0]["click"] == 0
    want = {"long_view": 1, "complete_play": 1, "watch_time_ms": 12000, "policy": "production"}
    assert pick(u0[1], want) == want
    assert [r["policy"] for r in inter if r["user_id"] == 2] == ["random"]
    assert ds.items.slice(2, 1).to_pylist()[0]["tags"] == ["tag:20", "tag:43"]
    assert load_kuairand(tmp_path, logs="random").interactions.num_rows == 1
    assert load_kuairand(tmp_path, logs="standard").interactions.num_rows == 4


def test_kuairec_fixture(tmp_path: Path) -> None:
    write_kuairec(tmp_path)
    ds = load("kuairec", tmp_path)
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (2, 2, 3)
    assert ds.meta["dropped_without_timestamp"] == 1
    rows = {(r["user_id"], r["item_id"]): r for r in ds.interactions.to_pylist()}
    want = {"long_view": 1, "complete_play": 1, "watch_time_ms": 25000, "timestamp": 1593898080}
    assert pick(rows[(0, 1)], want) == want
    assert rows[(0, 0)]["long_view"] == 0 and rows[(1, 0)]["complete_play"] == 1
    items = ds.items.to_pylist()
    want = {"raw_id": "10", "title": None, "text": "精神小伙\n第二行", "category": "颜值", "tags": ["feat:8"],
            "duration_ms": 10000}
    assert pick(items[0], want) == want
    assert items[1]["title"] == "兄妹扭腰" and items[1]["tags"] == ["原相机", "隔岸扭胯舞", "feat:27", "feat:9"]
    big = load_kuairec(tmp_path, matrix="big")
    assert big.n_items == 3 and big.meta["name"] == "kuairec-big"


# ------------------------------------------------------------------------- dispatch
def test_load_unknown_source_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load("movielens", tmp_path)
    assert all(s in str(e.value) for s in ADAPTERS)


def test_load_unknown_option(tmp_path: Path) -> None:
    write_kuairand(tmp_path)
    with pytest.raises(DataError, match=r"unknown option 'matrix'.*logs"):
        load("kuairand", tmp_path, matrix="big")


def test_parquet_round_trip(tmp_path: Path) -> None:
    ds = load("kuairand", write_kuairand(tmp_path / "raw"))
    ds.save(tmp_path / "canon")
    back = load("parquet", tmp_path / "canon")
    assert back.interactions.equals(ds.interactions) and back.items.equals(ds.items)
    assert np.array_equal(back.users["user_id"].to_numpy(), np.arange(3))
