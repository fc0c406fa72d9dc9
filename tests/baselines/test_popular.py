"""Most-popular baseline on a hand-made case."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from onerec.baselines import MostPopular, Recommender, build_baseline
from onerec.errors import DataError
from onerec.eval import evaluate

LISTS = pa.list_(pa.int64())


def _train() -> pa.Table:
    # counts over 5 items: item0 1, item1 2, item2 3, item3 1, item4 0 (never seen in training)
    return pa.table({"user_id": [0, 1, 2], "items": pa.array([[0, 1, 2], [1, 2], [2, 3]], LISTS)})


def test_ranking_counts_and_ties() -> None:
    pop = MostPopular()
    pop.fit(_train(), n_items=5)
    assert isinstance(pop, Recommender)
    assert pop.counts.tolist() == [1, 2, 3, 1, 0]
    # 2 (3x) > 1 (2x) > 0 and 3 (1x each, tie -> lower id first) > 4 (0x); k > N pads with -1
    ex = pa.table({"user_id": [0, 1], "history": pa.array([[0], [3, 1]], LISTS)})
    assert pop.recommend(ex, 6).tolist() == [[2, 1, 0, 3, 4, -1]] * 2
    assert pop.recommend(ex, 2).dtype == np.int64


def test_evaluated_with_unseen_target() -> None:
    pop = build_baseline("popular")
    pop.fit(_train(), n_items=5)
    test = pa.table({"user_id": [0, 1, 2], "history": pa.array([[0], [1], [2]], LISTS),
                     "targets": pa.array([[2], [0], [4]], LISTS)})
    m = evaluate(pop, test, ks=(1, 5))
    # list [2, 1, 0, 3, 4]: user0 hit at rank 1, user1 at rank 3, user2 (item 4, unseen in training) at rank 5
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(6)) / 3)


def test_rejects_unknown_items() -> None:
    with pytest.raises(DataError, match=r"0\.\.2"):
        MostPopular().fit(_train(), n_items=3)
