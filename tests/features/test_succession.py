"""Succession counts and candidates: the dense plain twin, and training rows that never see their future."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from onerec.config import ModelConfig
from onerec.features import EvalExamples, HistoryFeaturizer, TrainExamples
from onerec.features.succession import Succession, scores_reference

LISTS = pa.list_(pa.int64())
N = 25


def _random_train(seed: int, users: int = 60) -> pa.Table:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, N, rng.integers(2, 14)).tolist() for _ in range(users)]
    ts = [list(range(len(s))) for s in seqs]
    return pa.table({"user_id": list(range(users)), "items": pa.array(seqs, LISTS), "ts": pa.array(ts, LISTS),
                     "flags": pa.array([[1] * len(s) for s in seqs], pa.list_(pa.int16()))})


def _top_k_reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    items, vals = np.full((len(scores), k), -1), np.zeros((len(scores), k))
    for r, row in enumerate(scores):
        best = sorted((j for j in range(len(row)) if row[j] > 1e-9), key=lambda j: (-row[j], j))[:k]
        items[r, :len(best)], vals[r, :len(best)] = best, row[best]
    return items, vals


@pytest.mark.parametrize(("window", "decay", "k"), [(1, 1.0, 3), (3, 0.1, 5), (10, 0.5, 40)])
def test_candidates_are_the_top_of_the_dense_scores(window, decay, k):
    train = _random_train(window)
    rng = np.random.default_rng(1)
    hist = [rng.integers(0, N, rng.integers(1, 15)) for _ in range(30)]
    c = Succession.from_train(train, N)
    items, vals = c.candidates(hist, k, window, decay)
    want_items, want_vals = _top_k_reference(scores_reference(train, N, hist, window, decay), k)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(vals, want_vals, rtol=1e-12)


@pytest.mark.parametrize(("window", "decay"), [(1, 1.0), (4, 0.5)])
def test_a_training_row_is_scored_as_if_its_sequence_ended_at_its_history(window, decay):
    """Leaving out a row's pairs from its last history item on equals counting its sequence truncated
    there: what a valid or test history sees of the train split."""
    train = _random_train(7)
    seqs = train["items"].to_pylist()
    c = Succession.from_train(train, N)
    for user in range(0, 60, 7):
        seq = seqs[user]
        for t in range(1, len(seq)):
            hist = [np.array(seq[:t])]
            got = c.candidates(hist, 6, window, decay, own_future=[np.array(seq[t - 1:])])
            cut = pa.table({"items": pa.array([s[:t] if u == user else s for u, s in enumerate(seqs)], LISTS)})
            want = Succession.from_train(cut, N).candidates(hist, 6, window, decay)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], atol=1e-9)


def test_training_examples_do_not_find_their_target_through_their_own_pair():
    # 3 -> 7 happens only in user 0's sequence; 3 -> 5 in user 1's too
    train = pa.table({"user_id": [0, 1], "items": pa.array([[1, 3, 7, 5], [3, 5]], LISTS),
                      "ts": pa.array([[0, 1, 2, 3], [0, 1]], LISTS),
                      "flags": pa.array([[1, 1, 1, 1], [1, 1]], pa.list_(pa.int16()))})
    codes = np.stack([np.arange(N) % 4, np.arange(N)], 1)
    cfg = ModelConfig(pathways=["positive", "succession"], succession_len=3, succession_window=1)
    feat = HistoryFeaturizer(codes, 8, cfg=cfg, succession=Succession.from_train(train, N))
    tr = TrainExamples(train, feat)
    b = tr.batch(np.arange(len(tr)))
    example = int(np.flatnonzero(tr.seqs.items[tr.target_idx] == 7)[0])  # [1, 3] -> 7
    cand = b["succ_codes"][example, :, 1].tolist()
    assert 7 not in cand and cand[0] == 5 and b["succ_mask"][example].tolist() == [True, False, False]
    # a valid user whose last item is 3 sees both of the train split's successors of 3
    valid = pa.table({"user_id": [2], "history": pa.array([[3]], LISTS), "history_ts": pa.array([[0]], LISTS),
                      "history_flags": pa.array([[1]], pa.list_(pa.int16())), "targets": pa.array([[7]], LISTS),
                      "target_ts": [1]})
    vb = EvalExamples(valid, feat).batch(np.arange(1))
    assert vb["succ_codes"][0, :2, 1].tolist() == [5, 7] and vb["succ_count"][0].tolist()[2] == 0
    with pytest.raises(ValueError, match="succession pathway needs"):
        HistoryFeaturizer(codes, 8, cfg=cfg)
