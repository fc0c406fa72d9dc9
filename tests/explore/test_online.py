"""The online evaluation: new videos arriving daily with cold-start semantic IDs, the serving cascade with
exploration slots, the daily retrain, and the metrics (coverage, days to fair, first-day cost)."""

import dataclasses

import numpy as np
import pytest

from onerec.config import ContentConfig, ExploreConfig
from onerec.errors import ConfigError
from onerec.explore import online
from onerec.explore.online import (
    INITIAL,
    NEVER,
    NONE,
    appeal,
    build_catalogue,
    check_online,
    content_vectors,
    days_to_fair,
    fill_slate,
    median_or_none,
    new_item_coverage,
    online_policy,
    summarise_online,
    warm_start,
)

CFG = ExploreConfig(d_model=8, tower_hidden=8, history=8, mc_passes=4, seeds=[0], online_days=3, online_initial=40,
                    online_new_per_day=10, online_new_days=2, online_requests=60, online_slate=3,
                    online_explore_slots=1, online_candidates=10, online_new_candidates=5, online_warmup=600,
                    online_epochs=1, online_fair=4, online_codebook=4)


@pytest.fixture(scope="module")
def world(explore_world):
    return explore_world


@pytest.fixture(scope="module")
def vectors(world):
    return content_vectors(world.items, ContentConfig(cache=False, dim=16))


@pytest.fixture(scope="module")
def cat(world, vectors):
    return build_catalogue(world, vectors, CFG, seed=0)


@pytest.fixture(scope="module")
def warm(world, cat):
    return warm_start(world, cat, CFG, seed=0)


def test_coverage_counts_the_videos_with_the_whole_window_in_the_run():
    arrival = np.array([0, 2, 4, 5, INITIAL, NEVER])
    fair = np.array([2, 6, 4, 5, 0, NEVER])
    # the docstring's example: videos 0, 1, 2 count (arrived by day 7 - 3 = 4), 0 and 2 in time
    assert new_item_coverage(arrival, fair, new_days=3, days=7) == pytest.approx(2 / 3)
    assert new_item_coverage(arrival, fair, new_days=3, days=7, items=np.array([1, 3])) == 0.0
    assert np.isnan(new_item_coverage(arrival, fair, new_days=3, days=7, items=np.array([3])))
    never = np.array([NEVER, 6, NEVER, 5, 0, NEVER])
    assert new_item_coverage(arrival, never, new_days=3, days=7) == 0.0  # 6 - 2 = 4 >= 3


def test_days_to_fair_counts_the_arrival_day_as_one():
    arrival = np.array([0, 2, 4, 1])
    fair = np.array([0, 4, NEVER, 3])
    d = days_to_fair(arrival, fair, np.array([0, 1, 2, 3]))
    assert d.tolist() == [1.0, 3.0, np.inf, 3.0]
    assert median_or_none(d) == 3.0
    assert median_or_none(d[[0, 2, 2]]) is None and median_or_none(d[:0]) is None


def test_fill_slate_ctr_slots_then_exploration_slots_from_the_new_columns():
    plain = np.array([[.9, .1, .5, .8], [.9, .1, .5, .95]])
    explore = np.array([[.3, .7], [.3, .7]])
    cols = fill_slate(plain, explore, n_old=2, slate=2, slots=1)
    assert cols.tolist() == [[0, 3], [3, 2]]  # row 1: column 3 is already the CTR model's best
    assert fill_slate(plain, None, n_old=2, slate=2, slots=1).tolist() == [[0, 3], [3, 0]]
    assert fill_slate(plain, explore, n_old=2, slate=3, slots=0).tolist() == [[0, 3, 2], [3, 0, 2]]
    # two exploration slots: row 1 has one new column left after the CTR slot, then plain's best remaining
    assert fill_slate(plain, explore, n_old=2, slate=3, slots=2).tolist() == [[0, 3, 2], [3, 2, 0]]
    assert fill_slate(plain, explore, n_old=2, slate=4, slots=2).tolist() == [[0, 3, 2, 1], [3, 0, 2, 1]]


def test_fill_slate_budget_explores_only_where_the_new_candidate_is_worth_the_displaced_one():
    # the slot displaces plain's best remaining candidate (.8); it explores where explore >= (1 - budget) * .8
    plain = np.array([[.9, .8, .5, .1]])
    explore = np.array([[.3, .7]])
    assert fill_slate(plain, explore, n_old=2, slate=2, slots=1, budget=0.1).tolist() == [[0, 1]]  # .7 < .72
    assert fill_slate(plain, explore, n_old=2, slate=2, slots=1, budget=0.2).tolist() == [[0, 3]]  # .7 >= .64
    assert fill_slate(plain, explore, n_old=2, slate=2, slots=1, budget=0.0).tolist() == [[0, 1]]
    # budget 1 (the default): the slot always explores, as without a budget
    assert fill_slate(plain, explore, n_old=2, slate=2, slots=1, budget=1.0).tolist() == [[0, 3]]
    assert fill_slate(plain, explore, n_old=2, slate=2, slots=1).tolist() == [[0, 3]]
    # the displaced candidate is itself new: the slot takes the policy's best new one either way
    assert fill_slate(np.array([[.9, .1, .5, .8]]), explore, n_old=2, slate=2, slots=1, budget=0.0).tolist() == [[0, 3]]


