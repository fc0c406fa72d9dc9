"""Hostile input (issue 39): one case per class for every adapter.

Adapters: ``parquet`` (the canonical tables of schema.py), ``amazon2014``, ``kuairand``,
``kuairec``, ``lcrec``, ``recbole``. Each test builds its own tiny malformed files in tmp_path; a
refusal must be one DataError naming the file, the row / line or column, and a fix ("Fix:").
Where a class cannot arise in an adapter's layout, a comment in that class's section says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_bad_input import CAPTION_HEADER, LOG, LOG_HEADER, MATRIX_HEADER, VIDEOS, error_of

from onerec.data.adapters import load
from onerec.data.schema import Dataset, make_dataset
from onerec.data.splits import Sequences, make_splits
from onerec.errors import DataError

T0 = 1_649_385_600_000


def log_line(user: object = 0, video: object = 1, time_ms: object = T0, *, click: object = 1, like: object = 0,
             rand: object = 0) -> str:
    return f"{user},{video},20220408,1000,{time_ms},{click},{like},0,0,0,0,1,9000,8000,0,0,0,{rand},1"


def video_line(video: int) -> str:
    return f"{video},77,NORMAL,2022-04-10,Kmovie,0.0,8000.0,720.0,1280.0,5,9.0,39"


def matrix_line(user: object = 0, video: object = 5, ts: object = "1593898068.0", ratio: object = "1.0") -> str:
    return f"{user},{video},1000,2000,t,20200705,{ts},{ratio}"


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def canonical(root: Path, inter: dict | pa.Table, *, items: pa.Table | None = None, meta: dict | None = None,
              n_users: int | None = None, n_items: int | None = None) -> Path:
    """A canonical dataset folder written by hand (not by Dataset.save), so that it can be wrong."""
    root.mkdir(parents=True, exist_ok=True)
    t = inter if isinstance(inter, pa.Table) else pa.table(inter)
    n_users = n_users if n_users is not None else int(np.max(t["user_id"].to_numpy())) + 1
    n_items = n_items if n_items is not None else int(np.max(t["item_id"].to_numpy())) + 1
    pq.write_table(t, root / "interactions.parquet")
    if items is None:
        items = pa.table({"item_id": np.arange(n_items), "raw_id": [str(i) for i in range(n_items)]})
    pq.write_table(items, root / "items.parquet")
    pq.write_table(pa.table({"user_id": np.arange(n_users), "raw_id": [str(u) for u in range(n_users)]}),
                   root / "users.parquet")
    (root / "dataset.json").write_text(json.dumps({"name": "t", "source": "test", "schema_version": 1,
                                                   **(meta or {})}))
    return root


def tiny(**extra: list) -> dict:
    """Canonical interactions of 2 users x 3 events, sorted."""
    return {"user_id": [0, 0, 0, 1, 1, 1], "item_id": [0, 1, 2, 2, 1, 0], "timestamp": [10, 20, 30, 10, 20, 30],
            **extra}


def assert_grouped_and_chronological(ds: Dataset) -> None:
    """Each user's events form one run, in time order: what the splits rely on."""
    uid = ds.interactions["user_id"].to_numpy()
    ts = ds.interactions["timestamp"].to_numpy()
    assert np.all(np.diff(uid) >= 0)
    same = np.diff(uid) == 0
    assert np.all(np.diff(ts)[same] >= 0)


def event_sets(ds: Dataset) -> dict[str, list[tuple[str, int]]]:
    """Per raw user id, its (raw item id, timestamp) events in the dataset's order."""
    users = ds.users["raw_id"].to_pylist()
    items = ds.items["raw_id"].to_pylist()
    out: dict[str, list[tuple[str, int]]] = {}
    for u, i, t in zip(*(ds.interactions[c].to_pylist() for c in ("user_id", "item_id", "timestamp"))):
        out.setdefault(users[u], []).append((items[i], t))
    return out


