"""The simulated short-video world: calibration, coherence, determinism, persistence and the two writers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from onerec.config import SimConfig
from onerec.data.schema import SIGNALS, Dataset, positive_mask
from onerec.data.simulator import (
    PRODUCTION_REFERENCE,
    RANDOM_TARGETS,
    World,
    build_world,
    feedback_rates,
    simulate,
    simulate_to_dir,
)
from onerec.errors import ConfigError, DataError

SMALL = SimConfig(n_users=300, n_items=400, n_events=15_000, n_topics=12, n_authors=60, calib_pairs=20_000, seed=5)


@pytest.fixture(scope="module")
def calib_log():
    """A moderate world logged mostly at random: ~600k random exposures make the 0.11% hate rate
    measurable to a few percent."""
    cfg = SimConfig(n_users=2000, n_items=1500, n_events=1_000_000, random_share=0.6, seed=3)
    return simulate(cfg)


@pytest.fixture(scope="module")
def default_log():
    return simulate(SimConfig())


@pytest.fixture(scope="module")
def small():
    return simulate(SMALL)


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("signal", list(RANDOM_TARGETS))
def test_random_exposure_rates_match_kuairand(calib_log, signal):
    ds, world = calib_log
    got = feedback_rates(ds.interactions, "random")[signal]
    assert abs(got / RANDOM_TARGETS[signal] - 1) < 0.15, f"{signal}: {got:.5f} vs {RANDOM_TARGETS[signal]}"
    # the solved biases hit the targets exactly on the calibration sample
    assert world.calibration[signal] == pytest.approx(RANDOM_TARGETS[signal], rel=1e-4)


def test_long_view_given_click_near_kuairand(calib_log):
    ds, _ = calib_log
    got = feedback_rates(ds.interactions, "random")["long_view_given_click"]
    assert abs(got / 0.481 - 1) < 0.15


def test_production_policy_moves_rates_up(calib_log):
    ds, _ = calib_log
    rnd = feedback_rates(ds.interactions, "random")
    prod = feedback_rates(ds.interactions, "production")
    for s in ("click", "long_view", "complete_play", "engage_any", "profile_enter", "long_view_given_click"):
        assert prod[s] > 1.3 * rnd[s], s
    # and lands in the neighbourhood of KuaiRand's production column
    for s in ("click", "long_view", "long_view_given_click"):
        assert abs(prod[s] / PRODUCTION_REFERENCE[s] - 1) < 0.35, (s, prod[s])


def test_exact_random_share(calib_log):
    ds, _ = calib_log
    policy = ds.interactions["policy"]
    assert set(pc.unique(policy).to_pylist()) == {"random", "production"}
    assert pc.sum(pc.equal(policy, "random")).as_py() == round(0.6 * 1_000_000)


# ----------------------------------------------------------------------------- response model


def test_expected_matches_plain_reference():
    world = build_world(SMALL)
    rng = np.random.default_rng(0)
    u = rng.integers(0, world.n_users, 300)
    i = rng.integers(0, world.n_items, 300)
    cur = rng.integers(0, SMALL.n_topics, 300)
    cur[:50] = world.item_topic[i[:50]]  # exercise the current-interest boost
    for c in (cur, None):
        fast, slow = world.expected(u, i, c), world.expected_reference(u, i, c)
        assert set(fast) == set(slow) == {*SIGNALS, "watch_time_ms", "engage_any"}
        for k in fast:
            np.testing.assert_allclose(fast[k], slow[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_respond_frequencies_match_expected():
    world = build_world(SMALL)
    reps = 40_000
    pairs = [(0, 0), (1, 5), (7, 11), (9, 3)]
    cur = world.item_topic[[p[1] for p in pairs]]  # current interest = the video's topic: high rates
    u = np.repeat([p[0] for p in pairs], reps)
    i = np.repeat([p[1] for p in pairs], reps)
    c = np.repeat(cur, reps)
    got = world.respond(u, i, np.random.default_rng(1), current_topic=c)
    exp = world.expected(u, i, c)
    for k in (*SIGNALS, "watch_time_ms"):
        for j in range(len(pairs)):
            sl = slice(j * reps, (j + 1) * reps)
            x = got[k][sl].astype(np.float64)
            mean, se = x.mean(), max(x.std(), 1e-3) / np.sqrt(reps)
            assert abs(mean - exp[k][sl][0]) < 5 * se + 1e-4 * (k != "watch_time_ms"), (k, j, mean, exp[k][sl][0])


def test_signals_are_coherent(default_log):
    ds, world = default_log
    t = ds.interactions
    s = {k: t[k].to_numpy().astype(bool) for k in SIGNALS}
    watch = t["watch_time_ms"].to_numpy()
    dur = world.item_duration_ms[t["item_id"].to_numpy()]
    assert not (s["long_view"] & ~s["click"]).any()
    assert not (s["complete_play"] & ~s["long_view"]).any()
    np.testing.assert_array_equal(s["complete_play"], s["click"] & (watch >= dur))
    np.testing.assert_array_equal(watch > 0, s["click"])
    for k in ("like", "comment", "follow", "forward"):
        assert not (s[k] & ~s["long_view"]).any(), k
    assert not (s["hate"] & s["long_view"]).any()
    assert not (s["profile_enter"] & ~s["click"]).any()


def test_query_errors():
    world = build_world(SMALL)
    with pytest.raises(DataError, match="item_id"):
        world.expected([0], [SMALL.n_items])
    with pytest.raises(DataError, match="differ in length"):
        world.expected([0, 1], [0])
    with pytest.raises(ConfigError, match="random_share"):
        build_world(dataclasses.replace(SMALL, random_share=1.5))


# ----------------------------------------------------------------------------- tables


def test_dataset_is_canonical(small):
    ds, world = small
    ds.validate()
    t = ds.interactions
    assert t.num_rows == SMALL.n_events
    for k in SIGNALS:
        assert t.schema.field(k).type == pa.int8()
    assert t.schema.field("watch_time_ms").type == pa.int64()
    uid, ts = t["user_id"].to_numpy(), t["timestamp"].to_numpy()
    same_user = uid[1:] == uid[:-1]
    assert (uid[1:] >= uid[:-1]).all() and (ts[1:][same_user] > ts[:-1][same_user]).all()
    assert ts.min() >= 1649376000  # 2022-04-08 UTC
    items = ds.items
    assert {"title", "text", "tags", "category", "author_id", "duration_ms", "topic"} <= set(items.column_names)
    assert items.schema.field("tags").type == pa.list_(pa.string())
    dur = items["duration_ms"].to_numpy()
    assert dur.min() >= 5_000 and dur.max() <= 300_000
    cats = items["category"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(cats, np.array(world.topic_names)[items["topic"].to_numpy()])
    assert {"gender", "age_range", "user_active_degree", "fans_user_num_range"} <= set(ds.users.column_names)


def test_determinism_by_seed(small):
    ds, _ = small
    again, _ = simulate(SMALL)
    other, _ = simulate(dataclasses.replace(SMALL, seed=6))
    for kind in ("interactions", "items", "users"):
        assert getattr(ds, kind).equals(getattr(again, kind)), kind
    assert not ds.interactions.equals(other.interactions)


def test_simulate_to_dir_matches_simulate(small, tmp_path):
    ds, world = small
    out = simulate_to_dir(SMALL, tmp_path / "sim", chunk_users=256)  # two chunks of users
    loaded = Dataset.load(out)
    for kind in ("interactions", "items", "users"):
        assert getattr(loaded, kind).equals(getattr(ds, kind)), kind
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_interactions"] == SMALL.n_events and meta["schema_version"] == 1
    assert not list(out.glob(".*tmp"))  # no temporary files left behind
    w2 = World.load(out / "world")
    np.testing.assert_array_equal(w2.current_topic, world.current_topic)  # the post-log state


def test_world_save_load_round_trip(small, tmp_path):
    _, world = small
    world.save(tmp_path)
    back = World.load(tmp_path)
    for k in World.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(world, k), err_msg=k)
    assert back.bias == world.bias and back.weights == world.weights and back.cfg == world.cfg
    u, i = np.arange(50) % world.n_users, np.arange(50) * 7 % world.n_items
    a, b = world.expected(u, i), back.expected(u, i)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    r1, r2 = world.respond(u, i, 3), back.respond(u, i, 3)
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k])
    with pytest.raises(DataError, match=r"world\.json"):
        World.load(tmp_path / "missing")


# ----------------------------------------------------------------------------- realism


def test_captions_cluster_by_topic(small):
    from sklearn.feature_extraction.text import TfidfVectorizer

    ds, _ = small
    x = TfidfVectorizer().fit_transform(ds.items["text"].to_pylist())
    topic = ds.items["topic"].to_numpy()
    sim = (x @ x.T).toarray()
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(same, False)
    off = ~same
    np.fill_diagonal(off, False)
    assert sim[same].mean() > 3 * sim[off].mean()


def test_recent_history_predicts_next_positive_topic(default_log):
    """The last positives' topic predicts the next positive's at least as well as the whole history,
    and far better than chance: the sequential signal a recommender can learn."""
    ds, world = default_log
    t = ds.interactions
    keep = positive_mask(t)
    uid, topic = t["user_id"].to_numpy()[keep], world.item_topic[t["item_id"].to_numpy()[keep]]
    ends = np.r_[np.flatnonzero(np.diff(uid)) + 1, len(uid)]
    starts = np.r_[0, ends[:-1]]
    recent = whole = n = 0
    for s, e in zip(starts, ends):
        if e - s < 6:
            continue
        hist, target = topic[s:e - 1], topic[e - 1]
        recent += np.bincount(hist[-5:]).argmax() == target
        whole += np.bincount(hist).argmax() == target
        n += 1
    assert recent / n > 0.5 and recent >= whole