@pytest.mark.parametrize("key,value", [
    ("online_days", 0), ("online_explore_budget", -0.1),
    ("online_explore_slots", 7), ("online_slate", 100), ("online_candidates", 50),
    ("online_new_candidates", 20), ("online_codebook", 41), ("online_good", 1.0),
])
def test_bad_online_settings_name_the_key_and_the_fix(key, value):
    with pytest.raises(ConfigError, match=rf"explore\.{key}") as e:
        check_online(dataclasses.replace(CFG, **{key: value}))
    assert "Fix:" in str(e.value)


def test_more_videos_than_the_world():
    with pytest.raises(ConfigError, match=r"explore\.online_days.*120"):
        check_online(dataclasses.replace(CFG, online_days=9), 120)


def test_catalogue_new_videos_get_cold_start_semantic_ids(world, vectors, cat):
    n0, per_day = CFG.online_initial, CFG.online_new_per_day
    assert (cat.arrival == INITIAL).sum() == n0
    assert np.bincount(cat.arrival[cat.new_items()]).tolist() == [per_day] * CFG.online_days
    used = cat.arrival < NEVER
    assert (cat.codes[used] >= 0).all() and (cat.codes[used] < CFG.online_codebook).all()
    assert (cat.codes[~used] == -1).all() and np.isnan(cat.appeal[~used]).all()
    assert np.array_equal(cat.side.cat[used], cat.codes[used, 0])  # the CTR model's category = first SID level
    # the tokenizer is fitted on the initial videos only, and every video's code is its encode
    from onerec.tokenizer import ResidualKMeansTokenizer

    seen = {}
    fit = ResidualKMeansTokenizer.fit

    def spy(self, x, **kw):
        seen["fit"] = np.asarray(x)
        seen["tok"] = self
        return fit(self, x, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResidualKMeansTokenizer, "fit", spy)
        again = build_catalogue(world, vectors, CFG, seed=0)
    assert np.array_equal(again.codes, cat.codes)
    rows = {v.tobytes() for v in seen["fit"]}
    assert rows == {v.tobytes() for v in vectors[cat.arrival == INITIAL]} and len(seen["fit"]) == n0
    assert np.array_equal(seen["tok"].encode(vectors[used]).numpy(), cat.codes[used])
    # similar captions share codes more often than chance: the SID carries the topic to the new videos
    new = cat.new_items()
    same_code = cat.codes[new, 0][:, None] == cat.codes[new, 0][None, :]
    same_topic = world.item_topic[new][:, None] == world.item_topic[new][None, :]
    pair = ~np.eye(len(new), dtype=bool)
    assert same_code[same_topic & pair].mean() > same_code[~same_topic].mean()


def test_new_appeal_brings_better_new_videos_and_leaves_the_catalogue(world, vectors, cat):
    """explore.online_new_appeal = s > 0: the arriving videos are drawn with weights exp(s z) (z: standardised
    appeal), so they are better on average; the initial catalogue and the day sizes are as with s = 0."""
    better = build_catalogue(world, vectors, dataclasses.replace(CFG, online_new_appeal=3.0), seed=0)
    assert np.array_equal(better.arrival == INITIAL, cat.arrival == INITIAL)
    assert np.bincount(better.arrival[better.new_items()]).tolist() == [CFG.online_new_per_day] * CFG.online_days
    old = cat.appeal[cat.arrival == INITIAL].mean()
    assert better.appeal[better.new_items()].mean() > cat.appeal[cat.new_items()].mean()
    assert better.appeal[better.new_items()].mean() > 1.2 * old
    assert not set(better.new_items()) & set(np.flatnonzero(cat.arrival == INITIAL))


def test_appeal_is_the_mean_expected_watch_time_over_a_fixed_user_sample(world):
    items = np.array([3, 7, 11])
    a = appeal(world, items, seed=5, n_users=50)
    rng = np.random.default_rng([5, 41, 5])
    u = rng.choice(world.n_users, 50, p=world.activity / world.activity.sum())
    cur = online._interest_draw(world, u, rng)
    for k, i in enumerate(items):
        ref = world.expected_reference(u, np.full(50, i), cur)["watch_time_ms"].mean()
        assert a[k] == pytest.approx(ref, rel=1e-6)