# =============================================================== 1. unsorted interactions
def test_unsorted_canonical_table_is_sorted_stably_and_said(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_users, per = 6, 8
    uid = np.repeat(np.arange(n_users), per)
    ts = np.tile(np.arange(per) * 10, n_users)
    ts[3] = ts[2]  # a tie: its file order must survive
    item = (uid * 3 + np.arange(len(uid))) % 11
    rows = pa.table({"user_id": uid, "item_id": item, "timestamp": ts, "click": np.ones(len(uid), np.int8)})
    good = load("parquet", canonical(tmp_path / "sorted", rows, n_items=11))
    assert "normalised" not in good.meta
    shuffled = rows.take(pa.array(rng.permutation(rows.num_rows)))
    tie = [r for r in range(shuffled.num_rows) if shuffled["user_id"][r].as_py() == 0
           and shuffled["timestamp"][r].as_py() == ts[2]]
    # put the tied pair in the order of the sorted file, so a stable sort gives the same table
    first, second = sorted(tie, key=lambda r: shuffled["item_id"][r].as_py() != item[2])
    order = list(range(shuffled.num_rows))
    order[min(tie)], order[max(tie)] = first, second
    shuffled = shuffled.take(pa.array(order))
    bad = load("parquet", canonical(tmp_path / "shuffled", shuffled, n_items=11))
    assert_grouped_and_chronological(bad)
    assert bad.interactions.equals(good.interactions)
    assert any("sorted by (user_id, timestamp)" in n for n in bad.meta["normalised"])
    a, b = make_splits(good), make_splits(bad)
    for name in ("train", "valid", "test"):
        assert a[name].equals(b[name])
    for hist, hts, uid_ in zip(b["test"]["history"].to_pylist(), b["test"]["history_ts"].to_pylist(),
                               b["test"]["user_id"].to_pylist()):
        assert hts == sorted(hts)
        mine = rows.filter(pa.compute.equal(rows["user_id"], uid_))["item_id"].to_pylist()
        assert set(hist) <= set(mine)  # no other user's items


def test_unsorted_table_is_saved_sorted_with_the_note(tmp_path: Path) -> None:
    rows = pa.table(tiny()).take(pa.array([5, 0, 3, 2, 4, 1]))
    ds = load("parquet", canonical(tmp_path / "in", rows))
    ds.save(tmp_path / "out")
    back = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert any("6 rows" in n or "out of order" in n for n in back["normalised"])
    again = Dataset.load(tmp_path / "out")
    assert again.interactions.equals(ds.interactions)


def test_splits_refuse_an_unsorted_table_built_in_memory() -> None:
    inter = pa.table(tiny()).take(pa.array([1, 0, 2, 3, 4, 5]))
    with pytest.raises(DataError, match=r"not sorted.*Fix:"):
        Sequences.from_interactions(inter, 2)


def test_unsorted_amazon_lines(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "2 5 4 3", "1 1 2 3")
    ds = load("amazon2014", tmp_path, "Cat")
    assert_grouped_and_chronological(ds)
    assert event_sets(ds) == {"1": [("1", 0), ("2", 1), ("3", 2)], "2": [("5", 0), ("4", 1), ("3", 2)]}


def test_unsorted_lcrec_users(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", json.dumps({"1": [4, 3, 2], "0": [0, 1, 2]}))
    ds = load("lcrec", tmp_path, "S")
    assert_grouped_and_chronological(ds)
    assert event_sets(ds)["1"] == [("4", 0), ("3", 1), ("2", 2)]


def test_unsorted_kuairand_log(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(1, 3, T0 + 5000), log_line(0, 2, T0 + 9000), log_line(1, 4, T0 + 1000),
          log_line(0, 1, T0 + 2000), log_line(0, 7, T0 + 2400))
    ds = load("kuairand", tmp_path)
    assert_grouped_and_chronological(ds)
    ev = event_sets(ds)
    assert [i for i, _ in ev["0"]] == ["1", "7", "2"] and [i for i, _ in ev["1"]] == ["4", "3"]


def test_unsorted_kuairec_matrix(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(1, 6, "1593898090.0"),
          matrix_line(0, 5, "1593898080.0"), matrix_line(1, 5, "1593898070.0"), matrix_line(0, 6, "1593898060.0"))
    ds = load("kuairec", tmp_path)
    assert_grouped_and_chronological(ds)
    assert [i for i, _ in event_sets(ds)["1"]] == ["5", "6"]


def test_unsorted_recbole_ties_keep_file_order(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float", "2\ta\t30", "1\tc\t20",
          "2\tb\t10", "1\td\t20", "1\te\t5")
    ds = load("recbole", tmp_path)
    assert_grouped_and_chronological(ds)
    ev = event_sets(ds)
    assert ev["1"] == [("e", 5), ("c", 20), ("d", 20)] and ev["2"] == [("b", 10), ("a", 30)]


# ===================================================================== 2. non-UTF-8 text
def test_non_utf8_amazon_sequences(tmp_path: Path) -> None:
    write_bytes(tmp_path / "Cat.txt", b"1 1 2\n2 3 \xe94\n")
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat.txt", "line 2", "not UTF-8")


def test_non_utf8_amazon_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write_bytes(tmp_path / "Cat_item2attributes.json", b'{"1": [1],\n "2": [2], "\xff": [3]}')
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat_item2attributes.json", "line 2", "not UTF-8")


def test_non_utf8_amazon_text(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write_bytes(tmp_path / "text" / "Cat_items.tsv",
                b'item_id\tasin\ttitle\tcategories\n1\tA\tok\t[["B"]]\n2\tB\tcaf\xe9\t[["B"]]\n')
    error_of(lambda: load("amazon2014", tmp_path, "Cat", text_path=tmp_path / "text"), "Cat_items.tsv", "line 3",
             "not UTF-8", "column 'title'")


def test_non_utf8_kuairand_log(tmp_path: Path) -> None:
    write_bytes(tmp_path / LOG, (LOG_HEADER + "\n" + log_line() + "\n").encode() + log_line(1).encode()[:-1]
                + b"\xff\n")
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "not UTF-8", "column 'tab'")


def test_non_utf8_kuairec_captions(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line())
    write_bytes(tmp_path / "kuairec_caption_category.csv",
                (CAPTION_HEADER + "\n").encode() + b"5,UNKNOWN,\xc3(,[],8,a,1,b,1,c\n")
    error_of(lambda: load("kuairec", tmp_path), "kuairec_caption_category.csv", "line 2", "not UTF-8",
             "column 'caption'")


def test_non_utf8_lcrec(tmp_path: Path) -> None:
    write_bytes(tmp_path / "S.inter.json", b'{"0": [1, 2],\n"\x80": [3]}')
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "line 2", "not UTF-8")


def test_non_utf8_recbole(tmp_path: Path) -> None:
    write_bytes(tmp_path / "toy.inter", b"user_id:token\titem_id:token\n1\t1\n1\t\xfe2\n")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "not UTF-8", "column 'item_id:token'")


