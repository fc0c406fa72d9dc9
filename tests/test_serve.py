"""`onerec serve`: validation, metrics, micro-batching, hostile input, and a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from onerec.config import load_config  # noqa: E402
from onerec.pipeline import recommend_users, stage_data, stage_tokenize, stage_train  # noqa: E402
from onerec.serve import RecommendService, create_app  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "tiny"
    cfg = load_config(preset="tiny", overrides=["train.max_steps=3", "serve.max_k=20", "serve.max_body_bytes=4096",
                                                "serve.max_history=50"])
    for stage in (stage_data, stage_tokenize, stage_train):
        stage(run, cfg, progress=False)
    return run, cfg


@pytest.fixture(scope="module")
def service(run):
    return RecommendService(run[0], run[1])


@pytest.fixture
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def test_recommend_by_user_matches_the_cli_path(run, service, client):
    path, cfg = run
    user = next(iter(service.user_index))
    r = client.post("/recommend", json={"user_id": user, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    items = [it["item_index"] for it in body["items"]]
    assert len(items) == 5 == len(set(items)) and all(0 <= i < service.n_items for i in items)
    assert [it["item_id"] for it in body["items"]] == [service.item_ids[i] for i in items]  # the dataset's ids
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert [(it["item_index"], it["item_id"], it["title"]) for it in body["items"]] == \
        recommend_users(path, cfg, [user], 5)[user]


def test_a_compiled_service_warms_up_at_start_and_answers_as_the_eager_one(run, service, monkeypatch):
    """generate.compile=true reaches the service's searches, whose graphs are made when the service starts (one
    user, then two), not on the first requests' clock. torch.compile is replaced by the identity here: the compiled
    step's equality with the eager one is tests/generate/test_compiled.py's (its C++ compilation costs seconds)."""
    import copy

    import torch

    calls = []

    def fake_compile(fn, **kw):
        def traced(prefix, step, ctx, cache):
            calls.append(ctx.mask.shape[0])  # users of each compiled-step call
            return fn(prefix, step, ctx, cache)
        return traced

    monkeypatch.setattr(torch, "compile", fake_compile)
    path, cfg = run
    cfg = copy.deepcopy(cfg)
    cfg.generate.compile = "true"
    fast = RecommendService(path, cfg)
    assert sorted(set(calls)) == [1, 2]  # warmed up at start: one user, then two
    users = list(service.user_index)[:3]
    for queries in ([service.user_query(users[0], 5)], [service.user_query(u, 5) for u in users]):
        assert fast.recommend(queries) == service.recommend(queries)
    assert 3 in calls  # the requests went through the compiled step


def test_an_aot_service_loads_its_packages_from_the_run_at_start_and_answers_as_the_eager_one(run, service,
                                                                                               monkeypatch):
    """generate.compile=aot reaches the service's searches through the run's aot/ folder, and every level is
    ready before the service listens. The packages are replaced by the exported module run eagerly (same inputs,
    same layout): their C++ compilation and equality are tests/generate/test_aot.py's."""
    import copy

    from onerec.model import aot

    made = []

    def eager_runner(self, step):
        made.append((self.root, step))
        self.runners[step] = aot._Level(self.model, step)
        return self.runners[step]

    monkeypatch.setattr(aot.AOTDecodeStep, "_runner", eager_runner)
    path, cfg = run
    cfg = copy.deepcopy(cfg)
    cfg.generate.compile = "aot"
    fast = RecommendService(path, cfg)
    levels = len(fast.rec.model.codebook_sizes)
    assert sorted(step for _, step in made) == list(range(levels))  # every level at start, each once
    assert {root for root, _ in made} == {path / "aot"}
    users = list(service.user_index)[:3]
    for queries in ([service.user_query(users[0], 5)], [service.user_query(u, 5) for u in users]):
        assert fast.recommend(queries) == service.recommend(queries)
    assert len(made) == levels  # the requests reused them


