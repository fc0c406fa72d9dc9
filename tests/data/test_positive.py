"""``data.positive``: signals, numeric thresholds (``rating>=4``), and what ``onerec data`` says it counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.data.schema import describe_positive, positive_mask
from onerec.errors import DataError


def table() -> pa.Table:
    return pa.table({"user_id": [0, 0, 1, 1, 2], "item_id": [0, 1, 2, 3, 4],
                     "rating": pa.array([5.0, 3.5, None, 4.0, 1.0]), "like": [0, 1, 0, 0, 0],
                     "watch_time_ms": [100, 40_000, 0, 30_000, 90_000], "event": ["a", "b", "c", "d", "e"]})


def test_thresholds_and_signals_are_any_of() -> None:
    t = table()
    assert positive_mask(t, "rating>=4").tolist() == [True, False, False, True, False]  # an empty rating is not
    assert positive_mask(t, "rating>4").tolist() == [True, False, False, False, False]
    assert positive_mask(t, "rating >= 4 | like").tolist() == [True, True, False, True, False]
    assert positive_mask(t, "watch_time_ms>30000").tolist() == [False, True, False, False, True]
    assert positive_mask(t, "rating>=-1e9").tolist() == [True, True, False, True, True]
    assert positive_mask(t, "all").all() and positive_mask(t, "auto").tolist() == [False, True, False, False, False]
    # a table without the auto signals: every row, and the description says so and how to choose
    bare = t.drop(["like"])
    assert positive_mask(bare, "auto").all()
    assert "data.positive='rating>=4' would keep only high ratings" in describe_positive(bare, "auto")
    assert describe_positive(t, "rating>=4|like") == "rows with any of: rating>=4, like"


def test_a_bad_rule_names_the_column_and_the_fix() -> None:
    t = table()
    with pytest.raises(DataError, match=r"positive rule names 'stars'.*Fix: .*'rating>=4'"):
        positive_mask(t, "stars>=4")
    with pytest.raises(DataError, match=r"positive rule 'event>=1' compares column 'event', which holds string"):
        positive_mask(t, "event>=1")
    with pytest.raises(DataError, match=r"positive rule 'event' names as a 0/1 signal column 'event', which holds"):
        positive_mask(t, "like|event")
    with pytest.raises(DataError, match=r"positive rule names 'rating=>4'"):  # not a threshold: read as a name
        positive_mask(t, "rating=>4")


def test_onerec_data_says_what_counted_and_what_it_did_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = "".join(f"u{u},m{i},{(u + i) % 5 + 1},{100 * u + i},view\n" for u in range(6) for i in range(6))
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp,event\n" + rows)
    args = ["data", "--out", str(tmp_path / "run"), f"data.path={folder / 'ratings.csv'}",
            "data.options.user_column=userId", "data.options.item_column=movieId"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "positives        36" in res.output and "would keep only high ratings" in res.output
    assert "not read: the interactions table's column event (neither an id, the time, nor a known signal" in res.output
    assert "every event type was read alike: data.options.keep_events=[...]" in res.output
    res = CliRunner().invoke(cli, [*args, "data.positive=rating>=4"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    expected = int(np.sum([(u + i) % 5 + 1 >= 4 for u in range(6) for i in range(6)]))
    assert f"positives        {expected}" in res.output and "rows with any of: rating>=4" in res.output
