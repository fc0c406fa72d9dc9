"""Item-to-item transition baseline: hand-made counts, the plain twin, selection on valid."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from onerec.baselines import ItemTransitions, Recommender, build_baseline
from onerec.eval import evaluate
from onerec.features.succession import Succession, scores_reference

LISTS = pa.list_(pa.int64())


def _train() -> pa.Table:
    # pairs: 0->1 (x2), 1->2, 2->3, 1->3, 4->0; no pair across the sequences' borders (3 then 1, 2 then 4)
    return pa.table({"user_id": [0, 1, 2, 3], "items": pa.array([[0, 1, 2, 3], [1, 3], [4, 0, 1], [5]], LISTS)})


def test_counts_stay_inside_each_sequence() -> None:
    c = Succession.from_train(_train(), n_items=6)
    pairs = {(a, int(c.succ[p])): c.counts[p] for a in range(6) for p in range(c.indptr[a], c.indptr[a + 1])}
    assert pairs == {(0, 1): 2, (1, 2): 1, (1, 3): 1, (2, 3): 1, (4, 0): 1}


def test_last_item_first_then_popularity() -> None:
    rec = ItemTransitions(window=1, decay=1.0)
    rec.fit(_train(), n_items=6)
    assert isinstance(rec, Recommender)
    ex = pa.table({"user_id": [0, 1, 2], "history": pa.array([[4, 0], [1], [5]], LISTS)})
    # after 0: 1 (its only successor), then by popularity 1 (3x) > 0 (2x) = 3 (2x, lower id first) > 2, 4, 5
    # after 1: 2 and 3 tie on one count each; 3 is more popular (2x) than 2 (1x)
    # after 5 (no successors): popularity alone
    assert rec.recommend(ex, 4).tolist() == [[1, 0, 3, 2], [3, 2, 1, 0], [1, 0, 3, 2]]


@pytest.mark.parametrize(("window", "decay"), [(1, 1.0), (2, 0.5), (3, 0.1), (20, 1.0)])
def test_scores_agree_with_the_plain_twin(window: int, decay: float) -> None:
    rng = np.random.default_rng(window)
    n = 30
    train = pa.table({"user_id": list(range(40)),
                      "items": pa.array([rng.integers(0, n, rng.integers(1, 12)).tolist() for _ in range(40)], LISTS)})
    hist = [rng.integers(0, n, rng.integers(1, 25)) for _ in range(17)]
    got = Succession.from_train(train, n).scores(hist, window, decay)
    np.testing.assert_allclose(got, scores_reference(train, n, hist, window, decay), rtol=1e-12)
    rec = ItemTransitions(window=window, decay=decay)
    rec.fit(train, n_items=n)
    assert (np.argmax(rec.scores(hist), axis=1) == np.argmax(got + rec.pop * decay ** (window - 1), axis=1)).all()


def test_window_and_decay_are_chosen_on_valid() -> None:
    # 6 is followed by 7 (twice), 5 by 8 and by 6: valid users who end with 5 then 6 go on to 8, which
    # only the item before the last leads to: a window of 2 ranks it 3rd, the last item alone by popularity
    train = pa.table({"user_id": [0, 1, 2, 3], "items": pa.array([[6, 7], [6, 7], [5, 8], [5, 6]], LISTS)})
    valid = pa.table({"user_id": [0, 1], "history": pa.array([[5, 6], [5, 6]], LISTS),
                      "targets": pa.array([[8], [8]], LISTS)})
    rec = build_baseline("transitions")
    rec.fit(train, n_items=10, valid=valid)
    assert rec.chosen["window=1,decay=1.0"] < max(rec.chosen.values())
    assert rec.window > 1 and rec.chosen[f"window={rec.window},decay={rec.decay}"] == max(rec.chosen.values())
    assert evaluate(rec, valid, ks=(10,))["ndcg@10"] == pytest.approx(max(rec.chosen.values()), abs=1e-6)
    fixed = ItemTransitions(window=1)
    fixed.fit(train, n_items=10, valid=valid)  # decay still chosen, but one item makes it moot
    assert fixed.window == 1 and fixed.chosen is None


def test_recommend_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        ItemTransitions().recommend(pa.table({"user_id": [0], "history": pa.array([[1]], LISTS)}), 3)