def test_summary_gain_and_first_day_cost_are_against_none_on_the_same_seed():
    def run(wt, day0, cov):
        return {"watch_time_h": wt, "clicks": 1.0, "long_views": 1.0, "new_item_coverage": cov,
                "good_new_item_coverage": cov, "good_reached_fair": cov, "new_exposure_share": 0.1,
                "first_day_watch_time_h": day0, "good_days_to_fair": None}

    runs = {NONE: {0: run(100.0, 10.0, 0.2), 1: run(200.0, 20.0, 0.4)},
            "age_ts": {0: run(103.0, 9.9, 0.5), 1: run(202.0, 20.0, 0.7)}}
    s = summarise_online(runs)
    assert s["age_ts"]["watch_time_gain"]["values"] == pytest.approx([0.03, 0.01])
    assert s["age_ts"]["first_day_cost"]["values"] == pytest.approx([0.01, 0.0])
    assert s["age_ts"]["watch_time"] == {"mean": 152.5, "std": 49.5, "values": [103.0, 202.0]}
    assert s[NONE]["watch_time_gain"]["mean"] == 0.0
    assert s["age_ts"]["good_days_to_fair"] == {"values": [None, None]}


def test_online_days_serve_retrain_and_measure(world, cat, warm):
    none = online_policy(world, cat, warm, NONE, CFG, seed=0)
    rand = online_policy(world, cat, warm, "random", CFG, seed=0)
    age = online_policy(world, cat, warm, "age_ts", CFG, seed=0)
    for r in (none, rand, age):
        assert len(r["per_day"]["watch_time_h"]) == CFG.online_days
        assert r["watch_time_h"] == pytest.approx(sum(r["per_day"]["watch_time_h"]))
        assert r["first_day_watch_time_h"] == r["per_day"]["watch_time_h"][0] > 0
        assert 0.0 <= r["new_item_coverage"] <= 1.0
        # expected clicks per exposure near the world's rates (a ranked feed beats the random 0.176)
        assert 0.1 < r["clicks"] / (CFG.online_days * CFG.online_requests * CFG.online_slate) < 0.9
    # an exploration slot shows a new video in every slate
    assert min(rand["per_day"]["new_share"]) >= 1 / CFG.online_slate - 1e-9
    assert min(age["per_day"]["new_share"]) >= 1 / CFG.online_slate - 1e-9
    assert "explored_share" in age and "explored_share" not in none
    assert rand["new_item_coverage"] >= none["new_item_coverage"]
    # the warm start is shared, not consumed: a second run of a policy is the same run
    assert online_policy(world, cat, warm, NONE, CFG, seed=0)["watch_time_h"] == none["watch_time_h"]


def test_without_a_reserved_slot_the_policy_ranks_every_candidate(world, cat, warm):
    cfg = dataclasses.replace(CFG, online_explore_slots=0, online_days=2)
    none = online_policy(world, cat, warm, NONE, cfg, seed=0)
    greedy = online_policy(world, cat, warm, "greedy", cfg, seed=0)
    assert greedy["per_day"] == none["per_day"]  # same requests, same draws, the CTR model alone decides
    rand = online_policy(world, cat, warm, "random", cfg, seed=0)
    # random slates: the new videos' share of exposures is about their share of the candidates
    share = CFG.online_new_candidates / (CFG.online_candidates + CFG.online_new_candidates)
    assert abs(np.mean(rand["per_day"]["new_share"]) - share) < 0.1
    age = online_policy(world, cat, warm, "age_ucb", dataclasses.replace(cfg, gate=False, age_lambda=50.0), seed=0)
    assert age["explored_share"] == 1.0 and age["per_day"] != none["per_day"]
    # explore.max_impressions: a video shown once is no longer explored (a cap nothing reaches changes nothing)
    capped = online_policy(world, cat, warm, "age_ucb",
                           dataclasses.replace(cfg, gate=False, age_lambda=50.0, max_impressions=1), seed=0)
    assert capped["explored_share"] < 0.9 and capped["per_day"] != age["per_day"]
    loose = online_policy(world, cat, warm, "age_ucb",
                          dataclasses.replace(cfg, gate=False, age_lambda=50.0, max_impressions=10**9), seed=0)
    assert loose["per_day"] == age["per_day"]


def test_budget_zero_slot_explores_less_and_grown_share_counts_good_videos_past_their_window(world, cat, warm):
    always = online_policy(world, cat, warm, "age_ucb", CFG, seed=0)
    frugal = online_policy(world, cat, warm, "age_ucb", dataclasses.replace(CFG, online_explore_budget=0.0), seed=0)
    # budget 0: the slot shows a new video only where AGE scores it at least as high as the displaced one
    assert np.mean(frugal["per_day"]["new_share"]) < np.mean(always["per_day"]["new_share"])
    for r in (always, frugal):
        # day 0: no video has left its new window yet
        assert r["per_day"]["good_grown_share"][0] == 0.0
        assert 0.0 <= r["good_grown_share_last_day"] == r["per_day"]["good_grown_share"][-1] <= 1.0