def test_non_utf8_parquet_raw_id(tmp_path: Path) -> None:
    items = pa.table({"item_id": np.arange(3), "raw_id": pa.array([b"a", b"\xffb", b"c"], pa.binary())})
    root = canonical(tmp_path, tiny(), items=items)
    error_of(lambda: load("parquet", root), "items.parquet", "row 1", "column 'raw_id'")


def test_non_utf8_parquet_dataset_json(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny())
    (root / "dataset.json").write_bytes(b'{"name": "t",\n "source": "\xe9"}')
    error_of(lambda: load("parquet", root), "dataset.json", "line 2", "not UTF-8")


# ============================================================ 3. infinite or huge timestamps
# amazon2014 and lcrec files hold no timestamps (the position in the sequence stands in): n/a.
@pytest.mark.parametrize("ts", [float("inf"), float("nan"), 1e300, -5.0])
def test_bad_timestamp_parquet_float(tmp_path: Path, ts: float) -> None:
    root = canonical(tmp_path, tiny(timestamp=[10.0, 20.0, ts, 10.0, 20.0, 30.0]))
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 2", "column 'timestamp'", "not a time")


def test_huge_timestamp_parquet_int(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny(timestamp=[10, 20, 30, 10, 20, 2**62]))
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 5", "column 'timestamp'")


def test_huge_timestamp_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(time_ms=9_000_000_000_000_000_000))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'time_ms'", "milliseconds")


def test_infinite_timestamp_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(time_ms="inf"))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'time_ms'")


@pytest.mark.parametrize("ts", ["inf", "-inf", "1e300"])
def test_bad_timestamp_kuairec(tmp_path: Path, ts: str) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(), matrix_line(ts=ts))
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 3", "column 'timestamp'")