def test_a_model_with_every_pathway_serves_known_users_as_evaluated(tmp_path):
    """Known users are featurized as in evaluation (full log, user and item features) and ranked as in it (here
    with the succession prior); an explicit history stands in for the log."""
    run = tmp_path / "pathways"
    cfg = load_config(preset="tiny", overrides=[
        "train.max_steps=3", "model.pathways=static,short,positive,lifelong,succession",
        "model.behaviour_features=sid,item,author,tag,time,play,duration,label", "model.sparse_buckets=512",
        "generate.succession_prior=2"])
    for stage in (stage_data, stage_tokenize, stage_train):
        stage(run, cfg, progress=False)
    service = RecommendService(run, cfg)
    assert service.rec.featurizer.side is not None and service.rec.featurizer.succession is not None
    assert service.rec.prior is service.rec.featurizer.succession and service.rec.prior_weight == 2
    users = list(service.user_index)[:4]
    expected = recommend_users(run, cfg, users, 5)
    got = service.recommend([service.user_query(u, 5) for u in users]
                            + [service.history_query([3, 1, 4], 5, ts=[1, 2, 3], flags=[1, 1, 1])])
    assert [items for items, _ in got[:4]] == [[i for i, _, _ in expected[u]] for u in users]
    assert len(got[4][0]) == 5 and all(0 <= i < service.n_items for i in got[4][0])


def test_requests_and_answers_use_the_dataset_item_ids(service, client):
    """`history` takes the dataset's own item ids (strings, or integers for their decimal text) and is the same
    request as `history_index` with onerec's dense indices; answers give both."""
    idx = [3, 1, 4, 1, 5]
    by_index = client.post("/recommend", json={"history_index": idx, "k": 4}).json()
    by_id = client.post("/recommend", json={"history": [service.item_ids[i] for i in idx], "k": 4}).json()
    assert by_id["items"] == by_index["items"] and by_id["history_length"] == 5
    for it in by_id["items"]:
        assert it["item_id"] == service.item_ids[it["item_index"]] and isinstance(it["item_id"], str)
    assert service.item_indices([service.item_ids[7], service.item_ids[2]]) == [7, 2]
    # a numeric id given as a JSON integer is its text ('50' for 50), never onerec's index 50
    service.item_index["50"] = 9
    try:
        assert service.item_indices([50, "50"]) == [9, 9]
    finally:
        del service.item_index["50"]


