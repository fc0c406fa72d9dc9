"""OneRec-V2's duration-aware reward shaping on small hand-made tables."""

import numpy as np
import pytest

from onerec.reward.duration import DurationShaping, from_percentile, top_cut

# the log: a short-video bucket (8-16 s, log2 bucket 3) and a long one (64-128 s, bucket 6)
REF_PLAY = [0, 2000, 4000, 8000, 12000, 20000, 6000, 0, 0, 10_000, 30_000, 60_000]
REF_DUR = [10_000] * 4 + [15_000] * 4 + [90_000] * 4


def test_buckets_are_log2_of_the_duration_in_seconds():
    s = DurationShaping(np.array([1000]), np.array([1000]))
    got = s.bucket(np.array([500, 1000, 1999, 2000, 8000, 15_999, 16_000, 300_000]))
    assert got.tolist() == [0, 0, 0, 1, 3, 3, 4, 8]
    assert DurationShaping(np.array([1]), np.array([1]), base=10.0).bucket(np.array([9_999, 10_000])).tolist() == [0, 1]


# a batch of shown items: play time, duration, dislike
PLAY = np.array([12_000, 8000, 30_000, 60_000, 20_000, 0, 61_000, 4000])
DUR = np.array([12_000, 9000, 100_000, 70_000, 15_000, 10_000, 300_000, 5000])
DISLIKE = np.array([0, 0, 0, 0, 1, 0, 0, 0])
# short bucket sorted: 0 0 2000 4000 6000 8000 12000 20000; long bucket: 0 10000 30000 60000.
# mid-rank percentile = (#below + #equal / 2) / n, 0 for an unplayed item; 300 s (bucket 8) and 5 s
# (bucket 2) were never logged: they use the nearest logged bucket (6 and 3)
Q = [6.5 / 8, 5.5 / 8, 2.5 / 4, 3.5 / 4, 7.5 / 8, 0.0, 4 / 4, 3.5 / 8]


def test_percentiles_are_within_the_duration_bucket():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR), base=2.0)
    q = s.percentile(PLAY, DUR)
    np.testing.assert_allclose(q, Q)
    # duration-aware: 12 s of a 12 s clip ranks above 30 s of a 100 s video, though that played longer
    assert PLAY[2] > PLAY[0] and q[0] > q[2]


def test_shaping_top_quarter_of_the_batch():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR))
    # the batch's percentiles sorted: 0 .4375 .625 .6875 .8125 .875 .9375 1; their 75th percentile
    # (linear interpolation at 5.25 of 7) = .875 + .25 * .0625 = .890625: two of eight samples are on top
    assert top_cut(np.array(Q), top_share=0.25, top_of="batch") == pytest.approx(0.890625)
    adv = s.advantage(PLAY, DUR, DISLIKE, top_share=0.25, top_of="batch")
    # the dislike wins over a top percentile (20 s of a 15 s clip, the short bucket's best play)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0]
    np.testing.assert_array_equal(from_percentile(np.array(Q), DISLIKE), adv)  # the defaults: batch, 25%
    # another batch, another cut: of these two plays, the better one is the top quarter
    assert s.advantage(PLAY[:2], DUR[:2], DISLIKE[:2]).tolist() == [1.0, 0.0]


def test_shaping_top_quarter_of_the_log():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR))
    assert top_cut(np.array(Q), top_of="log") == 0.75
    adv = s.advantage(PLAY, DUR, DISLIKE, top_of="log")
    assert adv.tolist() == [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0]  # every q > 0.75 whatever the batch
    assert s.advantage(PLAY[:2], DUR[:2], DISLIKE[:2], top_of="log").tolist() == [1.0, 0.0]


def test_skips_never_reach_the_top():
    # a batch of mostly skips: their tie sits at the cut, and no skip is lifted into the top quarter
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR))
    play = np.array([0, 0, 0, 0, 0, 0, 2000, 30_000])
    dur = np.array([10_000, 10_000, 90_000, 90_000, 90_000, 12_000, 12_000, 90_000])
    q = s.percentile(play, dur)
    assert (q[:6] == 0).all()
    assert s.advantage(play, dur, np.zeros(8)).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert s.advantage(np.zeros(8), dur, np.zeros(8)).tolist() == [0] * 8


def test_top_share_moves_the_cut():
    s = DurationShaping(np.array(REF_PLAY), np.array(REF_DUR))
    adv = s.advantage(np.array([8000, 4000]), np.array([12_000, 12_000]), np.zeros(2), top_share=0.5, top_of="log")
    assert adv.tolist() == [1.0, 0.0]  # q = 0.6875 >= 0.5; q = 0.4375 < 0.5
    assert (s.advantage(PLAY, DUR, np.zeros(8), top_share=0.5) == 1).sum() == 4  # half the batch


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="base"):
        DurationShaping(np.array(REF_PLAY), np.array(REF_DUR), base=1.0)
    for kwargs in ({"top_share": 0.0}, {"top_share": 1.0}, {"top_of": "user"}):
        with pytest.raises(ValueError):
            from_percentile(np.array(Q), DISLIKE, **kwargs)


def test_mismatched_reference_is_refused():
    with pytest.raises(ValueError, match="equal"):
        DurationShaping(np.array([1, 2]), np.array([1000]))