@pytest.mark.parametrize("ts", ["inf", "1e300", "1700000000000"])
def test_bad_timestamp_recbole(tmp_path: Path, ts: str) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float", "1\t1\t881250949",
          f"1\t2\t{ts}")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "column 'timestamp'")


def test_bad_timestamp_make_dataset() -> None:
    inter = pa.table({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [1.0, float("inf")]})
    error_of(lambda: make_dataset(name="t", source="s", interactions=inter, path="raw.csv"), "raw.csv", "row 1",
             "column 'timestamp'")


# ============================================================ 4. duplicated header column
# lcrec and the amazon2014 sequence / attribute files have no header; a JSON object naming a key
# twice is their analogue and is refused (test_bad_input: test_duplicate_item_in_lcrec_items).
def test_duplicate_header_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER.replace(",tab", ",time_ms"), log_line())
    error_of(lambda: load("kuairand", tmp_path), LOG, "column 'time_ms'", "twice", "fields 5 and 19")


def test_duplicate_header_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER.replace(",time,", ",timestamp,"), matrix_line())
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "column 'timestamp'", "twice")


def test_duplicate_header_recbole_same_field_two_types(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\titem_id:float", "1\t1\t2")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "column 'item_id'", "twice")


def test_duplicate_header_amazon_text(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "text" / "Cat_items.tsv", "item_id\ttitle\tcategories\ttitle", '1\ta\t[["B"]]\tb')
    error_of(lambda: load("amazon2014", tmp_path, "Cat", text_path=tmp_path / "text"), "Cat_items.tsv",
             "column 'title'", "twice")


def test_duplicate_column_parquet(tmp_path: Path) -> None:
    t = pa.table([pa.array([0, 0, 1]), pa.array([0, 1, 0]), pa.array([1, 2, 3]), pa.array([0, 1, 1])],
                 names=["user_id", "item_id", "timestamp", "user_id"])
    root = canonical(tmp_path, pa.table({"user_id": [0, 1], "item_id": [0, 1], "timestamp": [0, 0]}))
    pq.write_table(t, root / "interactions.parquet")
    error_of(lambda: load("parquet", root), "interactions.parquet", "column 'user_id'", "twice")


# ================================================================== 5. ids beyond int64
BIG = "99999999999999999999"


def test_id_beyond_int64_amazon(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2", f"2 3 {BIG}")
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat.txt", "line 2", BIG, "64 bits")


def test_id_beyond_int64_amazon_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "Cat_item2attributes.json", json.dumps({"1": [1], BIG: [2]}))
    error_of(lambda: load("amazon2014", tmp_path, "Cat", keep_unused=True), "Cat_item2attributes.json", BIG,
             "64 bits")


def test_id_beyond_int64_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(video=BIG))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'video_id'", BIG)


def test_id_beyond_int64_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(), matrix_line(user=BIG))
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 3", "column 'user_id'", BIG)


def test_id_beyond_int64_parquet(tmp_path: Path) -> None:
    inter = pa.table({"user_id": pa.array([0, 0, 2**63], pa.uint64()), "item_id": [0, 1, 0], "timestamp": [1, 2, 3]})
    root = canonical(tmp_path, pa.table({"user_id": [0], "item_id": [0], "timestamp": [0]}), n_items=2)
    pq.write_table(inter, root / "interactions.parquet")
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 2", "column 'user_id'")


# recbole and lcrec ids are text (RecBole 'token', JSON keys): a long number is a valid id there and
# is kept exactly, never squeezed through int64.
def test_long_number_ids_are_text_in_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", f"1\t{BIG}", "1\t7", "2\t7")
    ds = load("recbole", tmp_path)
    assert BIG in ds.items["raw_id"].to_pylist() and ds.n_items == 2


def test_long_number_ids_are_text_in_lcrec(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", f'{{"{BIG}": [1, {BIG}0]}}')
    ds = load("lcrec", tmp_path)
    assert ds.users["raw_id"].to_pylist() == [BIG] and f"{BIG}0" in ds.items["raw_id"].to_pylist()


# ================================================================= 6. JSON nested deep
# kuairand and recbole hold no JSON: n/a. Python's json gives up near 1,000 levels.
DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_amazon_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "Cat_item2attributes.json", '{"1": [1],', f'"2": {DEEP}}}')
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat_item2attributes.json", "line 2", "nested")