def test_recommend_by_explicit_history(service, client):
    r = client.post("/recommend", json={"history_index": [3, 1, 4, 1, 5], "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["history_length"] == 5 and len(r.json()["items"]) == 3
    r2 = client.post("/recommend", json={"history_index": [3, 1, 4, 1, 5], "timestamps": [10, 20, 30, 40, 50],
                                         "flags": [1, 1, 3, 1, 1], "k": 3})
    assert r2.status_code == 200, r2.text


@pytest.mark.parametrize(("payload", "status", "needle"), [
    ({"history_index": [], "k": 3}, 422, "'history_index' is empty"),
    ({"history_index": [10**9], "k": 3}, 422, "unknown item index 1000000000"),
    ({"history_index": [-1], "k": 3}, 422, "unknown item index -1"),
    ({"history": [], "k": 3}, 422, "'history' is empty"),
    ({"history": ["sim_v1", "nope"], "k": 3}, 422, "unknown item id 'nope' in 'history'"),
    ({"history": [3], "k": 3}, 422, "unknown item id '3'"),  # an integer stands for its text; sim ids are 'sim_v3'
    ({"history": [True]}, 422, "history.0"),
    ({"history": [1.5]}, 422, "history.0"),
    ({"history": ["sim_v1"], "history_index": [1]}, 422, "exactly one of"),
    ({"history_index": [1], "k": 21}, 422, "less than or equal to 20"),
    ({"history_index": [1], "k": 0}, 422, "greater than or equal to 1"),
    ({"user_id": "nobody-xyz", "k": 3}, 404, "unknown user_id"),
    ({"k": 3}, 422, "exactly one of"),
    ({"user_id": "a", "history_index": [1]}, 422, "exactly one of"),
    ({"history_index": [1, 2], "timestamps": [1]}, 422, "'timestamps' has 1 entries"),
    ({"history_index": ["x"]}, 422, "history_index.0"),
    ({"history_index": [1], "surprise": 1}, 422, "surprise"),
    ({"history_index": list(range(51))}, 422, "at most 50"),
    # strict types: no coercion of strings, floats or booleans
    ({"history_index": [1], "k": "5"}, 422, "k: Input should be a valid integer"),
    ({"history_index": [1], "k": 5.0}, 422, "k: Input should be a valid integer"),
    ({"history_index": [1], "k": True}, 422, "k: Input should be a valid integer"),
    ({"history_index": [True, False]}, 422, "history_index.0"),
    ({"history_index": ["3"]}, 422, "history_index.0"),
    ({"user_id": 5}, 422, "user_id"),
    ({"history_index": [1], "timestamps": [2**63]}, 422, "unix seconds"),
    ({"history_index": [1], "timestamps": [-1]}, 422, "unix seconds"),
    ({"history_index": [1], "timestamps": [10**30]}, 422, "unix seconds"),
])
def test_bad_requests_get_clear_4xx(client, payload, status, needle):
    r = client.post("/recommend", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_hostile_bodies_and_the_server_keeps_serving(client):
    good = {"history_index": [1, 2, 3], "k": 2}
    hostile = [
        (b"{not json", 400), (b"", 422), (b"[1, 2, 3]", 422), (b"null", 422),
        (json.dumps({"history_index": [1] * 5000}).encode(), 413),  # over max_body_bytes
        (b'{"history_index": [1e400], "k": 2}', 422), (b'{"history_index": [1], "k": "many"}', 422),
        (b"\xff\xfe\x00garbage", 400), (b'{"history_index": [1], "k": 2, "k": 3}', 400),
        (b'{"history_index": [1], "k": 2, "history_index": [2]}', 400), (b'{"history_index": [{"a": 1, "a": 2}]}', 400),
        (b"[" * 2000 + b"]" * 2000, 400), (b'{"history_index": ' + b"[" * 40 + b"]" * 40 + b"}", 400),
        (b'{"history_index": [1], "timestamps": [99999999999999999999], "k": 2}', 422),
    ]
    for body, status in hostile:
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:40], r.status_code, r.text[:200])
        assert client.post("/recommend", json=good).status_code == 200
    chunks = (b'{"history_index": [' + b"1, " * 100 for _ in range(100))  # chunked upload, no content-length
    r = client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/recommend", content=b"{}", headers={"content-type": "application/json",
                                                          "content-length": "99999999"})
    assert r.status_code in (400, 413)
    assert client.get("/healthz").json()["status"] == "ok"


def test_healthz_metrics_openapi(client):
    client.post("/recommend", json={"history_index": [1], "k": 2})
    client.post("/recommend", json={"history_index": [], "k": 2})
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert 'onerec_requests_total{path="/recommend",status="200"}' in text
    assert 'onerec_requests_total{path="/recommend",status="422"}' in text
    assert 'onerec_request_latency_seconds_bucket{path="/recommend",le="+Inf"}' in text
    assert "onerec_errors_total{kind=\"client\"}" in text and "onerec_batch_size_count" in text
    schema = client.get("/openapi.json").json()
    assert "/recommend" in schema["paths"] and "RecommendRequest" in json.dumps(schema)


def test_concurrent_requests_are_micro_batched_with_unchanged_answers(service):
    app = create_app(service)
    histories = [[int(i) for i in np.random.default_rng(s).integers(0, service.n_items, 6)] for s in range(24)]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            together = await asyncio.gather(*[c.post("/recommend", json={"history_index": h, "k": 4})
                                              for h in histories])
            alone = [await c.post("/recommend", json={"history_index": h, "k": 4}) for h in histories[:4]]
            return together, alone

    together, alone = asyncio.run(go())
    assert all(r.status_code == 200 for r in together)
    for a, t in zip(alone, together[:4]):
        assert [x["item_id"] for x in a.json()["items"]] == [x["item_id"] for x in t.json()["items"]]
    batch = app.state.metrics.batch
    assert batch.n < len(histories) + 4  # some requests shared a beam search


def test_real_uvicorn_on_loopback(service):
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            bad = c.post("/recommend", content=b"{oops", headers={"content-type": "application/json"})
            assert bad.status_code == 400
            r = c.post("/recommend", json={"history_index": [1, 2], "k": 3})
            assert r.status_code == 200 and len(r.json()["items"]) == 3
            assert c.get("/healthz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
