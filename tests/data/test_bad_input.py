"""Bad input stops with one DataError that names the file, the problem and a fix.

Each test writes a tiny file in the source's official layout with one defect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from onerec.data.adapters import load
from onerec.data.schema import make_dataset
from onerec.data.splits import load_splits, make_splits, save_splits
from onerec.errors import DataError

LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
              "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab")
VIDEO_HEADER = ("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
                "server_height,music_id,music_type,tag")
MATRIX_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"
CAPTION_HEADER = ("video_id,manual_cover_text,caption,topic_tag,first_level_category_id,first_level_category_name,"
                  "second_level_category_id,second_level_category_name,third_level_category_id,"
                  "third_level_category_name")
LOG = "log_standard_4_08_to_4_21_pure.csv"
VIDEOS = "video_features_basic_pure.csv"


def log_line(user: int = 0, video: int = 1, time_ms: object = 1649385600000) -> str:
    return f"{user},{video},20220408,1000,{time_ms},1,0,0,0,0,0,1,9000,8000,0,0,0,0,1"


def video_line(video: int) -> str:
    return f"{video},77,NORMAL,2022-04-10,Kmovie,0.0,8000.0,720.0,1280.0,5,9.0,39"


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def error_of(fn: Callable[[], object], file_name: str, *fragments: str) -> str:
    """Run ``fn``, expect a DataError naming ``file_name``, the fragments and a fix; return its message."""
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    for part in (file_name, *fragments, "Fix:"):
        assert part in msg, f"{part!r} not in: {msg}"
    return msg


# ---------------------------------------------------------------------- missing column
def test_missing_column_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER.replace(",time_ms,", ","), "0,1,20220408,1000,1,0,0,0,0,0,1,9000,8000,0,0,0,0,1")
    error_of(lambda: load("kuairand", tmp_path), LOG, "missing column 'time_ms'", "user_id, video_id")


def test_missing_field_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\trating:float", "1\t3")
    error_of(lambda: load("recbole", tmp_path, "toy"), "toy.inter", "missing field 'item_id'", "item_id:token")


def test_missing_column_amazon_text(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "text" / "Cat_items.tsv", "item_id\tasin\tname", "1\tA\tx")
    error_of(lambda: load("amazon2014", tmp_path, "Cat", text_path=tmp_path / "text"), "Cat_items.tsv",
             "missing column 'title'")


# ------------------------------------------------------------------------ duplicate ids
def test_duplicate_video_in_items_csv(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line())
    write(tmp_path / VIDEOS, VIDEO_HEADER, video_line(1), video_line(2), video_line(1))
    error_of(lambda: load("kuairand", tmp_path), VIDEOS, "duplicate id '1'", "line 2 and line 4")


def test_duplicate_item_in_lcrec_items(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", json.dumps({"0": [0, 1]}))
    write(tmp_path / "S.item.json", '{"0": {"title": "a"}, "1": {"title": "b"}, "0": {"title": "c"}}')
    error_of(lambda: load("lcrec", tmp_path, "S"), "S.item.json", "duplicate key '0'")


def test_duplicate_user_line_s3rec(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2", "2 2 3", "1 3")
    error_of(lambda: load("amazon2014", tmp_path), "Cat.txt", "line 3: user 1", "line 1")


def test_duplicate_video_in_kuairec_captions(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, "0,5,1,2,t,20200705,1593898068.0,1.0")
    write(tmp_path / "kuairec_caption_category.csv", CAPTION_HEADER, '5,UNKNOWN,"two\nlines",[],8,a,1,b,1,c',
          "5,UNKNOWN,again,[],8,a,1,b,1,c")
    error_of(lambda: load("kuairec", tmp_path), "kuairec_caption_category.csv", "duplicate id '5'",
             "record 1 and record 2")


# ------------------------------------------------------------------ unparsable timestamps
def test_unparsable_timestamp_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(time_ms="yesterday"))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "'yesterday'", "column 'time_ms'")


def test_unparsable_timestamp_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float", "1\t1\t881250949", "1\t2\tnoon")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "'noon'", "column 'timestamp:float'")


def test_unparsable_timestamp_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, "0,5,1,2,t,20200705,2020-07-05 05:27,1.0")
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 2", "column 'timestamp'")


# --------------------------------------------------------------------------- empty files
def test_empty_log_file(tmp_path: Path) -> None:
    (tmp_path / LOG).touch()
    error_of(lambda: load("kuairand", tmp_path), LOG, "file is empty")


def test_header_only_matrix(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER)
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "no rows")


def test_empty_s3rec_file(tmp_path: Path) -> None:
    (tmp_path / "Cat.txt").touch()
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat.txt", "empty")


def test_empty_lcrec_object(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", "{}")
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "empty")


# ---------------------------------------------------------------------------- unknown ids
def test_unknown_video_in_log(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(video=1), log_line(video=99))
    write(tmp_path / VIDEOS, VIDEO_HEADER, video_line(1))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "unknown id 99", VIDEOS)


def test_unknown_item_in_lcrec(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", json.dumps({"0": [0, 7]}))
    write(tmp_path / "S.item.json", json.dumps({"0": {"title": "a"}}))
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "item '7'", "S.item.json")


def test_unknown_item_in_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t1", "1\t5")
    write(tmp_path / "toy.item", "item_id:token\ttitle:token_seq", "1\tA film")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "unknown id '5'", "toy.item")


def test_unknown_item_in_split(tmp_path: Path) -> None:
    inter = pa.table({"user_id": [1] * 4 + [2] * 4, "item_id": [1, 2, 3, 4, 4, 3, 2, 1], "timestamp": list(range(8))})
    ds = make_dataset(name="t", source="test", interactions=inter)
    save_splits(make_splits(ds), tmp_path / "split")
    error_of(lambda: load_splits(tmp_path / "split", n_items=2), "train.parquet", "unknown item id")


# ------------------------------------------------------------------------ malformed lines
def test_non_integer_id_in_s3rec_line(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2 3", "2 4 B00X 5")
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat.txt", "line 2", "'B00X'")


def test_wrong_field_count_in_csv(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), "0,1,2")
    error_of(lambda: load("kuairand", tmp_path), LOG, "cannot parse")


def test_bad_feat_list_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, "0,5,1,2,t,20200705,1593898068.0,1.0")
    write(tmp_path / "item_categories.csv", "video_id,feat", '5,"[8, x]"')
    error_of(lambda: load("kuairec", tmp_path), "item_categories.csv", "line 2", "feat")


# --------------------------------------------------------------------------- invalid JSON
def test_invalid_json_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "Cat_item2attributes.json", '{"1": [1, 2],', '"2": [3')
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat_item2attributes.json", "invalid JSON at line 3")


def test_invalid_json_lcrec(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", "{'0': [1, 2]}")
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "invalid JSON")


# ------------------------------------------------------------------------ wrong locations
def test_missing_log_file(tmp_path: Path) -> None:
    write(tmp_path / VIDEOS, VIDEO_HEADER, video_line(1))
    error_of(lambda: load("kuairand", tmp_path), str(tmp_path), "no KuaiRand log files", LOG)


def test_ambiguous_name(tmp_path: Path) -> None:
    write(tmp_path / "A.txt", "1 1")
    write(tmp_path / "B.txt", "1 1")
    error_of(lambda: load("amazon2014", tmp_path), str(tmp_path), "A.txt, B.txt")


# ---------------------------------------------------------------------- a quote never closed
def test_a_quote_never_closed_names_its_line_not_the_rows_it_swallowed(tmp_path: Path) -> None:
    """pyarrow reads an unclosed quote as one value to the end of the file, silently: without the check the table
    adapter blamed the interactions for ids missing from items.csv."""
    from onerec.data.adapters._common import read_csv

    inter = ["user_id,item_id,timestamp", *(f"u{u},i{i},{1_700_000_000 + 60 * (4 * u + i)}" for u in range(3)
                                             for i in range(4))]
    items = ["item_id,title", 'i0,"a ""quoted"" word"', "i1,a 5\" screen", 'i2,"never closed', "i3,last"]
    write(tmp_path / "t" / "interactions.csv", *inter)
    write(tmp_path / "t" / "items.csv", *items)
    error_of(lambda: load("table", tmp_path / "t"), "items.csv", "line 4: a quote opens here and is never closed")
    # closed, the same file reads, the quote inside an unquoted value included
    write(tmp_path / "t" / "items.csv", *items[:3], 'i2,"closed"', "i3,last")
    assert load("table", tmp_path / "t").items.num_rows == 4
    # values that may hold line breaks (KuaiRec's captions): a last value ending in one is fine when its quote
    # closes, and an error when it never does
    ok = write(tmp_path / "m.csv", "id,caption", 'a,"two\nlines"', 'b,"ends in a break\n"')
    assert read_csv(ok, required=["id", "caption"], multiline=True)["caption"].to_pylist()[-1] == "ends in a break\n"
    bad = write(tmp_path / "n.csv", "id,caption", 'a,"two\nlines"', 'b,"never closed', "c,x")
    error_of(lambda: read_csv(bad, required=["id", "caption"], multiline=True), "n.csv",
             "line 4: a quote opens here and is never closed")