def test_deep_json_amazon_categories_cell(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    write(tmp_path / "text" / "Cat_items.tsv", "item_id\ttitle\tcategories", f"1\ta\t{DEEP}")
    error_of(lambda: load("amazon2014", tmp_path, "Cat", text_path=tmp_path / "text"), "Cat_items.tsv", "line 2",
             "column 'categories'")


def test_deep_json_lcrec_inter(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [1, 2],', f'"1": {DEEP}}}')
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "line 2", "nested")


def test_deep_json_lcrec_items(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [1, 2]}')
    write(tmp_path / "S.item.json", '{"1": {"title": "a"},', f'"2": {{"title": {DEEP}}}}}')
    error_of(lambda: load("lcrec", tmp_path), "S.item.json", "line 2", "nested")


def test_deep_json_kuairec_feat_cell(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line())
    write(tmp_path / "item_categories.csv", "video_id,feat", f'5,"{DEEP}"')
    error_of(lambda: load("kuairec", tmp_path), "item_categories.csv", "line 2", "column 'feat'")


def test_deep_json_parquet_dataset_json(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny())
    (root / "dataset.json").write_text('{"name": "t",\n "source": ' + DEEP + "}")
    error_of(lambda: load("parquet", root), "dataset.json", "line 2", "nested")


# ============================================================= 7. out-of-range signal values
# amazon2014 and lcrec hold no signals: n/a.
def test_out_of_range_signal_parquet(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny(like=[0, 1, 300, 0, 0, 1]))
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 2", "column 'like'", "300")


def test_non_finite_rating_parquet(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny(rating=[1.0, 2.0, 3.0, float("inf"), 4.0, 5.0]))
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 3", "column 'rating'")


def test_out_of_range_signal_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(like=300))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'is_like'", "300")


@pytest.mark.parametrize("ratio", ["inf", "-0.5"])
def test_out_of_range_watch_ratio_kuairec(tmp_path: Path, ratio: str) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(), matrix_line(ratio=ratio))
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 3", "column 'watch_ratio'")


def test_infinite_duration_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, "0,5,inf,2000,t,20200705,1593898068.0,1.0")
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 2", "column 'play_duration'")


@pytest.mark.parametrize("rating", ["inf", "1e300"])
def test_out_of_range_rating_recbole(tmp_path: Path, rating: str) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float", "1\t1\t3", f"1\t2\t{rating}")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "column 'rating'")


# ========================================================== 8. binary signal coded 0/2
# kuairec's signals are derived from watch_ratio (checked above), recbole reads no 0/1 field
# (only rating), amazon2014 and lcrec have no signals: n/a.
def test_binary_signal_coded_0_2_parquet(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny(click=[0, 2, 2, 0, 2, 0]))
    error_of(lambda: load("parquet", root), "interactions.parquet", "row 1", "column 'click'", "0 or 1")


def test_is_click_2_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(click=2))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'is_click'", "0 or 1")


def test_is_rand_2_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(rand=2))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 2", "column 'is_rand'")


def test_binary_signal_coded_0_2_make_dataset() -> None:
    inter = pa.table({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [1, 2], "hate": [0, 2]})
    error_of(lambda: make_dataset(name="t", source="s", interactions=inter, path="raw.csv"), "raw.csv",
             "column 'hate'")


# ======================================================= 9. ids "5" and "05" (one number, two spellings)
def test_two_spellings_lcrec_items(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [1, 5, "05"]}')
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "user '0', item 3", "'05'", "'5'", "same number",
             "column 'item_id'")


def test_two_spellings_lcrec_users(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"5": [1, 2], "05": [3]}')
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "user '05'", "same number")


def test_two_spellings_lcrec_item_keys(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [5]}')
    write(tmp_path / "S.item.json", '{"5": {"title": "a"}, "05": {"title": "b"}}')
    error_of(lambda: load("lcrec", tmp_path), "S.item.json", "item '05'", "same number")


def test_two_spellings_across_lcrec_files(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [5]}')
    write(tmp_path / "S.item.json", '{"05": {"title": "b"}}')
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "item '5'", "spelled the same way")


def test_two_spellings_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t5", "1\t6", "2\t05")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 4", "column 'item_id'", "same number")


