"""serve.explore_slots: AGE's picks of new items in the last positions of a served answer, marked explore: true."""

import dataclasses

import numpy as np
import pytest
import torch

from onerec.config import load_config
from onerec.errors import ConfigError
from onerec.explore.serving import check_serve_explore, place, worth_exploring


def test_place_puts_the_picks_last_and_marks_them():
    assert place([1, 2, 3, 4], [.4, .3, .2, .1], [9], [.9], 4) == ([1, 2, 3, 9], [.4, .3, .2, .9],
                                                                   [False, False, False, True])
    assert place([1, 2], [.4, .3], [9], [.9], 4) == ([1, 2, 9], [.4, .3, .9], [False, False, True])  # short list
    assert place([1, 2, 3], [.4, .3, .2], [], [], 3) == ([1, 2, 3], [.4, .3, .2], [False] * 3)
    assert place([1, 2, 3, 4], [.4, .3, .2, .1], [8, 9], [.8, .9], 4)[0] == [1, 2, 8, 9]
    assert place([1, 2, 3], [.4, .3, .2], [7, 8, 9], [.7, .8, .9], 2)[0] == [7, 8]  # never more than k


def test_budget_keeps_the_picks_worth_their_displaced_items():
    assert worth_exploring([.5, .3], [.4, .6], 0.0) == 1  # .5 >= .4, then .3 < .6
    assert worth_exploring([.5, .3], [.4, .6], 0.5) == 2  # .3 >= .5 * .6
    assert worth_exploring([.3, .5], [.4, .1], 0.0) == 0  # the first falls short: none (a prefix is kept)
    assert worth_exploring([.1, .1], [.9, .9], 1.0) == 2  # budget 1: always
    assert worth_exploring([.1, .1], [.9], 0.0) == 0
    assert worth_exploring([.5, .1], [.4], 0.0) == 2  # a short answer: the second pick displaces nothing
    assert worth_exploring([], [.4], 0.0) == 0


@pytest.mark.parametrize("override,needle", [("serve.explore_slots=-1", "serve.explore_slots"),
                                             ("serve.explore_budget=-1", "serve.explore_budget"),
                                             ("serve.explore_slots=500", "serve.explore_slots"),
                                             ("serve.explore_new=0", "serve.explore_new"),
                                             ("explore.dropout=0", "explore.dropout"),
                                             ("explore.count_sigma=0", "explore.count_sigma")])
def test_bad_serving_settings_name_the_key_and_the_fix(override, needle):
    cfg = load_config(overrides=[override])
    with pytest.raises(ConfigError, match=needle) as e:
        check_serve_explore(cfg)
    assert "Fix:" in str(e.value)


def test_a_log_without_feedback_signals_cannot_train_the_explorer():
    import pyarrow as pa

    cfg = load_config(overrides=["serve.explore_slots=2"])
    inter = pa.table({"user_id": [0], "item_id": [0], "timestamp": [0]})
    with pytest.raises(ConfigError, match=r"serve\.explore_slots.*click"):
        check_serve_explore(cfg, inter)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from onerec.pipeline import stage_data, stage_tokenize, stage_train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("serve_explore") / "tiny"
    cfg = load_config(preset="tiny", overrides=["train.max_steps=2", "serve.max_k=20", "explore.d_model=8",
                                                "explore.tower_hidden=8", "explore.mc_passes=4",
                                                "explore.online_epochs=1"])
    for stage in (stage_data, stage_tokenize, stage_train):
        stage(run, cfg, progress=False)
    return run, cfg


def test_served_answers_end_with_marked_new_items_chosen_by_age(run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from onerec.serve import RecommendService, create_app

    path, cfg = run
    plain = RecommendService(path, cfg)
    assert plain.explorer is None
    cfg2 = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, explore_slots=2, explore_new=40))
    service = RecommendService(path, cfg2)
    new = set(service.explorer.new_items.tolist())
    assert 0 < len(new) < service.n_items
    user = next(iter(service.user_index))
    with TestClient(create_app(plain)) as c:
        before = c.post("/recommend", json={"user_id": user, "k": 6}).json()["items"]
    assert not any(it["explore"] for it in before)
    with TestClient(create_app(service)) as c:
        body = c.post("/recommend", json={"user_id": user, "k": 6}).json()
        hist = c.post("/recommend", json={"history_index": [0, 1, 2], "k": 5, "exclude_seen": True}).json()
        pop = c.post("/recommend", json={"user_id": user, "k": 6, "model": "popular"}).json()
    items = body["items"]
    assert [it["explore"] for it in items] == [False] * 4 + [True] * 2
    assert [it["item_index"] for it in items[:4]] == [it["item_index"] for it in before[:4]]  # the head is kept
    picked = [it["item_index"] for it in items[4:]]
    assert set(picked) <= new and len(set(it["item_index"] for it in items)) == 6
    assert all(0.0 <= it["score"] <= 1.0 for it in items[4:])  # AGE's click probability
    assert [it["explore"] for it in hist["items"]] == [False] * 3 + [True] * 2
    assert not {0, 1, 2} & {it["item_index"] for it in hist["items"]}  # exclude_seen holds for the picks too
    assert not any(it["explore"] for it in pop["items"])  # the baselines are not explored
    frugal = RecommendService(path, dataclasses.replace(cfg2, serve=dataclasses.replace(cfg2.serve,
                                                                                       explore_budget=0.0)))
    with TestClient(create_app(frugal)) as c:
        some = c.post("/recommend", json={"user_id": user, "k": 6}).json()["items"]
    flags = [it["explore"] for it in some]
    m = sum(flags)
    assert m <= 2 and flags == [False] * (6 - m) + [True] * m  # budget 0: at most the 2 slots, always last
    assert [it["item_index"] for it in some[:6 - m]] == [it["item_index"] for it in before[:6 - m]]


def test_served_exploration_with_the_count_uncertainty_reads_the_logs_showings(run):
    """explore.uncertainty=count in serving: the spread comes from each item's exposures in the run's log, so the
    same item scores higher under a larger count_sigma only by sigma / sqrt(1 + its showings), and a dropout of 0
    (no MC dropout) is accepted."""
    from onerec.serve import RecommendService
    from onerec.serve.service import Query

    path, cfg = run
    explore = dataclasses.replace(cfg.explore, uncertainty="count", dropout=0.0)
    serve = dataclasses.replace(cfg.serve, explore_slots=2, explore_new=40, explore_policy="age_ucb")
    service = RecommendService(path, dataclasses.replace(cfg, explore=explore, serve=serve))
    ex = service.explorer
    assert ex.shows.sum() > 0 and len(ex.shows) == service.n_items
    cand = ex.new_items[:8]
    user = next(iter(service.user_index))
    query = Query(items=np.array([0, 1, 2]), ts=np.array([1, 2, 3]), flags=np.zeros(3, np.int64), request_ts=4, k=6,
                  user=service.user_index[user])
    greedy = ex.scores(query, cand, "greedy")
    age = ex.scores(query, cand)
    assert (age >= greedy - 1e-6).all()  # AGE-UCB's step is towards a higher prediction
    ucb = ex.scores(query, cand, "ucb")
    expected = greedy + explore.ucb_alpha * explore.count_sigma / (1.0 + ex.shows[cand]) ** 0.5
    assert ucb == pytest.approx(expected, abs=1e-6)
