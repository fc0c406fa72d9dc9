import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onerec.config import ContentAlignConfig
from onerec.content.align import swing_pairs, user_item_pairs, user_item_pairs_reference
from onerec.content.swing import swing, swing_reference, top_neighbours
from onerec.errors import DataError


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12), st.integers(2, 10), st.integers(0, 80),
       st.floats(0.1, 5.0))
def test_sparse_swing_matches_the_definition(seed, n_users, n_items, n_events, alpha):
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, n_users, n_events), rng.integers(0, n_items, n_events)
    fast = swing(u, i, n_users, n_items, alpha=alpha, chunk_pairs=3).toarray()
    np.testing.assert_allclose(fast, swing_reference(u, i, n_users, n_items, alpha=alpha), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast, fast.T)


def test_swing_by_hand():
    # users 0 and 1 share items {0, 1}; user 2 shares {0, 1, 2} with nobody else fully
    u = np.array([0, 0, 1, 1, 2, 2, 2])
    i = np.array([0, 1, 0, 1, 0, 1, 2])
    s = swing(u, i, 3, 3, alpha=1.0).toarray()
    # pairs over items 0,1: (0,1) overlap 2 -> 1/3; (0,2) overlap 2 -> 1/3; (1,2) overlap 2 -> 1/3
    assert s[0, 1] == pytest.approx(1.0)
    assert s[0, 2] == 0 and s[1, 2] == 0  # only one user engaged with item 2


def test_top_neighbours_orders_by_score():
    u = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    i = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    a, b, score = top_neighbours(swing(u, i, 3, 3), k=1)
    assert dict(zip(a.tolist(), b.tolist()))[0] == 1  # 0-1 is shared by three users, 0-2 by two
    assert (score > 0).all()


def test_swing_rejects_bad_ids():
    with pytest.raises(DataError, match="out of range"):
        swing(np.array([0, 1]), np.array([0, 5]), 2, 3)


def test_user_item_pairs_match_reference():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 15, 40)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    items = rng.integers(0, 30, offsets[-1])
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    fast = user_item_pairs(items, offsets, vectors, window=4, chunk=17)
    ref = user_item_pairs_reference(items, offsets, vectors, window=4)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])
    assert len(fast[0]) > 0 and (fast[0] != fast[1]).all()


def test_user_item_partner_is_the_most_similar_recent_positive():
    vectors = np.array([[1, 0], [0, 1], [0.9, 0.1], [0, 1]], dtype=np.float32)
    items, offsets = np.array([0, 1, 3, 2]), np.array([0, 4])
    t, p = user_item_pairs(items, offsets, vectors, window=3)
    assert dict(zip(t.tolist(), p.tolist()))[2] == 0  # item 2 looks like item 0, not like the recent 1 and 3


def test_swing_pairs_respect_the_recent_window():
    train = pa.table({"user_id": [0, 1], "items": [[0, 1, 2, 3], [2, 3, 0, 1]]})
    from onerec.content.align import train_events

    users, items, offsets = train_events(train)
    cfg = ContentAlignConfig(max_user_items=2, swing_k=5)
    a, b = swing_pairs(users, items, offsets, 4, cfg)
    # only the last two positives count: user 0 -> {2, 3}, user 1 -> {0, 1}: no shared pair
    assert len(a) == 0
    a, b = swing_pairs(users, items, offsets, 4, ContentAlignConfig(max_user_items=4, swing_k=5))
    assert set(zip(a.tolist(), b.tolist())) >= {(0, 1), (2, 3), (0, 3)}
