"""data.source=table: plain interactions / items / users tables of a user's own (CSV, TSV, Parquet), with ids of
any spelling, ISO or Unix times, and one clear error per bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.data.adapters import detect_source, load
from onerec.data.schema import Dataset
from onerec.errors import DataError


def write_table(folder: Path, inter: str | None = None, items: str | None = None, users: str | None = None,
                ending: str = ".csv") -> Path:
    """interactions / items / users files of the given text in ``folder`` (defaults: a small valid log)."""
    folder.mkdir(parents=True, exist_ok=True)
    if inter is None:
        inter = "user_id,item_id,timestamp,click\n" + "".join(
            f"u{u},sku-{i:03d},{1_700_000_000 + 60 * (5 * u + i)},{(u + i) % 2}\n" for u in range(4) for i in range(5))
    (folder / f"interactions{ending}").write_text(inter)
    if items is not None:
        (folder / f"items{ending}").write_text(items)
    if users is not None:
        (folder / f"users{ending}").write_text(users)
    return folder


def rows(ds: Dataset, table: str = "interactions") -> list[dict]:
    return getattr(ds, table).to_pylist()


def test_a_plain_csv_folder_is_detected_and_loaded(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "shop", items="item_id,title,tags,price\n" + "".join(
        f"sku-{i:03d},thing {i},a|b {i}| ,{i}.5\n" for i in range(6)), users="user_id,age\nu0,31\nu1,40\nu2,22\nu3,\n")
    assert detect_source(folder) == ("table", None)
    ds = load("auto", folder)
    assert ds.meta["name"] == "shop" and ds.meta["source"] == "table"
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (4, 5, 20)  # sku-005 has no interaction: dropped
    first = rows(ds, "items")[0]
    assert first["raw_id"] == "sku-000" and first["title"] == "thing 0" and first["tags"] == ["a", "b 0"]
    assert first["price"] == 0.5  # other item columns are kept under their own names
    assert rows(ds, "users")[3]["raw_id"] == "u3"
    assert rows(ds)[0]["timestamp"] == 1_700_000_000 and "click" in ds.interactions.column_names
    assert detect_source(folder / "interactions.csv") == ("table", None)  # the file itself
    assert load("auto", folder / "interactions.csv").n_items == 5


def test_iso_times_with_and_without_zones_are_utc_seconds(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", "user_id,item_id,timestamp\n"
                         "a,x,2024-05-01\n"
                         "a,y,2024-05-01 10:00:00\n"
                         "a,z,2024-05-01T10:00:00.750Z\n"
                         "b,x,2024-05-01T12:00:00+02:00\n")
    got = {(r["user_id"], r["item_id"]): r["timestamp"] for r in rows(load("table", folder))}
    day = 1714521600  # 2024-05-01T00:00:00Z
    assert sorted(got.values()) == [day, day + 36000, day + 36000, day + 36000]


def test_millisecond_times_need_the_unit_and_then_read(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", "user_id,item_id,timestamp\na,x,1714521600123\na,y,1714521601999\n")
    with pytest.raises(DataError, match=r"line 3.*looks like milliseconds.*data.options.time_unit=ms"):
        load("table", folder)
    ds = load("table", folder, time_unit="ms")
    assert [r["timestamp"] for r in rows(ds)] == [1714521600, 1714521601]


def test_other_column_names_are_named_by_options(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", "visitor,product,ts,event\n7,100,5,view\n7,101,9,buy\n")
    with pytest.raises(DataError, match=r"interactions.csv, column 'user_id': missing column 'user_id' \(header "
                                        r"has: visitor, product, ts, event\)\. Fix: name the columns with "
                                        r"data.options.user_column=visitor data.options.item_column=product "
                                        r"data.options.time_column=ts \(or rename"):
        load("table", folder)
    ds = load("table", folder, user_column="visitor", item_column="product", time_column="ts")
    assert [r["timestamp"] for r in rows(ds)] == [5, 9]
    assert ds.meta["ignored_columns"] == {"interactions": ["event"]}  # not a canonical signal: listed, not read


def test_a_missing_column_names_the_fix_the_header_suggests(tmp_path: Path) -> None:
    # every required column under a name holding its role: one message with all three options, which then read
    folder = write_table(tmp_path / "alike", "User,ItemId,event_time\na,x,5\na,y,9\n")
    options = "data.options.user_column=User data.options.item_column=ItemId data.options.time_column=event_time"
    with pytest.raises(DataError, match=r"missing column 'user_id' \(header has: User, ItemId, event_time\)\. Fix: "
                                        "name the columns with " + options):
        load("table", folder)
    ds = load("table", folder, user_column="User", item_column="ItemId", time_column="event_time")
    assert [r["timestamp"] for r in rows(ds)] == [5, 9]
    # only the missing roles are named
    folder = write_table(tmp_path / "one", "user_id,item,timestamp\na,x,5\n")
    with pytest.raises(DataError, match=r"missing column 'item_id'.*Fix: name the columns with "
                                        r"data.options.item_column=item \(or rename them to 'item_id'\)$"):
        load("table", folder)
    # the headers of common exported logs (MovieLens' ratings.csv, a shop's events): every missing role in one fix
    for header, fix in (("userId,movieId,rating,timestamp",
                         "data.options.user_column=userId data.options.item_column=movieId (or rename"),
                        ("timestamp,visitorid,event,itemid,transactionid",
                         "data.options.user_column=visitorid data.options.item_column=itemid (or rename"),
                        ("customer_id,product_id,product_name,order_date",
                         "data.options.user_column=customer_id data.options.item_column=<one of product_id, "
                         "product_name> data.options.time_column=order_date (or rename"),
                        ("a,b,c", "data.options.user_column=<the column holding the user> data.options.item_column="
                                  "<the column holding the item> data.options.time_column=<the column holding the "
                                  "time> (or rename them to 'user_id', 'item_id', 'timestamp'); without a time "
                                  "column, data.options.time_column=null orders each user's rows as in the file")):
        folder = write_table(tmp_path / header.replace(",", "-"), header + "\n" + ",".join("1" * len(header.split(",")))
                             + "\n")
        with pytest.raises(DataError, match=re.escape("Fix: name the columns with " + fix)):
            load("table", folder)
    # a header of one field holding another delimiter: the separator is the fix, not the column names
    for sep, name, ending in ((";", "semicolons", ".csv"), (",", "commas", ".tsv"), ("|", "'|'", ".csv")):
        folder = write_table(tmp_path / f"sep{ending}{name}", f"user_id{sep}item_id{sep}timestamp\na{sep}x{sep}5\n",
                             ending=ending)
        with pytest.raises(DataError, match=re.escape(f"the fields look separated by {name}, and onerec reads .csv "
                                                      "files as comma-separated and .tsv files as tab-separated")):
            load("table", folder)


def test_without_a_time_column_the_file_order_is_the_order(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", "user_id,item_id\nb,x\na,y\na,x\n")
    with pytest.raises(DataError, match=r"missing column 'timestamp'.*data\.options\.time_column"):
        load("table", folder)
    ds = load("table", folder, time_column=None)
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in rows(ds)] == [(0, 1, 1), (0, 0, 2), (1, 0, 0)]


def test_parquet_tables_with_integer_ids_and_a_timestamp_column(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [10, 11, 10],
                             "timestamp": pa.array([1_000_000, 2_500_000, 3_000_000], pa.timestamp("ms")),
                             "rating": [4.0, 5.0, 3.5]}), folder / "interactions.parquet")
    pq.write_table(pa.table({"item_id": [10, 11], "tags": [["x", "y"], []]}), folder / "items.parquet")
    assert detect_source(folder) == ("table", None)
    ds = load("auto", folder)
    assert [r["timestamp"] for r in rows(ds)] == [1000, 2500, 3000]
    assert [r["raw_id"] for r in rows(ds, "items")] == ["10", "11"] and rows(ds, "items")[0]["tags"] == ["x", "y"]
    ds.save(tmp_path / "saved")  # a saved data set is the canonical layout, not a table folder
    assert detect_source(tmp_path / "saved") == ("parquet", None)


@pytest.mark.parametrize("inter, items, error", [
    ("user_id,item_id,timestamp\na,x,1\na,y,yesterday\n", None,
     r"line 3: cannot read 'yesterday' as a time: the rows above hold numbers"),
    ("user_id,item_id,timestamp\na,x,2024-05-01\na,y,yesterday\n", None,
     r"line 3: cannot read 'yesterday' as a time.*ISO 8601"),
    ("user_id,item_id,timestamp,click\na,x,1,1\na,y,2,2\n", None,
     r"column 'click': line 3: signal value 2: a binary signal must be 0 or 1"),
    ("user_id,item_id,timestamp,rating\na,x,1,good\n", None,
     r"line 2: cannot read 'good' as a number\. Fix: 'rating' must hold numbers"),
    ("user_id,item_id,timestamp,like\na,x,1,yes\n", None,
     r"column 'like': line 2: cannot read 'yes' as a number\. Fix: 'like' is a 0/1 signal: write 1 or 0"),
    ("user_id,item_id,timestamp\na,,1\n", None, r"column 'item_id': line 2: empty value in a required column"),
    ("user_id,item_id,timestamp\na,x,1\na,y,2\n", "item_id,title\nx,X\n",
     r"interactions.csv, column 'item_id': line 3: unknown id 'y', not in items.csv"),
    ("user_id,item_id,timestamp\na,x,1\n", "item_id,title\nx,X\nx,Y\n", r"items.csv.*duplicate id 'x'"),
    ("user_id,item_id,timestamp\na,07,1\na,7,2\n", None, r"id '7' and id '07' \(line 2\) spell the same number"),
    ("user_id,item_id,timestamp\na,x,-5\n", None, r"line 2: timestamp -5.0 is not a time"),
])
def test_bad_input_names_the_file_line_and_fix(tmp_path: Path, inter: str, items: str | None, error: str) -> None:
    folder = write_table(tmp_path / "bad", inter, items)
    with pytest.raises(DataError, match=error) as e:
        load("table", folder)
    assert "Fix:" in str(e.value)


def test_a_table_in_two_formats_is_refused(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t")
    (folder / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\na\tx\t1\n")
    with pytest.raises(DataError, match=r"interactions table is here twice \(interactions.csv, interactions.tsv\)"):
        load("auto", folder)


def test_onerec_data_reads_a_table_folder(tmp_path: Path) -> None:
    """The README's own-data command: `onerec data --out RUN data.path=FOLDER` (detected, then split)."""
    folder = write_table(tmp_path / "mine", items="item_id,title\n" + "".join(f"sku-{i:03d},thing {i}\n"
                                                                               for i in range(5)))
    res = CliRunner().invoke(cli, ["data", "--out", str(tmp_path / "run"), f"data.path={folder}"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = Dataset.load(tmp_path / "run" / "data")
    assert saved.meta["source"] == "table" and saved.n_items == 5


def test_signals_written_true_and_false_read_as_one_and_zero(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", "user_id,item_id,timestamp,click\na,x,1,true\na,y,2,false\nb,x,3,TRUE\n")
    assert [r["click"] for r in rows(load("table", folder))] == [1, 0, 1]


def test_keep_events_reads_only_those_rows_and_names_the_files_lines(tmp_path: Path) -> None:
    """An event log (view / addtocart / transaction rows): keep_events keeps some types; its errors name the event
    values the column holds, and a bad row after the filter is still named by its line in the file."""
    log = ("user_id,item_id,timestamp,event\n"
           "a,x,1,view\na,y,2,transaction\nb,x,3,addtocart\nb,z,4,view\nb,y,5,transaction\n")
    folder = write_table(tmp_path / "log", log)
    ds = load("table", folder, keep_events=["transaction", "addtocart"])
    assert [(r["timestamp"]) for r in rows(ds)] == [2, 3, 5]
    assert ds.meta["normalised"] == ["kept the 3 of 5 interactions whose event is transaction or addtocart "
                                     "(data.options.keep_events)"]
    assert "ignored_columns" not in ds.meta  # the event column was read, by the filter
    assert [r["timestamp"] for r in rows(load("table", folder, keep_events="view"))] == [1, 4]
    with pytest.raises(DataError, match=re.escape("keep_events names 'purchase', which column 'event' never holds "
                                                  "(it holds: view (2), transaction (2), addtocart (1))")):
        load("table", folder, keep_events=["purchase"])
    with pytest.raises(DataError, match=r"needs the event column 'action'.*data.options.event_column"):
        load("table", folder, keep_events=["view"], event_column="action")
    # numeric event codes, as a YAML list gives them (keep_events=[2]), against a column read as text
    coded = write_table(tmp_path / "coded", log.replace("view", "1").replace("transaction", "2"))
    assert [r["timestamp"] for r in rows(load("table", coded, keep_events=[2]))] == [2, 5]
    # a bad time on the file's line 6 (the 5th row): named so though the kept table's row is the 3rd
    bad = write_table(tmp_path / "bad", log.replace("b,y,5,", "b,y,soon,"))
    with pytest.raises(DataError, match=r"line 6"):
        load("table", bad, keep_events=["transaction", "addtocart"])