def test_two_spellings_recbole_side_file(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t5")
    write(tmp_path / "toy.user", "user_id:token\tage:float", "1\t20", "+1\t30")
    error_of(lambda: load("recbole", tmp_path), "toy.user", "line 3", "same number")


def test_two_spellings_amazon_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 5 6")
    write(tmp_path / "Cat_item2attributes.json", '{"5": [1], "05": [2]}')
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat_item2attributes.json", "'05'", "same number")


def test_two_spellings_parquet_raw_ids(tmp_path: Path) -> None:
    items = pa.table({"item_id": np.arange(3), "raw_id": ["5", "6", "05"]})
    error_of(lambda: load("parquet", canonical(tmp_path, tiny(), items=items)), "items.parquet", "row 2",
             "column 'raw_id'", "same number")


# The amazon2014 .txt, kuairand and kuairec files declare integer ids: "05" is read as the number 5,
# the same user or item as "5" (no ambiguity, nothing to report); a second line for the same user
# in the .txt file is refused (test_bad_input: test_duplicate_user_line_s3rec).
def test_integer_columns_read_05_as_5_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(5, 1, T0), log_line("05", 2, T0 + 1000))
    ds = load("kuairand", tmp_path)
    assert ds.users["raw_id"].to_pylist() == ["5"] and ds.interactions.num_rows == 2


def test_integer_columns_read_05_as_5_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(5, 1), matrix_line("05", 2, "1593898069.0"))
    assert load("kuairec", tmp_path).n_users == 1


# ======================================================================= 10. NUL in an id
def test_nul_in_id_recbole(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t5", "1\t5\x00")
    error_of(lambda: load("recbole", tmp_path), "toy.inter", "line 3", "column 'item_id'", "control character")


def test_nul_in_id_lcrec(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", json.dumps({"0": [1], "1\u0000": [2]}))
    error_of(lambda: load("lcrec", tmp_path), "S.inter.json", "column 'user_id'", "control character")


def test_nul_in_id_amazon(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2", "2 3\x004")
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat.txt", "line 2", "not an integer id")


def test_nul_in_id_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(), log_line(video="1\x00"))
    error_of(lambda: load("kuairand", tmp_path), LOG, "line 3", "column 'video_id'")


def test_nul_in_id_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(), matrix_line(user="0\x00"))
    error_of(lambda: load("kuairec", tmp_path), "small_matrix.csv", "line 3", "column 'user_id'")


def test_nul_in_id_parquet(tmp_path: Path) -> None:
    items = pa.table({"item_id": np.arange(3), "raw_id": ["a", "b\x00", "c"]})
    error_of(lambda: load("parquet", canonical(tmp_path, tiny(), items=items)), "items.parquet", "row 1",
             "column 'raw_id'", "control character")


def test_nul_in_id_make_dataset() -> None:
    inter = pa.table({"user_id": ["a", "a\x00"], "item_id": ["x", "y"], "timestamp": [1, 2]})
    error_of(lambda: make_dataset(name="t", source="s", interactions=inter, path="raw.csv"), "raw.csv", "row 1",
             "column 'user_id'")


# ================================================================= 11. unknown schema_version
# Only the parquet source reads a dataset.json; every other adapter writes its own: n/a there.
@pytest.mark.parametrize("version", [2, 0, "1", 1.5, True])
def test_unknown_schema_version(tmp_path: Path, version: object) -> None:
    root = canonical(tmp_path, tiny(), meta={"schema_version": version})
    error_of(lambda: load("parquet", root), "dataset.json", "column 'schema_version'", repr(version))


def test_missing_schema_version_is_read_as_1_and_said(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny())
    (root / "dataset.json").write_text(json.dumps({"name": "t", "source": "test"}))
    ds = load("parquet", root)
    assert any("no schema_version" in n for n in ds.meta["normalised"])


def test_dataset_json_not_an_object(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny())
    (root / "dataset.json").write_text("[1, 2]")
    error_of(lambda: load("parquet", root), "dataset.json", "expected a JSON object")


# ============================================================= 12. broken symbolic links
def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.parent / "gone" / path.name, path)
    return path


