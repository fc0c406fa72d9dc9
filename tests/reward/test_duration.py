"""OneRec-V2's duration-aware reward shaping on small hand-made tables."""

import numpy as np
import pytest

from onerec.reward.duration import DurationShaping

# the log: a short-video bucket (8-16 s, log2 bucket 3) and a long one (64-128 s, bucket 6)
REF_PLAY = [0, 2000, 4000, 8000, 12000, 20000, 6000, 0, 0, 10_000, 30_000, 60_000]
REF_DUR = [10_000] * 4 + [15_000] * 4 + [90_000] * 4


def test_buckets_are_log2_of_the_duration_in_seconds():
    s = DurationShaping(np.array([1000]), np.array([1000]))
    got = s.bucket(np.array([500, 1000, 1999, 2000, 8000, 15_999, 16_000, 300_000]))
    assert got.tolist() == [0, 0, 0, 1, 3, 3, 4, 8]
    assert DurationShaping(np.array([1]), np.array([1]), base=10.0).bucket(np.array([9_999, 10_000])).tolist() == [0, 1]


def test_shaping_on_a_small_table():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR), base=2.0, top_share=0.25)
    play = np.array([12_000, 8000, 30_000, 60_000, 20_000, 0, 61_000, 4000])
    dur = np.array([12_000, 9000, 100_000, 70_000, 15_000, 10_000, 300_000, 5000])
    dislike = np.array([0, 0, 0, 0, 1, 0, 0, 0])
    # short bucket sorted: 0 0 2000 4000 6000 8000 12000 20000; long bucket: 0 10000 30000 60000.
    # mid-rank percentile = (#below + #equal / 2) / n; 300 s (bucket 8) and 5 s (bucket 2) were never
    # logged: they use the nearest logged bucket (6 and 3)
    q = s.percentile(play, dur)
    np.testing.assert_allclose(q, [6.5 / 8, 5.5 / 8, 2.5 / 4, 3.5 / 4, 7.5 / 8, 1 / 8, 4 / 4, 3.5 / 8])
    adv = s.advantage(play, dur, dislike)
    assert adv.tolist() == [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0]
    # duration-aware: 12 s of a 12 s clip earns +1, 30 s of a 100 s video does not, though it played longer
    assert play[2] > play[0] and adv[0] == 1.0 and adv[2] == 0.0
    # the dislike wins over a top percentile (20 s of a 15 s clip is the short bucket's best play)
    assert q[4] >= 0.75 and adv[4] == -1.0
    np.testing.assert_array_equal(s.from_percentile(q, dislike), adv)


def test_top_share_moves_the_cut():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR), top_share=0.5)
    adv = s.advantage(np.array([8000, 4000]), np.array([12_000, 12_000]), np.zeros(2))
    assert adv.tolist() == [1.0, 0.0]  # q = 0.6875 >= 0.5; q = 0.4375 < 0.5


@pytest.mark.parametrize("kwargs", [{"base": 1.0}, {"top_share": 0.0}, {"top_share": 1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DurationShaping(np.array(REF_PLAY), np.array(REF_DUR), **kwargs)


def test_mismatched_reference_is_refused():
    with pytest.raises(ValueError, match="equal"):
        DurationShaping(np.array([1, 2]), np.array([1000]))