def test_broken_link_recbole_item(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t5")
    broken(tmp_path / "toy.item")
    error_of(lambda: load("recbole", tmp_path), "toy.item", "broken symbolic link", "gone")


def test_broken_link_recbole_user(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", "1\t5")
    broken(tmp_path / "toy.user")
    error_of(lambda: load("recbole", tmp_path), "toy.user", "broken symbolic link")


def test_broken_link_recbole_inter(tmp_path: Path) -> None:
    broken(tmp_path / "toy.inter")
    error_of(lambda: load("recbole", tmp_path, "toy"), "toy.inter", "broken symbolic link")


def test_broken_link_lcrec_item(tmp_path: Path) -> None:
    write(tmp_path / "S.inter.json", '{"0": [5]}')
    broken(tmp_path / "S.item.json")
    error_of(lambda: load("lcrec", tmp_path), "S.item.json", "broken symbolic link")


def test_broken_link_amazon_attributes(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    broken(tmp_path / "Cat_item2attributes.json")
    error_of(lambda: load("amazon2014", tmp_path, "Cat"), "Cat_item2attributes.json", "broken symbolic link")


def test_broken_link_amazon_text(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", "1 1 2")
    broken(tmp_path / "text" / "Cat_items.tsv")
    error_of(lambda: load("amazon2014", tmp_path, "Cat", text_path=tmp_path / "text"), "Cat_items.tsv",
             "broken symbolic link")


def test_broken_link_kuairand_videos(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line())
    broken(tmp_path / VIDEOS)
    error_of(lambda: load("kuairand", tmp_path), VIDEOS, "broken symbolic link")


def test_broken_link_kuairand_log(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line())
    broken(tmp_path / "log_random_4_22_to_5_08_pure.csv")
    error_of(lambda: load("kuairand", tmp_path), "log_random_4_22_to_5_08_pure.csv", "broken symbolic link")


@pytest.mark.parametrize("name", ["kuairec_caption_category.csv", "item_categories.csv", "user_features.csv"])
def test_broken_link_kuairec_side_files(tmp_path: Path, name: str) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line())
    broken(tmp_path / name)
    error_of(lambda: load("kuairec", tmp_path), name, "broken symbolic link")


@pytest.mark.parametrize("name", ["items.parquet", "dataset.json"])
def test_broken_link_parquet(tmp_path: Path, name: str) -> None:
    root = canonical(tmp_path, tiny())
    (root / name).unlink()
    broken(root / name)
    error_of(lambda: load("parquet", root), name, "broken symbolic link")


# ========================================================================= 13. crafted sizes
def test_declared_size_mismatch_refused_before_reading(tmp_path: Path) -> None:
    root = canonical(tmp_path, tiny(), meta={"n_items": 10**12})
    error_of(lambda: load("parquet", root), "items.parquet", "column 'n_items'", str(10**12))


@pytest.mark.parametrize("bad", [-1, 2.5, "3"])
def test_declared_size_not_a_count(tmp_path: Path, bad: object) -> None:
    root = canonical(tmp_path, tiny(), meta={"n_users": bad})
    error_of(lambda: load("parquet", root), "dataset.json", "column 'n_users'", "whole number")


# The other adapters size every table by the number of distinct ids read (never by a declared count
# or by an id's value), so a huge id costs one row, not an array indexed by it:
def test_huge_ids_cost_one_row_amazon(tmp_path: Path) -> None:
    write(tmp_path / "Cat.txt", f"{2**62} {2**62 - 1} 1")
    ds = load("amazon2014", tmp_path, "Cat")
    assert (ds.n_users, ds.n_items) == (1, 2)


def test_huge_ids_cost_one_row_kuairand(tmp_path: Path) -> None:
    write(tmp_path / LOG, LOG_HEADER, log_line(2**62, 2**62))
    assert load("kuairand", tmp_path).n_items == 1


def test_huge_ids_cost_one_row_kuairec(tmp_path: Path) -> None:
    write(tmp_path / "small_matrix.csv", MATRIX_HEADER, matrix_line(2**62, 2**62))
    assert load("kuairec", tmp_path).n_users == 1


def test_huge_ids_cost_one_row_recbole_lcrec(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token", f"{2**62}\t{2**62}")
    assert load("recbole", tmp_path).n_items == 1
    write(tmp_path / "l" / "S.inter.json", json.dumps({str(2**62): [2**62]}))
    assert load("lcrec", tmp_path / "l").n_users == 1
